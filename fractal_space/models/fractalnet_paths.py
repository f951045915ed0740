"""Sub-networks of a FractalNet as standalone timm models, with their weights renamed to the new network's names.

A column becomes the plain network ``fractalnet_plain`` (anytime evaluation, the paper's plain baselines of Table 4);
a sub-fractal (per block the kept columns, 1 = shallowest) becomes a ``fractalnet`` built with only those columns
(the one-shot search's weight inheritance). Each is built by ``timm.create_model`` from arguments
(:func:`column_args`, :func:`fractalnet_args`), then loaded with the matching slice of the parent's state dict
(:func:`column_state_dict`, :func:`paths_state_dict`), so it trains, exports and loads like any timm model and shares
no tensors with the parent.

``fractalnet.py`` imports this module (path validation, and its ``extract_column`` / ``extract_paths`` /
``column_args`` methods delegate here); this module reads a FractalNet through its attributes and never imports it.
"""

from collections.abc import Sequence
from typing import Any, Optional

import timm
import torch
import torch.nn as nn

from fractal_space.models.anytime import reestimate_bn_stats

__all__ = ["check_paths", "column_args", "column_state_dict", "extract_column", "extract_paths", "fractalnet_args",
           "paths_state_dict"]

COLUMN_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "pool_size")  # parent cfg -> extracted


def check_paths(paths: Optional[Sequence[Sequence[int]]], num_blocks: int,
                num_columns: int) -> Optional[list[list[int]]]:
    """A sub-fractal's kept columns, one non-empty set of distinct columns in 1..C per block, sorted; None: all."""
    if paths is None:
        return None
    rule = f"must give each of the {num_blocks} blocks a non-empty set of distinct columns in 1..{num_columns}"
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence) or len(paths) != num_blocks:
        raise ValueError(f"paths={paths!r} {rule}")
    out = []
    for i, kept in enumerate(paths):
        ok = (isinstance(kept, (Sequence, set, frozenset)) and not isinstance(kept, (str, bytes)) and len(kept) > 0
              and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= num_columns for c in kept)
              and len(set(kept)) == len(kept))
        if not ok:
            raise ValueError(f"paths={paths!r}: block {i} keeps {kept!r}; paths {rule}")
        out.append(sorted(kept))
    return out


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def column_args(model: nn.Module, column: int) -> dict[str, Any]:
    """The ``fractalnet_plain`` arguments that build FractalNet ``model``'s column ``column`` (1 = shallowest) as a
    plain network."""
    if column not in model.anytime_columns():
        raise ValueError(f"column={column} is not one of this network's columns {model.anytime_columns()}")
    return dict(num_classes=model.num_classes, in_chans=model.in_chans, num_blocks=len(model.blocks),
                convs_per_block=2 ** (column - 1), widths=model.widths[:len(model.blocks)],
                concat_join=model.join == "concat", block_dropout=model.block_dropout_rates(),
                drop_rate=model.drop_rate, global_pool=model.head.global_pool.pool_type, **model.plain_args)


def column_state_dict(model: nn.Module, column: int) -> dict[str, torch.Tensor]:
    """Column ``column``'s weights under the names of the network :func:`column_args` builds.

    Column c applies one conv unit at each step it takes part in; a concat join adds its 1x1 projection slice for
    that column's input, then the join's BN.
    """
    c = column - 1
    state = {**_prefixed("whiten", model.whiten.state_dict()), **_prefixed("stem", model.stem.state_dict())}
    for i, block in enumerate(model.blocks):
        layers: list[dict[str, torch.Tensor]] = []
        for step in block.steps:
            if c not in step.cols:
                continue
            layers.append(step.conv_of(c).state_dict())
            if model.join == "concat":
                layers.append({"proj.weight": step.join.input_weight(c),
                               **_prefixed("bn", step.join.bn.state_dict())})
        for j, layer in enumerate(layers):
            state.update(_prefixed(f"stages.{i}.{j}", layer))
    state.update(_prefixed("head", model.head.state_dict()))
    return state


