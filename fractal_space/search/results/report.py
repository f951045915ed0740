"""The study report: ``report.md`` plus PNG plots, rebuilt from ``trials.parquet`` and ``final/results.parquet``.

It answers the user's question first: the final test-set table (the best FractalNets retrained, the best column of
each, every baseline, on one recipe), then how far to trust it (budgets, wall times, hardware, the rank correlation
between the search's ranking and test accuracy), then the search itself: optimisation history, accuracy-vs-cost front
(every FractalNet column is a point), the anytime curve of the best multi-column network, failures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from fractal_space.core.hardware import describe  # noqa: E402
from fractal_space.deploy.metrics import RUNTIMES  # noqa: E402
from fractal_space.engine import precision  # noqa: E402
from fractal_space.search.results.fidelity import bootstrap_interval, kendall_tau, spearman  # noqa: E402
from fractal_space.search.results.final import read_results  # noqa: E402
from fractal_space.search.study.retention import pareto  # noqa: E402
from fractal_space.search.study.settings import SearchSettings  # noqa: E402
from fractal_space.search.study.watch import reopen_command  # noqa: E402
from fractal_space.search.trial.record import OBJECTIVES  # noqa: E402

MULTI_NOTE = "Optuna cannot prune multi-objective studies: every trial of this study ran its full budget."
#: What the search-efficiency experiment measured (its scale, its finding; the page is
#: experiments/search_efficiency/README.md), shipped with the library, which reads nothing outside its package.
EFFICIENCY = Path(__file__).resolve().with_name("sampler_evidence.json")
EFFICIENCY_PAGE = "experiments/search_efficiency/README.md"
COST_LABELS = {"latency_ms": "deployed latency (ms / image, batch 1)", "params": "parameters",
               "flops": "FLOPs / image"}


def _fmt(value: object, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _short(value: Any) -> Any:
    """Floats at 4 significant digits (a config as people read it, not as 16-digit binary fractions)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_short(v) for v in value]
    return value


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _history(df: pd.DataFrame, base: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = df[df.state == "COMPLETE"].sort_values("number")
    pruned = df[df.state == "PRUNED"]
    if len(done):
        ax.scatter(done.number, done.val_acc, s=12, label="completed (top rung)")
        last = int(df.number.max())  # the staircase runs to the last trial, whatever its state
        steps = pd.concat([done.val_acc.cummax(), pd.Series([done.val_acc.max()])], ignore_index=True)
        ax.step([*done.number, last], steps, where="post", color="C1", label="best so far")
    if len(pruned):
        ax.scatter(pruned.number, pruned.val_acc, s=12, marker="x", color="grey", label="stopped at a lower rung")
    for i, row in enumerate(base.itertuples()):
        if row.val_acc is not None and not math.isnan(row.val_acc):
            ax.axhline(row.val_acc, ls="--", color=f"C{i + 2}", label=row.model)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="validation accuracy", title="Optimisation history")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, path)


def _front(df: pd.DataFrame, base: pd.DataFrame, cost: str, path: Path) -> list[tuple[float, float, str]]:
    """Plot accuracy vs ``cost``; for latency every column of every trial is a point. Returns the front."""
    trials: list[tuple[float, float, str]] = []
    columns: list[tuple[float, float, str]] = []
    for row in df[df.state == "COMPLETE"].itertuples():
        trials.append((row.val_acc, getattr(row, cost), f"trial {row.number}"))
        if cost == "latency_ms" and row.column_val_acc is not None and len(row.column_val_acc) > 1:
            for k, (acc, lat) in enumerate(zip(row.column_val_acc, row.column_latency_ms, strict=True), 1):
                columns.append((acc, lat, f"trial {row.number} column {k}"))
    fig, ax = plt.subplots(figsize=(7, 4))
    points = trials + columns
    front: list[tuple[float, float, str]] = []
    if trials:
        ax.scatter([p[1] for p in trials], [p[0] for p in trials], s=10, color="C0", alpha=0.5,
                   label="trials (full network)")
    if columns:
        ax.scatter([p[1] for p in columns], [p[0] for p in columns], s=10, marker="^", color="C4", alpha=0.5,
                   label="single columns of trials")
    if points:
        front = sorted((points[i] for i in pareto([(a, c) for a, c, _ in points])), key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[0] for p in front], "-", color="black", lw=1, label="Pareto front")
    for i, row in enumerate(base[base.state == "COMPLETE"].itertuples()):
        ax.scatter([getattr(row, cost)], [row.val_acc], marker="*", s=110, color=f"C{i + 2}",
                   label=f"baseline {row.model}")
    label = COST_LABELS.get(cost, cost)
    ax.set(xscale="log", xlabel=label, ylabel="validation accuracy", title=f"Validation accuracy vs {label}")
    ax.xaxis.set_major_locator(LogLocator(numticks=6))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, path)
    return front


