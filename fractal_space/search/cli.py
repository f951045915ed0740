"""``python search/run.py`` / ``python -m fractal_space.search``: the whole search from one command.

Everything the user can get wrong (dataset, models, backend, storage, space file, objective) is checked before
the first trial and reported as one line with a non-zero exit; a re-run of the same command resumes the study.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fractal_space.search.console import Progress, quiet_optuna
from fractal_space.search.record import OBJECTIVES
from fractal_space.search.settings import RaySettings, SearchSettings
from fractal_space.search.storage import default_url

DEFAULT_BASELINES = "resnet20_cifar,resnet56_cifar,densenet_bc100_cifar"
BACKENDS = ("optuna", "ray")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message; exit 2 like every bad input
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="search/run.py", description="FractalNet architecture search with Optuna or Ray Tune.")
    p.add_argument("--trials", type=int, default=200, help="finished search trials wanted in total (resumes)")
    p.add_argument("--study", default=None, help="study name (default: fractal-<dataset>-<objective>)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, svhn, fashion-mnist, parquet:<dir>, ...")
    p.add_argument("--data-dir", default=None, help="data root (default: $FRACTAL_SPACE_DATA or ~/.cache)")
    p.add_argument("--backend", default="optuna", help="optuna (default) or ray")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (postgresql://..., sqlite:///..., journal:<file>); "
                        "default: SQLite at runs/<study>/study.db")
    p.add_argument("--workers", type=int, default=None,
                   help="Optuna worker processes against the storage (default: one per CPU core on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per trial (default: cores / workers)")
    p.add_argument("--objective", default="accuracy", help=f"one of {', '.join(OBJECTIVES)}")
    p.add_argument("--baselines", default=DEFAULT_BASELINES, help="comma-separated timm models; '' for none")
    p.add_argument("--space", default=None, help="YAML/JSON file overlaying the default search space")
    p.add_argument("--runs-dir", default="runs", help="where runs/<study>/ is created")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (sets the default budget)")
    p.add_argument("--epochs", type=int, default=None, help="per-trial epochs (default: 3 on CPU, 15 on GPU)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="training images per trial (default: 2000 on CPU, all on GPU; 0 = all)")
    p.add_argument("--val-size", type=int, default=None, help="validation images (default: 500 CPU, 5000 GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heartbeat", type=int, default=30, help="RDB heartbeat seconds (dead workers' trials fail)")
    p.add_argument("--address", default=None, help="Ray: address of an existing cluster (default: start one)")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="Ray: CPUs per trial (default: 1 on CPU, cores / workers with GPUs)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="Ray: GPUs per trial, fractions allowed (default: 1 with --device cuda, else 0)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="Ray: dashboard port on 127.0.0.1 (default: 8265, or the next free one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _input_size(dataset: str, data_dir: str | None) -> int:
    """Check the dataset exists (one-line error if not) and return its image side, which bounds B."""
    from fractal_space.data import load_split

    images = load_split(dataset, "train", data_dir).images
    return int(min(images.shape[-2:]))


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """Validate every argument and build the settings, before any trial (ValueError with one line otherwise)."""
    import timm

    import fractal_space  # noqa: F401  (registers the timm models)
    from fractal_space.data import resolve_data_root
    from fractal_space.hardware import resolve_device, usable_cpus
    from fractal_space.search.budget import Budget
    from fractal_space.search.storage import open_storage
    from fractal_space.space import SearchSpace

    if args.backend not in BACKENDS:
        raise ValueError(f"unknown backend {args.backend!r}; expected one of {', '.join(BACKENDS)}")
    if args.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {args.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    ray_only = [flag for flag, value in (("--address", args.address), ("--cpus-per-trial", args.cpus_per_trial),
                                         ("--gpus-per-trial", args.gpus_per_trial),
                                         ("--dashboard-port", args.dashboard_port)) if value is not None]
    if ray_only and args.backend != "ray":
        raise ValueError(f"{ray_only[0]} is an option of the Ray backend (add --backend ray); the Optuna backend "
                         "runs --workers processes on --device")
    if args.trials < 1 or (args.workers is not None and args.workers < 1) or (args.threads or 1) < 1:
        raise ValueError("--trials, --workers and --threads must be >= 1")
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    unknown = [b for b in baselines if not timm.is_model(b)]
    if unknown:
        raise ValueError(f"unknown baseline model {unknown[0]!r} (not in timm's registry)")
    device = resolve_device(args.device).type
    input_size = _input_size(args.dataset, args.data_dir)
    base = SearchSpace.default(input_size, device)
    space = base if args.space is None else SearchSpace.from_file(args.space, input_size, base.to_dict())
    study = args.study or f"fractal-{re.sub(r'[^A-Za-z0-9_.-]+', '-', args.dataset)}-{args.objective}"
    data_dir = str(resolve_data_root(args.data_dir))  # absolute, so Ray workers and other processes agree
    # On CPU, one single-threaded trial per core: small convolutions scale badly over threads, and on a shared
    # machine two threads per op measured 10-20x slower (and latencies 70x noisier) than one.
    cores = usable_cpus()
    workers = args.workers or (cores if device == "cpu" else 1)
    threads = args.threads or max(1, cores // workers)
    overrides = {"dataset": args.dataset, "data_dir": data_dir, "seed": args.seed, "device": device,
                 "num_threads": threads}
    for name in ("epochs", "val_size", "train_subset"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if overrides.get("train_subset") == 0:
        overrides["train_subset"] = None  # 0 = every training image
    budget = Budget.default(device, **overrides)  # validated: --epochs 0 fails here, before anything is written
    study_dir = Path(args.runs_dir) / study
    if args.storage is not None:  # fail now, not in a worker (the default SQLite file is only made by the search)
        open_storage(args.storage, study_dir, args.heartbeat)
    ray = RaySettings(address=args.address, dashboard_port=args.dashboard_port,
                      cpus_per_trial=args.cpus_per_trial or (1.0 if device == "cpu" else float(threads)),
                      gpus_per_trial=(0.0 if device == "cpu" else 1.0) if args.gpus_per_trial is None
                      else args.gpus_per_trial)
    return SearchSettings(study=study, study_dir=study_dir.resolve(), storage_url=args.storage,
                          objective=args.objective, trials=args.trials, space=space,
                          budget=budget, baselines=baselines, workers=workers, seed=args.seed,
                          heartbeat_s=args.heartbeat, ray=ray)


def storage_label(settings: SearchSettings) -> str:
    """The storage URL as printed (password masked); the default SQLite path when none was given."""
    url = settings.storage_url or default_url(settings.study_dir)
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def finish(settings: SearchSettings) -> Path:
    """Write trials.parquet and the report from the storage; returns the report path."""
    from fractal_space.search.lifecycle import load
    from fractal_space.search.report import write_report
    from fractal_space.search.results import write_trials

    table = settings.study_dir / "trials.parquet"
    write_trials(load(settings), table)
    return write_report(table_path=table, out_dir=settings.study_dir, study=settings.study,
                        objective=settings.objective, storage=storage_label(settings))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, search, report. Exit codes: 0 done, 1 failed, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_optuna()
    try:
        settings = settings_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"study {settings.study}: {settings.trials} trials, backend {args.backend}, objective {settings.objective},"
          f" storage {storage_label(settings)}")
    where = (f"{settings.workers} worker process(es)" if args.backend == "optuna" else
             f"{settings.ray.cpus_per_trial:g} CPU(s) and {settings.ray.gpus_per_trial:g} GPU(s) per Ray trial")
    print(f"per-trial budget: {settings.budget}; {where}")
    if OBJECTIVES[settings.objective] is not None:
        print("note: Optuna cannot prune multi-objective studies; every trial runs its full budget")
    complete = _complete(settings)
    if complete:
        print(f"study {settings.study} is already complete ({settings.trials} finished trials and every baseline); "
              "nothing to run. Raise --trials to search further.")
    elif args.backend == "ray":
        from fractal_space.search import ray_backend as backend

        try:
            dashboard, address = backend.connect(settings)  # checked before anything is written
        except ValueError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"Ray dashboard: {dashboard}", flush=True)
        if backend.TOKEN_FILE.exists():
            print(f"Ray uses token authentication: the dashboard's API wants the token in {backend.TOKEN_FILE}, and "
                  f"`ray status` needs it too: RAY_AUTH_MODE=token ray status --address {address}", flush=True)
    else:
        from fractal_space.search import optuna_backend as backend
    if not complete:
        code = _search(settings, backend, args.no_progress)
        if code:
            return code
    report = finish(settings)
    print(f"trials: {settings.study_dir / 'trials.parquet'}")
    print(f"report: {report}")
    return 0


def _complete(settings: SearchSettings) -> bool:
    """Whether the study already has its ``--trials`` and every baseline (without creating a study that is absent)."""
    import optuna

    from fractal_space.search.accounting import tally
    from fractal_space.search.storage import open_storage

    if settings.storage_url is None and not (settings.study_dir / "study.db").exists():
        return False
    try:
        study = optuna.load_study(study_name=settings.study, storage=open_storage(
            settings.storage_url, settings.study_dir, heartbeat_s=None))
    except KeyError:  # no such study yet
        return False
    baselines = {t.user_attrs.get("model") for t in study.get_trials(deepcopy=False)
                 if t.user_attrs.get("kind") == "baseline" and not t.user_attrs.get("interrupted")}
    return tally(study)[0] >= settings.trials and set(settings.baselines) <= baselines


def _search(settings: SearchSettings, backend: Any, no_progress: bool) -> int:
    """Run the backend with a progress bar; 130 after Ctrl-C (with the report of what finished), else 0."""
    progress = Progress(settings.trials, enabled=not no_progress)
    try:
        backend.run(settings, progress.update)
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: finished trials are stored in {storage_label(settings)}; re-run the same command to "
              "resume", file=sys.stderr)
        print(f"report so far: {finish(settings)}", file=sys.stderr)
        return 130
    finally:
        progress.close()
    return 0
