"""What the CIFAR model families share: CIFAR-10 normalisation, the default pretrained cfg, ``CifarStageNet``, and the
two network options every family takes: input patch whitening (``whiten=True``) and identity init (``dirac_init=True``).

``fractalnet.py``, ``resnet_cifar.py`` and ``densenet_cifar.py`` are siblings: each imports this module, none imports
another family.
"""

from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CifarStageNet", "PatchWhitening", "cifar_cfg", "dirac_init_",
           "fit_whitening", "whitening"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg for a CIFAR-10 model: 32x32 inputs, 8x8 final map, CIFAR-10 normalisation."""
    return {
        "url": url,
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "stem.0",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


class PatchWhitening(nn.Module):
    """A fixed 3x3 convolution that whitens the image's 3x3 patches: its filters are the eigenvectors of the patch
    covariance scaled by 1/sqrt(eigenvalue), so the next layer sees decorrelated inputs of unit variance (the
    patch-whitening stem of Page's ResNet-9 and Jordan's airbench, with padding 1 so 32x32 stays 32x32).

    The filters are a buffer, not parameters: nothing trains them, they are saved and exported with the weights, and
    a model's parameter count and gradients are those of its trained layers. Until :meth:`fit` the filters are the
    patch's pixels themselves (one one-hot filter per pixel and channel): an invertible map, not a whitening.
    """

    def __init__(self, in_chans: int = 3, eps: float = 5e-4, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.in_chans, self.out_chans, self.eps = in_chans, in_chans * 9, eps
        eye = torch.eye(self.out_chans, device=device, dtype=dtype)
        self.register_buffer("weight", eye.reshape(self.out_chans, in_chans, 3, 3))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from ``images`` (N, C, H, W), normalised as the model sees them."""
        patches = F.unfold(images.float(), 3).transpose(1, 2).reshape(-1, self.out_chans)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
        filters = (eigenvectors / (eigenvalues.clamp(min=0) + self.eps).sqrt()).T
        self.weight.copy_(filters.reshape_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


def whitening(whiten: bool, in_chans: int, dd: dict[str, Any]) -> tuple[nn.Module, int]:
    """A family's input module and the channels its first layer then reads: patch whitening or the image as it is."""
    if not whiten:
        return nn.Identity(), in_chans
    module = PatchWhitening(in_chans, **dd)
    return module, module.out_chans


def fit_whitening(model: nn.Module, images: Union[torch.Tensor, Callable[[], torch.Tensor]]) -> int:
    """Fit every :class:`PatchWhitening` in ``model`` to ``images`` (normalised as the model sees them; a callable
    is called only if the model has one); returns how many it fitted. The engine calls it on training images before
    the first step; a loop of one's own calls it too."""
    modules = [m for m in model.modules() if isinstance(m, PatchWhitening)]
    if modules and callable(images):
        images = images()
    for module in modules:
        module.fit(images.to(module.weight.device))
    return len(modules)


def dirac_init_(model: nn.Module) -> None:
    """Identity init: in every convolution, the first min(in, out) filters pass their input channel through unchanged
    (``torch.nn.init.dirac_``); the others keep the family's init. A deep network then starts near the identity map."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            nn.init.dirac_(m.weight[:min(m.out_channels, m.in_channels)])


class ClassifierHeadMixin:
    """timm's classifier contract over a ``self.head`` (``timm.layers.ClassifierHead``) and ``self.num_features``,
    shared by every family here."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0`` removes it; ``global_pool=''`` keeps the 4-D feature map)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features)
        self.head_hidden_size = self.head.num_features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, dropout and classifier (``pre_logits`` stops before the classifier)."""
        return self.head(x, pre_logits=pre_logits)


class CifarStageNet(ClassifierHeadMixin, nn.Module):
    """stem → stages → norm_pre → head, with the timm model contract for the CIFAR baseline families.

    Subclasses build the input whitening (:func:`whitening`), the stem, the stages (an ``nn.Sequential`` of
    ``nn.Sequential`` stages, one feature tap per stage) and the optional final norm, then hand them here; everything
    timm expects of a model lives here once.
    """

    def __init__(
            self,
            stem: nn.Module,
            stages: nn.Sequential,
            feature_info: list[dict[str, Any]],
            num_classes: int,
            in_chans: int,
            global_pool: str,
            drop_rate: float,
            norm_pre: Optional[nn.Module] = None,
            whiten: Optional[nn.Module] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.whiten = whiten if whiten is not None else nn.Identity()  # before the stem: the order features_only runs
        self.stem = stem
        self.stages = stages
        self.norm_pre = norm_pre if norm_pre is not None else nn.Identity()
        self.feature_info = feature_info
        self.num_features = feature_info[-1]["num_chs"]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   device=device, dtype=dtype)
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem, then one group per block (or per stage if coarse)."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.transition", (0,)),  # DenseNet transitions open their stage
                (r"^stages\.(\d+)\.(?:block\.denselayer)?(\d+)", None),  # ResNet blocks / DenseNet layers
                (r"^norm_pre", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Stage outputs (last n if int, all if None, else the given indices) and optionally the final features.

        ``norm`` applies the final norm (DenseNet-BC only) to the last stage's output.
        """
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(self.whiten(x))
        last_idx = len(self.stages) - 1
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[: max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, list[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and the head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm_pre = nn.Identity()  # the final norm is sized for (and only applied to) the last stage
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before global pooling."""
        x = self.stem(self.whiten(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.norm_pre(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)
