"""Trained models as timm models and as ONNX: a folder in timm's own Hugging Face layout (``config.json`` +
``model.safetensors``) with the model's verified ONNX graph beside them (``model.onnx``).

Written with timm's ``save_for_hf``, so ``timm.create_model("local-dir:<folder>", pretrained=True)`` (after
``import fractal_space``) rebuilds the architecture from ``architecture`` and ``model_args`` and loads the weights,
and ``timm.models.push_to_hf_hub``'s upload of the same files publishes the folder unchanged. A FractalNet is saved as
the generic ``fractalnet`` with every argument; folders that name a variant (``fractalnet_c3``) with arguments
overriding its layout load as well. ``model.onnx`` has a dynamic batch axis and gives the PyTorch model's outputs in
ONNX Runtime (checked on a real batch at export).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models import save_for_hf
from torch import nn

from fractal_space.core.files import display_path
from fractal_space.data import DataSplits
from fractal_space.deploy.metrics import Latency, deployment_latency
from fractal_space.deploy.onnx import deployable_copy, deployable_graph
from fractal_space.models.anytime import reestimate_bn_stats
from fractal_space.models.fractalnet import FractalNet
from fractal_space.models.fractalnet_paths import fractalnet_args

FILES = ("model.safetensors", "model.onnx", "config.json")  # written in this order: config.json marks a complete export


def _config(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``config.json`` rebuilds ``model`` from: a FractalNet, whichever variant built it, as the generic
    ``fractalnet`` with every argument (:func:`fractalnet_args`: layout, joins, sub-fractal paths, drop-path and
    dropout as trained); another model as its own architecture with the head dropout ``timm.create_model`` was given
    (timm leaves drop rates out unless they are supplied). Returns ``(model_config, model_args)`` for ``save_for_hf``.
    """
    if isinstance(model, FractalNet):
        return {"pretrained_cfg": {"architecture": "fractalnet"}}, fractalnet_args(model)
    given = getattr(model, "_model_args", {})
    return {}, {"drop_rate": given["drop_rate"]} if "drop_rate" in given else {}


def export_model(model: nn.Module, folder: str | Path, batch: torch.Tensor, data: DataSplits | None = None) -> Path:
    """Save ``model`` (built by ``timm.create_model``) into ``folder``: timm's files and ``model.onnx``.

    ``batch`` is an input batch (normalised images) on which ONNX Runtime must reproduce the model's outputs, else a
    one-line ``ValueError`` and nothing is written; ``data`` adds the input size, normalisation and class names. Files
    are replaced atomically, ``config.json`` last, so a killed export is never mistaken for one.
    """
    folder = Path(folder)
    plain = deployable_copy(model)
    graph = deployable_graph(plain, batch)
    folder.mkdir(parents=True, exist_ok=True)
    model_config, model_args = _config(plain)
    data_config = None
    if data is not None:
        data_config = {"input_size": (data.in_chans, *data.image_size), "mean": tuple(data.norm.mean),
                       "std": tuple(data.norm.std), "crop_pct": 1.0, "interpolation": "bilinear"}
        if data.train.classes:
            model_config["label_names"] = list(data.train.classes)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.export-") as tmp:
        save_for_hf(plain, tmp, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config=data_config)
        (Path(tmp) / "model.onnx").write_bytes(graph)
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
    return export_model(plain, folder, bn_batches[0], data=data)


@dataclass(frozen=True)
class ExportReport:
    """Where a trained model was exported and what it costs deployed, timed on the exported ``model.onnx`` files."""

    folder: Path
    latency: Latency  # the full model, at every batch size asked for
    column_folders: list[Path]  # a multi-column FractalNet's columns alone, 1 = shallowest
    column_latency: list[Latency]  # each column at batch 1


def export_trained(model: nn.Module, folder: str | Path, bn_batches: Sequence[torch.Tensor],
                   data: DataSplits | None = None, batch_sizes: Sequence[int] = (1,)) -> ExportReport:
    """Export a trained model to ``folder`` and each column of a multi-column FractalNet alone to
    ``folder/columns/column<k>/`` (:func:`export_column`), then time each exported ``model.onnx`` on the model's device
    (:func:`fractal_space.deploy.metrics.deployment_latency`): the full model at ``batch_sizes``, columns at batch 1.

    ``bn_batches`` (un-augmented training inputs) re-estimate the columns' statistics; the first is the check batch.
    """
    if not bn_batches:
        raise ValueError("export_trained needs at least one input batch (bn_batches is empty)")
    folder = Path(folder)
    input_size = tuple(bn_batches[0].shape[1:])
    export_model(model, folder, bn_batches[0], data=data)
    latency = deployment_latency(model, input_size, batch_sizes, graph=folder / "model.onnx")
    column_folders, column_latency = [], []
    columns = model.anytime_columns() if hasattr(model, "anytime_columns") else []  # a sub-fractal's: kept in all
    if len(columns) > 1:
        for k in columns:
            column = export_column(model, k, folder / "columns" / f"column{k}", bn_batches, data=data)
            column_folders.append(column)
            column_latency.append(deployment_latency(model, input_size, graph=column / "model.onnx", column=k))
    return ExportReport(folder, latency, column_folders, column_latency)


def load_line(folder: str | Path) -> str:
    """The one line that loads the exported model (after ``import fractal_space``)."""
    return f'timm.create_model("local-dir:{display_path(folder)}", pretrained=True)'
