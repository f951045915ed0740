"""One-shot search (``--strategy oneshot``): one FractalNet supernet trained once, then its sub-fractals searched.

FractalNet trained with drop-path already trains the sub-networks it can drop to, which is weight-sharing one-shot
architecture search (Bender et al. 2018; uniform single-path sampling as in SPOS, Guo et al. 2019). Here:

1. **Supernet.** The space's reference recipe at its largest B and C (widths from the reference base and growth),
   without block dropout (``SUPERNET_ENDS``), is trained as one engine run in ``SearchSettings.supernet_dir``
   (checkpointed every epoch, so a killed run resumes) with ``supernet_sampling='uniform'``: each batch draws per
   block a uniform non-empty column subset, and the recipe's drop-path (and warm-up) acts inside it. Its budget is
   the training compute the multi-trial search of the same ``--trials`` would spend (:func:`supernet_images`: equal
   FLOPs, not equal images, since the supernet is larger than the average trial), in epochs of the lowest rung's
   size.
2. **Sub-fractal search.** The study's sampler picks per block a column subset (``paths_<i>``, 2^C - 1 choices
   each: 15^5 sub-fractals for C=4, B=5); each trial inherits the supernet's weights
   (:meth:`FractalNet.extract_paths`), re-estimates batch norm on ``bn_batches`` training batches through the
   sub-fractal alone and is scored on the validation split with the study's objective. Trials are ordinary search
   trials of the study (same record, ``trials.parquet``, report), so the final stage retrains the top K distinct
   sub-fractals from scratch beside the baselines.

Only the Optuna backend runs it (the CLI refuses ``--backend ray``): the supernet is one run, and evaluations take
seconds each, so there is nothing for a Ray cluster to schedule.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from itertools import combinations
from typing import Any

import optuna
import timm
from optuna_dashboard import save_note

from fractal_space.core.hardware import device_label, peak_memory_mb, usable_cpus
from fractal_space.deploy.metrics import count_flops, count_params, deployment_latency, measure_latency
from fractal_space.engine import TrainConfig, Trainer
from fractal_space.search.space import MODEL, architecture_name
from fractal_space.search.study import lifecycle
from fractal_space.search.study.accounting import reap_stale, tally
from fractal_space.search.study.runner import recording_failure, trial_note
from fractal_space.search.study.settings import SearchSettings
from fractal_space.search.trial import stops
from fractal_space.search.trial.record import TrialRecord, tag
from fractal_space.search.trial.stops import fault_point


def subset_labels(num_columns: int) -> list[str]:
    """Every non-empty column subset as a label: '1', '2', ..., '12', ..., '1234' ('.' between columns if C >= 10)."""
    sep = "" if num_columns < 10 else "."
    return [sep.join(str(c) for c in cols) for k in range(1, num_columns + 1)
            for cols in combinations(range(1, num_columns + 1), k)]


def parse_label(label: str, num_columns: int) -> list[int]:
    """The columns of a :func:`subset_labels` label."""
    return [int(c) for c in (label.split(".") if num_columns >= 10 else label)]


def _extreme(spec: Any, pick: Callable[..., Any]) -> Any:
    """The largest (``pick=max``) or smallest value a space spec (``{low, high}`` or ``{choices}``) allows."""
    return pick(spec["choices"]) if "choices" in spec else pick(spec["low"], spec["high"])


#: Searched dimensions the supernet takes at an end of their range instead of the reference point: the largest B and
#: C (every sub-fractal of the space inside it), and the least block dropout. The supernet's regulariser is its path
#: sampling and drop-path; the paper's dropout ramp on top kept the CPU default's one-shot winner near chance when
#: retrained for the final stage's 2 epochs (13.8% test; 30.7% without it, experiments/oneshot_compare/README.md),
#: and the fidelity of experiments/oneshot_fidelity/README.md was measured without it.
SUPERNET_ENDS: dict[str, Callable[..., Any]] = {"num_blocks": max, "num_columns": max, "dropout_scale": min}


def supernet_config(settings: SearchSettings) -> dict[str, Any]:
    """The supernet's ``{"model_kwargs", "train"}``: the reference point with ``SUPERNET_ENDS`` applied, as JSON
    values (lists, not tuples), like the config a resumed run reads back from its checkpoint."""
    specs = settings.space.to_dict()
    point = {**settings.space.reference_point(),
             **{name: _extreme(specs[name], pick) for name, pick in SUPERNET_ENDS.items()
                if isinstance(specs.get(name), dict)}}
    config = settings.space.config(point).to_dict()
    if config["model_kwargs"]["num_columns"] < 2:
        raise ValueError("--strategy oneshot needs a space with num_columns >= 2 (one column has no sub-fractals)")
    return config


#: Architectures drawn from the space's prior to estimate the mean cost per image of a multi-trial trial.
PRIOR_DRAWS = 64
#: Per process and space (its repr): the mean trial's FLOPs per image over the supernet's, which takes seconds to
#: count and is asked for by the CLI's estimate and by the supernet's run.
_COST_RATIO: dict[str, float] = {}


def _flops(model_kwargs: dict[str, Any], input_size: int) -> int:
    """Forward FLOPs per image of a FractalNet."""
    return count_flops(timm.create_model(MODEL, **model_kwargs), (3, input_size, input_size))


def _cost_ratio(settings: SearchSettings) -> float:
    """Mean forward FLOPs per image of a multi-trial trial over the supernet's under uniform sub-fractal sampling."""
    key = repr(settings.space)
    if key not in _COST_RATIO:
        size = settings.space.input_size
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = sum(_flops(settings.space.sample(draws.ask()).model_kwargs, size)
                    for _ in range(PRIOR_DRAWS)) / PRIOR_DRAWS
        kwargs = supernet_config(settings)["model_kwargs"]
        c, labels = kwargs["num_columns"], subset_labels(kwargs["num_columns"])
        supernet = sum(_flops({**kwargs, "paths": [parse_label(label, c)] * kwargs["num_blocks"]}, size)
                       for label in labels) / len(labels)
        _COST_RATIO[key] = trial / supernet
    return _COST_RATIO[key]


