"""Model size, compute and speed measures shared by the engine, the search and the baselines.

All three measure the model as it is deployed: eval mode, no gradients, drop-path off; forward keyword arguments
(e.g. ``column=k`` for a FractalNet column) select the sub-network being measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (what the papers' parameter counts report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _input(model: nn.Module, input_size: Sequence[int], batch_size: int) -> torch.Tensor:
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(batch_size, *input_size, device=device)


def count_flops(model: nn.Module, input_size: Sequence[int], **forward_kwargs: Any) -> int:
    """Forward FLOPs for one image of ``input_size`` (C, H, W), counted by torch's FlopCounterMode (2 per MAC)."""
    x = _input(model, input_size, 1)
    with _eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x, **forward_kwargs)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, repeats: int = 20,
                    warmup: int = 3, **forward_kwargs: Any) -> float:
    """Milliseconds per image: median over ``repeats`` timed forwards of a ``batch_size`` batch, after warm-up.

    The median resists the interference of other processes on a shared machine.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} and {repeats}")
    x = _input(model, input_size, batch_size)
    cuda = x.device.type == "cuda"
    times = []
    with _eval_mode(model):
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x, **forward_kwargs)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch_size
