"""The final stage: the search's best architectures and every baseline, retrained from scratch and tested.

The search ranks architectures on validation accuracy at a proxy budget; this stage answers the user's question. The
top ``top`` distinct FractalNet architectures (B, C, widths, join) and every baseline are trained with one identical
recipe (the search budget's, by default ``fast``, at the reference point's lr, batch size and weight decay, over
``epochs`` passes of the whole training split) and evaluated once on the test split, which the search never saw:
``test_acc`` is the plain forward pass (what the exported model gives), ``test_acc_tta`` the recipe's test-time
augmentation. Each FractalNet keeps its own
searched regularisation (drop-path, global fraction, dropout, drop-path warm-up). Models run one after another with
every core, so their latencies (batch 1 and the training batch; deployed in ONNX Runtime from the exported
``model.onnx``, and eager PyTorch's beside them) are measured with nothing else running.

Each model trains through the engine into ``final/<name>/run/`` (checkpointed, resumable) and is exported to
``final/<name>/`` as a timm model with its ONNX graph (:mod:`fractal_space.deploy.export`), a multi-column FractalNet's
columns each alone to ``final/<name>/columns/column<k>/`` with their own batch-norm statistics;
``final/results.parquet`` gains its row when the export is complete, so a re-run skips finished models and a SIGKILL
loses none.

The Optuna dashboard follows the stage in the study ``<study>-final`` of the search's storage (:func:`final_study`):
one trial per model, named in its note and user attribute ``name``, its validation accuracy after each epoch reported
as an intermediate value, its test accuracy as its value.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from optuna_dashboard import save_note

from fractal_space.core.files import atomic_path
from fractal_space.core.hardware import usable_cpus
from fractal_space.deploy.export import export_trained, load_line
from fractal_space.deploy.metrics import measure_latency
from fractal_space.deploy.onnx import run_line
from fractal_space.engine import EpochReport, Trainer
from fractal_space.search.space import MODEL, architecture_name
from fractal_space.search.study.accounting import is_search_trial
from fractal_space.search.study.lifecycle import FINAL_SUFFIX, describe
from fractal_space.search.study.settings import SearchSettings
from fractal_space.search.study.storage import open_storage
from fractal_space.search.trial.record import fail_reason
from fractal_space.search.trial.rungs import Rungs

log = logging.getLogger("fractal_space.search")
RESULTS = "results.parquet"
#: TrainConfig fields that are part of a FractalNet's searched regularisation: kept from its trial like the model's
#: drop-path and dropout, while the rest of the recipe is the same for every model.
REGULARIZATION_FIELDS = ("drop_path_warmup",)


@dataclass(frozen=True)
class FinalJob:
    """One model to retrain: its folder name, timm model and kwargs, seed, and the search trial it came from."""

    name: str
    kind: str  # "fractalnet" or "baseline"
    model: str
    model_kwargs: dict[str, Any]
    regularization: dict[str, Any]  # REGULARIZATION_FIELDS the trial set
    seed: int
    trial: int | None
    search_val_acc: float | None
    role: str = "top"  # "top" (the answer), "spread" (proxy fidelity) or "baseline"
    #: Training images of the rung the search trial reached, where ``search_val_acc`` was measured.
    search_images: int | None = None


def ranked_architectures(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best completed (top-rung) search trial of every distinct architecture, best first (validation accuracy;
    ties in trial order, so the ranking of a finished study is the same on every call)."""
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if is_search_trial(t) and t.values and "config" in t.user_attrs),
                  key=lambda t: (-t.values[0], t.number))
    chosen: dict[str, optuna.trial.FrozenTrial] = {}
    for t in done:
        chosen.setdefault(architecture_name(t.user_attrs["config"]["model_kwargs"]), t)
    return list(chosen.values())


