"""One-shot against multi-trial at equal compute: two real CPU-default searches, their wall times and, once their
final stages have retrained the winners, their test accuracies; writes a report (README.md says what the runs found).

Runs ``search/run.py --trials N`` twice, once per strategy, each in its own runs folder (``--multitrial-runs``,
``--oneshot-runs``), one after the other so that each has the machine to itself, and resumes whatever is unfinished
(``--no-run`` only reads what is there). ``--strategy oneshot`` trains its supernet on the multi-trial search's compute
(``oneshot.supernet_images``), so the two search stages cost the same FLOPs by construction; this measures what that
costs in wall time, and what each search's winners reach when the same final stage retrains them from scratch.

Pauses: a run stopped with SIGSTOP (to time something else on the machine) is charged only for the time it ran, if the
stops and continues are recorded in its runs folder's ledger (``python -m experiments.ledger <runs folder> stop``,
then ``cont``; ``experiments/ledger.py``).

    python -m experiments.oneshot_compare.run             # the CPU default: --trials 200, both strategies
    python -m experiments.oneshot_compare.run --no-run    # rewrite the report from what has run
    python -m experiments.oneshot_compare.run --trials 50 \
        --search-args "--final-top 1 --final-spread 0 --final-baselines ''"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments.ledger import Ledger
from experiments.provenance import header
from fractal_space.core.files import write_atomic
from fractal_space.search.study.settings import SUPERNET_DIR

REPO = Path(__file__).resolve().parents[2]

STUDIES = {"multitrial": "fractal-cifar10-accuracy", "oneshot": "fractal-cifar10-accuracy-oneshot"}


def _wall(df: pd.DataFrame, ledger: Ledger, started: float = math.inf) -> float:
    """Wall seconds from the first trial's start (or ``started``, if earlier) to the last one's end, less the
    pauses inside that ``ledger`` recorded."""
    start, end = min(started, df.datetime_start.min().timestamp()), df.datetime_complete.max().timestamp()
    return end - start - ledger.paused_seconds(start, end)


def search_stage(runs: Path, strategy: str) -> dict[str, float | int | str]:
    """What one study's search stage trained and how long it took."""
    study = runs / STUDIES[strategy]
    df = pd.read_parquet(study / "trials.parquet")
    done = df[df.datetime_complete.notna()]
    ledger = Ledger(runs)
    baselines, trials = done[done.kind == "baseline"], done[done.kind == "fractalnet"]
    out: dict[str, float | int | str] = {
        "trials": len(trials), "wall_s": _wall(done, ledger), "baseline_s": float(baselines.duration_s.sum()),
        "best_val": float(trials.val_acc.max()), "best": str(trials.loc[trials.val_acc.idxmax(), "model"])}
    if strategy == "oneshot":  # the supernet is not a trial: its first epoch starts the stage if nothing came before
        supernet = study / SUPERNET_DIR
        epochs = [json.loads(line) for line in (supernet / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads((supernet / json.loads((supernet / "checkpoint.json").read_text())["manifest"])
                              .read_text())
        out["supernet_s"] = sum(e["epoch_seconds"] for e in epochs)
        # metrics.jsonl was last written at the supernet's last epoch: its start is that many epoch-seconds before
        out["wall_s"] = _wall(done, ledger, (supernet / "metrics.jsonl").stat().st_mtime - out["supernet_s"])
        out["supernet_images"] = len(epochs) * manifest["state"]["config"]["epoch_images"]
        out["scoring_s"] = float(trials.duration_s.sum())
    else:
        out["trial_s"] = float(trials.duration_s.sum())
    return out


def final_stage(runs: Path, strategy: str) -> pd.DataFrame | None:
    path = runs / STUDIES[strategy] / "final" / "results.parquet"
    return pd.read_parquet(path) if path.exists() else None


def run(runs: Path, strategy: str, trials: int, extra: list[str]) -> int:
    """The search, in the foreground (its output goes to ``<runs>/run.log``)."""
    runs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "search" / "run.py"), "--trials", str(trials), "--runs-dir", str(runs),
           "--no-dashboard", "--no-progress", *(["--strategy", "oneshot"] if strategy == "oneshot" else []), *extra]
    with open(runs / "run.log", "a") as log:
        return subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ).returncode


def _listed(rows: pd.DataFrame) -> str:
    return ", ".join(f"`{m}` {a:.1%}" for m, a in zip(rows.architecture, rows.test_acc, strict=True))


def _final_lines(final: pd.DataFrame | None, strategy: str) -> list[str]:
    """The final stage's answer for one strategy: its top architectures' test accuracy (and how far it got)."""
    if final is None:
        return [f"- {strategy}: no model of the final stage has finished yet."]
    top = final[final.role == "top"]
    so_far = f"{len(final)} model(s) retrained so far, {final.stage_seconds.sum() / 60:.1f} min"
    if not len(top):
        return [f"- {strategy}: {so_far}, none of the top architectures yet."]
    lines = [f"- {strategy}: top {len(top)} retrained, test accuracy best **{top.test_acc.max():.1%}**, mean "
             f"{top.test_acc.mean():.1%} ({_listed(top)}); "
             f"{so_far}."]
    spread = final[final.role == "spread"]
    if len(spread):
        lines.append(f"  Spread over the rest of the ranking ({len(spread)}): test accuracy "
                     f"{spread.test_acc.min():.1%} to {spread.test_acc.max():.1%}.")
    base = final[final.role == "baseline"]
    if len(base):
        lines.append(f"  Baselines: {_listed(base)}.")
    return lines


