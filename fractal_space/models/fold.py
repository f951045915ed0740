"""Batch norm folded into the preceding convolution for eval-mode inference, and timm's reparameterize route.

In eval mode a batch norm is a fixed affine map per channel, so conv -> BN is one conv with scaled weights and a
bias: ONNX Runtime folds it when it loads a model, and eager PyTorch pays a full memory pass per BN without it.
The modules here keep their parameters, buffers and state-dict names; only eager inference without autograd
(``model.eval()`` under ``torch.no_grad()`` / ``torch.inference_mode()``) runs folded weights. Those are computed
on first use and again whenever one of the conv's or BN's tensors changed (an optimizer step, ``load_state_dict``,
FractalNet's eval-mode BN refresh, ``.to()``: anything that bumps a tensor's version or replaces its data), and
``train()`` drops them. On CPU the folded weights take the layout oneDNN runs fastest for the conv's width and map
size (channels_last for narrow convs), so eval runs the per-block layout without ``set_memory_format``.
Autograd, TorchScript, tracing (``torch.fx.symbolic_trace``, ``torch.jit.trace``, ``torch.export`` / ONNX) and
``torch.compile`` see the unfolded modules, so gradients and exported graphs are as before. timm's own FX tracer
(feature extraction, ``timm.models.create_feature_extractor``, timm's model tests) keeps the folding modules as
leaves (``register_notrace_module``): its graphs call them, so a traced graph run under inference mode folds exactly
as the eager model does and gives the same outputs bit for bit, which timm's ``test_model_forward_fx`` demands.

``reparameterize()`` is timm's deployment route (``timm.utils.reparameterize_model`` calls it): it replaces each
conv + BN pair by one biased conv for good, which also changes the state dict's names.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, register_notrace_module

from fractal_space.models.cpu_conv import cpu_prefers_channels_last

__all__ = ["FoldCache", "FoldedConvNormAct", "FoldingModule", "activation", "fold_conv_bn", "folded_conv", "folds",
           "reparameterized_conv"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module, channels_last: Optional[bool] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the conv equal to eval-mode ``bn(conv(x))``; the weight in ``conv.weight``'s layout, or
    channels_last / NCHW as asked."""
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors even when first used in inference mode
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        layout = torch.preserve_format if channels_last is None else (
            torch.channels_last if channels_last else torch.contiguous_format)
        weight = torch.empty_like(conv.weight, memory_format=layout)
        torch.mul(conv.weight, scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1), out=weight)
    return weight, bias.to(conv.weight.dtype)


def eager_inference(x: Any) -> bool:
    """Whether this call is eager inference: no autograd, and not an FX proxy, ``torch.jit.trace`` or
    ``torch.compile`` / ``torch.export``, which must see the modules' own ops (in-place updates of a result that
    looks unused are dead code to FX)."""
    return (not torch.is_grad_enabled() and not isinstance(x, torch.fx.Proxy) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def folds(bn: nn.Module, x: Any) -> bool:
    """Whether this call may run folded weights: eager inference, ``bn`` in eval mode with running statistics."""
    return not bn.training and bn._buffers.get("running_var") is not None and eager_inference(x)


def _sources(conv: nn.Conv2d, bn: nn.Module) -> tuple[Optional[torch.Tensor], ...]:
    """The tensors a fold reads, from the modules' dicts (``nn.Module.__getattr__`` is a Python call per name)."""
    p, q, b = conv._parameters, bn._parameters, bn._buffers
    return p["weight"], p.get("bias"), q.get("weight"), q.get("bias"), b["running_mean"], b["running_var"]


class FoldCache:
    """The folded (weight, bias) of one conv + BN pair, valid while its source tensors are the same objects at the
    same versions (in-place updates bump a tensor's version) and the input asks for the same layout.

    On CPU the folded weight is channels_last where oneDNN runs the conv faster that way
    (:func:`cpu_conv.cpu_prefers_channels_last`, from the input's map size): eval then runs the per-block layout
    without ``set_memory_format``. Elsewhere, and for 1x1 kernels, it keeps the conv weight's layout.
    """

    __slots__ = ("key", "sources", "value")

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.sources: tuple = ()  # held so that their ids in the key cannot be reused by new tensors
        self.value: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def get(self, conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded pair for input ``x``, recomputed if a source tensor or the wanted layout changed."""
        sources = _sources(conv, bn)
        # CUDA and 1x1 kernels keep the weight's layout (a 1x1 weight fits either stride order, and a channels_last
        # one turns DenseNet's NCHW concatenations channels_last: 2x slower eval)
        cpu = x.device.type == "cpu" and conv.kernel_size != (1, 1)
        layout = cpu_prefers_channels_last(conv.out_channels, x.shape[-2:]) if cpu else None
        key = (layout, *map(id, sources), *[t._version for t in sources if t is not None])
        if key != self.key:
            self.value = fold_conv_bn(conv, bn, layout)
            self.key, self.sources = key, sources
        return self.value

    def clear(self) -> None:
        self.key, self.sources, self.value = None, (), None

    def __deepcopy__(self, memo: dict) -> FoldCache:
        return FoldCache()  # a copy folds its own tensors


def folded_conv(conv: nn.Conv2d, bn: nn.Module, cache: FoldCache, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` in eval mode as one conv with the folded weights (no activation)."""
    weight, bias = cache.get(conv, bn, x)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def activation(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, with ReLU (every family's default) applied in place without a module call."""
    return torch.relu_(x) if type(act) is nn.ReLU else act(x)


def reparameterized_conv(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A plain biased ``nn.Conv2d`` equal to eval-mode ``bn(conv(x))``, for :meth:`FoldedConvNormAct.reparameterize`
    and the baselines' blocks."""
    weight, bias = fold_conv_bn(conv, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device="meta")
    fused.weight, fused.bias = nn.Parameter(weight), nn.Parameter(bias)  # the folded tensors, layout included
    return fused


class FoldingModule(nn.Module):
    """A module holding :class:`FoldCache` attributes: ``train()`` drops them (they go stale with the first step), as
    do conversions (``.to()`` and the like)."""

    def _clear_folds(self) -> None:
        for value in vars(self).values():
            if isinstance(value, FoldCache):
                value.clear()

    def train(self, mode: bool = True) -> FoldingModule:
        if mode:
            self._clear_folds()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> FoldingModule:
        """``.to()``, ``.float()``, ``.cuda()``... replace tensor data without a version bump: fold again after."""
        self._clear_folds()
        return super()._apply(fn, recurse)


@register_notrace_module  # a leaf of timm-traced graphs, which then fold like eager inference
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
            bn = self.bn
            if folds(bn, x):
                return activation(bn.act, folded_conv(self.conv, bn, self.fold_cache, x))
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
