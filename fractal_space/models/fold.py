"""Batch norm folded into the preceding convolution for eval-mode inference, and timm's reparameterize route.

In eval mode a batch norm is a fixed affine map per channel, so conv -> BN is one conv with scaled weights and a
bias: ONNX Runtime folds it when it loads a model, and eager PyTorch pays a full memory pass per BN without it.
The modules here keep their parameters, buffers and state-dict names; only eager inference without autograd
(``model.eval()`` under ``torch.no_grad()`` / ``torch.inference_mode()``) runs folded weights. Those are computed
on first use and again whenever one of the conv's or BN's tensors changed (an optimizer step, ``load_state_dict``,
FractalNet's eval-mode BN refresh, ``.to()``: anything that bumps a tensor's version or replaces its data), and
``train()`` drops them. Autograd, TorchScript, tracing (FX, ``torch.jit.trace``, ``torch.export`` / ONNX) and
``torch.compile`` see the unfolded modules, so gradients and exported graphs are as before.

``reparameterize()`` is timm's deployment route (``timm.utils.reparameterize_model`` calls it): it replaces each
conv + BN pair by one biased conv for good, which also changes the state dict's names.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

__all__ = ["FoldCache", "FoldedConvNormAct", "FoldingModule", "fold_conv_bn", "folded_conv", "folds",
           "reparameterized_conv"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the conv equal to eval-mode ``bn(conv(x))``; the weight keeps ``conv.weight``'s layout."""
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors even when first used in inference mode
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        weight = torch.empty_like(conv.weight)  # preserve_format: channels_last stays channels_last
        torch.mul(conv.weight, scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1), out=weight)
    return weight, bias.to(conv.weight.dtype)


def folds(bn: nn.Module, x: Any) -> bool:
    """Whether this call may run folded weights: ``bn`` in eval mode with running statistics, no autograd, and eager
    (not an FX proxy, not ``torch.jit.trace``, not ``torch.compile`` / ``torch.export``)."""
    return (not bn.training and getattr(bn, "running_var", None) is not None and not torch.is_grad_enabled()
            and not isinstance(x, torch.fx.Proxy) and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


class FoldCache:
    """The folded (weight, bias) of one conv + BN pair, and the tensors (identity, storage, version) it came from."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: Optional[list[tuple[torch.Tensor, int, int]]] = None
        self.value: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def _tensors(conv: nn.Conv2d, bn: nn.Module) -> list[torch.Tensor]:
        tensors = [conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var]
        return [t for t in tensors if t is not None]

    def _valid(self, tensors: list[torch.Tensor]) -> bool:
        if self.key is None or len(self.key) != len(tensors):
            return False
        for t, (k, ptr, version) in zip(tensors, self.key, strict=True):
            if t is not k or t.data_ptr() != ptr or t._version != version:
                return False
        return True

    def get(self, conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded pair, recomputed if any source tensor changed since it was computed."""
        tensors = self._tensors(conv, bn)
        if self.value is None or not self._valid(tensors):
            self.value = fold_conv_bn(conv, bn)
            self.key = [(t, t.data_ptr(), t._version) for t in tensors]
        return self.value

    def clear(self) -> None:
        self.key = self.value = None

    def __deepcopy__(self, memo: dict) -> FoldCache:
        return FoldCache()  # a copy folds its own tensors


def folded_conv(conv: nn.Conv2d, bn: nn.Module, cache: FoldCache, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` in eval mode as one conv with the folded weights (no activation)."""
    weight, bias = cache.get(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def reparameterized_conv(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A plain biased ``nn.Conv2d`` equal to eval-mode ``bn(conv(x))``, for :meth:`FoldedConvNormAct.reparameterize`
    and the baselines' blocks."""
    weight, bias = fold_conv_bn(conv, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device="meta")
    fused.weight, fused.bias = nn.Parameter(weight), nn.Parameter(bias)  # the folded tensors, layout included
    return fused


class FoldingModule(nn.Module):
    """A module holding :class:`FoldCache` attributes: ``train()`` drops them (they go stale with the first step)."""

    def train(self, mode: bool = True) -> FoldingModule:
        if mode:
            for value in vars(self).values():
                if isinstance(value, FoldCache):
                    value.clear()
        return super().train(mode)


class FoldedConvNormAct(FoldingModule, ConvNormAct):
    """timm's ``ConvNormAct`` (same parameters and names) whose eager inference is one conv with the BN folded in,
    then the activation; everything else runs conv -> BN -> activation as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "aa", None) is not None:
            raise ValueError("FoldedConvNormAct does not take an anti-aliasing layer (aa_layer)")
        self.fold_cache = FoldCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if folds(self.bn, x):
                return self.bn.act(folded_conv(self.conv, self.bn, self.fold_cache, x))
        return self.bn(self.conv(x))

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """Replace conv + BN by one biased conv followed by the activation, in place (``timm.utils
        .reparameterize_model``; the state dict then holds ``conv.weight``/``conv.bias`` and no ``bn.*``)."""
        if getattr(self.bn, "running_var", None) is None:
            return  # already reparameterized, or a BN without running statistics (batch statistics: no fold)
        self.conv = reparameterized_conv(self.conv, self.bn)
        self.bn = self.bn.act
        self.fold_cache.clear()
