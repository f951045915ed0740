"""fractal_space: FractalNet as a timm model family and an Optuna / Ray Tune search space.

Importing the package registers its timm models (``fractalnet_*`` and the CIFAR baselines).
"""

from fractal_space import models  # noqa: F401  (registers the timm models)

__version__ = "0.1.0"
