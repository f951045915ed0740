"""Weight averaging (``TrainConfig.ema``) and test-time augmentation (``TrainConfig.tta``): the evaluation side of a
recipe, which never changes what a training step computes."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

#: Pixels a flip-shift view is translated by (the + augmentation translates by up to 4).
TTA_SHIFT = 2


class WeightAverage:
    """A frozen copy of a model whose parameters follow the training model's as an exponential moving average.

    Update n uses the decay ``min(decay, (1 + n) / (10 + n))``, so a short run's average is not dominated by the
    random initialisation (700 steps at a fixed 0.999 would keep half of it). Buffers are not averaged: batch-norm
    statistics of the training weights do not fit averaged weights, so the trainer re-estimates them before every
    evaluation of the average.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current parameters (after an optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the averaged weights and the update count the decay's ramp depends on."""
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def _shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """``x`` translated right and down by ``pixels`` (left and up when negative), zero-filled as the + augmentation."""
    height, width = x.shape[-2:]
    start = abs(pixels) - pixels
    return nn.functional.pad(x, (abs(pixels),) * 4)[..., start:start + height, start:start + width]


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The inputs whose logits ``tta`` averages, the plain batch first: flip adds the mirror image, flip-shift adds
    both translated by ``TTA_SHIFT`` pixels right-down and left-up."""
    if tta == "none":
        return [x]
    views = [x, x.flip(3)]
    if tta == "flip-shift":
        views += [_shift(v, pixels) for v in views for pixels in (TTA_SHIFT, -TTA_SHIFT)]
    return views
