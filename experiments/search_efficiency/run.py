"""Is the search worth running? TPE against random search at the same training images; writes README.md beside it.

Three methods, each a real ``search/run.py`` study (Optuna backend, one single-threaded worker) over the default CPU
search space, at a CPU-feasible scale (successive halving x3 like the default, on 3 rungs of 300 images x3^k
instead of 4 of 3,500):

- ``tpe-sh``: TPE with successive halving (the search's default),
- ``random-sh``: random search with the same successive halving,
- ``random-full``: random search without early stopping, every trial trained to the top rung, as many trials as the
  successive-halving runs' expected training images pay for.

Every run then retrains its best architecture through the CLI's final stage (one pass over the training subset,
the reference recipe, tested once on the test split). The document plots best-so-far validation accuracy against
training images seen (median and min-max band over seeds), tabulates each method's best at a common image budget and
its retrained test accuracy, how many images TPE needed to reach random search's final median, and says which method
wins at this scale. That finding, with the scale it holds at, goes to the library's
``fractal_space/search/results/sampler_evidence.json``: a search report quotes it for a study of that scale.

    python -m experiments.search_efficiency.run            # 3 methods x 3 seeds, ~30 min on 2 idle cores (estimate)
    python -m experiments.search_efficiency.run --quick    # smoke test, a few minutes; its doc says it is no result

Runs go to ``<out-dir>/runs/<method>-s<seed>/`` (the CLI's own study folders); a finished study is a unit of
``<out-dir>/ledger.json`` (``experiments/ledger.py``), so re-running the same command resumes unfinished studies and
reuses finished ones, and only the document is rewritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.ledger import Ledger  # noqa: E402
from experiments.provenance import checkout, header  # noqa: E402
from fractal_space.core.files import write_atomic  # noqa: E402
from fractal_space.core.hardware import usable_cpus  # noqa: E402
from fractal_space.search.results.fidelity import bootstrap_interval, kendall_tau, spearman  # noqa: E402
from fractal_space.search.results.report import EFFICIENCY  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
METHODS = {"tpe-sh": "TPE + successive halving", "random-sh": "random + successive halving",
           "random-full": "random, no early stopping"}
#: Batch-norm re-estimation batches before each validation (TrainConfig.bn_batches, default 10), fixed for every trial
#: through a space file (a fixed value, not a searched dimension): the same for every method, 5x cheaper per epoch.
BN_BATCHES = 2


@dataclass(frozen=True)
class Scale:
    """The experiment's budget: successive-halving studies of ``trials`` trials on rungs of ``rung_images`` x3^k."""

    trials: int
    rung_images: int
    rungs: int
    train_subset: int
    val_size: int
    seeds: int
    final_epochs: int = 1
    #: The final stage tests on the first ``test_images`` of the test split (None: all 10,000).
    test_images: int | None = None

    @property
    def top(self) -> int:
        """Training images of a trial that reaches the top rung."""
        return self.rung_images * 3 ** (self.rungs - 1)

    @property
    def full_trials(self) -> int:
        """Trials without early stopping that the successive-halving runs' expected images pay for."""
        from fractal_space.search.trial.rungs import Rungs

        return max(1, round(Rungs(self.rung_images, self.rungs).expected_images(self.trials) / self.top))


SCALES = {
    # 27 trials on 3 rungs: 27 -> 9 -> 3 expected per rung; the top rung is 2,700 images, one pass over the subset.
    # Sized on a 2-core machine under a load of 10-16: every epoch validates
    # and, for a multi-column net, re-estimates batch norm, a fixed cost near that of training the epoch's images.
    # Measured there: at 4 rungs of 200 images a multi-column trial took ~300 s to the top rung (27 epochs) and one
    # study ~30 min, so the 9 studies would have taken ~2 h; one rung fewer cuts a top-rung trial to 9 epochs. Batch
    # norm is re-estimated on 2 batches (BN_BATCHES), and the final stage tests on 2,000 test images (its 10,000
    # with every column evaluated cost minutes per model there).
    "cpu": Scale(trials=27, rung_images=300, rungs=3, train_subset=2_700, val_size=300, seeds=3, test_images=2_000),
    "quick": Scale(trials=4, rung_images=50, rungs=2, train_subset=150, val_size=100, seeds=1, test_images=500),
}


