"""FractalNet's two central claims, reproduced at CPU scale by the project's own engine; writes README.md beside it.

Experiment A (anytime): ``fractalnet_c4`` at the paper's reduced widths on CIFAR-10, trained without drop-path,
with the paper's drop-path + block dropout, and with short-budget variants (no block dropout; a lower local rate; a
warm-up of the local rate), all at one budget. Every column's test accuracy (batch-norm statistics re-estimated for
the column alone) and batch-1 latency, beside the full network's.

Experiment B (Table 4): plain networks of depth 5, 10, 20, 40 (``fractalnet_plain`` with 1, 2, 4, 8 convs per
block) trained alone, against the same-depth columns of the 40-layer fractal nets of experiment A trained with
drop-path: test error and training loss in the paper's table layout, beside the paper's own figures.

    python -m experiments.reproduce_paper.run            # CPU budget (about 1.9 h on 2 idle cores), 2 seeds
    python -m experiments.reproduce_paper.run --quick    # smoke test, a few minutes; its doc says it is no result
    python -m experiments.reproduce_paper.run --gpu      # 40 full epochs per run; --scale paper: the paper's 400

Every run trains into ``<out-dir>/<experiment>/<run>/seed<n>/`` with the engine's per-epoch checkpoints; its result
is a unit of ``<out-dir>/ledger.json`` (``experiments/ledger.py``), so re-running the same command resumes an
interrupted run and skips finished ones.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.ledger import Ledger  # noqa: E402
from experiments.provenance import header  # noqa: E402
from fractal_space.core.files import write_atomic  # noqa: E402
from fractal_space.core.paper import PAPER  # noqa: E402
from fractal_space.data import BatchLoader, ImageSet  # noqa: E402
from fractal_space.deploy.metrics import deployment_latency  # noqa: E402
from fractal_space.engine import TrainConfig, Trainer  # noqa: E402
from fractal_space.engine.config import recipe_changes  # noqa: E402
from fractal_space.engine.trainer import EVAL_BATCH  # noqa: E402
from fractal_space.models.anytime import reestimate_bn_stats  # noqa: E402

FRACTAL = "fractalnet_c4"  # B=5, C=4, widths 16-128: the 40-layer reduced-width net of the paper's Table 4
HERE = Path(__file__).resolve().parent
NUM_BLOCKS, NUM_COLUMNS = 5, 4
DEPTHS = tuple(NUM_BLOCKS * 2 ** k for k in range(NUM_COLUMNS))  # 5, 10, 20, 40
#: Training images the training loss is measured on, in eval mode, for plain nets, columns and full nets alike.
TRAIN_LOSS_IMAGES = 2000
#: "Within a few points": the deepest column's test accuracy at most this many points below the full network's.
CLOSE_POINTS = 3.0
#: Measured training throughput of fractalnet_c4 (reduced width) on 2 idle cores of this machine, images/s; a plain
#: net of n convs per block costs about n/15 of it (C=4 has 1+2+4+8 convs per block), up to the loader's ceiling.
C4_IMAGES_PER_S, MAX_IMAGES_PER_S = 380.0, 2500.0
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000

# The paper's Table 4 (CIFAR-100++, reduced widths): test error (%), plain nets and the columns of one 40-layer net.
PAPER_PLAIN_ERROR = (36.62, 32.47, 31.31, 38.84)
PAPER_COLUMN_ERROR = (37.23, 32.85, 31.31, 31.75)
PAPER_FULL_ERROR = 27.40
PAPER_PLAIN40_TRAIN_LOSS = 0.580


@dataclass(frozen=True)
class Scale:
    """A budget: every run of both experiments trains ``epochs`` epochs of ``epoch_images`` images (None: all)."""

    epochs: int
    epoch_images: int | None
    train_subset: int | None
    val_size: int
    seeds: int


SCALES = {
    "quick": Scale(epochs=1, epoch_images=None, train_subset=1000, val_size=200, seeds=1),
    "cpu": Scale(epochs=10, epoch_images=20_000, train_subset=None, val_size=1000, seeds=2),
    "gpu": Scale(epochs=40, epoch_images=None, train_subset=None, val_size=5000, seeds=2),
    "paper": Scale(epochs=400, epoch_images=None, train_subset=None, val_size=5000, seeds=2),
}

NO_DROPOUT = [0.0] * NUM_BLOCKS  # a list: TrainConfig round-trips through JSON, where a tuple would not compare equal


@dataclass(frozen=True)
class Variant:
    """One way of training the fractal net in experiment A."""

    name: str
    description: str
    regularization: str  # TrainConfig.regularization: "paper" gives drop-path 0.15, 50% global, dropout 0..0.4
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup: float = 0.0  # TrainConfig.drop_path_warmup: share of the steps over which the local rate ramps up

    @property
    def drop_path(self) -> bool:
        return self.regularization == "paper"


VARIANTS = (
    Variant("none", "no drop-path, no dropout", "none"),
    Variant("paper", "the paper's: drop-path p=0.15, 50% global batches, block dropout 0, .1, .2, .3, .4", "paper"),
    Variant("no-dropout", "drop-path p=0.15, 50% global batches, no block dropout", "paper",
            {"block_dropout": NO_DROPOUT}),
    Variant("low-rate", "drop-path p=0.05, 50% global batches, no block dropout", "paper",
            {"drop_path_rate": 0.05, "block_dropout": NO_DROPOUT}),
    Variant("warmup", "as no-dropout, the local rate ramping linearly from 0 to 0.15 over the first half of the "
            "training steps (`drop_path_warmup=0.5`)", "paper", {"block_dropout": NO_DROPOUT}, warmup=0.5),
)


def _epoch_images(epoch_images: int | None, train_subset: int | None, val_size: int) -> int:
    """Training images per epoch (for CIFAR-10 sizes when the whole split is one epoch)."""
    return epoch_images or train_subset or CIFAR_TRAIN - val_size


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, min and max over seeds."""
    return statistics.fmean(values), min(values), max(values)


