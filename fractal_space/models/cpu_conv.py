"""CPU kernel choices for wide convs on small feature maps, measured on this project's CPU (oneDNN, AVX-512).

At the paper's full CIFAR widths the last blocks run 256-512 channels on 4x4 and 2x2 maps, where oneDNN's defaults are
poor: channels_last convs are 20-80% slower than NCHW there, and its weight-gradient kernel multiplies every kernel tap
with the zero padding as well (on a 2x2 map 20 of a 3x3 kernel's 36 tap-position pairs land in the padding, on 4x4 44
of 144). One matmul per tap over just the positions it meets is 1.1-5x faster there (batch 32-100, 128-512 channels).
``benchmarks/bench_model.py`` measures the effect on whole networks.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["SmallMapConv2d", "conv2d_tap_wgrad", "conv_weight_grad_by_taps", "cpu_prefers_channels_last"]

NCHW_MIN_WIDTH = 256  # channels from which NCHW beats channels_last on tiny maps ...
NCHW_MAX_PIXELS = 16  # ... of 4x4 and smaller
TAPS_MAX_PIXELS = 16  # the per-tap weight gradient pays on 4x4 maps and smaller ...
TAPS_MIN_WEIGHT_PER_PIXEL = 4096  # ... from in x out channels of 4096 per map pixel (128x128 on 2x2, 256x256 on 4x4)


def cpu_prefers_channels_last(width: int, in_size: tuple[int, int]) -> bool:
    """Whether 3x3 convs of ``width`` channels on ``in_size`` maps run faster channels_last on CPU.

    Per conv, forward + backward, batch 32-100: channels_last wins 10-30% up to 128 channels at any size and at 8x8
    and larger at any width, but loses 20-80% at 256+ channels on 4x4 and smaller maps.
    """
    return width < NCHW_MIN_WIDTH or in_size[0] * in_size[1] > NCHW_MAX_PIXELS


def _tap_ranges(in_size: int, out_size: int, kernel: int, pad: int) -> list[tuple[int, int, int]]:
    """Per kernel index along one axis of a stride-1 conv: its offset d and the output range [lo, hi) whose input at
    offset d lies inside the map (empty where the tap only ever meets padding)."""
    return [(max(0, pad - i), min(out_size, in_size + pad - i), i - pad) for i in range(kernel)]


def conv_weight_grad_by_taps(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor,
                             padding: tuple[int, int]) -> torch.Tensor:
    """Weight gradient of a stride-1 conv without groups or dilation, as one matmul per kernel tap.

    Tap (i, j) sums grad_out (O x n) times input (n x C) over the n = batch x positions where that tap meets the
    input, so nothing is multiplied with padding. Returned with ``weight``'s strides, as autograd accumulates it.
    """
    out_chs, in_chs = grad_out.shape[1], x.shape[1]
    g = grad_out.permute(1, 2, 3, 0).contiguous()  # (O, H', W', B): a tap's positions are one (O, n) slice
    xs = x.permute(2, 3, 0, 1).contiguous()  # (H, W, B, C)
    rows = _tap_ranges(xs.shape[0], g.shape[1], weight.shape[2], padding[0])
    cols = _tap_ranges(xs.shape[1], g.shape[2], weight.shape[3], padding[1])
    grad_w = grad_out.new_empty(out_chs, len(rows), len(cols), in_chs)  # each tap's (O, C) slice: unit column stride
    for i, (lo_h, hi_h, dh) in enumerate(rows):
        for j, (lo_w, hi_w, dw) in enumerate(cols):
            if lo_h >= hi_h or lo_w >= hi_w:
                grad_w[:, i, j].zero_()
                continue
            torch.mm(g[:, lo_h:hi_h, lo_w:hi_w].reshape(out_chs, -1),
                     xs[lo_h + dh:hi_h + dh, lo_w + dw:hi_w + dw].reshape(-1, in_chs), out=grad_w[:, i, j])
    grad_w = grad_w.permute(0, 3, 1, 2)
    if grad_w.stride() == weight.stride():  # a channels_last weight: already in its layout
        return grad_w
    return torch.empty_like(weight, memory_format=torch.preserve_format).copy_(grad_w)


class _TapWeightGrad(torch.autograd.Function):
    """Conv forward and input gradient by oneDNN; the weight gradient by :func:`conv_weight_grad_by_taps`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        ctx.dtypes = x.dtype, weight.dtype
        if torch.is_autocast_enabled(x.device.type):  # cast as F.conv2d would, so backward sees one dtype
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0].to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_w = conv_weight_grad_by_taps(x, grad_out, weight, ctx.padding).to(ctx.dtypes[1])
        return grad_x, grad_w, None


def _tap_wgrad_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Training on CPU with a 4x4 or smaller map and wide enough weights: where the per-tap weight gradient wins."""
    pixels, weights = x.shape[-2] * x.shape[-1], weight.shape[0] * weight.shape[1]
    training = torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu"
    return training and pixels <= TAPS_MAX_PIXELS and weights >= TAPS_MIN_WEIGHT_PER_PIXEL * pixels


@register_notrace_function
@torch.fx.wrap
def conv2d_tap_wgrad(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """A stride-1 conv without bias that trains with the per-tap weight gradient where that is faster (CPU,
    4x4 or smaller maps, wide enough weights) and is plain ``F.conv2d`` everywhere else, eval and CUDA included.

    Scriptable (TorchScript of an FX-traced model compiles it): scripted code always takes ``F.conv2d``.
    """
    if not torch.jit.is_scripting():
        if _tap_wgrad_pays(x, weight):
            return _TapWeightGrad.apply(x, weight, padding)
    return F.conv2d(x, weight, padding=padding)


class SmallMapConv2d(nn.Conv2d):
    """3x3 stride-1 ``nn.Conv2d`` (same parameters and state dict) that runs :func:`conv2d_tap_wgrad`."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_tap_wgrad(x, self.weight, self.padding)
