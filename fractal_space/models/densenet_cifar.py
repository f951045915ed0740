"""DenseNet-BC for CIFAR (Huang et al. 2017) as timm models: the other baseline family FractalNet is compared against.

Paper: `Densely Connected Convolutional Networks` - https://arxiv.org/abs/1608.06993

Depth L = 6n + 4: a 3x3 conv stem with 2k channels (no norm, no pooling: the first dense layer pre-activates),
3 dense blocks of n bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k), transitions that compress
the channels by 0.5 and halve the resolution, a final BN-ReLU, global average pooling and a linear classifier.
DenseNet-BC-100 (k=12) has 0.8M parameters, DenseNet-BC-250 (k=24) 15.3M.

The dense layers, blocks and transitions are timm's own (``timm.models.densenet``); only the stem and the
configuration differ from timm's ImageNet DenseNet. There are no residual branches, so there is no drop-path; the
paper's dropout after each dense layer is ``proj_drop_rate`` (timm's name). Gradient checkpointing recomputes each
dense block (see ``CifarStageNet``).
"""

import math
from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.layers import LayerType, create_conv2d, get_norm_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.densenet import DenseBlock, DenseTransition

from fractal_space.models.cifar import CifarStageNet, cifar_cfg

__all__ = ["DenseNetCifar"]


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
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer=act_layer)
        num_chs = 2 * growth_rate
        stem = create_conv2d(in_chans, num_chs, 3, **dd)
        stages, feature_info, reduction = [], [], 1
        for i in range(num_blocks):
            layers = OrderedDict()
            if i > 0:
                out_chs = math.floor(num_chs * compression)
                layers["transition"] = DenseTransition(num_chs, out_chs, norm_layer=norm_act_layer, **dd)
                num_chs, reduction = out_chs, reduction * 2
            layers["block"] = DenseBlock(
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
            **dd,
        )
        for m in self.modules():  # the torchvision / timm DenseNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


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