def _anytime(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy vs latency of each column alone and of the full network, per multi-column network."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(rows):
        lat, acc = list(row["column_latency_ms"]), list(row["column_acc"])
        ax.plot(lat, acc, "o-", color=f"C{i}", label=f"{row['label']}: column k alone")
        for k, (x, y) in enumerate(zip(lat, acc, strict=True), 1):
            ax.annotate(f"C{k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.scatter([row["latency_ms"]], [row["acc"]], marker="*", s=120, color=f"C{i}", label=f"{row['label']}: full")
    ax.set(xlabel=COST_LABELS["latency_ms"], ylabel=rows[0]["metric"], title="Anytime prediction: columns alone")
    ax.legend(fontsize=7)
    _save(fig, path)


def _final_section(final: pd.DataFrame, out_dir: Path) -> list[str]:
    """The headline: test accuracy of every retrained model (mean ± std over seeds), best columns, load lines; the
    ``--final-spread`` models, retrained only to measure fidelity, are marked as such."""
    lines = ["## Final test results (retrained from scratch, one recipe, test split unseen by the search)", "",
             "| model | test acc | test acc, TTA | params | FLOPs / image | latency b=1 (ms) | "
             "latency b=train (ms / image) | eager PyTorch b=1 (ms) | load (timm) | run (ONNX Runtime) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    multi_column = []
    for (kind, architecture), group in final.groupby(["kind", "architecture"], sort=False):
        acc = group.test_acc
        spread = f" ± {acc.std(ddof=1):.2%}" if len(group) > 1 else ""
        first = group.iloc[0]
        seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
        label = f"{architecture}{seeds}" if kind == "fractalnet" else f"baseline {architecture}{seeds}"
        if first.get("role") == "spread":  # retrained to measure the proxy's fidelity, not one of the answers
            label += " (spread: fidelity sample)"
        tta = group.get("test_acc_tta", pd.Series(dtype=float)).dropna()
        tta_cell = f"{tta.mean():.2%} ({first.tta})" if len(tta) else "-"
        lines.append(f"| {label} | {acc.mean():.2%}{spread} | {tta_cell} | {first.params:,} | {first.flops:,} | "
                     f"{_fmt(first.latency_ms, '.3f')} | {_fmt(first.latency_ms_batch, '.3f')} | "
                     f"{_fmt(first.get('eager_latency_ms'), '.3f')} | `{first.load}` | {_code(first.get('onnx'))} |")
        columns = [list(c) for c in group.column_test_acc]
        if kind == "fractalnet" and columns and len(columns[0]) > 1:
            mean = [sum(c[k] for c in columns) / len(columns) for k in range(len(columns[0]))]
            k = max(range(len(mean)), key=mean.__getitem__)
            load = f"`{first.column_load[k]}`" if len(first.column_load) > k else ""
            lines.append(f"| ↳ its best column alone (column {k + 1} of {len(mean)}) | {mean[k]:.2%} | | | | "
                         f"{first.column_latency_ms[k]:.3f} | | | {load} | |")
            multi_column.append({"label": architecture, "column_latency_ms": first.column_latency_ms,
                                 "column_acc": mean, "latency_ms": first.latency_ms, "acc": acc.mean(),
                                 "metric": "test accuracy"})
    lines += ["", "Test accuracy is the plain forward pass, what the exported model gives; the TTA column averages "
              "the recipe's test-time views (flip: each image and its mirror image).", "",
              f"Latencies: {_runtimes(final)}, one model at a time with every core; eager PyTorch's batch-1 "
              "latency, mostly Python's per-module overhead on CPU, for comparison. `x` in the ONNX Runtime line is a "
              "float32 (N, C, H, W) batch normalised as the folder's `config.json` says.", ""]
    if multi_column:
        _anytime(multi_column, out_dir / "anytime.png")
        lines += ["![anytime prediction of the retrained FractalNets](anytime.png)", ""]
    return lines


def _eager_front_note(df: pd.DataFrame) -> str:
    """Whether ranking the full networks by eager PyTorch latency instead of the deployed one changes their front."""
    done = df[df.state == "COMPLETE"]
    if "eager_latency_ms" not in done or done.eager_latency_ms.isna().any() or done.latency_ms.isna().any():
        return "The front by eager PyTorch latency cannot be compared: some trials have no eager or deployed latency."
    fronts = [{int(done.number.iloc[i]) for i in pareto(list(zip(done.val_acc, done[col], strict=True)))}
              for col in ("latency_ms", "eager_latency_ms")]
    if fronts[0] == fronts[1]:
        return (f"Ranked by eager PyTorch latency instead, the full networks' Pareto front would be the same "
                f"{len(fronts[0])} trial(s).")
    def named(numbers: set[int]) -> str:
        return "trial(s) " + ", ".join(str(n) for n in sorted(numbers)) if numbers else "no trial"

    return (f"Ranked by eager PyTorch latency instead, the full networks' Pareto front would change: "
            f"{named(fronts[0] - fronts[1])} would leave it, {named(fronts[1] - fronts[0])} would join it "
            f"({len(fronts[0])} vs {len(fronts[1])} trials on it).")


def _code(value: object) -> str:
    return f"`{value}`" if isinstance(value, str) and value else "-"


def _runtimes(table: pd.DataFrame) -> str:
    """What ran the models whose latencies ``table`` holds (its ``latency_runtime`` column), as the report says it."""
    names = [RUNTIMES.get(r, r) for r in table.get("latency_runtime", pd.Series(dtype=object)).dropna().unique()]
    return "deployed on " + " and ".join(names) if names else "eager PyTorch (measured before deployment latency)"


def study_scale(settings: SearchSettings) -> dict[str, Any]:
    """What makes two studies the same experiment for the sampler comparison: data, recipe, augmentation, space,
    budget, trials, objective
    (the search-efficiency experiment stores its own in ``EFFICIENCY``; a study that matches may quote it)."""
    rungs = settings.budget.rungs
    return json.loads(json.dumps({
        "dataset": settings.budget["dataset"], "recipe": settings.budget["recipe"],
        "augment": settings.budget["augment"], "objective": settings.objective, "trials": settings.trials,
        "rungs": [rungs.min_images, rungs.levels, rungs.factor], "val_size": settings.budget["val_size"],
        "train_subset": settings.budget["train_subset"], "space": settings.space.to_dict()}))


def _sampler_evidence(settings: SearchSettings) -> str:
    """The sampler's measured advantage over random search, if the search-efficiency experiment measured this
    scale."""
    measured = json.loads(EFFICIENCY.read_text()) if EFFICIENCY.exists() else None
    if measured is not None and measured["scale"] == study_scale(settings):
        return f"measured at this study's scale in {EFFICIENCY_PAGE}: {measured['finding']}"
    where = (f"{EFFICIENCY_PAGE} measured it on another scale: {measured['summary']}" if measured else
             f"{EFFICIENCY_PAGE} has not been written here")
    return f"not measured at this study's scale ({where})"


def _fidelity(final: pd.DataFrame, asked_spread: int, top_images: int) -> str:
    """Spearman and Kendall tau between the search's ranking and test accuracy (mean over seeds), with n and 90%
    intervals. The search ranks a model by the rung it reached, then its validation accuracy there: a spread model that
    successive halving stopped early ranks below every top-rung one, whatever its score at the smaller budget. Rows
    without ``search_images`` (written before it was recorded) are top-rung ones, ``top_images``."""
    scored = final.dropna(subset=["search_val_acc"])
    images = scored.get("search_images", pd.Series(math.nan, index=scored.index, dtype=float))
    scored = scored.assign(reached=images.fillna(top_images))
    ranked = scored.groupby(["architecture", "trial"], sort=False).agg(
        reached=("reached", "first"), search=("search_val_acc", "first"), test=("test_acc", "mean"))
    keys = list(zip(ranked.reached, ranked.search, strict=True))
    order = {key: rank for rank, key in enumerate(sorted(set(keys)))}
    x, y = [float(order[key]) for key in keys], list(ranked.test)
    stats = []
    for name, statistic in (("Spearman rho", spearman), ("Kendall tau", kendall_tau)):
        low, high = bootstrap_interval(x, y, statistic)
        stats.append(f"{name} {_fmt(statistic(x, y), '.2f')} (90% bootstrap interval {_fmt(low, '.2f')} .. "
                     f"{_fmt(high, '.2f')})")
    spread = int((final.get("role", pd.Series(dtype=object)) == "spread").sum())
    below = scored[scored.reached < top_images]
    lower = int((below.get("role", pd.Series(dtype=object)) == "spread").sum())
    stopped = f", {lower} of which successive halving stopped below the top rung" if lower else ""
    note = ""
    if len(ranked) < 10:
        why = ("every other distinct architecture the search trained is among them, so a larger --final-spread adds "
               "none (more trials, or --sampler random, give more)" if spread < asked_spread else
               "--final-spread adds architectures across the ranking")
        note = f" With fewer than 10 models this says little; {why}."
    return (f"- Proxy fidelity: between the search's ranking (the rung a model reached, then its validation accuracy "
            f"there) and the final test accuracy of the retrained models with a search score (n = {len(ranked)}, "
            f"{spread} of them spread over the ranking below the top{stopped}): {'; '.join(stats)}.{note}")


def _trust_section(df: pd.DataFrame, final: pd.DataFrame, settings: SearchSettings) -> list[str]:
    """Budgets, wall times, hardware and the search score's fidelity to the final test accuracy."""
    budget = settings.budget
    started, ended = df.datetime_start.min(), df.datetime_complete.max()
    search_wall = (ended - started).total_seconds() if pd.notna(started) and pd.notna(ended) else math.nan
    how = (f"rungs of {budget.rungs} (successive halving; one epoch = {budget.rungs.min_images:,} images from a new "
           "shuffle of the training split)")
    if settings.strategy == "oneshot":
        metrics = settings.supernet_dir / "metrics.jsonl"
        logged = metrics.read_text().splitlines() if metrics.exists() else []
        epochs = [json.loads(line) for line in logged if line.strip()]
        how = (f"one-shot: each a sub-fractal scored on the weights of one supernet trained once on "
               f"{len(epochs) * budget.rungs.min_images:,} images ({sum(e['epoch_seconds'] for e in epochs) / 60:.1f} "
               "min, `supernet/`), batch norm re-estimated through the sub-fractal; a score of inherited weights, not "
               "of training alone (how far it ranks like training alone: experiments/oneshot_fidelity/README.md)")
    lines = ["## Budgets, wall times and how far to trust the ranking", "",
             f"- Hardware: {describe(budget['device'])}; training precision "
             f"{precision(budget['amp'], budget['device'])}.",
             f"- Search: {settings.trials} trials, {how}, recipe `{budget['recipe']}`, validation (plain forward pass) "
             f"on {budget['val_size']} held-out training "
             f"images; {len(settings.baselines)} baseline(s) to the top rung. Wall time from the first trial to the "
             f"last: {search_wall / 60:.1f} min (trial time summed: {df.duration_s.sum() / 60:.1f} min)."]
    if len(final):
        train = settings.baseline_train()
        tta = final["tta"].iloc[0] if "tta" in final else "none"  # results written before the column existed
        lines.append(f"- Final stage: {settings.final.epochs} epoch(s) over the whole training split per model, recipe "
                     f"`{budget['recipe']}` (schedule {budget['schedule']}, test-time augmentation {tta}) "
                     f"at lr {train['lr']:g}, batch {train['batch_size']}, weight decay {train['weight_decay']:g}, "
                     f"{settings.final.seeds} seed(s); FractalNets keep their searched regularisation. "
                     f"Training time summed: {final.train_seconds.sum() / 60:.1f} min.")
        lines.append(_fidelity(final, settings.final.spread, budget.rungs.images[-1]))
    if settings.sampler == "random":
        lines.append("- Sampler: random. It is the control that model-based samplers are measured against.")
    else:
        lines.append(f"- Sampler: {settings.sampler}. Its advantage over random search for this space: "
                     f"{_sampler_evidence(settings)}.")
    return [*lines, ""]


def write_report(*, settings: SearchSettings, storage: str) -> Path:
    """Write ``report.md`` and its plots next to ``trials.parquet``; returns the Markdown path."""
    out_dir = settings.study_dir
    (out_dir / "anytime.png").unlink(missing_ok=True)  # drawn again below only where it means something
    df = pd.read_parquet(out_dir / "trials.parquet")
    final = read_results(out_dir / "final")
    frac, base = df[df.kind == "fractalnet"], df[df.kind == "baseline"]
    objective = settings.objective
    cost = OBJECTIVES[objective] or "latency_ms"
    lines = [f"# Search report: `{settings.study}`", "",
             f"Objective: **{objective}** ({'accuracy' if OBJECTIVES[objective] is None else 'accuracy vs ' + cost})."
             f" Storage: `{storage}` (open it with `{reopen_command(storage)}`).", ""]
    if len(final):
        lines += _final_section(final, out_dir)
    lines += _trust_section(df, final, settings)
    lines += ["## The search", ""]
    if OBJECTIVES[objective] is not None:
        lines += [MULTI_NOTE, ""]
    states = frac.state.value_counts().to_dict()
    lines += ["Search trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".", ""]
    if len(frac):
        _history(frac, base, out_dir / "history.png")
        lines += ["![optimisation history](history.png)", ""]
    front = _front(frac, base, cost, out_dir / "pareto.png")
    lines += [f"![accuracy vs {COST_LABELS.get(cost, cost)}](pareto.png)", ""]
    if front:
        lines += [f"Pareto front (validation accuracy vs {COST_LABELS.get(cost, cost)}; single columns count as "
                  "networks):", "", f"| point | val acc | {COST_LABELS.get(cost, cost)} |", "|---|---|---|"]
        lines += [f"| {name} | {acc:.2%} | {_fmt(c, '.4g')} |" for acc, c, name in front]
        lines.append("")
    if cost == "latency_ms":
        lines += [_eager_front_note(frac), ""]
    done = frac[frac.state == "COMPLETE"]
    table = ["| network | val acc | params | FLOPs | latency b=1 (ms) | eager PyTorch b=1 (ms) |",
             "|---|---|---|---|---|---|"]
    if len(done):
        best = done.loc[done.val_acc.idxmax()]
        table.append(f"| best FractalNet: {best.model} (trial {best.number}) | {best.val_acc:.2%} | "
                     f"{_fmt(best.params, ',')} | {_fmt(best.flops, ',')} | {_fmt(best.latency_ms, '.3f')} | "
                     f"{_fmt(best.get('eager_latency_ms'), '.3f')} |")
        if best.column_val_acc is not None and len(best.column_val_acc) > 1:
            k = max(range(len(best.column_val_acc)), key=lambda i: best.column_val_acc[i])
            table.append(f"| its best column alone (column {k + 1}) | {best.column_val_acc[k]:.2%} | - | - | "
                         f"{best.column_latency_ms[k]:.3f} | |")
            if not len(final):
                _anytime([{"label": f"trial {best.number}", "column_latency_ms": best.column_latency_ms,
                           "column_acc": best.column_val_acc, "latency_ms": best.latency_ms, "acc": best.val_acc,
                           "metric": "validation accuracy"}], out_dir / "anytime.png")
                lines += ["![anytime curve](anytime.png)", ""]
        config = json.dumps(_short(json.loads(best.config))) if best.config else "-"
        lines += [f"Best configuration (trial {best.number}): `{config}`", ""]
    for row in base.itertuples():
        if row.state == "COMPLETE":
            table.append(f"| {row.model} | {row.val_acc:.2%} | {_fmt(row.params, ',')} | {_fmt(row.flops, ',')} | "
                         f"{_fmt(row.latency_ms, '.3f')} | {_fmt(getattr(row, 'eager_latency_ms', None), '.3f')} |")
        else:
            table.append(f"| {row.model} | {row.state}: {row.fail_reason} | | | | |")
    lines += ["### FractalNet vs baselines in the search (validation, same data, budget and recipe)", "", *table,
              "", f"Latencies: {_runtimes(df)}, measured once a trial has spent its budget; eager PyTorch's beside "
              "them.", ""]
    failed = frac[frac.state == "FAIL"]
    if len(failed):
        lines += ["### Failed trials", "", *[f"- trial {r.number}: {r.fail_reason}" for r in failed.itertuples()], ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