def extract_column(model: nn.Module, column: int) -> nn.Module:
    """FractalNet ``model``'s column ``column`` (1 = shallowest) as a standalone plain network sharing no tensors with
    it; its outputs equal ``model(x, column=column)``."""
    return _extract(model, "fractalnet_plain", column_args(model, column), column_state_dict(model, column))


def fractalnet_args(model: nn.Module, paths: Optional[Sequence[Sequence[int]]] = None) -> dict[str, Any]:
    """The ``fractalnet`` arguments that rebuild FractalNet ``model`` (or its sub-fractal ``paths``: per block the
    kept columns, 1 = shallowest, within ``model``'s own) with its layout and regularisation.

    Every architecture argument is explicit, so the result does not depend on a registered variant's defaults.
    ``path_sampling`` (a supernet's training mode), ``init`` and ``dirac_init`` (overwritten by the weights) are left
    out.
    """
    checked = model.paths
    if paths is not None:
        checked = check_paths(paths, len(model.blocks), model.num_columns)
        for i, (kept, own) in enumerate(zip(checked, model.block_kept, strict=True)):
            missing = [c for c in kept if not own[c - 1]]
            if missing:
                raise ValueError(f"paths={paths!r}: block {i} keeps column(s) {missing}, which this sub-fractal "
                                 f"does not have (paths={model.paths!r})")
    return dict(num_classes=model.num_classes, in_chans=model.in_chans, num_blocks=len(model.blocks),
                num_columns=model.num_columns, widths=model.widths[:len(model.blocks)], join=model.join,
                block_dropout=model.block_dropout_rates(), drop_rate=model.drop_rate,
                drop_path_rate=model.drop_path_rate, global_drop_fraction=model.global_drop_fraction,
                paths=checked, global_pool=model.head.global_pool.pool_type, eval_bn_refresh=model.eval_bn_refresh,
                eval_bn_refresh_bytes=model.eval_bn_refresh_bytes, **model.plain_args)


def paths_state_dict(model: nn.Module, paths: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Sub-fractal ``paths``' weights under the names of the network ``fractalnet_args(model, paths)`` builds: each
    kept column's conv units, and of a concat join the projection slices of its kept inputs."""
    kept = fractalnet_args(model, paths)["paths"]
    state = {**_prefixed("whiten", model.whiten.state_dict()), **_prefixed("stem", model.stem.state_dict())}
    for i, block in enumerate(model.blocks):
        for d, step in enumerate(block.steps):
            cols = [c for c in step.cols if c + 1 in kept[i]]
            prefix = f"blocks.{i}.steps.{d}"
            for j, c in enumerate(cols):
                state.update(_prefixed(f"{prefix}.convs.{j}", step.conv_of(c).state_dict()))
            if model.join == "concat" and cols:
                state[f"{prefix}.join.proj.weight"] = torch.cat([step.join.input_weight(c) for c in cols], 1)
                state.update(_prefixed(f"{prefix}.join.bn", step.join.bn.state_dict()))
    state.update(_prefixed("head", model.head.state_dict()))
    return state


def extract_paths(model: nn.Module, paths: Sequence[Sequence[int]],
                  bn_batches: Optional[Sequence[torch.Tensor]] = None) -> nn.Module:
    """Sub-fractal ``paths`` of FractalNet ``model`` as a standalone ``fractalnet`` sharing no tensors with it.

    Its batch-norm statistics come from ``model``, gathered on other paths; ``bn_batches`` (input batches, e.g. a few
    training batches) re-estimates them through the sub-fractal alone (:func:`reestimate_bn_stats`), the fair way to
    evaluate it.
    """
    sub = _extract(model, "fractalnet", fractalnet_args(model, paths), paths_state_dict(model, paths))
    if bn_batches is not None:
        reestimate_bn_stats(sub, bn_batches)
    return sub


def _extract(model: nn.Module, name: str, args: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """``timm.create_model(name, **args)`` where ``model``'s weights are, reading inputs like it, with ``state``
    loaded, in ``model``'s training mode."""
    weight = next(model.parameters())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    overlay = {k: cfg[k] for k in COLUMN_CFG_KEYS if k in cfg}
    built = timm.create_model(name, pretrained_cfg_overlay=overlay, device=weight.device, dtype=weight.dtype, **args)
    built.load_state_dict(state)
    return built.train(model.training)
