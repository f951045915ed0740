"""FractalNet architecture search: one space (``search.space``), Optuna and Ray Tune backends, one storage.

Run it with ``python search/run.py`` (see ``search/README.md``) or ``python -m fractal_space.search``.
"""

from fractal_space.search.cli import main
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import OBJECTIVES, TrialRecord

__all__ = ["OBJECTIVES", "Budget", "TrialRecord", "main"]
