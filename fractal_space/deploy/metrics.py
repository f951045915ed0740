"""Model size, compute and speed measures shared by the engine, the search and the baselines.

All of them measure the model as it is deployed: eval mode, no gradients, drop-path off; forward keyword arguments
(e.g. ``column=k`` for a FractalNet column) select the sub-network being measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (what the papers' parameter counts report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _input(model: nn.Module, input_size: Sequence[int], batch_size: int) -> torch.Tensor:
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(batch_size, *input_size, device=device)


def count_flops(model: nn.Module, input_size: Sequence[int], **forward_kwargs: Any) -> int:
    """Forward FLOPs for one image of ``input_size`` (C, H, W), counted by torch's FlopCounterMode (2 per MAC)."""
    x = _input(model, input_size, 1)
    with _eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x, **forward_kwargs)
    return int(counter.get_total_flops())


def _median_ms(run: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall milliseconds of ``run()`` over ``repeats`` calls after ``warmup`` (``sync`` waits for a device).

    The median resists the interference of other processes on a shared machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for i in range(warmup + repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        run()
        if sync is not None:
            sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's CPU thread count set to ``threads`` (None: left as it is) inside the block, restored after; yields it.

    A latency is a figure at a thread count: a model trained on every core (a search-stage baseline) is timed at the
    thread count its trials are timed at, so the two compare.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def measure_latency(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, repeats: int = 20,
                    warmup: int = 3, threads: int | None = None, **forward_kwargs: Any) -> float:
    """Eager PyTorch milliseconds per image: the median of ``repeats`` timed forwards of a ``batch_size`` batch, at
    ``threads`` CPU threads (None: torch's count).

    On CPU at batch 1 this is mostly Python's per-module overhead; :func:`deployment_latency` is what a deployed
    model costs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = _input(model, input_size, batch_size)
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.device.type == "cuda" else None
    with _eval_mode(model), torch_threads(threads):
        return _median_ms(lambda: model(x, **forward_kwargs), repeats, warmup, sync) / batch_size


#: What :func:`deployment_latency` ran a model with, as the report says it.
RUNTIMES = {"onnxruntime-cpu": "ONNX Runtime, CPU provider",
            "onnxruntime-cuda": "ONNX Runtime, CUDA provider",
            "eager-cuda": "eager PyTorch on CUDA timed with CUDA events (no ONNX Runtime CUDA provider installed)"}


@dataclass(frozen=True)
class Latency:
    """Milliseconds per image of one model at each batch size it was timed at, the runtime (``RUNTIMES``) and the CPU
    threads it ran with."""

    runtime: str
    ms: dict[int, float]
    threads: int


def deployment_latency(model: nn.Module, input_size: Sequence[int], batch_sizes: Sequence[int] = (1,),
                       repeats: int = 20, warmup: int = 3, graph: bytes | str | Path | None = None,
                       threads: int | None = None, **forward_kwargs: Any) -> Latency:
    """What ``model`` costs deployed on its own device, per image at each of ``batch_sizes``, one model at a time.

    CPU: its ONNX graph (``graph``, e.g. an exported ``model.onnx``, or exported here and checked against PyTorch) in
    ONNX Runtime's CPU provider with ``threads`` intra-op threads (None: torch's thread count). CUDA: ONNX Runtime's
    CUDA provider where it is installed, else the eager model timed with CUDA events. ``Latency.runtime`` says which.
    """
    from fractal_space.deploy.onnx import OrtModel, onnx_graph, providers  # the [onnx] extra, needed here only

    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1, got {list(batch_sizes)}")
    device = _input(model, input_size, 1).device
    runtime = "onnxruntime-cpu" if device.type != "cuda" else (
        "onnxruntime-cuda" if "CUDAExecutionProvider" in providers(device) else "eager-cuda")
    ms = {}
    with torch_threads(threads) as count:
        if runtime == "eager-cuda":
            for b in batch_sizes:
                ms[b] = _cuda_event_ms(model, _input(model, input_size, b), repeats, warmup, forward_kwargs) / b
            return Latency(runtime, ms, count)
        if graph is None:
            graph = onnx_graph(model, _input(model, input_size, 2), **forward_kwargs)
        session = OrtModel(graph, device=device, threads=count)
    for b in batch_sizes:
        x = np.random.default_rng(0).standard_normal((b, *input_size), dtype=np.float32)
        ms[b] = _median_ms(lambda x=x: session(x), repeats, warmup) / b
    return Latency(runtime, ms, count)


def _cuda_event_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int, forward_kwargs: dict[str, Any]
                   ) -> float:
    """Median milliseconds of one eager forward of ``x`` on CUDA, timed on the GPU by CUDA events."""
    times = []
    with _eval_mode(model):
        for i in range(warmup + repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x, **forward_kwargs)
            end.record()
            torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(start.elapsed_time(end))
    return statistics.median(times)
