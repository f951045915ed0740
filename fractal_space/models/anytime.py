"""Anytime evaluation: batch-norm re-estimation for a FractalNet column or an extracted column network.

A column's batch-norm layers were trained on joined inputs. Evaluating the column alone with those statistics
understates it; the paper's fair comparison re-estimates them on a few training batches through the column's path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Union

import torch
import torch.nn as nn

Batch = Union[torch.Tensor, tuple, list]


def _inputs(batch: Batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def reestimate_bn_stats(
        model: nn.Module,
        batches: Iterable[Batch],
        column: Optional[int] = None,
        max_batches: Optional[int] = None,
) -> int:
    """Recompute batch-norm running statistics from ``batches`` as an exact average, in place.

    ``column`` (1-based) routes the batches through that column of a FractalNet (``model(x, column=k)``); use it on
    an extracted column (:meth:`FractalNet.extract_column`) or on a copy, since the column's layers are shared with
    the full network. Layers the batches never reach keep their statistics. Dropout and drop-path are off while
    estimating. Batches may be tensors or ``(inputs, targets)`` pairs. Returns the number of batches used.
    """
    # An all-paths re-estimation is what a FractalNet's eval() would refresh: mark it done, so eval() below skips it.
    stale = getattr(model, "bn_stats_stale", None) if column is None else None
    if stale is not None:
        model.bn_stats_stale = False
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
             for bn in bns}
    was_training = model.training
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
        bn.train()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = _inputs(batch)
            if column is None:
                model(x)
            else:
                model(x, column=column)
            used += 1
    finally:
        for bn, (mean, var, count, momentum) in saved.items():
            bn.momentum = momentum
            if used == 0 or int(bn.num_batches_tracked) == 0:  # not on the path: leave as it was
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        if used == 0 and stale is not None:
            model.bn_stats_stale = stale
        model.train(was_training)
    if used == 0:
        raise ValueError("reestimate_bn_stats got no batches; pass at least one batch of inputs")
    return used