def distinct_architectures(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The best completed search trial of each of the ``top`` best distinct architectures (by validation accuracy)."""
    return ranked_architectures(study)[:top]


def search_ranking(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every distinct architecture the search trained, in the order successive halving ranks them: the top rung's (as
    :func:`ranked_architectures`), then the architectures it stopped earlier, by the last rung their best trial
    reached (higher first), then their validation accuracy there."""
    stopped = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
               if is_search_trial(t) and t.intermediate_values and "config" in t.user_attrs]
    stopped.sort(key=lambda t: (*(-v for v in _last_report(t)), t.number))
    chosen = {architecture_name(t.user_attrs["config"]["model_kwargs"]): t for t in ranked_architectures(study)}
    for t in stopped:
        chosen.setdefault(architecture_name(t.user_attrs["config"]["model_kwargs"]), t)
    return list(chosen.values())


def spread_architectures(study: optuna.Study, top: int, spread: int) -> list[optuna.trial.FrozenTrial]:
    """``spread`` more distinct architectures below the top ``top``, evenly spaced by rank from the next best to the
    worst, so the search-vs-test correlation covers the search's whole score range, not only its winners (all of the
    candidates when there are no more than ``spread``).

    The candidates are the top rung's architectures; where it holds fewer than ``spread`` of them (TPE proposes its
    favoured architecture again and again: the CPU default's 60 top-rung trials were 7 architectures), the next rungs
    down join whole, one at a time, until there are enough, so that n stays at what was asked without ranking scores
    of one budget against another's within a rung."""
    if not spread:
        return []
    rest = search_ranking(study)[top:]
    steps = [_last_report(t)[0] for t in rest]
    rest = rest[:next((i for i in range(spread, len(rest)) if steps[i] != steps[i - 1]), len(rest))]
    if spread >= len(rest):
        return rest
    if spread <= 1:
        return rest[(len(rest) - 1) // 2:][:spread]  # the median one
    return [rest[(i * (len(rest) - 1) + (spread - 1) // 2) // (spread - 1)] for i in range(spread)]


def _last_report(t: optuna.trial.FrozenTrial) -> tuple[float, float]:
    """The step of a search trial's last report and its validation accuracy there; the step is infinite for a finished
    trial, which passed every rung."""
    if t.state == TrialState.COMPLETE:
        return math.inf, t.values[0]
    step = max(t.intermediate_values)
    return step, t.intermediate_values[step]


def plan(settings: SearchSettings, study: optuna.Study) -> list[FinalJob]:
    """Every model of the final stage, one job per seed: the top FractalNets, the baselines, then the spread ones
    (the answer first; the fidelity measurement after it). None with ``top`` 0: that is no final stage."""
    final = settings.final
    if not final.top:
        return []
    jobs = []
    baselines = {t.user_attrs.get("model"): t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("kind") == "baseline"}
    top, spread = distinct_architectures(study, final.top), spread_architectures(study, final.top, final.spread)
    rungs = settings.budget.rungs
    for seed in range(final.seeds):
        suffix = f"_s{seed}" if final.seeds > 1 else ""
        jobs += [_fractal_job(t, seed, suffix, "top", rungs) for t in top]
        for model in final.baselines:
            searched = baselines.get(model)
            score, images = _search_score(searched, rungs) if searched else (None, None)
            jobs.append(FinalJob(f"{model}{suffix}", "baseline", model, {}, {}, seed,
                                 searched.number if searched else None, score, "baseline", images))
        jobs += [_fractal_job(t, seed, suffix, "spread", rungs) for t in spread]
    return jobs


def _search_score(t: optuna.trial.FrozenTrial, rungs: Rungs) -> tuple[float, int]:
    """A search trial's validation accuracy where it stopped, and the training images of the rung it reached."""
    step, score = _last_report(t)
    return score, rungs.images[-1] if step == math.inf else rungs.images[rungs.rung_of(int(step))]


def _fractal_job(t: optuna.trial.FrozenTrial, seed: int, suffix: str, role: str, rungs: Rungs) -> FinalJob:
    """A search trial's architecture retrained with its own searched regularisation."""
    config = t.user_attrs["config"]
    kwargs = config["model_kwargs"]
    kept = {k: v for k, v in config["train"].items() if k in REGULARIZATION_FIELDS}
    score, images = _search_score(t, rungs)
    return FinalJob(f"{architecture_name(kwargs)}_t{t.number:04d}{suffix}", "fractalnet", MODEL, kwargs, kept,
                    seed, t.number, score, role, images)


def read_results(final_dir: Path) -> pd.DataFrame:
    """``final/results.parquet`` (empty if the stage has not finished a model yet)."""
    path = final_dir / RESULTS
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def final_study(settings: SearchSettings) -> optuna.Study:
    """The final stage's study ``<study>-final`` in the search's storage, created if new, with its dashboard note."""
    study = optuna.create_study(study_name=settings.study + FINAL_SUFFIX, direction="maximize", load_if_exists=True,
                                storage=open_storage(settings.storage_url, settings.study_dir, heartbeat_s=None))
    study.set_metric_names(["test_acc"])
    describe(study, "\n".join([
        f"## {settings.study}{FINAL_SUFFIX}", "",
        f"The final stage of study `{settings.study}`: one trial per retrained model, its name leading its note and "
        "in its user attribute `name` (role: top, spread or baseline).", "",
        f"**A step** of a curve is one epoch, a pass over the whole training split; {settings.final.epochs} epochs "
        f"with one recipe for every model (`{settings.budget['recipe']}`, at the reference point's learning rate, "
        "batch size and weight decay). Its value is the validation accuracy (plain forward pass) on "
        f"{settings.budget['val_size']:,} held-out images.", "",
        "**The trial's value** is the model's test accuracy, on the test split the search never saw."]))
    return study


class _FinalTrial:
    """One model's trial in :func:`final_study`: its epochs reported as they are trained, its test accuracy told.

    A re-run takes over the trial an interrupted run left RUNNING, as the engine resumes the model's training from its
    checkpoint, so each model stays one trial with one curve.
    """

    def __init__(self, study: optuna.Study, job: FinalJob, epochs: int) -> None:
        self.study = study
        earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
                   if t.user_attrs.get("name") == job.name]
        self.reported = set(earlier[0].intermediate_values) if earlier else set()
        if earlier:  # COMPLETE: the run was killed between telling it and writing the model's results row
            running = earlier[0].state == TrialState.RUNNING
            self.trial = optuna.Trial(study, earlier[0]._trial_id) if running else None  # noqa: SLF001
            return
        self.trial = study.ask()
        model = architecture_name(job.model_kwargs) if job.kind == "fractalnet" else job.model
        for key, value in {"name": job.name, "role": job.role, "kind": job.kind, "model": model, "seed": job.seed,
                           "search_trial": job.trial, "search_val_acc": job.search_val_acc,
                           "search_images": job.search_images}.items():
            self.trial.set_user_attr(key, value)
        origin = ("a baseline, retrained beside the winners" if job.kind == "baseline" else
                  f"search trial {job.trial}'s architecture ({job.role}), validation accuracy "
                  f"{job.search_val_acc:.4f} at {job.search_images:,} training images in the search")
        save_note(self.trial, f"**{job.name}** (final stage, trial {self.trial.number}): {origin}; retrained {epochs} "
                              f"epoch(s), seed {job.seed}.")

    def report(self, history: list[EpochReport]) -> None:
        """Report every epoch of ``history`` not reported yet (a resumed run's earlier epochs included)."""
        for epoch in history:
            if self.trial is not None and epoch.epoch not in self.reported:
                self.trial.report(epoch.val_acc, epoch.epoch)
                self.reported.add(epoch.epoch)

    def tell(self, test_acc: float) -> None:
        if self.trial is not None:
            self.study.tell(self.trial, test_acc)

    def fail(self, exc: Exception) -> None:
        if self.trial is not None:
            self.trial.set_user_attr("fail_reason", fail_reason(exc))
            self.study.tell(self.trial, state=TrialState.FAIL)


def run_final(settings: SearchSettings, study: optuna.Study,
              progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Retrain, test and export every job not finished yet; returns the whole results table."""
    final_dir = settings.study_dir / "final"
    jobs = plan(settings, study)
    table = read_results(final_dir)
    done = set(table.name) if len(table) else set()
    train = settings.baseline_train()
    dashboard = final_study(settings)
    for i, job in enumerate(jobs):
        if progress is not None:
            progress(i, len(jobs))
        if job.name in done:
            continue
        trial = _FinalTrial(dashboard, job, settings.final.epochs)
        log.info("final stage: %s (%d/%d)", job.name, i + 1, len(jobs))
        try:
            row = {**_train_and_export(settings, job, train, final_dir / job.name, trial.report), "role": job.role}
        except Exception as exc:
            trial.fail(exc)
            raise
        trial.tell(row["test_acc"])
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
        with atomic_path(final_dir / RESULTS) as tmp:
            table.to_parquet(tmp, index=False)
    if progress is not None:
        progress(len(jobs), len(jobs))
    return table


def _train_and_export(settings: SearchSettings, job: FinalJob, train: dict[str, Any], folder: Path,
                      on_epoch: Callable[[list[EpochReport]], None]) -> dict[str, Any]:
    """Train ``job`` (``on_epoch(history)`` after each epoch, and before the first with a resumed run's), test and
    export it; returns its results row."""
    started = time.perf_counter()
    cfg = settings.budget.config(model=job.model, model_kwargs=dict(job.model_kwargs), seed=job.seed,
                                 epochs=settings.final.epochs, epoch_images=None, eval_columns=True, tta=None,
                                 num_threads=settings.final.threads or usable_cpus(), out_dir=str(folder / "run"),
                                 **train, **job.regularization)
    trainer = Trainer(cfg)
    on_epoch(trainer.history)
    for _ in trainer.epochs():
        on_epoch(trainer.history)
    test = trainer.test()
    model = trainer.model.eval()
    eager_batch = measure_latency(model, trainer.input_size, batch_size=cfg.batch_size)
    exported = export_trained(model, folder, trainer.bn_inputs(), data=trainer.data, batch_sizes=(1, cfg.batch_size))
    history = trainer.history
    return {
        "name": job.name, "kind": job.kind, "model": job.model, "architecture": (
            architecture_name(job.model_kwargs) if job.kind == "fractalnet" else job.model),
        "model_kwargs": json.dumps(job.model_kwargs), "drop_path_warmup": cfg.drop_path_warmup, "seed": job.seed,
        "trial": job.trial, "search_val_acc": job.search_val_acc, "search_images": job.search_images,
        "test_acc": test.acc, "test_loss": test.loss,
        "recipe": cfg.recipe, "tta": cfg.tta, "test_acc_tta": math.nan if test.acc_tta is None else test.acc_tta,
        "val_acc": history[-1].val_acc if history else math.nan,
        "params": trainer.num_params, "flops": trainer.flops, "latency_ms": exported.latency.ms[1],
        "latency_ms_batch": exported.latency.ms[cfg.batch_size], "latency_runtime": exported.latency.runtime,
        "eager_latency_ms": test.latency_ms, "eager_latency_ms_batch": eager_batch, "batch_size": cfg.batch_size,
        "column_test_acc": [c.acc for c in test.columns],
        "column_latency_ms": [lat.ms[1] for lat in exported.column_latency],
        "epochs": cfg.epochs, "train_images": cfg.epochs * len(trainer.train_loader) * cfg.batch_size,
        "train_images_per_s": (sum(r.train_images_per_s for r in history) / len(history)) if history else math.nan,
        "train_seconds": sum(r.epoch_seconds for r in history), "stage_seconds": time.perf_counter() - started,
        "load": load_line(folder), "onnx": run_line(folder),
        "column_load": [load_line(column) for column in exported.column_folders],
    }
