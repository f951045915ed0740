"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2) as timm models: the baselines FractalNet is compared against.

Paper: `Deep Residual Learning for Image Recognition` - https://arxiv.org/abs/1512.03385

Depth 6n+2: a 3x3 conv stem with 16 channels, then 3 stages of n basic blocks with 16/32/64 channels at strides
1/2/2, global average pooling and a linear classifier. Two shortcut options:

* ``'A'`` (default, the paper's CIFAR setting): parameter-free identity; where the shape changes the input is
  subsampled by the stride and zero channels are appended (as in fb.resnet.torch). This gives the paper's counts:
  ResNet-20 0.27M, ResNet-32 0.46M, ResNet-44 0.66M, ResNet-56 0.85M, ResNet-110 1.7M.
* ``'B'``: a 1x1 conv + BN projection where the shape changes, identity elsewhere (slightly more parameters).

The blocks are timm's own ``BasicBlock`` (``FoldedBasicBlock`` runs eval-mode inference with each batch norm folded
into its conv, ``models/fold.py``); ``drop_path_rate`` is stochastic depth on the residual branches with
timm's linear decay rule. ``models/cifar.py``'s ``CifarStageNet`` holds the timm model contract (features,
intermediates, pruning, head reset, grad checkpointing) shared with the CIFAR DenseNet-BC in ``densenet_cifar.py``.
"""

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerType,
    calculate_drop_path_rates,
    create_conv2d,
    get_act_layer,
    get_norm_act_layer,
    get_norm_layer,
    register_notrace_module,
)
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from timm.models.resnet import BasicBlock, downsample_conv

from fractal_space.models.cifar import CifarStageNet, cifar_cfg, dirac_init_, whitening
from fractal_space.models.fold import (
    FoldCache,
    FoldingModule,
    activation,
    folded_conv,
    folds,
    reparameterized_conv,
)

__all__ = ["ResNetCifar"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by the stride and append zero channels, so the shortcut adds no parameters."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        assert out_chs >= in_chs, "option-A shortcuts can only widen"
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad_chs))


@register_notrace_module  # a leaf of timm-traced graphs, which then fold like eager inference
class FoldedBasicBlock(FoldingModule, BasicBlock):
    """timm's ``BasicBlock`` (same parameters and names) whose eager inference runs both convs with their batch
    norms folded in (``models/fold.py``); training, scripting and tracing run timm's conv -> BN order (timm's FX
    tracer calls the block as a leaf)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fold1, self.fold2 = FoldCache(), FoldCache()

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> (drop_block) -> act1 -> aa -> conv2 -> bn2, each conv + BN as one conv in inference."""
        if not torch.jit.is_scripting():
            if folds(self.bn1, x):  # drop_block is the identity in eval mode
                x = activation(self.act1, folded_conv(self.conv1, self.bn1, self.fold1, x))
                return folded_conv(self.conv2, self.bn2, self.fold2, self.aa(x))
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        return self.bn2(self.conv2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self._convs(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """Each conv + BN as one biased conv, in place (``timm.utils.reparameterize_model``)."""
        for conv, bn, cache in (("conv1", "bn1", self.fold1), ("conv2", "bn2", self.fold2)):
            if getattr(getattr(self, bn), "running_var", None) is not None:
                setattr(self, conv, reparameterized_conv(getattr(self, conv), getattr(self, bn)))
                setattr(self, bn, nn.Identity())
            cache.clear()


def make_shortcut(
        in_chs: int,
        out_chs: int,
        stride: int,
        shortcut_type: str,
        norm_layer: type[nn.Module],
        dd: dict[str, Any],
) -> Optional[nn.Module]:
    """The shortcut of a block whose shape changes (None, i.e. identity, where it does not)."""
    if stride == 1 and in_chs == out_chs:
        return None
    if shortcut_type == "A":
        return ZeroPadShortcut(in_chs, out_chs, stride)
    if shortcut_type == "B":
        return downsample_conv(in_chs, out_chs, kernel_size=1, stride=stride, norm_layer=norm_layer, **dd)
    raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")


def make_stage(
        in_chs: int,
        out_chs: int,
        depth: int,
        stride: int,
        shortcut_type: str,
        drop_path_rates: list[float],
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        dd: dict[str, Any],
) -> nn.Sequential:
    """One stage: ``depth`` basic blocks, the first one carrying the stride and the widening shortcut."""
    blocks = []
    for i in range(depth):
        blocks.append(FoldedBasicBlock(
            in_chs if i == 0 else out_chs,
            out_chs,
            stride=stride if i == 0 else 1,
            downsample=make_shortcut(in_chs, out_chs, stride, shortcut_type, norm_layer, dd) if i == 0 else None,
            act_layer=act_layer,
            norm_layer=norm_layer,
            drop_path=DropPath(drop_path_rates[i]) if drop_path_rates[i] > 0.0 else None,
            **dd,
        ))
    return nn.Sequential(*blocks)


class ResNetCifar(CifarStageNet):
    """ResNet for 32x32 inputs (He et al. 2016, Sec. 4.2): depth 6n+2 with ``depths=(n, n, n)``."""

    def __init__(
            self,
            depths: tuple[int, ...] = (3, 3, 3),
            channels: tuple[int, ...] = (16, 32, 64),
            shortcut_type: str = "A",
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            act_layer: LayerType = "relu",
            norm_layer: LayerType = "batchnorm2d",
            whiten: bool = False,
            dirac_init: bool = False,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        """``whiten``: a fixed 3x3 patch-whitening conv before the stem (:class:`~.cifar.PatchWhitening`, fitted by
        the engine); ``dirac_init``: every conv starts as near an identity map as its shape allows
        (:func:`~.cifar.dirac_init_`). Both are off by default, as in the original network."""
        dd = {"device": device, "dtype": dtype}
        act_layer = get_act_layer(act_layer)
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer=act_layer)
        norm_layer = get_norm_layer(norm_layer)  # timm's BasicBlock applies its activations itself
        whiten_module, stem_chs = whitening(whiten, in_chans, dd)
        stem = nn.Sequential(create_conv2d(stem_chs, channels[0], 3, **dd), norm_act_layer(channels[0], **dd))
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)  # per stage, per block
        stages, feature_info = [], []
        in_chs, reduction = channels[0], 1
        for i, (depth, out_chs) in enumerate(zip(depths, channels, strict=True)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            stages.append(make_stage(
                in_chs, out_chs, depth, stride, shortcut_type, dp_rates[i], act_layer, norm_layer, dd))
            feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
            in_chs = out_chs
        super().__init__(stem, nn.Sequential(*stages), feature_info, num_classes, in_chans, global_pool, drop_rate,
                         whiten=whiten_module, **dd)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if dirac_init:
            dirac_init_(self)


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """Build a registered variant through timm (pretrained weights, features_only, cfg handling)."""
    return build_model_with_cfg(
        ResNetCifar,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "resnet20_cifar.untrained": cifar_cfg(),
    "resnet32_cifar.untrained": cifar_cfg(),
    "resnet44_cifar.untrained": cifar_cfg(),
    "resnet56_cifar.untrained": cifar_cfg(),
    "resnet110_cifar.untrained": cifar_cfg(),
})


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-20 (n=3, 0.27M parameters)."""
    model_args = dict(depths=(3, 3, 3))
    return _create_resnet_cifar("resnet20_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-32 (n=5, 0.46M parameters)."""
    model_args = dict(depths=(5, 5, 5))
    return _create_resnet_cifar("resnet32_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-44 (n=7, 0.66M parameters)."""
    model_args = dict(depths=(7, 7, 7))
    return _create_resnet_cifar("resnet44_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-56 (n=9, 0.85M parameters)."""
    model_args = dict(depths=(9, 9, 9))
    return _create_resnet_cifar("resnet56_cifar", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-110 (n=18, 1.7M parameters)."""
    model_args = dict(depths=(18, 18, 18))
    return _create_resnet_cifar("resnet110_cifar", pretrained, **dict(model_args, **kwargs))
