"""FractalNet as a search space: one definition for Optuna, Ray Tune and ConfigSpace, and the engine behind it.

In your own study::

    space = SearchSpace.default(input_size=32, device="cpu")
    cfg = space.config(space.suggest(trial))        # a TrialConfig: .model_kwargs, .train, .create_model()
    budget = Budget(dataset="cifar10", rung_images=[500, 1500], val_size=200, device="cpu")
    study.optimize(optuna_objective(space, budget), n_trials=4)

The whole search with its storage, baselines, final stage and report is ``python search/run.py`` (``main`` here).
Importing this package imports neither Ray, the Optuna dashboard nor the command line.
"""

from __future__ import annotations

from fractal_space.search.space import SearchSpace, TrialConfig, architecture_name
from fractal_space.search.trial.adapters import optuna_objective, ray_trainable, train_config
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import OBJECTIVES, TrialRecord
from fractal_space.search.trial.rungs import Rungs

__all__ = ["OBJECTIVES", "Budget", "Rungs", "SearchSpace", "TrialConfig", "TrialRecord", "architecture_name", "main",
           "optuna_objective", "ray_trainable", "train_config"]


def main(argv: list[str] | None = None) -> int:
    """``python search/run.py``: the whole search from the command line (imports the CLI when called)."""
    from fractal_space.search.cli import main as cli_main

    return cli_main(argv)