def _fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean`` for one seed, ``mean (min-max)`` for several, scaled (fractions to %)."""
    mean, lo, hi = (v * scale for v in _spread(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


# ---- running ------------------------------------------------------------------------------------------------------
def _train_loss_loader(trainer: Trainer) -> BatchLoader:
    """The first TRAIN_LOSS_IMAGES training images, un-augmented: one training-loss measure for every network."""
    train = trainer.data.train
    n = min(TRAIN_LOSS_IMAGES, len(train))
    subset = ImageSet(train.images[:n], train.labels[:n], train.classes)
    return BatchLoader(subset, norm=trainer.data.norm, batch_size=EVAL_BATCH, device=trainer.device,
                       channels_last=trainer.cfg.channels_last)


def run(cfg: TrainConfig, ledger: Ledger, unit: str) -> tuple[dict[str, Any], bool]:
    """Train ``cfg`` (resuming its out_dir), test it, and measure training losses; the result is ``ledger``'s unit
    ``unit``.

    Returns the result and whether this call trained (False: the recorded result was reused).

    A fractal net's columns are tested as the engine tests them (``Trainer.evaluate``: each extracted, its batch-norm
    statistics re-estimated on the same un-augmented training batches). A recorded result is reused while its recipe
    is ``cfg``'s (run-time settings such as threads or device may differ).
    """
    result = ledger.unit(unit)
    if result is not None and not recipe_changes(result["config"], cfg):
        return result, False
    trainer = Trainer(cfg)
    for _ in trainer.epochs():
        pass
    test = trainer.evaluate("test", columns=True)
    loader = _train_loss_loader(trainer)
    train_losses = [trainer._accuracy(trainer.model, loader)[0]]
    if trainer.num_columns:
        bn_inputs = trainer.bn_inputs()  # those evaluate() used
        for k in range(1, trainer.num_columns + 1):
            column = trainer.model.extract_column(k)
            reestimate_bn_stats(column, bn_inputs)
            train_losses.append(trainer._accuracy(column, loader)[0])
    deployed = [deployment_latency(trainer.model, trainer.input_size, **kw).ms[1]
                for kw in [{}] + [{"column": c.column} for c in test.columns]]
    result = {
        "config": cfg.to_dict(), "test_acc": test.acc, "latency_ms": test.latency_ms,
        "deployed_latency_ms": deployed[0],
        "columns": [{"column": c.column, "test_acc": c.acc, "latency_ms": c.latency_ms, "deployed_latency_ms": d}
                    for c, d in zip(test.columns, deployed[1:], strict=True)],
        "train_loss": train_losses[0], "column_train_loss": train_losses[1:],
        "last_epoch_train_loss": trainer.history[-1].train_loss,
        "train_seconds": sum(r.epoch_seconds for r in trainer.history),
    }
    ledger.complete(unit, result)
    return result, True


@dataclass(frozen=True)
class Plan:
    """Every run of both experiments: (experiment, run name, seed, TrainConfig); its ledger unit is its folder
    under the out-dir, ``<experiment>/<run name>/seed<n>``."""

    runs: list[tuple[str, str, int, TrainConfig]]

    @classmethod
    def build(cls, scale: Scale, seeds: int, variants: Sequence[Variant], out_dir: Path,
              common: dict[str, Any]) -> Plan:
        budget = dict(epochs=scale.epochs, epoch_images=scale.epoch_images, train_subset=scale.train_subset,
                      val_size=scale.val_size, eval_columns=False, recipe="paper", **common)
        runs = []
        for seed in range(seeds):
            for v in variants:
                cfg = TrainConfig(model=FRACTAL, regularization=v.regularization, model_kwargs=dict(v.model_kwargs),
                                  drop_path_warmup=v.warmup, seed=seed,
                                  out_dir=str(out_dir / "A" / v.name / f"seed{seed}"), **budget)
                runs.append(("A", v.name, seed, cfg))
            for depth, convs in zip(DEPTHS, (2 ** k for k in range(NUM_COLUMNS)), strict=True):
                cfg = TrainConfig(model="fractalnet_plain", regularization="none", seed=seed,
                                  model_kwargs={"convs_per_block": convs},
                                  out_dir=str(out_dir / "B" / f"plain{depth}" / f"seed{seed}"), **budget)
                runs.append(("B", f"plain{depth}", seed, cfg))
        return cls(runs)

    def estimate_seconds(self) -> float:
        """CPU estimate from the measured throughput: training images, plus evaluation at ~3x the training rate."""
        total = 0.0
        for _, _, _, cfg in self.runs:
            convs = cfg.model_kwargs.get("convs_per_block")
            rate = C4_IMAGES_PER_S if convs is None else min(MAX_IMAGES_PER_S, C4_IMAGES_PER_S * 15 / convs)
            images = cfg.epochs * _epoch_images(cfg.epoch_images, cfg.train_subset, cfg.val_size)
            evaluated = cfg.epochs * cfg.val_size + 2 * CIFAR_TEST + TRAIN_LOSS_IMAGES
            total += images / rate + evaluated / (3 * rate)
        return total


# ---- invocations ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """One invocation of this script on an out-dir: when it started, its wall time, how many runs it trained."""

    started: str
    wall_seconds: float
    trained: int
    runs: int


def read_invocations(ledger: Ledger) -> list[Invocation]:
    """The invocations that trained something, oldest first (so a resumed run's wall time adds up)."""
    return [Invocation(**{k: v for k, v in i.items() if k in Invocation.__dataclass_fields__})
            for i in ledger.invocations()]


def _wall_time(trained: Sequence[Invocation], this: Invocation, train_seconds: float) -> str:
    """The doc's wall-time sentence: every invocation that trained (the ledger), then this one if it trained nothing."""
    total = sum(i.wall_seconds for i in trained) / 60
    parts = " + ".join(f"{i.wall_seconds / 60:.1f} min ({i.trained} of {i.runs} runs, started {i.started})"
                       for i in trained)
    text = (f"Wall time of the whole run: **{total:.1f} min** in {len(trained)} invocation(s) that trained: {parts}. "
            if trained else "")
    if not this.trained:
        text += f"This invocation trained nothing (every run cached) and took {this.wall_seconds / 60:.1f} min. "
    return text + f"Training + validation of all runs: {train_seconds / 60:.1f} min."


# ---- the document -------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """Results by (experiment, run name) over seeds."""

    by_run: dict[tuple[str, str], list[dict[str, Any]]]

    def get(self, experiment: str, name: str) -> list[dict[str, Any]]:
        return self.by_run.get((experiment, name), [])

    def column_acc(self, variant: str) -> list[list[float]]:
        """Per column (1..C), the test accuracies over seeds."""
        runs = self.get("A", variant)
        return [[r["columns"][k]["test_acc"] for r in runs] for k in range(NUM_COLUMNS)]

    def full_acc(self, variant: str) -> list[float]:
        return [r["test_acc"] for r in self.get("A", variant)]


def anytime_verdict(results: Results, variant: str) -> tuple[bool, bool, str]:
    """Do the mean column accuracies rise with depth, and is the deepest within CLOSE_POINTS of the full net?"""
    means = [statistics.fmean(v) * 100 for v in results.column_acc(variant)]
    full = statistics.fmean(results.full_acc(variant)) * 100
    rising = all(b > a for a, b in itertools.pairwise(means))
    close = full - means[-1] <= CLOSE_POINTS
    text = (f"columns {'rise' if rising else 'do not rise'} with depth ({' / '.join(f'{m:.1f}' for m in means)}); "
            f"deepest column {means[-1]:.1f} vs full net {full:.1f}, {abs(full - means[-1]):.1f} points "
            f"{'below' if full > means[-1] else 'above'} it ({'within' if close else 'not within'} "
            f"{CLOSE_POINTS:g} below)")
    return rising, close, text


def _plot(path: Path, draw: Callable[[Any], None], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw(ax)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_key(runs: Sequence[dict[str, Any]]) -> str:
    """The deployed (ONNX Runtime) latency where every run measured it; eager PyTorch's for runs cached before."""
    return "deployed_latency_ms" if all("deployed_latency_ms" in r for r in runs) else "latency_ms"


def _latency_label(results: Results) -> str:
    runs = [r for (experiment, _), rs in results.by_run.items() if experiment == "A" for r in rs]
    deployed = _latency_key(runs) == "deployed_latency_ms"
    return "ONNX Runtime" if deployed else "eager PyTorch"


def plot_anytime(results: Results, variants: Sequence[Variant], path: Path) -> None:
    """Test accuracy against batch-1 latency: columns 1..C joined by a line, the full net as a star."""
    def draw(ax: Any) -> None:
        for v in variants:
            runs = results.get("A", v.name)
            key = _latency_key(runs)
            lat = [statistics.fmean(r["columns"][k][key] for r in runs) for k in range(NUM_COLUMNS)]
            acc = [statistics.fmean(a) * 100 for a in results.column_acc(v.name)]
            line, = ax.plot(lat, acc, "o-", label=f"{v.name}: columns 1-{NUM_COLUMNS}")
            full = statistics.fmean(results.full_acc(v.name)) * 100
            ax.plot([statistics.fmean(r[key] for r in runs)], [full], "*", markersize=12,
                    color=line.get_color(), label=f"{v.name}: full net")
        ax.set_xlabel(f"latency per image, batch 1 (ms, {_latency_label(results)})")
        ax.set_ylabel("test accuracy (%)")
    _plot(path, draw, f"Anytime: {FRACTAL} columns vs full network (CIFAR-10)")


def plot_table4(results: Results, variants: Sequence[Variant], path: Path) -> None:
    """Test error against depth: plain nets trained alone and each drop-path variant's columns."""
    def draw(ax: Any) -> None:
        plain = [statistics.fmean(r["test_acc"] for r in results.get("B", f"plain{d}")) for d in DEPTHS]
        ax.plot(DEPTHS, [100 - 100 * a for a in plain], "s-", color="black", label="plain net trained alone")
        for v in variants:
            acc = [statistics.fmean(a) for a in results.column_acc(v.name)]
            ax.plot(DEPTHS, [100 - 100 * a for a in acc], "o--", label=f"column of the fractal net ({v.name})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(DEPTHS, [str(d) for d in DEPTHS])
        ax.set_xlabel("depth (conv layers)")
        ax.set_ylabel("test error (%)")
    _plot(path, draw, "Table 4 at CPU scale: plain nets vs fractal columns (CIFAR-10)")


def write_doc(results: Results, variants: Sequence[Variant], command: str, scale_name: str, scale: Scale,
              seeds: int, common: dict[str, Any], ledger: Sequence[Invocation], this: Invocation, doc: Path) -> None:
    """The Markdown report with its two plots (``anytime.png``, ``table4.png``) beside it."""
    plot_anytime(results, variants, doc.parent / "anytime.png")
    dropped = [v for v in variants if v.drop_path]
    plot_table4(results, dropped, doc.parent / "table4.png")
    train_seconds = sum(r["train_seconds"] for runs in results.by_run.values() for r in runs)
    per_run = scale.epochs * _epoch_images(scale.epoch_images, scale.train_subset, scale.val_size)
    lines = [
        "# FractalNet's central claims at CPU scale",
        "",
    ]
    if scale_name == "quick":
        lines += ["> **Smoke test (`--quick`), not a result.** Budgets are far too small for any claim below to mean "
                  "anything; run `python -m experiments.reproduce_paper.run` for the real document.", ""]
    lines += [
        header(command, common["device"]),
        _wall_time(ledger, this, train_seconds),
        "",
        f"Budget, the same for every run: {scale.epochs} epochs of "
        f"{scale.epoch_images or 'all'} training images ({per_run:,} images seen); the engine's paper recipe: batch "
        f"{PAPER.batch_size}, SGD lr {PAPER.lr}, momentum {PAPER.momentum}, weight decay {PAPER.weight_decay:g}, "
        f"lr / 10 each time the remaining epochs halve, augmentation `{PAPER.augment}`; validation split "
        f"{scale.val_size} images"
        + (f", training subset {scale.train_subset} images" if scale.train_subset else "")
        + f"; dataset `{common['dataset']}`, seeds 0..{seeds - 1} ({seeds} per row; cells give the mean and, over "
        "several seeds, the (min-max) range). Test accuracy is on the full test split; every column is extracted "
        "and its batch-norm statistics re-estimated on 10 un-augmented training batches before it is tested. "
        f"Training loss is measured in eval mode on the first {TRAIN_LOSS_IMAGES:,} training images for every "
        "network alike (plain nets, columns, full nets). Latency is the median of 20 forward passes at batch 1 "
        "on the same machine, so it shares that machine's load.",
        "",
        f"## A. Anytime prediction: `{FRACTAL}` (40 layers, widths 16-128)",
        "",
        "Variants: " + "; ".join(f"**{v.name}**: {v.description}" for v in variants) + ".",
        "",
        f"Latencies: ms per image at batch 1, {_latency_label(results)}.",
        "",
        "| variant | " + " | ".join(f"column {k} acc (%)" for k in range(1, NUM_COLUMNS + 1))
        + " | full net acc (%) | " + " | ".join(f"col {k} ms" for k in range(1, NUM_COLUMNS + 1)) + " | full ms |",
        "|---|" + "---:|" * (2 * NUM_COLUMNS + 2),
    ]
    verdicts = {}
    for v in variants:
        runs = results.get("A", v.name)
        accs = [_fmt(a) for a in results.column_acc(v.name)]
        key = _latency_key(runs)
        lats = [_fmt([r["columns"][k][key] for r in runs], 1.0, 2) for k in range(NUM_COLUMNS)]
        lines.append(f"| {v.name} | " + " | ".join(accs) + f" | {_fmt(results.full_acc(v.name))} | "
                     + " | ".join(lats) + f" | {_fmt([r[key] for r in runs], 1.0, 2)} |")
        verdicts[v.name] = anytime_verdict(results, v.name)
    good = [name for name, (rising, close, _) in verdicts.items() if rising and close]
    lines += ["", "![accuracy against latency](anytime.png)", "", "What holds at this budget:", ""]
    lines += [f"- **{name}**: {text}." for name, (_, _, text) in verdicts.items()]
    lines += _best(results, variants)
    lines += ["", ("Claim (a), columns rising with depth and a deepest column within "
                   f"{CLOSE_POINTS:g} points of the full net, **holds** for: {', '.join(good)}."
                   if good else f"Claim (a) **does not hold** for any variant at this budget: no variant gave columns "
                   f"rising with depth with a deepest column within {CLOSE_POINTS:g} points of the full net."), ""]

    lines += _table4(results, dropped)
    write_atomic(doc, "\n".join(lines) + "\n")


def _best(results: Results, variants: Sequence[Variant]) -> list[str]:
    """Which variant gives the best full net and the best deepest column, and what drop-path costs the full net."""
    full = {v.name: statistics.fmean(results.full_acc(v.name)) * 100 for v in variants}
    deep = {v.name: statistics.fmean(results.column_acc(v.name)[-1]) * 100 for v in variants}
    best_full, best_deep = max(full, key=full.__getitem__), max(deep, key=deep.__getitem__)
    lines = [f"- Best full network: **{best_full}** ({full[best_full]:.1f}%); best deepest column: **{best_deep}** "
             f"({deep[best_deep]:.1f}%)."]
    dropped = [v.name for v in variants if v.drop_path]
    if "none" in full and dropped:
        lines.append("- Drop-path's cost to the full network against none: " + ", ".join(
            f"{name} {full[name] - full['none']:+.1f}" for name in dropped) + " points.")
    return lines


def versus(column_err: Sequence[float], plain_err: Sequence[float]) -> str:
    """'better than' / 'worse than' only when every seed agrees (the ranges do not overlap), else within the spread."""
    if max(column_err) < min(plain_err):
        return "better than"
    if min(column_err) > max(plain_err):
        return "worse than"
    return "within the seeds' spread of"


def _plain_error(results: Results) -> list[list[float]]:
    """Per depth, the plain nets' test errors over seeds."""
    return [[1 - r["test_acc"] for r in results.get("B", f"plain{d}")] for d in DEPTHS]


def claim_b(results: Results, dropped: Sequence[Variant]) -> tuple[str, dict[str, str]]:
    """Claim (b) at this budget: ``cannot be tested`` (the 40-layer plain net is not worse than the 20-layer one),
    ``holds`` (some variant's 40-layer column beats the 40-layer plain net on every seed) or ``is not shown``; and
    each drop-path variant's 40-layer column against that plain net (:func:`versus`)."""
    plain_err = _plain_error(results)
    degrades = statistics.fmean(plain_err[-1]) > statistics.fmean(plain_err[-2])
    against = {v.name: versus([1 - a for a in results.column_acc(v.name)[-1]], plain_err[-1]) for v in dropped}
    outcome = "cannot be tested" if not degrades else "holds" if "better than" in against.values() else "is not shown"
    return outcome, against


def _table4(results: Results, dropped: Sequence[Variant]) -> list[str]:
    """Experiment B in the paper's layout: depth rows, plain vs column (error, train loss), paper figures beside."""
    plain_err = _plain_error(results)
    plain_loss = [[r["train_loss"] for r in results.get("B", f"plain{d}")] for d in DEPTHS]
    head = "| depth | plain: error (%) | plain: train loss | " + " | ".join(
        f"column ({v.name}): error (%) | column ({v.name}): train loss" for v in dropped) + \
        " | paper plain error (C100++) | paper column error (C100++) |"
    lines = ["## B. Table 4 at CPU scale: plain networks vs fractal columns", "",
             "Plain networks of depth 5, 10, 20, 40 (`fractalnet_plain`, 1, 2, 4, 8 convs per block, no drop-path, "
             "no dropout) trained alone, beside the same-depth columns of experiment A's 40-layer fractal nets "
             "trained with drop-path. The paper's figures are CIFAR-100++ errors, so compare the shape (how error "
             "moves with depth), not the values.", "", head,
             "|---:|" + "---:|" * (2 + 2 * len(dropped) + 2)]
    for i, depth in enumerate(DEPTHS):
        cells = [_fmt(plain_err[i]), _fmt(plain_loss[i], 1.0, 3)]
        for v in dropped:
            runs = results.get("A", v.name)
            cells += [_fmt([1 - a for a in results.column_acc(v.name)[i]]),
                      _fmt([r["column_train_loss"][i] for r in runs], 1.0, 3)]
        paper_plain = f"{PAPER_PLAIN_ERROR[i]:.2f}" + (f" (train loss {PAPER_PLAIN40_TRAIN_LOSS})"
                                                       if depth == DEPTHS[-1] else "")
        lines.append(f"| {depth} | " + " | ".join(cells) + f" | {paper_plain} | {PAPER_COLUMN_ERROR[i]:.2f} |")
    full_cells = ["", ""]
    for v in dropped:
        full_cells += [_fmt([1 - a for a in results.full_acc(v.name)]),
                       _fmt([r["train_loss"] for r in results.get("A", v.name)], 1.0, 3)]
    lines.append("| full fractal net | " + " | ".join(full_cells) + f" | | {PAPER_FULL_ERROR:.2f} |")
    lines += ["", "![error against depth](table4.png)", "", "What holds at this budget:", ""]
    p = [statistics.fmean(e) * 100 for e in plain_err]
    outcome, verdicts = claim_b(results, dropped)
    lines.append(f"- Plain nets trained alone: error {' / '.join(f'{e:.1f}' for e in p)} at depth "
                 f"{' / '.join(map(str, DEPTHS))}; the 40-layer plain net is "
                 f"{'not worse' if outcome == 'cannot be tested' else 'worse'} than the 20-layer one "
                 f"({p[-1] - p[-2]:+.1f} points; the paper: +7.53).")
    for v in dropped:
        col = [statistics.fmean(1 - a for a in accs) * 100 for accs in results.column_acc(v.name)]
        worse = all(b > a for a, b in itertools.pairwise(col))
        lines.append(f"- Columns of the fractal net ({v.name}): error {' / '.join(f'{e:.1f}' for e in col)}, "
                     f"{'rising with every step of depth' if worse else 'not rising with every step of depth'} "
                     f"(the paper's falls to depth 20 and stays); the 40-layer column is {verdicts[v.name]} the "
                     f"40-layer plain net ({col[-1] - p[-1]:+.1f} points; the paper: -7.09).")
    trains = [name for name, verdict in verdicts.items() if verdict == "better than"]
    claim = "Claim (b), a 40-layer plain network that trains badly alone trains better as a fractal column, "
    if outcome == "cannot be tested":
        claim += "**cannot be tested** at this budget: the 40-layer plain net did not degrade here."
    elif outcome == "holds":
        others = [name for name in verdicts if name not in trains]
        claim += (f"**holds** at this budget for: {', '.join(trains)}"
                  + (f"; not for: {', '.join(others)}" if others else "") + ". Whether the column is *usable* is "
                  "another matter: compare its error with the shallower columns' above.")
    else:
        claim += ("**is not shown** at this budget: no 40-layer column's error was below the 40-layer plain net's on "
                  "every seed.")
    lines += ["", claim, ""]
    return lines


# ---- command line -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce_paper.run",
                                     description=__doc__.splitlines()[0])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="budget (default: cpu)")
    scale.add_argument("--quick", action="store_const", const="quick", dest="scale", help="= --scale quick")
    scale.add_argument("--gpu", action="store_const", const="gpu", dest="scale", help="= --scale gpu")
    parser.add_argument("--seeds", type=int, help="seeds per run (default: the scale's)")
    parser.add_argument("--epochs", type=int, help="override the scale's epochs")
    parser.add_argument("--epoch-images", type=int, help="override the scale's training images per epoch")
    parser.add_argument("--train-subset", type=int, help="override the scale's training subset")
    parser.add_argument("--val-size", type=int, help="override the scale's validation split size")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS],
                        default=[v.name for v in VARIANTS], help="experiment A's variants (default: all)")
    parser.add_argument("--dataset", default="cifar10", help="engine dataset spec (default: cifar10)")
    parser.add_argument("--data-dir", help="data root (else $FRACTAL_SPACE_DATA)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--num-threads", type=int, help="CPU threads (default: one per usable core)")
    parser.add_argument("--out-dir", type=Path, help="run folders, resumable (default: runs/reproduce/<scale>)")
    parser.add_argument("--doc", type=Path, help="the report, its plots beside it (default: this experiment's "
                                                 "README.md; --quick: <out-dir>/README.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    out_dir = args.out_dir or Path("runs/reproduce") / args.scale
    doc = args.doc or (out_dir / "README.md" if args.scale == "quick" else HERE / "README.md")
    ledger = Ledger(out_dir)
    scale = SCALES[args.scale]
    overrides = {k: getattr(args, k) for k in ("epochs", "epoch_images", "train_subset", "val_size")
                 if getattr(args, k) is not None}
    scale = replace(scale, **overrides)
    seeds = args.seeds or scale.seeds
    variants = [v for v in VARIANTS if v.name in args.variants]
    common = dict(dataset=args.dataset, data_dir=args.data_dir, device=args.device, num_threads=args.num_threads,
                  progress=False)
    plan = Plan.build(scale, seeds, variants, out_dir, common)
    print(f"{len(plan.runs)} runs, {args.scale} budget: {scale.epochs} epochs x "
          f"{_epoch_images(scale.epoch_images, scale.train_subset, scale.val_size)} images, {seeds} seed(s); estimated "
          f"{plan.estimate_seconds() / 60:.0f} min on 2 idle CPU cores (C=4 at {C4_IMAGES_PER_S:.0f} images/s)",
          flush=True)
    start, started = time.perf_counter(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    by_run: dict[tuple[str, str], list[dict[str, Any]]] = {}
    trained = 0
    for i, (experiment, name, seed, cfg) in enumerate(plan.runs, 1):
        t = time.perf_counter()
        result, fresh = run(cfg, ledger, Path(cfg.out_dir).relative_to(out_dir).as_posix())
        trained += fresh
        by_run.setdefault((experiment, name), []).append(result)
        print(f"[{i}/{len(plan.runs)}] {experiment} {name} seed {seed}: test acc {result['test_acc']:.2%} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    command = " ".join(["python -m experiments.reproduce_paper.run", *argv])
    this = Invocation(started, time.perf_counter() - start, trained, len(plan.runs))
    if trained:  # a re-render of recorded results adds no time
        ledger.add_invocation(**asdict(this))
    write_doc(Results(by_run), variants, command, args.scale, scale, seeds, common, read_invocations(ledger), this,
              doc)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