def supernet_images(settings: SearchSettings) -> int:
    """The supernet's training images, so that one-shot costs what the multi-trial search of ``--trials`` would.

    Multi-trial compute is its images under successive halving (``Rungs.expected_images``) times the mean forward
    FLOPs per image of ``PRIOR_DRAWS`` architectures drawn from the space (seeded random draws: the same figure on
    every resume). The supernet's cost per image is its mean over uniform sub-fractals: per block each column subset
    equally likely, and since blocks are independent, the mean over the 2^C - 1 sub-fractals that keep one subset in
    every block is exact. Drop-path, which lowers the training cost of both sides, is left out of both.
    """
    return int(settings.budget.rungs.expected_images(settings.trials) * _cost_ratio(settings))


def supernet_train_config(settings: SearchSettings, progress: bool = False) -> TrainConfig:
    """The supernet's engine run: the multi-trial search's compute, every core, checkpointed in the study."""
    config = supernet_config(settings)
    epochs = max(1, math.ceil(supernet_images(settings) / settings.budget.rungs.min_images))
    return settings.budget.config(model=MODEL, model_kwargs=dict(config["model_kwargs"]), epochs=epochs,
                                  supernet_sampling="uniform", num_threads=usable_cpus(), progress=progress,
                                  out_dir=str(settings.supernet_dir), **config["train"])


def train_supernet(settings: SearchSettings, progress: bool = False) -> Trainer:
    """Train (or resume, or just load) the supernet; returns its trainer with the trained model."""
    trainer = Trainer(supernet_train_config(settings, progress))
    for report in trainer.epochs():
        fault_point("epoch-recorded")
        stops.check()
        print(f"supernet epoch {report.epoch}/{trainer.cfg.epochs}: val_acc {report.val_acc:.3f} (all paths)",
              flush=True)
    return trainer


