"""Trained models as timm models: a folder in timm's own Hugging Face layout (``config.json`` + ``model.safetensors``).

Written with timm's ``save_for_hf``, so ``timm.create_model("local-dir:<folder>", pretrained=True)`` (after
``import fractal_space``) rebuilds the architecture from ``architecture`` and ``model_args`` and loads the weights,
and ``timm.models.push_to_hf_hub``'s upload of the same files publishes the folder unchanged.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models import save_for_hf
from torch import nn

from fractal_space.anytime import reestimate_bn_stats
from fractal_space.data import DataSplits
from fractal_space.models.fractalnet import FractalNet

FILES = ("model.safetensors", "config.json")  # written in this order: config.json marks a complete export


def _regularization_args(model: nn.Module) -> dict[str, Any]:
    """FractalNet's drop-path and dropout as trained, and the head dropout ``timm.create_model`` was given (timm
    leaves drop rates out unless they are supplied)."""
    given = getattr(model, "_model_args", {})
    args = {"drop_rate": given["drop_rate"]} if "drop_rate" in given else {}
    if not hasattr(model, "set_regularization"):
        return args
    return {**args, "drop_path_rate": float(model.drop_path_rate),
            "global_drop_fraction": float(model.global_drop_fraction), "block_dropout": model.block_dropout_rates()}


def export_model(model: nn.Module, folder: str | Path, data: DataSplits | None = None) -> Path:
    """Save ``model`` (built by ``timm.create_model``) into ``folder``; ``data`` adds its input size, normalisation and
    class names. Files are replaced atomically, the weights first, so a killed export is never mistaken for one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).cpu().eval()
    if hasattr(plain, "set_memory_format"):  # safetensors stores contiguous tensors only
        plain.set_memory_format("contiguous")
    else:
        plain.to(memory_format=torch.contiguous_format)
    data_config, model_config = None, None
    if data is not None:
        data_config = {"input_size": (data.in_chans, *data.image_size), "mean": tuple(data.norm.mean),
                       "std": tuple(data.norm.std), "crop_pct": 1.0, "interpolation": "bilinear"}
        model_config = {"label_names": list(data.train.classes)} if data.train.classes else None
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.export-") as tmp:
        save_for_hf(plain, tmp, model_config=model_config, model_args=_regularization_args(plain),
                    safe_serialization=True, data_config=data_config)
        for name in FILES:
            os.replace(Path(tmp) / name, folder / name)
    return folder


def export_column(model: FractalNet, column: int, folder: str | Path, bn_batches: Sequence[torch.Tensor],
                  data: DataSplits | None = None) -> Path:
    """Export column ``column`` of ``model`` alone as a ``fractalnet_plain`` timm model folder.

    The column is extracted (:meth:`FractalNet.extract_column`, no tensors shared with ``model``) and its batch-norm
    statistics are re-estimated on ``bn_batches`` (input tensors) through the column alone, since those gathered in
    the full network describe joined inputs; ``timm.create_model("local-dir:<folder>", pretrained=True)`` then gives
    the column's outputs with those statistics.
    """
    plain = model.extract_column(column)
    reestimate_bn_stats(plain, bn_batches)
    return export_model(plain, folder, data=data)


def load_line(folder: str | Path) -> str:
    """The one line that loads the exported model (after ``import fractal_space``)."""
    path = Path(folder)
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return f'timm.create_model("local-dir:{path}", pretrained=True)'