def cli_args(method: str, seed: int, scale: Scale, runs_dir: Path, dataset: str) -> list[str]:
    """The ``search/run.py`` arguments of one run: the default space, ``bn_batches`` fixed by a file in ``runs_dir``."""
    full = method == "random-full"
    space = runs_dir / "space.yaml"
    if not space.exists():
        runs_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(space, f"bn_batches: {BN_BATCHES}  # an evaluation setting, not searched\n")
    return ["--study", f"{method}-s{seed}", "--runs-dir", str(runs_dir), "--dataset", dataset, "--device", "cpu",
            "--space", str(space),
            "--sampler", "tpe" if method == "tpe-sh" else "random", "--seed", str(seed),
            "--trials", str(scale.full_trials if full else scale.trials),
            "--rung-images", str(scale.top if full else scale.rung_images),
            "--rungs", "1" if full else str(scale.rungs),
            "--train-subset", str(scale.train_subset), "--val-size", str(scale.val_size), "--baselines", "",
            "--workers", "1", "--threads", "1", "--final-top", "1", "--final-spread", "0", "--final-baselines", "",
            "--final-epochs", str(scale.final_epochs), "--no-dashboard", "--no-progress"]


def dataset_with_test_subset(dataset: str, test_images: int | None, out_dir: Path) -> str:
    """``dataset`` itself, or a ``parquet:`` copy of it (CIFAR-10's Parquet files) whose test split is its first
    ``test_images`` images; the training split is the same file, linked."""
    if test_images is None:
        return dataset
    from fractal_space.data import parquet_with_test_subset, resolve_data_root

    return parquet_with_test_subset(resolve_data_root() / dataset, test_images, out_dir / "data")


def run_one(method: str, seed: int, scale: Scale, runs_dir: Path, dataset: str, core: int | None) -> float:
    """Run (or resume) one study and its final stage through the CLI, pinned to ``core``; returns its wall seconds."""
    study_dir = runs_dir / f"{method}-s{seed}"
    study_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with open(study_dir / "cli.log", "a") as log:
        proc = subprocess.run([sys.executable, str(REPO / "search" / "run.py"),
                               *cli_args(method, seed, scale, runs_dir, dataset)], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT,
                              preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}))
    if proc.returncode:
        raise RuntimeError(f"{method} seed {seed}: search/run.py exited {proc.returncode}; see {study_dir / 'cli.log'}")
    return time.perf_counter() - started


def curve(trials: pd.DataFrame, epoch_images: int) -> pd.DataFrame:
    """One run as the search saw it, trial by trial in finishing order: training images seen so far by the whole run
    and the best top-rung validation accuracy so far (NaN until a trial completes the top rung)."""
    done = trials[(trials.kind == "fractalnet") & trials.state.isin(["COMPLETE", "PRUNED", "FAIL"])]
    done = done.sort_values(["datetime_complete", "number"])
    images = (done.epochs_run.fillna(0).astype(int) * epoch_images).cumsum()
    best = done.val_acc.where(done.state == "COMPLETE").cummax().ffill()
    return pd.DataFrame({"images": images.to_numpy(), "best": best.to_numpy()})


def best_at(run: pd.DataFrame, images: float) -> float:
    """The run's best-so-far validation accuracy once it has seen ``images`` training images (NaN before any)."""
    seen = run[run.images <= images]
    return float(seen.best.iloc[-1]) if len(seen) else math.nan


def images_to_reach(run: pd.DataFrame, target: float) -> float:
    """Training images the run had seen when its best-so-far first reached ``target`` (NaN if it never did)."""
    hit = run[run.best >= target]
    return float(hit.images.iloc[0]) if len(hit) else math.nan


