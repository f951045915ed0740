"""The study report: ``report.md`` plus PNG plots, rebuilt from ``trials.parquet`` after every run.

Plots: optimisation history, accuracy-vs-cost Pareto front (every FractalNet column is a point: each trial adds C
points to the accuracy-latency front), anytime curve of the best network, and a FractalNet-vs-baselines table.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fractal_space.search.record import OBJECTIVES  # noqa: E402
from fractal_space.search.retention import pareto  # noqa: E402

MULTI_NOTE = "Optuna cannot prune multi-objective studies: every trial of this study ran its full budget."


def _fmt(value: object, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _history(df: pd.DataFrame, base: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = df[df.state == "COMPLETE"].sort_values("number")
    pruned = df[df.state == "PRUNED"]
    ax.scatter(done.number, done.val_acc, s=12, label="completed")
    ax.scatter(pruned.number, pruned.val_acc, s=12, marker="x", color="grey", label="pruned (last epoch)")
    if len(done):
        ax.plot(done.number, done.val_acc.cummax(), color="C1", label="best so far")
    for i, row in enumerate(base.itertuples()):
        if row.val_acc is not None and not math.isnan(row.val_acc):
            ax.axhline(row.val_acc, ls="--", color=f"C{i + 2}", label=row.model)
    ax.set(xlabel="trial", ylabel="validation accuracy", title="Optimisation history")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _front(df: pd.DataFrame, base: pd.DataFrame, cost: str, path: Path) -> list[tuple[float, float, str]]:
    """Plot accuracy vs ``cost``; for latency every column of every trial is a point. Returns the front."""
    points: list[tuple[float, float, str]] = []
    for row in df[df.state == "COMPLETE"].itertuples():
        points.append((row.val_acc, getattr(row, cost), f"trial {row.number}"))
        if cost == "latency_ms" and row.column_val_acc is not None:
            for k, (acc, lat) in enumerate(zip(row.column_val_acc, row.column_latency_ms, strict=True), 1):
                points.append((acc, lat, f"trial {row.number} column {k}"))
    fig, ax = plt.subplots(figsize=(7, 4))
    front: list[tuple[float, float, str]] = []
    if points:
        ax.scatter([p[1] for p in points], [p[0] for p in points], s=8, color="lightgrey", label="trials / columns")
        front = sorted((points[i] for i in pareto([(a, c) for a, c, _ in points])), key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[0] for p in front], "o-", color="C0", ms=4, label="Pareto front")
    for i, row in enumerate(base[base.state == "COMPLETE"].itertuples()):
        ax.scatter([getattr(row, cost)], [row.val_acc], marker="*", s=90, color=f"C{i + 2}", label=row.model)
    ax.set(xscale="log", xlabel=cost, ylabel="validation accuracy", title=f"Accuracy vs {cost}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def _anytime(best: pd.Series, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    lat, acc = list(best.column_latency_ms), list(best.column_val_acc)
    ax.plot(lat, acc, "o-", label="column k alone")
    for k, (x, y) in enumerate(zip(lat, acc, strict=True), 1):
        ax.annotate(f"C{k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([best.latency_ms], [best.val_acc], marker="*", s=120, color="C1", label="full network")
    ax.set(xlabel="latency (ms / image, batch 1)", ylabel="validation accuracy",
           title=f"Anytime curve of the best FractalNet (trial {best.number})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(*, table_path: Path, out_dir: Path, study: str, objective: str, storage: str) -> Path:
    """Write ``report.md`` and its plots next to ``trials.parquet``; returns the Markdown path."""
    df = pd.read_parquet(table_path)
    frac, base = df[df.kind == "fractalnet"], df[df.kind == "baseline"]
    cost = OBJECTIVES[objective] or "latency_ms"
    lines = [f"# Search report: `{study}`", "",
             f"Objective: **{objective}** ({'accuracy' if OBJECTIVES[objective] is None else 'accuracy vs ' + cost})."
             f" Storage: `{storage}` (open it with `optuna-dashboard {storage}`).", ""]
    if OBJECTIVES[objective] is not None:
        lines += [MULTI_NOTE, ""]
    states = frac.state.value_counts().to_dict()
    lines += ["Search trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".", ""]
    if len(frac):
        _history(frac, base, out_dir / "history.png")
        lines += ["![optimisation history](history.png)", ""]
    front = _front(frac, base, cost, out_dir / "pareto.png")
    lines += [f"![accuracy vs {cost}](pareto.png)", ""]
    if front:
        lines += [f"Pareto front (accuracy vs {cost}; FractalNet columns count as networks):", "",
                  f"| point | val acc | {cost} |", "|---|---|---|"]
        lines += [f"| {name} | {acc:.4f} | {_fmt(c, '.4g')} |" for acc, c, name in front]
        lines.append("")
    done = frac[frac.state == "COMPLETE"]
    table = ["| network | val acc | params | FLOPs | latency (ms) |", "|---|---|---|---|---|"]
    if len(done):
        best = done.loc[done.val_acc.idxmax()]
        table.append(f"| best FractalNet (trial {best.number}, {int(best.num_columns)} columns) | {best.val_acc:.4f} | "
                     f"{_fmt(best.params, ',')} | {_fmt(best.flops, ',')} | {_fmt(best.latency_ms, '.3f')} |")
        if best.column_val_acc is not None and len(best.column_val_acc):
            k = max(range(len(best.column_val_acc)), key=lambda i: best.column_val_acc[i])
            table.append(f"| its best column alone (column {k + 1}) | {best.column_val_acc[k]:.4f} | - | - | "
                         f"{best.column_latency_ms[k]:.3f} |")
            _anytime(best, out_dir / "anytime.png")
            lines += ["![anytime curve](anytime.png)", ""]
        lines += [f"Best configuration (trial {best.number}): `{best.config}`", ""]
    for row in base.itertuples():
        if row.state == "COMPLETE":
            table.append(f"| {row.model} | {row.val_acc:.4f} | {_fmt(row.params, ',')} | {_fmt(row.flops, ',')} | "
                         f"{_fmt(row.latency_ms, '.3f')} |")
        else:
            table.append(f"| {row.model} | {row.state}: {row.fail_reason} | | | |")
    lines += ["## FractalNet vs baselines (same data, budget and recipe)", "", *table, ""]
    failed = frac[frac.state == "FAIL"]
    if len(failed):
        lines += ["## Failed trials", "", *[f"- trial {r.number}: {r.fail_reason}" for r in failed.itertuples()], ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
