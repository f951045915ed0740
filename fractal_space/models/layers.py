"""CPU kernel choices for wide convs on small feature maps, measured on this project's CPU (oneDNN, AVX-512).

At the paper's full CIFAR widths the last blocks run 256-512 channels on 4x4 and 2x2 maps, where oneDNN's defaults are
poor: channels_last convs are 20-80% slower than NCHW there, and on 2x2 maps its weight-gradient kernel for 512x512
weights runs at 45-80 GFLOP/s against 110-180 for an im2col matmul (a whole conv, forward + backward, 1.5-1.9x
faster). ``benchmarks/bench_model.py`` measures the effect on whole networks.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["SmallMapConv2d", "cpu_prefers_channels_last", "conv2d_im2col_wgrad"]

NCHW_MIN_WIDTH = 256  # channels from which NCHW beats channels_last on tiny maps ...
NCHW_MAX_PIXELS = 16  # ... of 4x4 and smaller
IM2COL_MAX_PIXELS = 4  # the im2col weight gradient pays on 2x2 maps and smaller ...
IM2COL_MIN_WEIGHT = 512 * 512  # ... with at least 512x512 weights (in x out channels)


def cpu_prefers_channels_last(width: int, in_size: tuple[int, int]) -> bool:
    """Whether 3x3 convs of ``width`` channels on ``in_size`` maps run faster channels_last on CPU.

    Per conv, forward + backward, batch 32-100: channels_last wins 10-30% up to 128 channels at any size and at 8x8
    and larger at any width, but loses 20-80% at 256+ channels on 4x4 and smaller maps.
    """
    return width < NCHW_MIN_WIDTH or in_size[0] * in_size[1] > NCHW_MAX_PIXELS


class _Im2colWeightGrad(torch.autograd.Function):
    """Conv forward and input gradient by oneDNN; the weight gradient as one im2col matmul."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            out_chs = grad_out.shape[1]
            cols = F.unfold(x, weight.shape[-2:], padding=ctx.padding)  # (B, C*kh*kw, L)
            g = grad_out.transpose(0, 1).reshape(out_chs, -1)  # (O, B*L)
            grad_w = (g @ cols.transpose(1, 2).reshape(g.shape[1], -1)).view(weight.shape)
        return grad_x, grad_w, None


@register_notrace_function
@torch.fx.wrap
def conv2d_im2col_wgrad(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """A stride-1 conv without bias that trains with the im2col weight gradient where that is faster (CPU, 4x4 or
    smaller maps, 512x512+ weights) and is plain ``F.conv2d`` everywhere else, eval and CUDA included."""
    pixels, weights = x.shape[-2] * x.shape[-1], weight.shape[0] * weight.shape[1]
    training = torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu"
    if training and pixels <= IM2COL_MAX_PIXELS and weights >= IM2COL_MIN_WEIGHT:
        return _Im2colWeightGrad.apply(x, weight, padding)
    return F.conv2d(x, weight, padding=padding)


class SmallMapConv2d(nn.Conv2d):
    """3x3 stride-1 ``nn.Conv2d`` (same parameters and state dict) using :func:`conv2d_im2col_wgrad` in eager mode."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3):
        super().__init__(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_im2col_wgrad(x, self.weight, self.padding)
