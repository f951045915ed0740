"""DenseNet-BC for CIFAR (Huang et al. 2017) as timm models: the other baseline family FractalNet is compared against.

Paper: `Densely Connected Convolutional Networks` - https://arxiv.org/abs/1608.06993

Depth L = 6n + 4: a 3x3 conv stem with 2k channels (no norm, no pooling: the first dense layer pre-activates),
3 dense blocks of n bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k), transitions that compress
the channels by 0.5 and halve the resolution, a final BN-ReLU, global average pooling and a linear classifier.
DenseNet-BC-100 (k=12) has 0.8M parameters, DenseNet-BC-250 (k=24) 15.3M.

The dense layers, blocks and transitions are timm's own (``timm.models.densenet``; the dense layers fold their second
batch norm into the 1x1 conv for eval-mode inference, ``models/fold.py``); only the stem and the configuration differ
from timm's ImageNet DenseNet. There are no residual branches, so there is no drop-path; the
paper's dropout after each dense layer is ``proj_drop_rate`` (timm's name). Gradient checkpointing recomputes each
dense block (see ``CifarStageNet``).
"""

import math
from collections import OrderedDict
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerType, create_conv2d, get_norm_act_layer, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.densenet import DenseBlock, DenseLayer, DenseTransition

from fractal_space.models.cifar import CifarStageNet, cifar_cfg, dirac_init_, whitening
from fractal_space.models.fold import (
    FoldCache,
    FoldingModule,
    activation,
    folded_conv,
    folds,
    reparameterized_conv,
)

__all__ = ["DenseNetCifar"]


@register_notrace_module  # a leaf of timm-traced graphs, which then fold like eager inference
class FoldedDenseLayer(FoldingModule, DenseLayer):
    """timm's ``DenseLayer`` (same parameters and names) whose eager inference folds ``norm2`` into the 1x1 conv
    before it (``models/fold.py``); ``norm1`` normalises the concatenated features before a ReLU and cannot fold."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fold_cache = FoldCache()

    def forward(self, x: Union[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        prev_features = [x] if isinstance(x, torch.Tensor) else x
        if not torch.jit.is_scripting():
            if folds(self.norm2, prev_features[0]):  # eval mode: no dropout
                y = folded_conv(self.conv1, self.norm2, self.fold_cache, self.norm1(torch.cat(prev_features, 1)))
                return self.conv2(activation(self.norm2.act, y))
        if self.grad_checkpointing and self.any_requires_grad(prev_features):  # timm's DenseLayer.forward from here
            if torch.jit.is_scripting():
                raise Exception("Memory Efficient not supported in JIT")
            bottleneck_output = self.call_checkpoint_bottleneck(prev_features)
        else:
            bottleneck_output = self.bottleneck_fn(prev_features)
        new_features = self.conv2(self.norm2(bottleneck_output))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """``conv1`` + ``norm2`` as one biased conv followed by norm2's activation, in place (``timm.utils
        .reparameterize_model``)."""
        if getattr(self.norm2, "running_var", None) is not None:
            self.conv1 = reparameterized_conv(self.conv1, self.norm2)
            self.norm2 = self.norm2.act
        self.fold_cache.clear()


class FoldedDenseBlock(DenseBlock):
    """timm's ``DenseBlock`` (same names and forward) built of :class:`FoldedDenseLayer`."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 norm_layer: type[nn.Module], drop_rate: float = 0.0, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        nn.ModuleDict.__init__(self)
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", FoldedDenseLayer(
                num_input_features + i * growth_rate, growth_rate=growth_rate, bn_size=bn_size,
                norm_layer=norm_layer, drop_rate=drop_rate, device=device, dtype=dtype))


class DenseNetCifar(CifarStageNet):
    """DenseNet-BC for 32x32 inputs: stage i is (transition, if i > 0) then a dense block of ``block_depth`` layers."""

    def __init__(
            self,
            growth_rate: int = 12,
            block_depth: int = 16,
            num_blocks: int = 3,
            bn_size: int = 4,
            compression: float = 0.5,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            act_layer: LayerType = "relu",
            norm_layer: LayerType = "batchnorm2d",
            whiten: bool = False,
            dirac_init: bool = False,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        """``whiten``, ``dirac_init``: as for :class:`~.resnet_cifar.ResNetCifar` (both off by default)."""
        dd = {"device": device, "dtype": dtype}
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer=act_layer)
        num_chs = 2 * growth_rate
        whiten_module, stem_chs = whitening(whiten, in_chans, dd)
        stem = create_conv2d(stem_chs, num_chs, 3, **dd)
        stages, feature_info, reduction = [], [], 1
        for i in range(num_blocks):
            layers = OrderedDict()
            if i > 0:
                out_chs = math.floor(num_chs * compression)
                layers["transition"] = DenseTransition(num_chs, out_chs, norm_layer=norm_act_layer, **dd)
                num_chs, reduction = out_chs, reduction * 2
            layers["block"] = FoldedDenseBlock(
                block_depth, num_chs, bn_size, growth_rate, norm_layer=norm_act_layer, drop_rate=proj_drop_rate, **dd)
            num_chs += block_depth * growth_rate
            stages.append(nn.Sequential(layers))
            feature_info.append(dict(num_chs=num_chs, reduction=reduction, module=f"stages.{i}"))
        super().__init__(
            stem,
            nn.Sequential(*stages),
            feature_info,
            num_classes,
            in_chans,
            global_pool,
            drop_rate,
            norm_pre=norm_act_layer(num_chs, **dd),
            whiten=whiten_module,
            **dd,
        )
        for m in self.modules():  # the torchvision / timm DenseNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if dirac_init:
            dirac_init_(self)


def _create_densenet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """Build a registered variant through timm (pretrained weights, features_only, cfg handling)."""
    return build_model_with_cfg(
        DenseNetCifar,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "densenet_bc100_cifar.untrained": cifar_cfg(first_conv="stem"),
    "densenet_bc250_cifar.untrained": cifar_cfg(first_conv="stem"),
})


@register_model
def densenet_bc100_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-BC-100, k=12 (16 layers per block, 0.8M parameters)."""
    model_args = dict(growth_rate=12, block_depth=16)
    return _create_densenet_cifar("densenet_bc100_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def densenet_bc250_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-BC-250, k=24 (41 layers per block, 15.3M parameters)."""
    model_args = dict(growth_rate=24, block_depth=41)
    return _create_densenet_cifar("densenet_bc250_cifar", pretrained, **dict(model_args, **kwargs))
