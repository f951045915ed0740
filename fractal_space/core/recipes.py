"""The engine's training recipes as plain values: what each preset gives the ``TrainConfig`` fields left at None.

They live below the engine so that the search space, which imports no torch, samples around the learning rate, batch
size and weight decay the engine trains with by default. ``paper`` is the paper's recipe (``core.paper.PAPER``) with
every later option off, which is also what a saved config that predates a field trained with. ``fast`` is the
short-budget recipe: warm-up then linear decay, Nesterov, label smoothing, no weight decay on norms and biases, flip
test-time augmentation; what each part buys at 90,000 training images is in ``experiments/time_to_accuracy/``.
"""

from __future__ import annotations

from typing import Any

from fractal_space.core.paper import PAPER

RECIPES = ("paper", "fast")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": PAPER.batch_size, "lr": PAPER.lr, "nesterov": False, "weight_decay": PAPER.weight_decay,
              "norm_bias_decay": True, "schedule": PAPER.schedule, "lr_warmup": 0.0, "label_smoothing": 0.0,
              "ema": 0.0, "tta": "none"},
    "fast": {"batch_size": 128, "lr": 0.4, "nesterov": True, "weight_decay": 5e-4, "norm_bias_decay": False,
             "schedule": "linear", "lr_warmup": 0.2, "label_smoothing": 0.1, "ema": 0.0, "tta": "flip"},
}
#: The recipe of ``TrainConfig()``, search trials, the search's final stage and the baselines.
DEFAULT_RECIPE = "fast"
