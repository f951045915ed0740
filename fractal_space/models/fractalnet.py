"""FractalNet (Larsson, Maire, Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without Residuals", ICLR 2017).

A block with C columns follows the expansion rule ``f_1(z) = conv(z)``, ``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))``:
column j (1 = shallowest) holds 2^(j-1) conv units and the longest path 2^(C-1). Neighbouring joins are collapsed, so
every join is one *flat* operation over all columns that meet there. A block is unrolled into 2^(C-1) steps; at
step d the columns whose conv span divides d each apply one conv unit and are joined, and the join output becomes the
next input of every one of those columns.

Drop-path follows the paper: per mini-batch, with probability ``global_drop_fraction`` one column is chosen for the
whole network (global), otherwise each join input is dropped with probability ``drop_path_rate`` with at least one
survivor per join (local). All random numbers for a step are drawn in one call on the input's device and read back
once. Dropped work is never computed: a backward pass over each block's steps marks the conv units whose output
reaches the block output, and only those run. Global column k therefore costs exactly column k's FLOPs.

Choices where the paper leaves room (documented in the README):
* each block ends with one 2x2 max-pool after its last join (the authors pooled every column before that join);
* weights use Xavier (Glorot) uniform init as in the paper (``init='kaiming'`` for He init);
* ``drop_path_rate`` is off by default like every timm model; when it is > 0 the paper's local/global mix applies.
"""

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, get_norm_act_layer
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from fractal_space.core.paper import (
    BLOCK_DROPOUT,
    DROP_PATH_RATE,
    GLOBAL_DROP_FRACTION,
    JOINS,
    MAX_COLUMNS,
    PATH_SAMPLINGS,
    check_rate,
    paper_block_dropout,
)
from fractal_space.models import fractalnet_paths
from fractal_space.models.anytime import reestimate_bn_stats
from fractal_space.models.cifar import CifarStageNet, ClassifierHeadMixin, cifar_cfg, dirac_init_, whitening
from fractal_space.models.cpu_conv import SmallMapConv2d, cpu_prefers_channels_last
from fractal_space.models.fold import FoldedConvNormAct, eager_inference

