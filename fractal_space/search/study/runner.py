"""The trial runner: one Optuna trial of a study (search or baseline): sample, train, record, prune.

Used by the Optuna backend's workers and, for baselines, by both backends (baselines always run through Optuna's
``study.optimize`` before the search starts).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note

from fractal_space.search.space import MODEL, SearchSpace, architecture_name
from fractal_space.search.study.accounting import counts_as_finished, is_search_trial
from fractal_space.search.study.retention import trial_dir
from fractal_space.search.trial import stops
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import TrialRecord, fail_reason, tag
from fractal_space.search.trial.stops import fault_point
from fractal_space.search.trial.training import Pruned, run_trial


class SurplusTrial(Exception):
    """A worker asked for a trial after others had already taken the last of the ``--trials`` quota."""


@dataclass
class TrialRunner:
    """Trains one Optuna trial (search or baseline) of a study and records it."""

    space: SearchSpace
    budget: Budget
    objective: str
    study_dir: Path
    target: int

    def search(self, trial: optuna.Trial) -> list[float]:
        """The objective of a search trial: sample the space, train, prune on per-epoch accuracy."""
        fault_point("trial-running")
        tag(trial, "fractalnet", MODEL)
        fault_point("trial-tagged")
        trials = trial.study.get_trials(deepcopy=False)
        ahead = [t for t in trials if t.number < trial.number and (
            counts_as_finished(t) or (t.state == TrialState.RUNNING and is_search_trial(t)))]
        if len(ahead) >= self.target:
            _surplus(trial, f"{self.target} trials already finished or running")
        if trial.user_attrs.get("reference"):
            first = [t.number for t in ahead if t.user_attrs.get("reference")]
            if first:
                _surplus(trial, f"the reference point is already trial {first[0]}")
        return self._train(trial, MODEL, lambda: self.space.sample(trial).to_dict(), named=True)

    def baseline(self, model: str, train: dict[str, Any]) -> Callable[[optuna.Trial], list[float]]:
        """The objective of a baseline trial: ``model`` trained with the same budget and the reference recipe."""

        def run(trial: optuna.Trial) -> list[float]:
            tag(trial, "baseline", model)
            return self._train(trial, model, lambda: {"model_kwargs": {}, "train": train})

        return run

    def _train(self, trial: optuna.Trial, model: str, sample: Callable[[], dict[str, Any]], named: bool = False
               ) -> list[float]:
        """Sample, train and record; every exception leaves a ``fail_reason`` so the trial counts as finished.

        ``named``: the trial's ``model`` attribute becomes the sampled architecture's name (a FractalNet search trial
        is built from one registered variant whose B, C and widths its kwargs replace).
        """
        single = len(trial.study.directions) == 1  # Optuna has intermediate values for single-objective studies only
        prune = single and trial.user_attrs.get("kind") != "baseline"

        def on_epoch(record: TrialRecord) -> None:
            trial.set_user_attr("record", record.to_dict())
            fault_point("epoch-recorded")
            stops.check()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops the trial here
            if single:  # every epoch, the last too, so the dashboard's curves are whole
                trial.report(record.val_acc, record.epoch)
            if prune and not record.finished_budget and trial.should_prune():  # a finished budget is never pruned
                raise Pruned(self.budget.rungs.pruned_reason(record.epoch))

        try:
            with recording_failure(trial, passing=(Pruned,)):
                config = sample()
                trial.set_user_attr("config", json.loads(json.dumps(config)))
                if named:
                    trial.set_user_attr("model", architecture_name(config["model_kwargs"]))
                save_note(trial, trial_note(trial.number, trial.user_attrs))
                record = run_trial(model=model, config=config, budget=self.budget,
                                   out_dir=trial_dir(self.study_dir, trial.number), on_epoch=on_epoch)
                return record.objective_values(self.objective)
        except Pruned as exc:
            record_pruned(trial, str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            _release_accelerator_memory()


@contextmanager
def recording_failure(trial: optuna.Trial, passing: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Leave the reason of an exception raised inside on ``trial`` (``fail_reason``, so a FAIL counts as finished; a
    Ctrl-C is ``interrupted`` too, so it does not count and runs again), then let it propagate. ``passing``
    exceptions (a pruned trial's) are no failure."""
    try:
        yield
    except passing:
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "interrupted: KeyboardInterrupt")
        trial.set_user_attr("interrupted", True)
        raise
    except Exception as exc:
        trial.set_user_attr("fail_reason", fail_reason(exc))
        raise


def trial_note(number: int, attrs: dict[str, Any], pruned: str | None = None) -> str:
    """The trial's note on the Optuna dashboard, led by its architecture and number: the dashboard's lists and curve
    legends say "Trial N" only (and a baseline has no parameters to tell it by); a pruned trial's says why."""
    head = f"**{attrs['model']}** (trial {number})"
    if attrs.get("kind") == "baseline":
        head += ": baseline, trained to the top rung with the reference recipe; not a search trial."
    elif attrs.get("reference"):
        head += ": the reference point (the paper's network)"
    return head + (f"\n\nPruned: {pruned}." if pruned else "")


def record_pruned(trial: optuna.Trial, reason: str) -> None:
    """Say on a pruned ``trial`` why it stopped: user attribute ``pruned_reason`` and its note."""
    trial.set_user_attr("pruned_reason", reason)
    save_note(trial, trial_note(trial.number, trial.user_attrs, reason))


def _surplus(trial: optuna.Trial, why: str) -> None:
    """Record ``trial`` as surplus (it does not count and is left out of the results) and stop it."""
    trial.set_user_attr("surplus", True)
    trial.set_user_attr("fail_reason", f"surplus: {why}")
    raise SurplusTrial(f"trial {trial.number}: {why}")


def _release_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
