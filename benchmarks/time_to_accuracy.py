"""Test accuracy against CPU-minutes for training recipes on CIFAR-10; writes experiments/time_to_accuracy/.

Each run trains one model with one recipe through the engine (45,000 training / 5,000 validation images, the engine's
split; ``--images`` in all, in epochs of ``--epoch-images`` drawn from a new shuffle each) and tests it on the whole
test split after every epoch. The x axis is the process's CPU time spent training (validation and testing left out,
so a recipe's test-time augmentation does not count as training cost); wall time is kept beside it. Every point is
a run part-way through its own schedule, so it is a lower bound on what a run budgeted to stop there would reach.

    python benchmarks/time_to_accuracy.py --runs resnet20/paper resnet20/fast    # train (skips finished runs)
    python benchmarks/time_to_accuracy.py --report                              # table + plot of all runs

Runs are named ``<model>/<variant>`` (``--list`` shows them); each trains in ``<out>/runs/<stem>/`` (checkpointed, so
re-running the command resumes a killed run) and ends in ``<out>/runs/<stem>.json``, ``<stem>`` being
``<model>-<variant>-<images>-<epoch images>`` (``runs/`` is not versioned). Several invocations may train side by side;
``--report`` gathers whatever is finished into ``<out>/results.json`` and ``<out>/accuracy_vs_cpu_minutes.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fractal_space.core.files import write_atomic
from fractal_space.core.hardware import describe
from fractal_space.engine import EvalReport, TrainConfig, Trainer

#: The models: a timm name and its arguments. search-best is the best architecture of the CPU default search with the
#: fast recipe (its top-rung validation winner, a one-column FractalNet: a plain 5-layer network); wide4 a one-column
#: FractalNet with the widths of the fast-training literature's ResNet-9 (64-512), about 5.3 CPU-minutes a pass.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet20": ("resnet20_cifar", {}),
    "resnet56": ("resnet56_cifar", {}),
    "fractalnet_c3": ("fractalnet_c3", {}),
    "search-best": ("fractalnet", {"num_blocks": 5, "num_columns": 1, "widths": (16, 32, 64, 128, 128)}),
    "wide4": ("fractalnet", {"num_blocks": 4, "num_columns": 1, "widths": (64, 128, 256, 512)}),
}
#: The recipe variants: paper is the search's final stage (the paper's SGD with its cosine schedule); fast is the
#: engine's fast recipe; the rest change one of fast's options (leave-one-out), its learning rate, or its batch size
#: (batch64 with the lr scaled alike).
#: fast without augmentation at batch 64 (lr scaled alike): the base of the fractalnet_c3 variants at the 78% goal.
_NO_AUGMENT_BATCH64: dict[str, Any] = {"recipe": "fast", "augment": "none", "batch_size": 64, "lr": 0.2}
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"recipe": "paper", "schedule": "cosine"},
    "fast": {"recipe": "fast"},
    "fast-no-nesterov": {"recipe": "fast", "nesterov": False},
    "fast-no-label-smoothing": {"recipe": "fast", "label_smoothing": 0.0},
    "fast-norm-bias-decay": {"recipe": "fast", "norm_bias_decay": True},
    "fast-no-weight-decay": {"recipe": "fast", "weight_decay": 0.0},
    "fast-no-warmup": {"recipe": "fast", "lr_warmup": 0.0},
    "fast-cosine": {"recipe": "fast", "schedule": "cosine"},
    "fast-batch100": {"recipe": "fast", "batch_size": 100},
    "fast-batch64": {"recipe": "fast", "batch_size": 64, "lr": 0.2},
    "fast-ema": {"recipe": "fast", "ema": 0.99},
    "fast-whiten-dirac": {"recipe": "fast", "model_kwargs": {"whiten": True, "dirac_init": True}},
    "fast-lr0.1": {"recipe": "fast", "lr": 0.1},
    "fast-lr0.2": {"recipe": "fast", "lr": 0.2},
    "fast-lr0.8": {"recipe": "fast", "lr": 0.8},
    "fast-augment-none": {"recipe": "fast", "augment": "none"},
    "fast-augment-none-batch64": _NO_AUGMENT_BATCH64,
    "fast-augment-none-batch64-plain-decay": {**_NO_AUGMENT_BATCH64, "label_smoothing": 0.0, "norm_bias_decay": True},
    "fast-augment-none-batch64-whiten": {**_NO_AUGMENT_BATCH64, "model_kwargs": {"whiten": True}},
    "fast-augment-none-batch64-dirac": {**_NO_AUGMENT_BATCH64, "model_kwargs": {"dirac_init": True}},
    "fast-augment-none-batch64-ema": {**_NO_AUGMENT_BATCH64, "ema": 0.99},
    "fast-augment-none-batch64-whiten-dirac": {**_NO_AUGMENT_BATCH64,
                                               "model_kwargs": {"whiten": True, "dirac_init": True}},
}
THRESHOLDS = (0.70, 0.80, 0.85, 0.90)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "experiments" / "time_to_accuracy"


class TimedTrainer(Trainer):
    """The engine's trainer, keeping the CPU seconds its evaluations take so they can be left out of training's."""

    eval_cpu_seconds = 0.0

    def evaluate(self, split: str = "val", columns: bool = True) -> EvalReport:
        start = time.process_time()
        try:
            return super().evaluate(split, columns)
        finally:
            self.eval_cpu_seconds += time.process_time() - start


def run_config(name: str, images: int, epoch_images: int, threads: int) -> TrainConfig:
    """The engine config of run ``<model>/<variant>``: FractalNet without drop-path or dropout, as the search's
    CPU final stage trains its short runs, every model at seed 0."""
    model, _, variant = name.partition("/")
    if model not in MODELS or variant not in VARIANTS:
        raise ValueError(f"unknown run {name!r}; runs are <model>/<variant> with model in {sorted(MODELS)} and "
                         f"variant in {sorted(VARIANTS)}")
    timm_name, model_kwargs = MODELS[model]
    options = dict(VARIANTS[variant])
    model_kwargs = {**model_kwargs, **options.pop("model_kwargs", {})}
    return TrainConfig(model=timm_name, model_kwargs=model_kwargs, dataset="cifar10",
                       epochs=math.ceil(images / epoch_images), epoch_images=epoch_images, regularization="none",
                       eval_columns=False, progress=False, num_threads=threads, **options)


def train_run(name: str, cfg: TrainConfig, folder: Path) -> dict[str, Any]:
    """Train ``cfg`` in ``folder``, testing after each epoch; the run's points (images, CPU and wall minutes of the
    epochs trained, accuracies). The engine checkpoints every epoch and ``points.jsonl`` logs each epoch's training
    and then its test, so a killed run resumes at its last epoch (the CPU time of an epoch cut short is not counted).
    """
    trainer = TimedTrainer(dataclasses.replace(cfg, out_dir=str(folder)))
    log = folder / "points.jsonl"
    points: dict[int, dict[str, Any]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        if entry["epoch"] <= trainer.epoch:
            points.setdefault(entry["epoch"], {}).update(entry)
    if trainer.epoch and trainer.epoch not in points:
        raise RuntimeError(f"{folder} has epoch {trainer.epoch} checkpointed but not its CPU time; delete the folder "
                           f"to train {name} again")

    def record(entry: dict[str, Any]) -> None:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        points.setdefault(entry["epoch"], {}).update(entry)

    def test(epoch: int) -> None:
        report = trainer.test()
        record({"epoch": epoch, "test_acc": report.acc, "test_acc_tta": report.acc_tta})
        p = points[epoch]
        print(f"{name} epoch {epoch}: {p['images']} images, {p['train_cpu_minutes']:.1f} CPU-min, test {report.acc:.4f}"
              + ("" if report.acc_tta is None else f" (tta {report.acc_tta:.4f})"), flush=True)

    if points and "test_acc" not in points[trainer.epoch]:  # killed between an epoch and its test
        test(trainer.epoch)
    last = points.get(trainer.epoch, {"images": 0, "train_cpu_minutes": 0.0, "wall_minutes": 0.0})
    images, cpu, wall = last["images"], last["train_cpu_minutes"] * 60, last["wall_minutes"] * 60
    epochs = trainer.epochs()
    while True:
        eval_before, cpu_start, wall_start = trainer.eval_cpu_seconds, time.process_time(), time.perf_counter()
        report = next(epochs, None)
        if report is None:
            break
        cpu += time.process_time() - cpu_start - (trainer.eval_cpu_seconds - eval_before)
        wall += time.perf_counter() - wall_start
        images += len(trainer.train_loader) * cfg.batch_size
        record({"epoch": report.epoch, "images": images, "train_cpu_minutes": cpu / 60, "wall_minutes": wall / 60,
                "val_acc": report.val_acc, "val_acc_tta": report.val_acc_tta})
        test(report.epoch)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"name": name, "config": cfg.to_dict(), "points": [points[e] for e in sorted(points)],
            "threads": trainer.threads, "commit": commit, "machine": describe(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d")}


def minutes_to(points: list[dict[str, Any]], threshold: float, key: str = "test_acc") -> float | None:
    """Training CPU-minutes at the first test point at or above ``threshold`` (None: never reached)."""
    return next((p["train_cpu_minutes"] for p in points if p[key] is not None and p[key] >= threshold), None)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def report(results: list[dict[str, Any]], out: Path) -> str:
    """The Markdown tables of ``results`` and the accuracy-vs-CPU-minutes plot (written to ``out``)."""
    header = ("| run | recipe | images (epochs x images) | train CPU-min | wall min | test acc | test acc, TTA | "
              + " | ".join(f"CPU-min to {t:.0%}" for t in THRESHOLDS) + " |")
    lines = [header, "|" + "---|" * (7 + len(THRESHOLDS))]
    for r in results:
        last, cfg = r["points"][-1], r["config"]
        reached = [_cell(minutes_to(r["points"], t), "{:.1f}") for t in THRESHOLDS]
        lines.append(f"| {r['name']} | {cfg['recipe']} | {last['images']:,} ({cfg['epochs']} x "
                     f"{cfg['epoch_images']:,}) | {last['train_cpu_minutes']:.1f} | "
                     f"{last['wall_minutes']:.1f} | {last['test_acc']:.2%} | {_cell(last['test_acc_tta'], '{:.2%}')} "
                     f"| " + " | ".join(reached) + " |")
    models = sorted({r["name"].split("/")[0] for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per run: a model has more than 10
        for r in (r for r in results if r["name"].startswith(model + "/")):
            x = [0.0] + [p["train_cpu_minutes"] for p in r["points"]]
            label = f"{r['name'].split('/')[1]} ({r['config']['epochs']} x {r['config']['epoch_images']:,})"
            ax.plot(x, [0.1] + [p["test_acc"] for p in r["points"]], marker="o", ms=3, label=label)
        for t in THRESHOLDS[:2]:
            ax.axhline(t, color="grey", lw=0.5, ls=":")
        ax.set(title=model, xlabel="training CPU-minutes", ylabel="test accuracy (plain forward pass)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "accuracy_vs_cpu_minutes.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines)


def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], metavar="MODEL/VARIANT", help="runs to train")
    parser.add_argument("--images", type=int, default=90_000, help="training images per run (default: 90,000)")
    parser.add_argument("--epoch-images", type=int, default=15_000,
                        help="training images between test points (default: 15,000)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default: 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--report", action="store_true", help="print the table of finished runs and write the plot")
    parser.add_argument("--list", action="store_true", help="list the runs")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{m}/{v}: {VARIANTS[v]}" for m in MODELS for v in VARIANTS))
        return 0
    try:
        configs = {name: run_config(name, args.images, args.epoch_images, args.threads) for name in args.runs}
    except ValueError as err:
        parser.error(str(err))
    for name, cfg in configs.items():
        stem = args.out / "runs" / f"{name.replace('/', '-')}-{args.images}-{args.epoch_images}"
        path = stem.with_suffix(".json")
        if path.exists() and json.loads(path.read_text())["config"] == cfg.to_dict():
            print(f"{name}: done ({path})")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(train_run(name, cfg, stem), indent=1))
    if args.report:
        results = load_results(args.out)
        write_atomic(args.out / "results.json", json.dumps(results, indent=1))
        print(report(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