# paper_block_dropout lives in fractal_space.core.paper; it stays importable from here for existing callers.
__all__ = ["FractalNet", "FractalColumn", "paper_block_dropout"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
INIT_TYPES = ("xavier", "kaiming")
STEM_TYPES = ("none", "resnet")
EVAL_BN_REFRESH_BYTES = 12 * 2 ** 20  # training inputs kept for the eval-mode BN refresh: 1024 CIFAR images in fp32


def _conv_unit(in_chs: int, out_chs: int, norm_layer: Any, act_layer: Any, dd: dict[str, Any]) -> FoldedConvNormAct:
    """conv 3x3 -> BN -> ReLU; the conv trains faster on small wide maps on CPU (``cpu_conv.SmallMapConv2d``), and
    eager eval-mode inference runs it with the BN folded in (``fold.FoldedConvNormAct``)."""
    unit = FoldedConvNormAct(in_chs, out_chs, 3, norm_layer=norm_layer, act_layer=act_layer, **dd)
    unit.conv = SmallMapConv2d(in_chs, out_chs, **dd)
    return unit


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _stem(stem: str, in_chans: int, stem_width: int, norm_act_layer: Any,
          dd: dict[str, Any]) -> tuple[nn.Module, int, int]:
    """The stem, its output channels and stride: none (CIFAR) or ResNet's 7x7/2 conv + 3x3/2 max-pool (ImageNet)."""
    if stem == "resnet":
        return nn.Sequential(
            FoldedConvNormAct(in_chans, stem_width, 7, stride=2, norm_layer=norm_act_layer, **dd),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ), stem_width, 4
    return nn.Identity(), in_chans, 1


def _init_weights(model: nn.Module, init: str, dirac_init: bool) -> None:
    """Xavier uniform (paper) or He normal for convs and linears; BN to identity; then, with ``dirac_init``, each
    conv's first filters to identity maps (:func:`~.cifar.dirac_init_`)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if dirac_init:
        dirac_init_(model)


def _check_layout(num_blocks: int, widths: Sequence[int], stem: str, init: str, drop_rate: float) -> tuple[int, ...]:
    """The arguments a FractalNet and a plain column share, checked with one-line errors; returns ``widths``."""
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks={num_blocks!r} must be an integer >= 1")
    widths = tuple(widths)
    if len(widths) != num_blocks or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"widths={widths!r} must be {num_blocks} positive integers (one per block)")
    for name, value, choices in (("init", init, INIT_TYPES), ("stem", stem, STEM_TYPES)):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {choices}")
    check_rate("drop_rate", drop_rate, BLOCK_DROPOUT)  # a dropout probability, like the per-block ones
    return widths


def _check_columns(num_columns: int) -> int:
    """C, the columns per block."""
    if not isinstance(num_columns, int) or not 1 <= num_columns <= MAX_COLUMNS:
        raise ValueError(f"num_columns={num_columns!r} must be an integer in [1, {MAX_COLUMNS}]")
    return num_columns


def _check_block_dropout(block_dropout: Sequence[float], num_blocks: int) -> tuple[float, ...]:
    """One dropout probability per block."""
    block_dropout = tuple(block_dropout)
    if len(block_dropout) != num_blocks:
        raise ValueError(f"block_dropout={block_dropout!r} must have {num_blocks} entries (one per block)")
    for i, p in enumerate(block_dropout):
        check_rate(f"block_dropout[{i}]", p, BLOCK_DROPOUT)
    return block_dropout


def _true_at(flags: list[bool]) -> list[int]:
    """Indices of the True entries (TorchScript compiles no comprehension with ``if``)."""
    out: list[int] = []
    for i, flag in enumerate(flags):
        if flag:
            out.append(i)
    return out


class Join(nn.Module):
    """Flat join of the surviving inputs of one step: mean (paper), sum or element-wise max; no parameters."""

    def __init__(self, mode: str = "mean"):
        super().__init__()
        self.mode = mode

    def forward(self, xs: list[torch.Tensor], cols: list[int]) -> torch.Tensor:
        if len(xs) == 1:
            return xs[0]
        if self.mode == "max":
            out = torch.maximum(xs[0], xs[1])
            for x in xs[2:]:
                out = torch.maximum(out, x)
            return out
        out = xs[0] + xs[1]
        if not torch.jit.is_scripting():
            if eager_inference(out):  # in place: 5-9% of a C=3 / C=4 eval at batch 64
                for x in xs[2:]:
                    out.add_(x)
                return out.mul_(1.0 / len(xs)) if self.mode == "mean" else out
        for x in xs[2:]:  # out of place for autograd, FX, tracing and compiling (see eager_inference)
            out = out + x
        if self.mode == "mean":
            out = out * (1.0 / len(xs))
        return out


class ConcatJoin(nn.Module):
    """Concatenation followed by a 1x1 projection (+ BN) back to the block width.

    A dropped input contributes exactly what a zero tensor in its slot would: nothing. So only the surviving inputs
    are concatenated and multiplied with the matching slices of the projection weight. ``columns`` are the columns
    that feed the join, in slot order (a sub-fractal's join has only its kept columns' slots).
    """

    columns: list[int]

    def __init__(
            self,
            width: int,
            columns: Sequence[int],
            norm_layer: Any = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.width = width
        self.columns = list(columns)
        self.num_inputs = len(self.columns)
        self.proj = nn.Conv2d(width * self.num_inputs, width, kernel_size=1, bias=False, **dd)
        self.bn = norm_layer(width, apply_act=False, **dd)

    def slot(self, column: int) -> int:
        """Position of ``column``'s input in the concatenation (its slice of the projection weight)."""
        for s, c in enumerate(self.columns):
            if c == column:
                return s
        return -1

    def input_weight(self, column: int) -> torch.Tensor:
        """The projection weight's slice that ``column``'s input meets."""
        lo = self.slot(column) * self.width
        return self.proj.weight[:, lo:lo + self.width]

    def forward(self, xs: list[torch.Tensor], cols: list[int]) -> torch.Tensor:
        if len(xs) == self.num_inputs:
            return self.bn(self.proj(torch.cat(xs, dim=1)))
        slices = [self.input_weight(c) for c in cols]
        weight = slices[0] if len(slices) == 1 else torch.cat(slices, dim=1)
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        return self.bn(F.conv2d(x, weight))


class FractalStep(nn.Module):
    """One depth step of a block: a conv unit for each column ``cols`` of ``first_col..C-1`` (all of them, except in
    a sub-fractal), then their join. ``in_chs`` are those convs' input channels, in the same order."""

    cols: list[int]

    def __init__(
            self,
            in_chs: list[int],
            out_chs: int,
            cols: list[int],
            first_col: int,
            num_columns: int,
            join: str,
            norm_layer: Any,
            act_layer: Any,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.cols = list(cols)
        self.first_col = first_col
        self.num_columns = num_columns
        self.convs = nn.ModuleList([_conv_unit(c_in, out_chs, norm_layer, act_layer, dd) for c_in in in_chs])
        # A sub-fractal's step without a kept column computes nothing, and its join (no parameters) is never called.
        self.join = (ConcatJoin(out_chs, cols, norm_layer=norm_layer, **dd) if join == "concat" and cols
                     else Join("mean" if join == "concat" else join))

    def conv_of(self, column: int) -> nn.Module:
        """The conv unit of ``column`` (0-based) at this step."""
        return self.convs[self.cols.index(column)]

    def forward(self, states: list[torch.Tensor], needed: list[bool]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        cols: list[int] = []
        for j, conv in enumerate(self.convs):
            c = self.cols[j]
            if needed[c]:
                outs.append(conv(states[c]))
                cols.append(c)
        if len(outs) > 0:
            y = self.join(outs, cols)
            for c in range(self.first_col, self.num_columns):
                states[c] = y
        return states


class FractalBlock(nn.Module):
    """``f_C`` unrolled into 2^(C-1) steps with flat joins, then 2x2 max-pool and optional dropout.

    ``columns`` (0-based; default all) keeps only those columns, a sub-fractal block: the other columns' conv units
    are not built, and every join merges the kept columns that meet there. A kept column's convs read only joins of
    kept columns, so this equals the full block with the other columns' join inputs always dropped.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            num_columns: int,
            join: str = "mean",
            dropout: float = 0.0,
            downsample: bool = True,
            norm_layer: Any = nn.BatchNorm2d,
            act_layer: Any = nn.ReLU,
            columns: Optional[Sequence[int]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_columns = num_columns
        self.kept: list[bool] = [columns is None or c in columns for c in range(num_columns)]
        depth = 2 ** (num_columns - 1)
        # Column c (0 = shallowest) applies one conv every span[c] steps; it joins whenever its conv ends.
        self.spans: list[int] = [2 ** (num_columns - 1 - c) for c in range(num_columns)]
        self.first_cols: list[int] = []
        self.offsets: list[int] = []  # offset of each step's join inputs in the block's flat keep list
        steps = []
        seen = [False] * num_columns
        n_inputs = 0
        for d in range(1, depth + 1):
            first = min(c for c in range(num_columns) if d % self.spans[c] == 0)
            cols = [c for c in range(first, num_columns) if self.kept[c]]
            in_chs_step = [out_chs if seen[c] else in_chs for c in cols]
            for c in cols:
                seen[c] = True
            steps.append(FractalStep(in_chs_step, out_chs, cols, first, num_columns, join, norm_layer, act_layer,
                                     **dd))
            self.first_cols.append(first)
            self.offsets.append(n_inputs)
            n_inputs += num_columns - first
        self.steps = nn.ModuleList(steps)
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()
        self.drop = _dropout(dropout)
        self.all_needed: list[list[bool]] = [[c >= first and self.kept[c] for c in range(num_columns)]
                                             for first in self.first_cols]
        self.grad_checkpointing = False
        self.channels_last: Optional[bool] = None  # layout the block's input is brought to; None leaves it as is

    def needed(self, keep: list[bool]) -> list[list[bool]]:
        """Which conv units (per step, per column) feed the block output given the join inputs that are kept.

        Walks the steps backwards from the last join: a join is needed if a needed conv reads it, a conv is needed
        if its join is needed and keeps it. Everything else is skipped.
        """
        depth = len(self.first_cols)
        join_needed = [False] * depth
        join_needed[depth - 1] = True
        out: list[list[bool]] = [[False] * self.num_columns for _ in range(depth)]
        for d in range(depth - 1, -1, -1):
            if join_needed[d]:
                first = self.first_cols[d]
                for c in range(first, self.num_columns):
                    if keep[self.offsets[d] + c - first]:
                        out[d][c] = True
                        src = d - self.spans[c]
                        if src >= 0:
                            join_needed[src] = True
        return out

    def column_keep(self, column: int) -> list[bool]:
        """Keep list for global drop-path: only ``column`` (0-based) survives at every join."""
        keep: list[bool] = []
        for first in self.first_cols:
            for c in range(first, self.num_columns):
                keep.append(c == column)
        return keep

    def forward(self, x: torch.Tensor, keep: Optional[list[bool]] = None) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(self._forward, x, keep)
        return self._forward(x, keep)

    def _forward(self, x: torch.Tensor, keep: Optional[list[bool]]) -> torch.Tensor:
        if self.channels_last is not None:
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        needed = self.all_needed if keep is None else self.needed(keep)
        states = [x for _ in range(self.num_columns)]
        for d, step in enumerate(self.steps):
            states = step(states, needed[d])
        return self.drop(self.pool(states[self.num_columns - 1]))


class FractalNet(ClassifierHeadMixin, nn.Module):
    """FractalNet with flat joins, paper drop-path that skips dropped work, and the full timm model interface.

    ``forward(x, column=k)`` evaluates column k (1 = shallowest) alone; :meth:`extract_column` returns it as a
    standalone plain network.

    Eval-mode batch-norm statistics are right in any training loop. Running statistics gathered under drop-path
    describe single columns and subsets of join inputs, not the all-paths network eval runs. So while training with
    drop-path (or with ``column=k``) the model keeps its newest training inputs, at most ``eval_bn_refresh_bytes``
    (default 12 MiB: 1024 CIFAR images in fp32, 20 at 224x224), and the first ``eval()`` after such steps re-estimates
    the all-paths statistics from them (:meth:`refresh_bn_stats`; no grad, no random numbers, parameters untouched).
    Further ``eval()`` calls without training in between cost nothing. ``eval_bn_refresh=False`` turns it off. A
    TorchScript or FX-traced copy neither keeps inputs nor refreshes itself. It shares this model's tensors, so
    ``eval()`` on the eager model refreshes the copy too; a copy trained on its own needs
    :func:`fractal_space.models.anytime.reestimate_bn_stats`.

    Eval-mode inference without autograd runs every conv unit as one conv with its BN folded in (``models/fold.py``;
    refolded after the refresh or any weight change, dropped by ``train()``); ``timm.utils.reparameterize_model``
    makes that permanent for deployment.
    """

    def __init__(
            self,
            num_classes: int = 1000,
            in_chans: int = 3,
            num_blocks: int = 5,
            num_columns: int = 4,
            widths: Sequence[int] = (16, 32, 64, 128, 128),
            join: str = "mean",
            block_dropout: Optional[Sequence[float]] = None,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_drop_fraction: float = 0.5,
            paths: Optional[Sequence[Sequence[int]]] = None,
            path_sampling: str = "none",
            global_pool: str = "avg",
            stem: str = "none",
            stem_width: int = 64,
            downsample_last: bool = True,
            img_size: Optional[Union[int, Sequence[int]]] = None,
            init: str = "xavier",
            dirac_init: bool = False,
            whiten: bool = False,
            eval_bn_refresh: bool = True,
            eval_bn_refresh_bytes: int = EVAL_BN_REFRESH_BYTES,
            norm_layer: Any = "batchnorm2d",
            act_layer: Any = "relu",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            num_classes: classifier outputs (0 for none).
            in_chans: input image channels.
            num_blocks: B, number of fractal blocks (each followed by a 2x2 max-pool).
            num_columns: C, columns per block; the longest path of a block has 2^(C-1) conv units.
            widths: channels of every conv unit in each block (length B).
            join: 'mean' (paper), 'sum', 'max' or 'concat' (+ 1x1 projection).
            block_dropout: dropout after each block (length B); the paper uses (0, .1, .2, .3, .4) with drop-path.
            drop_rate: dropout before the classifier (timm's ``--drop``).
            drop_path_rate: local drop-path rate p, the probability of dropping each join input (timm's
                ``--drop-path``; the paper uses 0.15). 0 disables drop-path entirely.
            global_drop_fraction: share of mini-batches that use global drop-path when drop-path is on (paper 0.5).
            paths: a sub-fractal: per block, the columns kept (1 = shallowest; each a non-empty set within 1..C).
                Only the kept columns' conv units are built, and each join merges the kept inputs that meet there:
                the network equals the full one with the other columns' join inputs always dropped. None: all.
            path_sampling: 'uniform' trains this network as a one-shot supernet: each training mini-batch first
                draws a sub-fractal (per block a uniform non-empty subset of its columns), then drop-path, if on,
                acts within it. 'none' (default): drop-path alone.
            global_pool: timm global pool type ('avg', 'max', '' for none, ...).
            stem: 'none' (CIFAR: blocks see the image) or 'resnet' (ImageNet: 7x7/2 conv + 3x3/2 max-pool).
            stem_width: channels of the resnet stem.
            downsample_last: pool after the last block too (CIFAR layout) or not (ImageNet layout).
            img_size: if given, checked to survive all the pooling (one int or (H, W)).
            init: 'xavier' (paper) or 'kaiming'.
            dirac_init: after ``init``, each conv's first min(in, out) filters pass their input channel through
                (identity init, :func:`~.cifar.dirac_init_`); off in the paper.
            whiten: a fixed 3x3 patch-whitening conv before the stem (:class:`~.cifar.PatchWhitening`, which the
                engine fits to training images before the first step); the first layer then reads 9 x ``in_chans``
                channels. Off in the paper.
            eval_bn_refresh: re-estimate the all-paths batch-norm statistics on the first ``eval()`` after training
                steps with drop-path (see the class docstring); False keeps the running statistics as trained.
            eval_bn_refresh_bytes: memory bound of the training inputs kept for that refresh.
            device, dtype: where and in which dtype parameters and buffers are created (timm's factory kwargs;
                ``device="meta"`` builds without memory).
        """
        super().__init__()
        _check_columns(num_columns)
        if join not in JOINS:
            raise ValueError(f"join={join!r} is not one of {JOINS}")
        widths = _check_layout(num_blocks, widths, stem, init, drop_rate)
        self.paths = fractalnet_paths.check_paths(paths, num_blocks, num_columns)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_blocks = num_blocks
        self.num_columns = num_columns
        self.widths = widths
        self.join = join
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer)
        dd = {"device": device, "dtype": dtype}

        self.whiten, image_chs = whitening(whiten, in_chans, dd)
        self.stem, prev_chs, reduction = _stem(stem, image_chs, stem_width, norm_act_layer, dd)
        self.stem_stride = reduction
        # what a column needs to be rebuilt as a plain network (``column_args``)
        self.plain_args = dict(stem=stem, stem_width=stem_width, downsample_last=downsample_last, whiten=whiten,
                               norm_layer=norm_layer, act_layer=act_layer)
        self.feature_info = []
        blocks = []
        for i, width in enumerate(widths):
            downsample = downsample_last or i < num_blocks - 1
            columns = None if self.paths is None else [c - 1 for c in self.paths[i]]
            blocks.append(FractalBlock(prev_chs, width, num_columns, join=join, downsample=downsample,
                                       norm_layer=norm_act_layer, act_layer=act_layer, columns=columns, **dd))
            reduction *= 2 if downsample else 1
            prev_chs = width
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"blocks.{i}"))
        self.blocks = nn.Sequential(*blocks)
        self.min_input_size = (4 if stem == 'resnet' else 1) * 2 ** (num_blocks if downsample_last else num_blocks - 1)
        if img_size is not None:
            hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            if min(hw) < self.min_input_size:
                raise ValueError(f"img_size={img_size!r} is too small for {num_blocks} blocks of 2x2 pooling; "
                                 f"the input must be at least {self.min_input_size}x{self.min_input_size}")
        self.num_features = prev_chs
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features  # pooled width: 2x num_features for 'catavgmax'
        self._build_plan_tables()
        self.eval_bn_refresh = eval_bn_refresh
        self.eval_bn_refresh_bytes = eval_bn_refresh_bytes
        self.bn_stats_stale = False  # training steps off the all-paths network since the last re-estimation
        self._bn_inputs = []  # the kept training inputs (no annotation: TorchScript would warn on an empty list)
        self.set_regularization(drop_path_rate, global_drop_fraction, block_dropout, path_sampling)
        _init_weights(self, init, dirac_init)

    # ---- timm interface -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.steps\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for block in self.blocks:
            block.grad_checkpointing = enable

    @torch.jit.ignore
    def set_memory_format(
            self, memory_format: str = "auto", input_size: Optional[Union[int, Sequence[int]]] = None
    ) -> None:
        """Lay out weights and activations per block: 'channels_last', 'contiguous' (NCHW) or 'auto'.

        oneDNN's best layout on CPU depends on width and spatial size, so 'auto' (the engine's CPU default) chooses
        per block with :func:`cpu_prefers_channels_last`, for inputs of ``input_size`` (H, W or one int; default: the
        pretrained_cfg's). Each block brings its input to its layout, so any input layout works. On CUDA use
        'channels_last'. ``model.to(memory_format=...)`` afterwards overrides the weights' layout.
        """
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format={memory_format!r} is not one of {MEMORY_FORMATS}")
        if memory_format != "auto":
            choice = [memory_format == "channels_last"] * len(self.blocks)
        else:
            if input_size is None:
                input_size = (getattr(self, "pretrained_cfg", None) or {}).get("input_size", (None,))[-2:]
            size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
            if len(size) != 2 or not all(isinstance(s, int) and s >= self.min_input_size for s in size):
                raise ValueError(f"input_size={size!r} must be (H, W), each an integer >= {self.min_input_size}")
            size = -(-size[0] // self.stem_stride), -(-size[1] // self.stem_stride)
            choice = []
            for block, width in zip(self.blocks, self.widths, strict=True):
                choice.append(cpu_prefers_channels_last(width, size))
                if isinstance(block.pool, nn.MaxPool2d):
                    size = size[0] // 2, size[1] // 2
        # Outside the blocks only the whitening and the stem have 4-D weights; each block is converted once, to its own
        # layout.
        for module in (self.whiten, self.stem):
            module.to(memory_format=torch.channels_last if choice[0] else torch.contiguous_format)
        for block, cl in zip(self.blocks, choice, strict=True):
            block.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            block.channels_last = cl

    # ---- drop-path ------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def block_dropout_rates(self) -> list[float]:
        """The dropout probability after each block, as set (the ``block_dropout`` argument's current value)."""
        return [float(getattr(block.drop, "p", 0.0)) for block in self.blocks]

    @torch.jit.ignore
    def set_regularization(
            self,
            drop_path_rate: Optional[float] = None,
            global_drop_fraction: Optional[float] = None,
            block_dropout: Optional[Sequence[float]] = None,
            path_sampling: Optional[str] = None,
    ) -> None:
        """Set drop-path, per-block dropout and supernet path sampling on a built model (a training preset, a
        schedule); None keeps a value.

        Validated like the constructor, which calls it; parameters and their names do not change.
        """
        if drop_path_rate is not None:
            check_rate("drop_path_rate", drop_path_rate, DROP_PATH_RATE)
            self.drop_path_rate = drop_path_rate
        if global_drop_fraction is not None:
            check_rate("global_drop_fraction", global_drop_fraction, GLOBAL_DROP_FRACTION)
            self.global_drop_fraction = global_drop_fraction
        if block_dropout is not None:
            block_dropout = _check_block_dropout(block_dropout, len(self.blocks))
            for block, p in zip(self.blocks, block_dropout, strict=True):
                block.drop = _dropout(p)
        if path_sampling is not None:
            if path_sampling not in PATH_SAMPLINGS:
                raise ValueError(f"path_sampling={path_sampling!r} is not one of {PATH_SAMPLINGS}")
            self.path_sampling = path_sampling

    def _build_plan_tables(self) -> None:
        """Plain-list copies of each block's step layout, so sampling a plan touches no module (TorchScript)."""
        self.step_first_cols: list[list[int]] = [list(block.first_cols) for block in self.blocks]
        self.block_kept: list[list[bool]] = [list(block.kept) for block in self.blocks]
        self.column_keeps: list[list[list[bool]]] = [
            [block.column_keep(c) for block in self.blocks] for c in range(self.num_columns)
        ]
        # columns kept in every block: the plain networks (anytime columns) a sub-fractal contains
        self.column_everywhere: list[bool] = [all(kept[c] for kept in self.block_kept) for c in range(self.num_columns)]

    def _plan(self, x: torch.Tensor, column: Optional[int]) -> Optional[list[list[bool]]]:
        """Per-block keep lists for this forward pass; None means every (kept) path is active.

        ``isinstance`` rather than ``is not None``: FX turns an unused ``column`` argument into a proxy, which must
        select the full network. A training pass off the all-paths network keeps its input for the eval refresh.
        """
        if isinstance(column, int):
            if column < 1 or column > self.num_columns:
                raise ValueError(f"column={column} is outside 1..{self.num_columns}")
            if not self.column_everywhere[column - 1]:
                raise ValueError(f"column={column} is not kept in every block of this sub-fractal")
            plan = self.column_keeps[column - 1]
        elif not self.training or (self.drop_path_rate <= 0.0 and self.path_sampling == "none"):
            return None
        else:
            plan = self._sample_plan(x.device)
        if self.training and not torch.jit.is_scripting():
            self._keep_for_bn_refresh(x)
        return plan

    def _sample_plan(self, device: torch.device) -> list[list[bool]]:
        """Draw one mini-batch's sample: all random numbers in one call on ``device``, read back once.

        With ``path_sampling='uniform'`` each block first draws a uniform non-empty subset of its (kept) columns.
        Drop-path then acts within those columns: global keeps one of them per block (the one at the same rank in
        every block: one column of a full network), local drops each of their join inputs with at least one
        survivor per join that has any.
        """
        num_inputs = 0
        num_joins = 0
        for firsts in self.step_first_cols:
            num_joins += len(firsts)
            for first in firsts:
                num_inputs += self.num_columns - first
        uniform = self.path_sampling == "uniform"
        subsets = 2 + num_inputs + num_joins
        u: list[float] = torch.rand(subsets + (len(self.block_kept) if uniform else 0), device=device).tolist()
        kept: list[list[bool]] = self.block_kept
        if uniform:
            kept = []
            for i, own in enumerate(self.block_kept):
                cols = _true_at(own)
                choices = (1 << len(cols)) - 1
                mask = min(int(u[subsets + i] * choices), choices - 1) + 1  # bit r: the r-th column is kept
                sampled = [False] * self.num_columns
                for r, c in enumerate(cols):
                    sampled[c] = (mask >> r) & 1 == 1
                kept.append(sampled)
        drop_path = self.drop_path_rate > 0.0
        if drop_path and u[0] < self.global_drop_fraction:
            one: list[list[bool]] = []
            for i, k in enumerate(kept):
                cols = _true_at(k)
                one.append(self.column_keeps[cols[min(int(u[1] * len(cols)), len(cols) - 1)]][i])
            return one
        plan: list[list[bool]] = []
        pos = 2
        join_pos = 2 + num_inputs
        for i, firsts in enumerate(self.step_first_cols):
            keep: list[bool] = []
            for first in firsts:
                n = self.num_columns - first
                step_keep: list[bool] = []
                survivors = 0
                inputs: list[int] = []  # the join's inputs from kept columns
                for j in range(n):
                    on = kept[i][first + j]
                    if on:
                        inputs.append(j)
                    k = on and (not drop_path or u[pos + j] >= self.drop_path_rate)
                    step_keep.append(k)
                    survivors += int(k)
                if survivors == 0 and len(inputs) > 0:  # at least one input of every join survives
                    step_keep[inputs[min(int(u[join_pos] * len(inputs)), len(inputs) - 1)]] = True
                keep.extend(step_keep)
                pos += n
                join_pos += 1
            plan.append(keep)
        return plan

    # ---- eval-mode batch-norm statistics ----------------------------------------------------------------------
    @torch.jit.unused
    def _keep_for_bn_refresh(self, x: torch.Tensor) -> None:
        """Mark the running statistics stale and keep a copy of ``x``, dropping the oldest inputs over the bound."""
        if isinstance(x, torch.fx.Proxy):  # tracing: the traced copy does not refresh
            return
        self.bn_stats_stale = True
        if not self.eval_bn_refresh:
            return
        n = min(len(x), self.eval_bn_refresh_bytes // (x[0].numel() * x.element_size()))
        if n == 0:
            return
        self._bn_inputs.append(x[:n].detach().clone())
        kept = sum(t.numel() * t.element_size() for t in self._bn_inputs)
        while kept > self.eval_bn_refresh_bytes:
            old = self._bn_inputs.pop(0)
            kept -= old.numel() * old.element_size()

    def train(self, mode: bool = True) -> "FractalNet":
        """Set train/eval mode; the first switch to eval after drop-path steps refreshes the BN statistics."""
        super().train(mode)
        if not mode and self.eval_bn_refresh and self.bn_stats_stale and self._bn_inputs:
            self.refresh_bn_stats()
        return self

    def refresh_bn_stats(self) -> int:
        """Re-estimate every batch-norm layer's running statistics through all paths from the kept training inputs.

        The exact average over the kept batches (:func:`fractal_space.models.anytime.reestimate_bn_stats`), without
        gradients; training mode, parameters and random state are as before. Returns the number of batches used.
        """
        weight = next(self.parameters())
        batches = [x.to(device=weight.device, dtype=weight.dtype) for x in self._bn_inputs]
        return reestimate_bn_stats(self, batches)

    # ---- forward --------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and min(x.shape[-2], x.shape[-1]) < self.min_input_size:
            raise ValueError(f"input of size {tuple(x.shape[-2:])} is too small for {self.num_blocks} blocks of 2x2 "
                             f"pooling; it must be at least {self.min_input_size}x{self.min_input_size}")

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            column: Optional[int] = None,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Forward features that also returns the output of each block (indices as in timm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; use 'NCHW'")
        if not torch.jit.is_scripting():
            self._check_input(x)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        plan = self._plan(x, column)
        x = self.stem(self.whiten(x))
        last = max_index if stop_early else len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if i > last:
                break
            x = block(x, None if plan is None else plan[i])
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, list[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and head) after the last requested intermediate."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        prune_end = max_index < len(self.blocks) - 1
        self.blocks = self.blocks[:max_index + 1]
        if self.paths is not None:
            self.paths = self.paths[:max_index + 1]
        self._build_plan_tables()
        self.num_features = self.widths[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor, column: Optional[int] = None) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        plan = self._plan(x, column)
        x = self.stem(self.whiten(x))
        for i, block in enumerate(self.blocks):
            x = block(x, None if plan is None else plan[i])
        return x

    def forward(self, x: torch.Tensor, column: Optional[int] = None) -> torch.Tensor:
        x = self.forward_features(x, column)
        return self.forward_head(x)

    # ---- anytime --------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def anytime_columns(self) -> list[int]:
        """The columns (1 = shallowest) that ``forward(x, column=k)`` and :meth:`extract_column` accept: every column
        of a full network, those kept in every block of a sub-fractal."""
        return [c + 1 for c in range(self.num_columns) if self.column_everywhere[c]]

    @torch.jit.ignore
    def column_args(self, column: int) -> dict[str, Any]:
        """The ``fractalnet_plain`` arguments that build column ``column`` (1 = shallowest) as a plain network
        (:func:`fractalnet_paths.column_args`)."""
        return fractalnet_paths.column_args(self, column)

    @torch.jit.ignore
    def extract_column(self, column: int) -> "FractalColumn":
        """Column ``column`` (1 = shallowest) as a standalone ``fractalnet_plain`` network sharing no tensors with this
        one, its outputs equal to ``self(x, column=column)`` (:func:`fractalnet_paths.extract_column`)."""
        return fractalnet_paths.extract_column(self, column)

    @torch.jit.ignore
    def extract_paths(self, paths: Sequence[Sequence[int]],
                      bn_batches: Optional[Sequence[torch.Tensor]] = None) -> "FractalNet":
        """Sub-fractal ``paths`` (per block the kept columns, 1 = shallowest) as a standalone ``fractalnet`` sharing no
        tensors with this one, its batch-norm statistics re-estimated on ``bn_batches`` if given
        (:func:`fractalnet_paths.extract_paths`)."""
        return fractalnet_paths.extract_paths(self, paths, bn_batches)


class _ConcatSlice(nn.Module):
    """A concat join seen by a single column: its slice of the 1x1 projection, then the join's BN."""

    def __init__(self, width: int, norm_layer: Any, dd: dict[str, Any]):
        super().__init__()
        self.proj = nn.Conv2d(width, width, kernel_size=1, bias=False, **dd)
        self.bn = norm_layer(width, apply_act=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.proj(x))


class FractalColumn(CifarStageNet):
    """A plain network of B blocks of ``convs_per_block`` conv units, each block ending in a 2x2 max-pool.

    It is both a FractalNet column (column k has 2^(k-1) convs per block; :meth:`FractalNet.extract_column` loads one
    into it) and the paper's plain baseline of the same depth trained alone (Table 4), so the two are one
    architecture. ``concat_join`` follows every conv with the 1x1 projection + BN a concat join applies to one column.
    Its batch-norm statistics as extracted are the parent's, gathered on joined inputs;
    :func:`fractal_space.models.anytime.reestimate_bn_stats` re-estimates them for the column alone.
    """

    def __init__(
            self,
            num_classes: int = 1000,
            in_chans: int = 3,
            num_blocks: int = 5,
            convs_per_block: int = 1,
            widths: Sequence[int] = (16, 32, 64, 128, 128),
            concat_join: bool = False,
            block_dropout: Optional[Sequence[float]] = None,
            drop_rate: float = 0.0,
            global_pool: str = "avg",
            stem: str = "none",
            stem_width: int = 64,
            downsample_last: bool = True,
            init: str = "xavier",
            dirac_init: bool = False,
            whiten: bool = False,
            norm_layer: Any = "batchnorm2d",
            act_layer: Any = "relu",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            num_blocks, widths, stem, stem_width, downsample_last, init, dirac_init, whiten, drop_rate, global_pool:
                as for :class:`FractalNet`.
            convs_per_block: conv units per block (2^(k-1) for column k: depth 5, 10, 20, 40 at B=5).
            concat_join: a 1x1 projection + BN after every conv unit, as a concat join gives one column.
            block_dropout: dropout after each block (length B; none by default).
        """
        widths = _check_layout(num_blocks, widths, stem, init, drop_rate)
        if not isinstance(convs_per_block, int) or convs_per_block < 1:
            raise ValueError(f"convs_per_block={convs_per_block!r} must be an integer >= 1")
        block_dropout = _check_block_dropout(block_dropout or (0.0,) * num_blocks, num_blocks)
        dd = {"device": device, "dtype": dtype}
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer)
        whiten_module, image_chs = whitening(whiten, in_chans, dd)
        stem_module, prev_chs, reduction = _stem(stem, image_chs, stem_width, norm_act_layer, dd)
        stages, feature_info = [], []
        for i, (width, p) in enumerate(zip(widths, block_dropout, strict=True)):
            layers: list[nn.Module] = []
            for _ in range(convs_per_block):
                layers.append(_conv_unit(prev_chs, width, norm_act_layer, act_layer, dd))
                if concat_join:
                    layers.append(_ConcatSlice(width, norm_act_layer, dd))
                prev_chs = width
            downsample = downsample_last or i < num_blocks - 1
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2) if downsample else nn.Identity(), _dropout(p)))
            reduction *= 2 if downsample else 1
            feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        super().__init__(stem_module, nn.Sequential(*stages), feature_info, num_classes, in_chans, global_pool,
                         drop_rate, whiten=whiten_module, **dd)
        self.num_blocks = num_blocks
        self.convs_per_block = convs_per_block
        _init_weights(self, init, dirac_init)


def _create_fractalnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """Build a FractalNet through timm; ``features_only`` taps every block (4 for the ImageNet layout).

    The cfg's first convs (those timm adapts to ``in_chans``) follow the arguments, not the variant: the ImageNet
    stem's conv, else the first conv of every column the first block keeps.
    """
    out_indices = kwargs.pop("out_indices", tuple(range(kwargs["num_blocks"])))
    num_columns = _check_columns(kwargs["num_columns"])
    paths = fractalnet_paths.check_paths(kwargs.get("paths"), kwargs["num_blocks"], num_columns)
    if kwargs.get("stem", "none") == "resnet":
        first_conv: Union[str, tuple[str, ...]] = "stem.0.conv"
    else:
        first_conv = _first_convs(num_columns, None if paths is None else paths[0])
    kwargs["pretrained_cfg_overlay"] = {"first_conv": first_conv, **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_model_with_cfg(
        FractalNet,
        variant,
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


def _create_fractalnet_plain(variant: str, pretrained: bool = False, **kwargs: Any) -> FractalColumn:
    """Build the plain (column) family through timm; ``features_only`` taps every block.

    With the ImageNet stem the image reaches the stem's conv, which is then the first conv timm adapts.
    """
    out_indices = kwargs.pop("out_indices", tuple(range(kwargs.get("num_blocks", 5))))
    if kwargs.get("stem") == "resnet":
        kwargs["pretrained_cfg_overlay"] = {"first_conv": "stem.0.conv", **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_model_with_cfg(
        FractalColumn,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, flatten_sequential=True),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """The CIFAR cfg with FractalNet's 1x1 final map and paper reference (ImageNet variants override the rest)."""
    return cifar_cfg(**{"pool_size": (1, 1), "paper_ids": "arXiv:1605.07648",
                        "paper_name": "FractalNet: Ultra-Deep Neural Networks without Residuals", **kwargs})


def _first_convs(num_columns: int, columns: Optional[Sequence[int]] = None) -> tuple[str, ...]:
    """In the CIFAR layout every (kept, 1-based ``columns``) column's first conv reads the image; timm adapts all of
    them to ``in_chans``.

    Column c (0 = shallowest) first acts at step 2^(C-1-c), where it is the shallowest (kept) column of the step.
    """
    cols = range(num_columns) if columns is None else [c - 1 for c in columns]
    return tuple(f"blocks.0.steps.{2 ** (num_columns - 1 - c) - 1}.convs.0.conv" for c in cols)


default_cfgs = generate_default_cfgs({
    "fractalnet.untrained": _cfg(first_conv=_first_convs(3)),
    **{f"fractalnet_c{c}.untrained": _cfg(first_conv=_first_convs(c)) for c in range(1, 7)},
    "fractalnet20_cifar.untrained": _cfg(first_conv=_first_convs(3)),
    "fractalnet40_cifar.untrained": _cfg(first_conv=_first_convs(4)),
    "fractalnet_plain.untrained": _cfg(first_conv="stages.0.0.conv"),
    "fractalnet34.untrained": _cfg(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.0.conv",
    ),
})

REDUCED_WIDTHS = (16, 32, 64, 128, 128)
PAPER_WIDTHS = (64, 128, 256, 512, 512)


@register_model
def fractalnet(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """Any FractalNet, every :class:`FractalNet` argument by keyword (``num_blocks``, ``num_columns``, ``widths``,
    ``join``, ``paths``, ...): the name a searched or exported architecture is built and saved under. Unset layout
    arguments are ``fractalnet_c3``'s (B=5, C=3, reduced widths 16-128)."""
    args = dict(num_blocks=5, num_columns=3, widths=REDUCED_WIDTHS)
    return _create_fractalnet("fractalnet", pretrained, **dict(args, **kwargs))


def _reduced(columns: int, pretrained: bool, **kwargs: Any) -> FractalNet:
    args = dict(num_blocks=5, num_columns=columns, widths=REDUCED_WIDTHS)
    return _create_fractalnet(f"fractalnet_c{columns}", pretrained, **dict(args, **kwargs))


@register_model
def fractalnet_c1(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=1 (5 layers), reduced widths 16-128 (paper Tables 3/4)."""
    return _reduced(1, pretrained, **kwargs)


@register_model
def fractalnet_c2(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=2 (10 layers), reduced widths 16-128 (paper Tables 3/4)."""
    return _reduced(2, pretrained, **kwargs)


@register_model
def fractalnet_c3(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=3 (20 layers), reduced widths 16-128 (paper Tables 3/4)."""
    return _reduced(3, pretrained, **kwargs)


@register_model
def fractalnet_c4(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=4 (40 layers), reduced widths 16-128 (paper Tables 3/4)."""
    return _reduced(4, pretrained, **kwargs)


@register_model
def fractalnet_c5(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=5 (80 layers), reduced widths 16-128 (paper Table 3)."""
    return _reduced(5, pretrained, **kwargs)


@register_model
def fractalnet_c6(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet B=5, C=6 (160 layers), reduced widths 16-128 (paper Table 3)."""
    return _reduced(6, pretrained, **kwargs)


@register_model
def fractalnet20_cifar(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """The paper's 20-layer CIFAR/SVHN FractalNet: B=5, C=3, widths 64-512 (33.7M params plain layout)."""
    args = dict(num_blocks=5, num_columns=3, widths=PAPER_WIDTHS)
    return _create_fractalnet("fractalnet20_cifar", pretrained, **dict(args, **kwargs))


@register_model
def fractalnet40_cifar(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """40-layer CIFAR FractalNet: B=5, C=4 at widths 32-256, a uniform-width stand-in for the paper's 22.9M net."""
    args = dict(num_blocks=5, num_columns=4, widths=(32, 64, 128, 256, 256))
    return _create_fractalnet("fractalnet40_cifar", pretrained, **dict(args, **kwargs))


@register_model
def fractalnet34(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """ImageNet FractalNet-34: ResNet-34 stem and head around B=4 blocks of C=4 columns, widths 128-1024."""
    args = dict(num_blocks=4, num_columns=4, widths=(128, 256, 512, 1024), stem="resnet", downsample_last=False)
    return _create_fractalnet("fractalnet34", pretrained, **dict(args, **kwargs))


@register_model
def fractalnet_plain(pretrained: bool = False, **kwargs: Any) -> FractalColumn:
    """A FractalNet column as a standalone plain network: B=5 blocks of ``convs_per_block`` convs (default 1, 5 layers;
    2, 4, 8 give the 10-, 20- and 40-layer plain nets of the paper's Table 4), reduced widths 16-128."""
    args = dict(num_blocks=5, widths=REDUCED_WIDTHS)
    return _create_fractalnet_plain("fractalnet_plain", pretrained, **dict(args, **kwargs))