def band(runs: Sequence[pd.DataFrame], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max of best-so-far over ``runs`` at each image count of ``grid`` (NaN where a run has none)."""
    values = np.array([[best_at(r, x) for x in grid] for r in runs])
    defined = ~np.isnan(values).any(axis=0)
    out = [np.full(len(grid), np.nan) for _ in range(3)]
    for arr, f in zip(out, (np.median, np.min, np.max), strict=True):
        arr[defined] = f(values[:, defined], axis=0)
    return out[0], out[1], out[2]


def ranking(test: dict[str, list[float]]) -> tuple[str, str, float, bool]:
    """On the retrained best's mean test accuracy: the leading method, the next one, the lead in points, and whether
    the seeds separate the leader (its worst seed beats every other method's best)."""
    means = {m: float(np.mean(v)) for m, v in test.items() if v}
    order = sorted(means, key=means.get, reverse=True)
    first, second = order[0], order[1]
    return first, second, (means[first] - means[second]) * 100, min(test[first]) > max(max(test[m]) for m in order[1:])


def verdict(test: dict[str, list[float]]) -> str:
    """Which method wins on the retrained best's test accuracy, and whether the seeds' ranges separate it."""
    first, second, lead, separated = ranking(test)
    if separated:
        name = METHODS[first][0].upper() + METHODS[first][1:]  # "TPE ..." stays, "random ..." starts the sentence
        return (f"{name} wins at this scale: its retrained best tests {lead:.1f} points above the next method "
                f"({METHODS[second]}), and its worst seed beats every other method's best seed.")
    return (f"No method wins at this scale: {METHODS[first]} leads on mean test accuracy by {lead:.1f} points over "
            f"{METHODS[second]}, but the seeds' test accuracies overlap, so {len(next(iter(test.values())))} seed(s) "
            "per method do not separate them.")


@dataclass
class RunResult:
    """One finished run: its curve, its final-stage row, its wall time."""

    method: str
    seed: int
    curve: pd.DataFrame
    architecture: str
    search_val_acc: float
    test_acc: float
    wall_seconds: float


def collect(method: str, seed: int, scale: Scale, runs_dir: Path, ledger: Ledger) -> RunResult:
    """One finished run, read from its study folder and its ledger unit."""
    study_dir = runs_dir / f"{method}-s{seed}"
    epoch_images = scale.top if method == "random-full" else scale.rung_images
    final = pd.read_parquet(study_dir / "final" / "results.parquet").iloc[0]
    meta = ledger.unit(study_dir.name)
    return RunResult(method, seed, curve(pd.read_parquet(study_dir / "trials.parquet"), epoch_images),
                     str(final.architecture), float(final.search_val_acc), float(final.test_acc), meta["wall_seconds"])


def _pct(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{np.median(v):.1f} ({v.min():.1f} .. {v.max():.1f})"


def _mean_std(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def _images(x: float) -> str:
    return "not reached" if math.isnan(x) else f"{x:,.0f}"


def write_doc(results: list[RunResult], scale: Scale, name: str, command: str, wall: list[dict[str, Any]],
              doc: Path, summary: Path, scale_key: dict[str, Any]) -> str:
    """Write the document, its plot (``best-so-far.png`` beside it) and the JSON ``summary`` the search report
    quotes; returns the finding (one sentence)."""
    by_method = {m: [r for r in results if r.method == m] for m in METHODS}
    budget = min(r.curve.images.iloc[-1] for r in results)  # every run has seen at least this many images
    grid = np.unique(np.concatenate([np.linspace(0, budget, 300), *[r.curve.images for r in results]]))
    grid = grid[grid <= budget]  # every run's own trial ends, so a crossing is found where it happens
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (method, runs) in enumerate(by_method.items()):
        median, low, high = band([r.curve for r in runs], grid)
        ax.step(grid / 1000, median * 100, where="post", color=f"C{i}", ls=("-", "--", ":")[i],
                label=f"{METHODS[method]} (median of {len(runs)})")
        ax.fill_between(grid / 1000, low * 100, high * 100, step="post", color=f"C{i}", alpha=0.2, lw=0)
    ax.set(xlabel="training images seen by the whole search (thousands)", ylabel="best validation accuracy so far (%)",
           title="Best-so-far validation accuracy (median, min-max band over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = doc.parent / "best-so-far.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    plt.close(fig)

    final_best = {m: [best_at(r.curve, budget) for r in runs] for m, runs in by_method.items()}
    test = {m: [r.test_acc for r in runs] for m, runs in by_method.items()}
    finding = verdict(test)
    lines = [f"# Search efficiency: TPE against random search ({name} scale)", ""]
    if name == "quick":
        lines += ["**Smoke test (`--quick`), not a result**: a handful of trials on a few hundred images.", ""]
    lines += [f"**Finding.** {finding}", "",
              f"{header(command)} The runs ran from {', '.join(sorted({w.get('commit', '?') for w in wall}))}. "
              "Wall times share the machine with whatever else ran on it (its load average is in the wall-time "
              "section), so they are upper bounds and no speed is compared.", "",
              "## Setup", "",
              f"- Space: the default CPU search space (README: the search space), the paper's reference point as each "
              f"study's trial 0; batch norm re-estimated on {BN_BATCHES} training batches before each validation "
              "(`bn_batches`, default 10, fixed through a space file: it is a per-epoch fixed cost that dominated "
              "these small epochs). "
              f"Data: CIFAR-10, {scale.train_subset:,} training images (`--train-subset`), "
              f"{scale.val_size} validation images carved from the training split, the test split only in the final "
              "stage.",
              f"- Successive halving: {scale.trials} trials per study on {scale.rungs} rungs of {scale.rung_images:,} "
              f"x3^k images (reduction factor 3 as the default; the CPU default has 4 rungs from 3,500): top rung "
              f"{scale.top:,} images. Without early stopping: {scale.full_trials} trials of {scale.top:,} images "
              "each, the successive-halving studies' expected images.",
              f"- {scale.seeds} seed(s) per method; one single-threaded worker per study, two studies at a time, each "
              "pinned to one core. Within a seed, TPE's first 10 trials (its random start-up) are exactly random "
              "search's (both samplers seed each trial's draw by seed and trial number), so the methods differ only "
              "where TPE models the results.",
              f"- Each run's best architecture retrained by the CLI's final stage: {scale.final_epochs} pass(es) over "
              "the training subset with the reference recipe, tested once on "
              + (f"the first {scale.test_images:,} test images." if scale.test_images else "the 10,000 test images."),
              f"- Common budget for the comparison: {budget:,.0f} training images, the least any run saw (Optuna's "
              "asynchronous successive halving promotes more trials than the expected third, the more so for a "
              "sampler that finds good trials early, so the runs' totals differ: see the results table).", "",
              f"![best-so-far validation accuracy against training images]({plot.name})", "",
              "## Results", "",
              "| method | best val acc (%) at the common budget: median (min .. max) | retrained best: test acc (%) "
              "mean ± std | test acc min .. max | images the whole run saw (mean) |", "|---|---|---|---|---|"]
    for method in METHODS:
        t = np.asarray(test[method]) * 100
        seen = np.mean([r.curve.images.iloc[-1] for r in by_method[method]])
        lines.append(f"| {METHODS[method]} | {_pct(final_best[method])} | {_mean_std(test[method])} | "
                     f"{t.min():.1f} .. {t.max():.1f} | {seen:,.0f} |")
    lines += ["", "The validation column compares the methods at the common budget; the test column retrains each "
              "run's best over its whole run, which saw the images in the last column (successive halving promotes "
              "asynchronously, so a sampler that finds good trials early promotes more of them and spends more)."]
    lines += ["", "Images TPE needed to reach random search's final median best (per TPE seed, then where the TPE "
              "median curve reaches it):", "", "| target | target val acc (%) | TPE seeds | TPE median curve |",
              "|---|---|---|---|"]
    tpe_median, _, _ = band([r.curve for r in by_method["tpe-sh"]], grid)
    for method in ("random-sh", "random-full"):
        target = float(np.median(final_best[method]))
        seeds = ", ".join(_images(images_to_reach(r.curve, target)) for r in by_method["tpe-sh"])
        reached = grid[tpe_median >= target]
        lines.append(f"| {METHODS[method]} | {target * 100:.1f} | {seeds} | "
                     f"{_images(reached[0] if len(reached) else math.nan)} (of {budget:,.0f}) |")
    lines += ["", "## Every run", "", "| method | seed | best architecture | search val acc (%) | test acc (%) | "
              "images seen | wall (min) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {METHODS[r.method]} | {r.seed} | `{r.architecture}` | {r.search_val_acc * 100:.1f} | "
                     f"{r.test_acc * 100:.1f} | {r.curve.images.iloc[-1]:,} | {r.wall_seconds / 60:.1f} |")
    x, y = [r.search_val_acc for r in results], [r.test_acc for r in results]
    rho, tau = spearman(x, y), kendall_tau(x, y)
    (rl, rh), (tl, th) = bootstrap_interval(x, y, spearman), bootstrap_interval(x, y, kendall_tau)
    total = sum(w["wall_seconds"] for w in wall)
    lines += ["", f"Search score vs test accuracy over these {len(results)} retrained winners: Spearman rho "
              f"{_num(rho)} (90% bootstrap {_num(rl)} .. {_num(rh)}), Kendall tau {_num(tau)} ({_num(tl)} .. "
              f"{_num(th)}); '-' where every winner scored the same.", "",
              "## Wall time", "",
              f"Whole experiment: {total / 60:.1f} min over {len(wall)} invocation(s) that ran something ("
              + "; ".join(f"{w['wall_seconds'] / 60:.1f} min, {w['ran']} run(s), started {w['started']}, the "
                          f"machine's 15-min load average {w.get('load15', math.nan):.1f} at its end" for w in wall)
              + f"). Runs summed: {sum(r.wall_seconds for r in results) / 60:.1f} min (two at a time).", ""]
    write_atomic(doc, "\n".join(lines))
    record = {"scale": scale_key, "finding": finding,
               "summary": f"{scale.trials} trials, rungs of {scale.rung_images} x3^k images, {scale.seeds} seeds"}
    write_atomic(summary, json.dumps(record, indent=1) + "\n")
    return finding


def study_scale_of(method: str, scale: Scale, runs_dir: Path, dataset: str) -> dict[str, Any]:
    """The TPE study's scale as the search report computes it, so a study of this scale quotes the finding."""
    from fractal_space.search.cli import build_parser, settings_from_args
    from fractal_space.search.results.report import study_scale

    return study_scale(settings_from_args(build_parser().parse_args(cli_args(method, 0, scale, runs_dir, dataset))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.search_efficiency.run",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke-test scale (a few minutes)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default: 3; quick: 1)")
    p.add_argument("--dataset", default="cifar10", help="the CLI's --dataset")
    p.add_argument("--out-dir", type=Path, default=None, help="default: runs/search-efficiency/<scale>")
    p.add_argument("--doc", type=Path, default=None,
                   help="the result page, its plot beside it (default: this experiment's README.md; quick: "
                        "<out-dir>/README.md)")
    p.add_argument("--summary", type=Path, default=None,
                   help="the finding and its scale, as JSON (default: the library's "
                        "fractal_space/search/results/sampler_evidence.json, which search reports quote; quick: "
                        "<out-dir>/summary.json)")
    p.add_argument("--jobs", type=int, default=None, help="studies at a time, each pinned to one core (default: cores)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    name = "quick" if args.quick else "cpu"
    scale = SCALES[name]
    if args.seeds is not None:
        scale = Scale(**{**asdict(scale), "seeds": args.seeds})
    out_dir = (args.out_dir or Path("runs/search-efficiency") / name).resolve()
    doc = args.doc or (out_dir / "README.md" if args.quick else HERE / "README.md")
    summary = args.summary or (out_dir / "summary.json" if args.quick else EFFICIENCY)
    ledger = Ledger(out_dir)
    runs_dir = out_dir / "runs"
    dataset = dataset_with_test_subset(args.dataset, scale.test_images, out_dir)
    runs = [(m, s) for s in range(scale.seeds) for m in METHODS]
    finished = ledger.units()
    todo = [(m, s) for m, s in runs if f"{m}-s{s}" not in finished]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    jobs = max(1, min(args.jobs or usable_cpus(), len(cores), len(todo) or 1))
    print(f"{len(runs)} runs ({len(runs) - len(todo)} finished before, reused); scale {name}: {scale}", flush=True)
    started, t0 = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    free: queue.Queue[int | None] = queue.Queue()
    for core in cores[:jobs]:
        free.put(core)
    done = [0]
    lock = threading.Lock()

    def work(method: str, seed: int) -> None:
        core = free.get()  # one study per core: the final stage uses every core the process may run on
        try:
            print(f"  start {method} seed {seed} (core {core})", flush=True)
            seconds = run_one(method, seed, scale, runs_dir, dataset, core)
            ledger.complete(f"{method}-s{seed}", {"wall_seconds": seconds})
        finally:
            free.put(core)
        with lock:
            done[0] += 1
            elapsed = time.perf_counter() - t0
            print(f"  [{done[0]}/{len(todo)}] {method} seed {seed}: {seconds / 60:.1f} min; elapsed "
                  f"{elapsed / 60:.1f} min, about {elapsed / done[0] * (len(todo) - done[0]) / 60:.0f} min to go",
                  flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [f.exception() for f in [pool.submit(work, m, s) for m, s in todo] if f.exception()]
    if failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        return 1
    if todo:
        ledger.add_invocation(started=started, wall_seconds=time.perf_counter() - t0, ran=len(todo),
                              commit=checkout(), load15=os.getloadavg()[2])
    results = [collect(m, s, scale, runs_dir, ledger) for m, s in runs]
    command = " ".join(["python -m experiments.search_efficiency.run", *argv])
    # The search saw only the copy's training split, the original's file: a study on args.dataset is the same search.
    key = {**study_scale_of("tpe-sh", scale, runs_dir, dataset), "dataset": args.dataset}
    finding = write_doc(results, scale, name, command, ledger.invocations(), doc, summary, key)
    print(f"{finding}\nwrote {doc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
