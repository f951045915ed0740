"""What the CIFAR model families share: CIFAR-10 normalisation, the default pretrained cfg, and ``CifarStageNet``.

``fractalnet.py``, ``resnet_cifar.py`` and ``densenet_cifar.py`` are siblings: each imports this module, none imports
another family.
"""

from typing import Any, Optional, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CifarStageNet", "cifar_cfg"]

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

    Subclasses build the stem, the stages (an ``nn.Sequential`` of ``nn.Sequential`` stages, one feature tap per
    stage) and the optional final norm, then hand them here; everything timm expects of a model lives here once.
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
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
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
        x = self.stem(x)
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
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.norm_pre(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)