def _minutes(seconds: float | None) -> str:
    return "not run" if seconds is None else f"{seconds / 60:.1f} min"


def _whole_run(stage: dict, final: pd.DataFrame | None) -> tuple[float | None, float | None]:
    """The final stage's wall seconds (its models train one after another: the sum of theirs) and the whole run's."""
    if final is None:
        return None, None
    final_s = float(final.stage_seconds.sum())
    return final_s, stage["wall_s"] + final_s


def write_doc(doc: Path, command: str, trials: int, extra: str, stages: dict[str, dict],
              finals: dict[str, pd.DataFrame | None], oneshot_extra: str = "") -> None:
    m, o = stages["multitrial"], stages["oneshot"]
    (m_final, m_total), (o_final, o_total) = (_whole_run(stages[s], finals[s]) for s in ("multitrial", "oneshot"))
    given = f" {extra}" if extra else ""
    only = f" {oneshot_extra}" if oneshot_extra else ""
    scope = ("the CPU default" if trials == 200 and not extra and not oneshot_extra else
             f"`--trials {trials}{given}`{f', one-shot with `{only.strip()}`' if only else ''}, not the CPU default "
             "of 200 trials and the full final stage for both")
    text = f"""# One-shot against multi-trial search at equal compute ({scope})

{header(command)} Both are `search/run.py --trials {trials}{given}`
with the CPU defaults otherwise, one with `--strategy oneshot{only}` (its supernet on the multi-trial search's
compute), run one after the other on the same machine. Wall times leave out the periods a run was paused (the pauses
its runs folder's ledger recorded).

## Search stage

| | multi-trial | one-shot |
|---|---|---|
| FractalNet trials | {m['trials']} (trained from scratch, successive halving) | {o['trials']} (sub-fractals on one \
supernet) |
| search stage, wall time | {m['wall_s'] / 60:.1f} min | {o['wall_s'] / 60:.1f} min |
| of which the search-stage baseline | {m['baseline_s'] / 60:.1f} min | {o['baseline_s'] / 60:.1f} min |
| training | {m['trial_s'] / 60:.1f} min of trials (summed over the workers) | supernet {o['supernet_s'] / 60:.1f} min \
({o['supernet_images']:,} images) |
| scoring | (inside the trials) | {o['scoring_s'] / 60:.1f} min for {o['trials']} sub-fractals |
| best search score (validation) | {m['best_val']:.1%} (`{m['best']}`) | {o['best_val']:.1%} (`{o['best']}`) |

The search scores are not comparable with each other: a multi-trial score is a network trained alone, a one-shot
score is a sub-fractal on inherited weights. The final stage below retrains both searches' winners with one recipe.

## Final stage: the winners retrained from scratch and tested

{chr(10).join(_final_lines(finals['multitrial'], 'multi-trial') + _final_lines(finals['oneshot'], 'one-shot'))}

## The whole run

| | multi-trial | one-shot |
|---|---|---|
| search stage | {_minutes(m['wall_s'])} | {_minutes(o['wall_s'])} |
| final stage (models one after another, every core) | {_minutes(m_final)} | {_minutes(o_final)} |
| search and final stage | {_minutes(m_total)} | {_minutes(o_total)} |
"""
    write_atomic(doc, text)
    print(f"wrote {doc}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.oneshot_compare.run", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--multitrial-runs", type=Path, default=REPO / "runs" / "multitrial-default")
    p.add_argument("--oneshot-runs", type=Path, default=REPO / "runs" / "oneshot-default")
    p.add_argument("--no-run", action="store_true", help="only write the document from what has run")
    p.add_argument("--search-args", default="",
                   help="more search/run.py arguments for both searches, e.g. \"--final-top 1 --final-spread 0\"")
    p.add_argument("--oneshot-args", default="",
                   help="more search/run.py arguments for the one-shot search only (after --search-args)")
    p.add_argument("--doc", type=Path, default=REPO / "runs" / "oneshot-compare.md", help="the report to write")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    folders = {"multitrial": args.multitrial_runs, "oneshot": args.oneshot_runs}
    if not args.no_run:
        for strategy, runs in folders.items():
            code = run(runs, strategy, args.trials, shlex.split(args.search_args)
                       + (shlex.split(args.oneshot_args) if strategy == "oneshot" else []))
            if code:
                print(f"error: the {strategy} search exited with {code}; see {runs / 'run.log'}", file=sys.stderr)
                return code
    missing = [str(r / STUDIES[s] / "trials.parquet") for s, r in folders.items()
               if not (r / STUDIES[s] / "trials.parquet").exists()]
    if missing:
        print(f"error: no search results at {missing[0]} (run without --no-run first)", file=sys.stderr)
        return 2
    stages = {s: search_stage(r, s) for s, r in folders.items()}
    command = " ".join(["python -m experiments.oneshot_compare.run", *map(shlex.quote, argv)])
    write_doc(args.doc, command, args.trials, args.search_args, stages,
              {s: final_stage(r, s) for s, r in folders.items()}, args.oneshot_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
