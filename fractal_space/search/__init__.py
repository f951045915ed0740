"""FractalNet architecture search: one space (``fractal_space.space``), Optuna and Ray Tune backends, one storage.

Run it with ``python search/run.py`` (see ``search/README.md``) or ``python -m fractal_space.search``.
"""

from fractal_space.search.cli import main
from fractal_space.search.trial import OBJECTIVES, Budget

__all__ = ["OBJECTIVES", "Budget", "main"]
