"""A straightforward FractalNet, written the way public PyTorch re-implementations are: the reference to beat.

Same architecture, widths and FLOPs as ``fractal_space``'s FractalNet (flat mean joins, correct local and global
drop-path), but every column is always computed, joins stack their inputs, and drop masks are built on the host
for each join and then applied to the stacked outputs. Only the benchmarks use it: ``bench_model.py`` builds it
directly, the GPU check's throughput step (``python -m fractal_space.checks.gpu``, run from a checkout) imports this
file and trains it through the engine as the timm model ``public_fractalnet`` (registered when this module is
imported, never by ``import fractal_space``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.models import register_model


def _conv_unit(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.BatchNorm2d(out_chs),
                         nn.ReLU(inplace=True))


class PublicFractalBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, num_columns: int, dropout: float):
        super().__init__()
        self.num_columns = num_columns
        self.depth = 2 ** (num_columns - 1)
        self.columns = nn.ModuleList()
        for c in range(num_columns):
            n = 2 ** c  # column c (0 = shallowest) has 2^c conv units
            self.columns.append(nn.ModuleList([_conv_unit(in_chs if i == 0 else out_chs, out_chs) for i in range(n)]))
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)

    def _join(self, outs: list[torch.Tensor], cols: list[int], global_col: Optional[int], p: float) -> torch.Tensor:
        stacked = torch.stack(outs)
        if not self.training:
            return stacked.mean(0)
        if global_col is not None:
            mask = [1.0 if c == global_col else 0.0 for c in cols]
        else:
            mask = [0.0 if random.random() < p else 1.0 for _ in cols]
            if sum(mask) == 0:
                mask[random.randrange(len(mask))] = 1.0
        if sum(mask) == 0:  # global column not in this join: pass the joined mean through (result unused)
            return stacked.mean(0)
        m = torch.tensor(mask, device=stacked.device).view(-1, 1, 1, 1, 1)
        return (stacked * m).sum(0) / m.sum()

    def forward(self, x: torch.Tensor, global_col: Optional[int], p: float) -> torch.Tensor:
        states = [x] * self.num_columns
        counts = [0] * self.num_columns
        for d in range(1, self.depth + 1):
            cols = [c for c in range(self.num_columns) if d % 2 ** (self.num_columns - 1 - c) == 0]
            outs = []
            for c in cols:
                outs.append(self.columns[c][counts[c]](states[c]))
                counts[c] += 1
            y = outs[0] if len(outs) == 1 else self._join(outs, cols, global_col, p)
            for c in cols:
                states[c] = y
        return self.drop(self.pool(states[-1]))


class PublicFractalNet(nn.Module):
    def __init__(self, num_classes: int = 10, num_columns: int = 4, widths: Sequence[int] = (16, 32, 64, 128, 128),
                 drop_path_rate: float = 0.15, global_drop_fraction: float = 0.5,
                 block_dropout: Optional[Sequence[float]] = None, in_chans: int = 3):
        super().__init__()
        block_dropout = block_dropout or [0.0] * len(widths)
        chans = [in_chans, *widths]
        self.blocks = nn.ModuleList([PublicFractalBlock(chans[i], chans[i + 1], num_columns, block_dropout[i])
                                     for i in range(len(widths))])
        self.num_columns = num_columns
        self.drop_path_rate = drop_path_rate
        self.global_drop_fraction = global_drop_fraction
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_col = None
        if self.training and self.drop_path_rate > 0 and random.random() < self.global_drop_fraction:
            global_col = random.randrange(self.num_columns)
        for block in self.blocks:
            x = block(x, global_col, self.drop_path_rate)
        return self.fc(x.mean((2, 3)))


@register_model
def public_fractalnet(pretrained: bool = False, **kwargs: Any) -> PublicFractalNet:
    """The public-style FractalNet as a timm model, so the engine's ``Trainer`` trains it like any other."""
    if pretrained:
        raise ValueError("public_fractalnet has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return PublicFractalNet(**kwargs)
