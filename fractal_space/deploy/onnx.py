"""Models as they are deployed: ONNX graphs checked against PyTorch, run by ONNX Runtime.

ONNX Runtime on the same weights is the reference for what a model costs once deployed: eager PyTorch at batch 1
mostly measures Python's per-module overhead (3-9x ONNX Runtime's time on CPU, by different factors per family), so
ranking architectures by it ranks module counts. Every export is verified: ONNX Runtime's outputs must equal the
PyTorch model's on a given batch, or nothing is written.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fractal_space.core.files import display_path, write_atomic

#: ONNX opset of every export (supported by ONNX Runtime >= 1.13 on every provider).
OPSET = 17
INPUT, OUTPUT = "input", "logits"
#: Largest |ONNX Runtime - PyTorch| an export may show on its check batch, for outputs up to 1 in magnitude; larger
#: outputs scale it (float32 rounding grows with them: a FractalNet column with its parent's BN statistics reaches
#: logits of 3e3, where the two runtimes' different summation orders differ by 2e-3).
ATOL = 1e-4


class _Forward(nn.Module):
    """``model(x, **forward_kwargs)`` as a one-argument module (``column=k`` exports column k alone)."""

    def __init__(self, model: nn.Module, forward_kwargs: dict[str, Any]):
        super().__init__()
        self.model = model
        self.forward_kwargs = forward_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, **self.forward_kwargs)


def deployable_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode, NCHW copy of ``model``: what is saved and exported, leaving the caller's model, its mode and
    its layout as they are (safetensors stores contiguous tensors only)."""
    plain = copy.deepcopy(model).cpu().eval()
    if hasattr(plain, "set_memory_format"):
        plain.set_memory_format("contiguous")
    else:
        plain.to(memory_format=torch.contiguous_format)
    return plain


def onnx_graph(model: nn.Module, batch: torch.Tensor, atol: float = ATOL, **forward_kwargs: Any) -> bytes:
    """The ONNX graph of ``model(x, **forward_kwargs)`` in eval mode with a dynamic batch axis, as bytes.

    ONNX Runtime runs it on ``batch`` (a real input batch where there is one) and its outputs must be within
    ``atol * max(1, max |PyTorch output|)`` of the PyTorch model's, else a one-line ``ValueError``.
    """
    return deployable_graph(deployable_copy(model), batch, atol, **forward_kwargs)


def deployable_graph(plain: nn.Module, batch: torch.Tensor, atol: float = ATOL, **forward_kwargs: Any) -> bytes:
    """:func:`onnx_graph` of a model that already is a :func:`deployable_copy` (no second copy: ``export_model``
    saves the same copy's weights)."""
    if batch.dim() != 4 or len(batch) < 1:
        raise ValueError(f"the check batch must be (N, C, H, W) with N >= 1, got shape {tuple(batch.shape)}")
    batch = batch.detach().float().cpu().contiguous()
    with torch.no_grad():
        module = _Forward(plain, forward_kwargs) if forward_kwargs else plain
        expected = module(batch).numpy()
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # tracer warnings about Python control flow on constants
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (batch,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    graph = buffer.getvalue()
    got = OrtModel(graph)(batch.numpy())
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    tolerance = atol * max(1.0, float(np.abs(expected).max()))
    if not diff <= tolerance:
        name = type(plain).__name__ + (f"({', '.join(f'{k}={v}' for k, v in forward_kwargs.items())})"
                                       if forward_kwargs else "")
        raise ValueError(f"ONNX export of {name} differs from PyTorch by {diff:.3g} on a batch of {len(batch)} "
                         f"(tolerance {tolerance:.3g}); nothing was written")
    return graph


def export_onnx(model: nn.Module, path: str | Path, batch: torch.Tensor, atol: float = ATOL,
                **forward_kwargs: Any) -> Path:
    """Write ``model``'s verified ONNX graph (:func:`onnx_graph`) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    write_atomic(path, onnx_graph(model, batch, atol=atol, **forward_kwargs))
    return path


def providers(device: str | torch.device = "cpu") -> list[str]:
    """ONNX Runtime providers for ``device``: CUDA's (then CPU's) on a CUDA device where installed, else CPU's."""
    cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class OrtModel:
    """An ONNX graph (bytes or a ``model.onnx`` path) in an ONNX Runtime session: ``OrtModel(path)(x)`` -> logits.

    ``threads`` is the intra-op thread count (default: torch's, so it matches what the PyTorch model gets).
    """

    def __init__(self, graph: bytes | str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no per-node placement warnings
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, options, providers=providers(device))
        self.provider = self.session.get_providers()[0]

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().contiguous().numpy()
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def run_line(folder: str | Path) -> str:
    """The line that runs an exported folder's ``model.onnx`` in ONNX Runtime on ``x``, a float32 (N, C, H, W)
    array normalised as the folder's ``config.json`` says."""
    path = display_path(Path(folder) / "model.onnx")
    return f'onnxruntime.InferenceSession("{path}").run(None, {{"{INPUT}": x}})[0]'