class SubFractalObjective:
    """Scores one sub-fractal of a trained supernet: inherit weights, re-estimate batch norm, validate."""

    def __init__(self, settings: SearchSettings, trainer: Trainer):
        self.settings = settings
        self.trainer = trainer
        self.supernet = trainer.model
        config = supernet_config(settings)
        self.kwargs, self.train = config["model_kwargs"], config["train"]
        self.labels = subset_labels(self.kwargs["num_columns"])
        self.bn_batches = trainer.bn_inputs()

    def sample(self, trial: optuna.Trial) -> list[list[int]]:
        """Per block a column subset: the space the sampler searches."""
        c = self.kwargs["num_columns"]
        return [parse_label(trial.suggest_categorical(f"paths_{i}", self.labels), c)
                for i in range(self.kwargs["num_blocks"])]

    def __call__(self, trial: optuna.Trial) -> list[float]:
        started, started_at = time.perf_counter(), time.time()
        fault_point("trial-running")
        tag(trial, "fractalnet", MODEL)
        fault_point("trial-tagged")
        trial.set_user_attr("strategy", "oneshot")
        with recording_failure(trial):
            paths = self.sample(trial)
            config = {"model_kwargs": {**self.kwargs, "paths": paths}, "train": self.train}
            trial.set_user_attr("config", json.loads(json.dumps(config)))
            trial.set_user_attr("model", architecture_name(config["model_kwargs"]))
            save_note(trial, trial_note(trial.number, trial.user_attrs))
            sub = self.supernet.extract_paths(paths, bn_batches=self.bn_batches).eval()
            loss, acc = self.trainer.accuracy(sub, "val")
            size, device = self.trainer.input_size, self.trainer.device
            deploy_start = time.perf_counter()
            threads = self.settings.budget["num_threads"]  # a trial's, not the supernet's: latencies compare
            deployed = deployment_latency(sub, size, threads=threads)  # what a multi-trial trial records
            deploy_seconds = time.perf_counter() - deploy_start
            record = TrialRecord(
                epoch=1, epochs=1, val_acc=float(acc), val_loss=float(loss), train_loss=math.nan, train_acc=math.nan,
                latency_ms=deployed.ms[1], latency_runtime=deployed.runtime,
                eager_latency_ms=measure_latency(sub, size, threads=threads), deploy_seconds=deploy_seconds,
                train_images_per_s=math.nan, epoch_seconds=math.nan,
                wall_seconds=time.perf_counter() - started, params=count_params(sub), flops=count_flops(sub, size),
                num_columns=self.kwargs["num_columns"], device=device_label(device), started_at=started_at,
                peak_memory_mb=peak_memory_mb(device), latency_threads=deployed.threads)
            trial.set_user_attr("record", record.to_dict())
            return record.objective_values(self.settings.objective)


def run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    """The whole one-shot search (resumable): baselines, supernet, then sub-fractal trials up to ``--trials``."""
    previous = stops.install()
    try:
        study = lifecycle.load(settings)
        lifecycle.check_strategy(study, "oneshot")
        reap_stale(study, settings.unclaimed_after_s)
        lifecycle.run_baselines(settings, study)
        progress(tally(study)[0])
        objective = SubFractalObjective(settings, train_supernet(settings))
        while tally(study)[0] < settings.trials:
            stops.check()
            reap_stale(study, settings.unclaimed_after_s)  # a trial killed before it was tagged ages into reaping
            try:
                study.optimize(objective, n_trials=1, catch=())
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - the trial is FAIL with its reason; go on
                print(f"sub-fractal trial failed: {exc}", flush=True)
            fault_point("trial-finished")
            progress(tally(study)[0])
        return study
    finally:
        stops.restore(previous)
