"""``python search/run.py`` / ``python -m fractal_space.search``: the whole search from one command.

Everything the user can get wrong (dataset, models, backend, storage, space file, objective) is checked before
the first trial and reported as one line with a non-zero exit; a re-run of the same command resumes the study.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fractal_space.core.errors import first_line
from fractal_space.search.study.lifecycle import SAMPLERS, check_sampler, check_strategy
from fractal_space.search.study.settings import STRATEGIES, FinalSettings, RaySettings, SearchSettings
from fractal_space.search.study.storage import default_url
from fractal_space.search.study.watch import Progress, quiet_optuna
from fractal_space.search.trial.record import OBJECTIVES

#: Baselines of the final stage (retrained with the winners, tested). The search stage trains them to its top rung too,
#: but on CPU only ResNet-20: DenseNet-BC-100 trains at ~40 images/s on 2 cores, 40 min for the top rung's 94,500
#: images.
FINAL_BASELINES = "resnet20_cifar,resnet56_cifar,densenet_bc100_cifar"
SEARCH_BASELINES = {"cpu": "resnet20_cifar", "cuda": FINAL_BASELINES}
#: Final-stage passes over the training split: on CPU the top rung's length (~2 passes; the whole stage about an hour
#: with DenseNet-BC-100 in it), on GPU a budget whose ranking is worth trusting (the paper trains 400).
FINAL_EPOCHS = {"cpu": 2, "cuda": 100}
#: Architectures retrained beyond the top K, spread over the search's ranking (lower rungs join where the top rung has
#: too few), so that the search ranking's fidelity to test accuracy rests on n >= 10 models (3 + 7 FractalNets, plus
#: the search-stage baseline ResNet-20: n = 11 on CPU).
#: Their cost, from the CPU default's final stage of the top 3 (~46 min: DenseNet-BC-100 30 of it, ResNet-20/56 ~9,
#: ~2.5 min per one-column FractalNet): 7 more at 2.5-5 min each (multi-column ones cost more) add 18-35 min.
FINAL_SPREAD = 7
#: Planning figure for the estimate printed at the start: training images/s of one single-threaded CPU worker on the
#: default CPU space's networks, evaluation included. Measured: the default 200-trial search trained 2.19M images in
#: 57 min with 2 workers on a busy 2-core machine (~320/s per worker); an idle machine is faster. The progress bar
#: shows the real rate.
CPU_IMAGES_PER_S = 350
BACKENDS = ("optuna", "ray")


class _Help(argparse.HelpFormatter):
    """Every option shows its default: the value, unless the help text already says it (hardware-dependent ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default!r})" if isinstance(action.default, str) else \
            f"{text} (default: {action.default})"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message; exit 2 like every bad input
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="search/run.py", formatter_class=_Help,
                description="FractalNet architecture search with Optuna or Ray Tune, then the final stage: the best "
                            "architectures and the baselines retrained, tested and exported as timm models. Re-running "
                            "the same command resumes.")
    p.add_argument("--trials", type=int, default=200,
                   help="finished search trials wanted in total, earlier runs of the study included")
    p.add_argument("--study", default=None, help="study name (default: fractal-<dataset>-<objective>)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, svhn, fashion-mnist, parquet:<dir>, ...")
    p.add_argument("--data-dir", default=None, help="data root (default: $FRACTAL_SPACE_DATA or ~/.cache)")
    p.add_argument("--backend", default="optuna", metavar="{" + ",".join(BACKENDS) + "}",
                   help="optuna: --workers processes sharing the storage; ray: Ray Tune with ASHA")
    p.add_argument("--strategy", default="multitrial", metavar="{" + ",".join(STRATEGIES) + "}",
                   help="multitrial: every trial trained from scratch; oneshot: one FractalNet supernet trained on the "
                        "multi-trial search's training compute, then --trials sub-fractals scored on its weights "
                        "(Optuna backend only)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (postgresql://..., sqlite:///..., journal:<file>); "
                        "default: SQLite at runs/<study>/study.db")
    p.add_argument("--workers", type=int, default=None,
                   help="Optuna worker processes against the storage (default: one per CPU core on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per trial and, when given, per final-stage model (default: cores / workers; "
                        "the final stage, one model at a time, every core)")
    p.add_argument("--sampler", default="tpe", metavar="{" + ",".join(SAMPLERS) + "}",
                   help="; ".join(f"{name}: {what}" for name, what in SAMPLERS.items())
                   + ". Recorded in the study; a study is resumed only with its own sampler")
    p.add_argument("--objective", default="accuracy", metavar="{" + ",".join(OBJECTIVES) + "}",
                   help="accuracy alone, or accuracy against params, flops or latency (multi-objective, no pruning)")
    p.add_argument("--baselines", default=None,
                   help=f"timm models trained to the top rung in the search, comma-separated, '' for none (default: "
                        f"{SEARCH_BASELINES['cpu']} on CPU, {SEARCH_BASELINES['cuda']} on GPU)")
    p.add_argument("--final-top", type=int, default=3,
                   help="distinct FractalNet architectures retrained and tested after the search (0: no final stage at "
                        "all, neither spread architectures nor baselines)")
    p.add_argument("--final-spread", type=int, default=FINAL_SPREAD,
                   help="more top-rung architectures retrained beyond the top K, evenly spaced by rank over the rest, "
                        "so the report's search-vs-test rank correlation has enough models")
    p.add_argument("--final-epochs", type=int, default=None,
                   help=f"passes over the training split in the final stage (default: {FINAL_EPOCHS['cpu']} on CPU, "
                        f"{FINAL_EPOCHS['cuda']} on GPU)")
    p.add_argument("--final-seeds", type=int, default=1, help="seeds per final model, for mean and std")
    p.add_argument("--final-baselines", default=FINAL_BASELINES,
                   help="timm models retrained and tested beside the winners, comma-separated ('' for none)")
    p.add_argument("--space", default=None, help="YAML/JSON file overlaying the default search space")
    p.add_argument("--runs-dir", default="runs", help="where runs/<study>/ is created")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where trials train; auto picks CUDA when present; sets the default budget")
    p.add_argument("--rung-images", type=int, default=None,
                   help="training images of the lowest rung; rung k trains 3^k times as many (default: 3500 on CPU, "
                        "28000 on GPU)")
    p.add_argument("--rungs", type=int, default=None,
                   help="successive-halving rungs (default: 4 on CPU, top 94,500 images = 2 passes over CIFAR-10; 5 on "
                        "GPU, 2.27M = 50 passes)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N images of the training split (default: all of it; 0 = all)")
    p.add_argument("--val-size", type=int, default=None, help="validation images (default: 2000 CPU, 5000 GPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampler (per trial, with the trial number), initialisation and data order")
    p.add_argument("--heartbeat", type=int, default=30, help="RDB heartbeat seconds (dead workers' trials fail)")
    p.add_argument("--address", default=None, help="Ray: address of an existing cluster (default: start one)")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="Ray: CPUs per trial (default: 1 on CPU; with GPUs --threads if given, else the cores shared "
                        "among the trials the GPUs fit at once: 16 cores, 1 GPU, --gpus-per-trial 0.25 give 4)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="Ray: GPUs per trial, fractions allowed (default: 1 with --device cuda, else 0)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="dashboard port on 127.0.0.1: the Optuna dashboard's (default: the next free one from 8080); "
                        "with --backend ray, Ray's dashboard's (default: 8265), the Optuna dashboard's the next free "
                        "one from 8080")
    p.add_argument("--no-dashboard", action="store_true",
                   help="serve no dashboard (neither the live Optuna dashboard nor, with --backend ray, Ray's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _input_size(dataset: str, data_dir: str | None) -> int:
    """Check the dataset exists (one-line error if not) and return its image side, which bounds B."""
    from fractal_space.data import load_split

    images = load_split(dataset, "train", data_dir).images
    return int(min(images.shape[-2:]))


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """Validate every argument and build the settings, before any trial (ValueError with one line otherwise)."""
    import timm
    import torch

    import fractal_space  # noqa: F401  (registers the timm models)
    from fractal_space.core.hardware import resolve_device, usable_cpus
    from fractal_space.data import resolve_data_root
    from fractal_space.search.space import SearchSpace
    from fractal_space.search.study.storage import open_storage
    from fractal_space.search.trial.budget import DEFAULT_RUNGS, Budget
    from fractal_space.search.trial.rungs import Rungs

    if args.backend not in BACKENDS:
        raise ValueError(f"unknown backend {args.backend!r}; expected one of {', '.join(BACKENDS)}")
    if args.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {args.objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if args.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {args.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if args.strategy == "oneshot" and args.backend == "ray":
        raise ValueError("--strategy oneshot runs on the Optuna backend only (one supernet run, then evaluations of "
                         "seconds each: nothing for Ray to schedule); drop --backend ray")
    ray_only = [flag for flag, value in (("--address", args.address), ("--cpus-per-trial", args.cpus_per_trial),
                                         ("--gpus-per-trial", args.gpus_per_trial)) if value is not None]
    if ray_only and args.backend != "ray":
        raise ValueError(f"{ray_only[0]} is an option of the Ray backend (add --backend ray); the Optuna backend "
                         "runs --workers processes on --device")
    if args.trials < 1 or (args.workers is not None and args.workers < 1) or (args.threads or 1) < 1:
        raise ValueError("--trials, --workers and --threads must be >= 1")
    device = resolve_device(args.device).type
    baselines = _models(SEARCH_BASELINES[device] if args.baselines is None else args.baselines)
    final_baselines = _models(args.final_baselines)
    unknown = [b for b in baselines + final_baselines if not timm.is_model(b)]
    if unknown:
        raise ValueError(f"unknown baseline model {unknown[0]!r} (not in timm's registry)")
    if args.final_top < 0 or args.final_seeds < 1 or (args.final_epochs is not None and args.final_epochs < 1):
        raise ValueError(f"--final-top {args.final_top}, --final-seeds {args.final_seeds} and --final-epochs "
                         f"{args.final_epochs} must be >= 0, >= 1 and >= 1")
    if args.final_spread < 0:
        raise ValueError(f"--final-spread {args.final_spread} must be >= 0")
    if args.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; expected one of {', '.join(SAMPLERS)}")
    input_size = _input_size(args.dataset, args.data_dir)
    base = SearchSpace.default(input_size, device)
    space = base if args.space is None else SearchSpace.from_file(args.space, input_size, base.to_dict())
    study = args.study or (f"fractal-{re.sub(r'[^A-Za-z0-9_.-]+', '-', args.dataset)}-{args.objective}"
                           + ("-oneshot" if args.strategy == "oneshot" else ""))
    data_dir = str(resolve_data_root(args.data_dir))  # absolute, so Ray workers and other processes agree
    # On CPU, one single-threaded trial per core: small convolutions scale badly over threads, and on a shared
    # machine two threads per op measured 10-20x slower (and latencies 70x noisier) than one.
    cores = usable_cpus()
    workers = args.workers or (cores if device == "cpu" else 1)
    threads = args.threads or max(1, cores // workers)
    overrides = {"dataset": args.dataset, "data_dir": data_dir, "seed": args.seed, "device": device,
                 "num_threads": threads}
    for name in ("val_size", "train_subset"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if overrides.get("train_subset") == 0:
        overrides["train_subset"] = None  # 0 = every training image
    stock = DEFAULT_RUNGS[device]
    rungs = Rungs(min_images=stock.min_images if args.rung_images is None else args.rung_images,
                  levels=stock.levels if args.rungs is None else args.rungs)
    budget = Budget(rung_images=rungs, **overrides)  # validated: --rungs 0 fails here, before anything is written
    study_dir = Path(args.runs_dir) / study
    if args.storage is not None:  # fail now, not in a worker (the default SQLite file is only made by the search)
        open_storage(args.storage, study_dir, args.heartbeat)
    gpus_per_trial = (0.0 if device == "cpu" else 1.0) if args.gpus_per_trial is None else args.gpus_per_trial
    cpus_per_trial = args.cpus_per_trial or (1.0 if device == "cpu" else float(args.threads) if args.threads else
                                             gpu_trial_cpus(cores, gpus_per_trial, torch.cuda.device_count()))
    ray = RaySettings(address=args.address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    return SearchSettings(study=study, study_dir=study_dir.resolve(), storage_url=args.storage,
                          objective=args.objective, trials=args.trials, space=space,
                          budget=budget, baselines=baselines, workers=workers, seed=args.seed, sampler=args.sampler,
                          dashboard=not args.no_dashboard, dashboard_port=args.dashboard_port,
                          final=FinalSettings(top=args.final_top, spread=args.final_spread, seeds=args.final_seeds,
                                              baselines=final_baselines, threads=args.threads,
                                              epochs=args.final_epochs or FINAL_EPOCHS[device]),
                          heartbeat_s=args.heartbeat, ray=ray, strategy=args.strategy)


def gpu_trial_cpus(cores: int, gpus_per_trial: float, gpus: int) -> float:
    """Ray's default CPUs per trial on a GPU machine: its cores shared among the trials its GPUs fit at once.

    16 cores, 1 GPU, ``--gpus-per-trial 0.25``: 4 trials of 4 CPUs. Asking every core for each trial, as the default
    did, let Ray start one trial at a time whatever the GPU fraction. A CPU-only trial (0 GPUs) gets 1 CPU.
    """
    if gpus_per_trial <= 0 or gpus < 1:
        return 1.0
    at_once = max(1, math.floor(gpus / gpus_per_trial + 1e-9))
    return float(max(1, cores // at_once))


def _models(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def storage_label(settings: SearchSettings) -> str:
    """The storage URL as printed (password masked); the default SQLite path when none was given."""
    url = settings.storage_url or default_url(settings.study_dir)
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def finish(settings: SearchSettings) -> Path:
    """Write trials.parquet and the report from the storage; returns the report path."""
    from fractal_space.search.results.report import write_report
    from fractal_space.search.results.table import write_trials
    from fractal_space.search.study.lifecycle import load

    table = settings.study_dir / "trials.parquet"
    write_trials(load(settings), table)
    return write_report(settings=settings, storage=storage_label(settings))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, validate, search, report. Exit codes: 0 done, 1 failed, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_optuna()
    try:
        settings = settings_from_args(args)
        existing = _existing_study(settings)
        if existing is not None:  # before anything is written: a study is resumed with its own sampler only
            check_sampler(existing, settings.sampler)
            check_strategy(existing, settings.strategy)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    print(f"study {settings.study}: {settings.trials} trials, backend {args.backend}, sampler {settings.sampler}, "
          f"objective {settings.objective}, storage {storage_label(settings)}")
    where = (f"{settings.workers} worker process(es)" if args.backend == "optuna" else
             f"{settings.ray.cpus_per_trial:g} CPU(s) and {settings.ray.gpus_per_trial:g} GPU(s) per Ray trial")
    print(f"per-trial budget: {settings.budget}; {where}")
    if OBJECTIVES[settings.objective] is not None:
        print("note: Optuna cannot prune multi-objective studies; every trial runs its full budget")
    print(_estimate(settings))
    complete = existing is not None and _complete(settings, existing)
    if complete:
        print(f"the search of study {settings.study} is already complete ({settings.trials} finished trials and every "
              "baseline); nothing to search. Raise --trials to search further.")
    elif args.backend == "ray":
        from fractal_space.search.backends import ray_backend as backend

        try:
            dashboard, address = backend.connect(settings)  # checked before anything is written
        except ValueError as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            return 2
        if dashboard:
            print(f"Ray dashboard: {dashboard} (jobs, actors, logs, resources)", flush=True)
        if backend.TOKEN_FILE.exists():
            ray_cli = Path(sys.executable).parent / "ray"
            ray_cli = ray_cli if ray_cli.exists() else "ray"
            print(f"the Ray dashboard asks for a token: paste the output of `{ray_cli} get-auth-token`; "
                  f"`RAY_AUTH_MODE=token {ray_cli} status --address {address}` uses it too", flush=True)
    elif settings.strategy == "oneshot":
        from fractal_space.search.backends import oneshot as backend
    else:
        from fractal_space.search.backends import optuna_backend as backend
    _describe(settings)
    with _dashboard(settings, args.backend):  # one dashboard for the whole run: search, final stage and report
        if not complete:
            code = _search(settings, backend, args.no_progress)
            if code:
                return code
        report = finish(settings)  # the search's results first, so they are there whatever the final stage does
        if settings.final.top:
            code = _final(settings, args.no_progress)
            if code:
                return code
            report = finish(settings)  # again, with the final stage's table
    print(f"trials: {settings.study_dir / 'trials.parquet'}")
    print(f"report: {report}")
    if settings.dashboard:
        from fractal_space.search.study.watch import reopen_command

        print(f"the Optuna dashboard stops with the run; reopen it with: {reopen_command(storage_label(settings))}")
    return 0


def _describe(settings: SearchSettings) -> None:
    """Create the search's study (and the final stage's) now, so the dashboard has their pages from the start, each
    with its note: what a step is, where the rungs fall, the sampler and the objective."""
    from fractal_space.search.results.final import final_study
    from fractal_space.search.study.lifecycle import describe, load, study_note

    describe(load(settings, heartbeat=False), study_note(settings))
    if settings.final.top:
        final_study(settings)


@contextmanager
def _dashboard(settings: SearchSettings, backend: str) -> Iterator[None]:
    """Serve the Optuna dashboard while the block runs (unless ``--no-dashboard``), on both backends (beside Ray's
    with Ray), and say which page follows the search and which the final stage."""
    from fractal_space.search.study.lifecycle import FINAL_SUFFIX
    from fractal_space.search.study.storage import open_storage
    from fractal_space.search.study.watch import serve, study_url

    if not settings.dashboard:
        yield
        return
    storage = open_storage(settings.storage_url, settings.study_dir, heartbeat_s=None)
    port = settings.dashboard_port if backend == "optuna" else None  # with Ray, --dashboard-port is Ray's dashboard's
    with serve(storage, settings.study_dir / "dashboard.log", port) as url:
        print(f"Optuna dashboard, search: {study_url(url, storage, settings.study)} (trials, curves, parameters, "
              "importances)", flush=True)
        if settings.final.top:
            print(f"Optuna dashboard, final stage: {study_url(url, storage, settings.study + FINAL_SUFFIX)} (each "
                  "retrained model's validation curve and test accuracy)", flush=True)
        yield


def _estimate(settings: SearchSettings) -> str:
    """What the search will train, and on CPU how long that takes at the planning rate."""
    rungs = settings.budget.rungs
    trial_images, baseline_images = rungs.expected_images(settings.trials), len(settings.baselines) * rungs.images[-1]
    line = (f"search stage: about {trial_images + baseline_images:,} training images ({settings.trials} trials under "
            f"successive halving, {len(settings.baselines)} baseline(s) to the top rung)")
    if settings.strategy == "oneshot":
        from fractal_space.search.backends.oneshot import supernet_images

        line = (f"search stage: one supernet trained on about {supernet_images(settings):,} images (the compute of "
                f"{settings.trials} multi-trial trials' {trial_images:,}), {len(settings.baselines)} baseline(s) to "
                f"the top rung, then {settings.trials} sub-fractals scored on its weights")
    if settings.budget["device"] == "cpu":
        minutes = (trial_images + baseline_images) / (CPU_IMAGES_PER_S * settings.workers) / 60
        line += f", estimated {minutes:.0f} min at ~{CPU_IMAGES_PER_S} images/s per worker (planning figure)"
    final = settings.final
    if final.top:
        line += (f"; then the final stage: {final.top} + {final.spread} FractalNet(s) (top, spread over the ranking) "
                 f"and {len(final.baselines)} baseline(s), {final.epochs} epoch(s) each, {final.seeds} seed(s)")
    return line


def _final(settings: SearchSettings, no_progress: bool) -> int:
    """Run (or resume) the final stage; 130 after Ctrl-C, else 0."""
    from tqdm import tqdm

    from fractal_space.search.results.final import run_final
    from fractal_space.search.study.lifecycle import load

    bar = tqdm(desc="final stage", unit="model", disable=no_progress)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        table = run_final(settings, load(settings), progress)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted in the final stage: finished models are in {settings.study_dir / 'final'}; re-run the "
              "same command to resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"final stage: {len(table)} model(s) tested: {settings.study_dir / 'final' / 'results.parquet'}")
    return 0


def _existing_study(settings: SearchSettings) -> Any:
    """The study of ``settings`` if it exists already (an ``optuna.Study``), else None; creates nothing."""
    import optuna

    from fractal_space.search.study.storage import open_storage

    if settings.storage_url is None and not (settings.study_dir / "study.db").exists():
        return None
    try:
        return optuna.load_study(study_name=settings.study, storage=open_storage(
            settings.storage_url, settings.study_dir, heartbeat_s=None))
    except KeyError:  # no such study yet
        return None


def _complete(settings: SearchSettings, study: Any) -> bool:
    """Whether the existing ``study`` already has its ``--trials`` and every baseline."""
    from fractal_space.search.study.accounting import tally

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
