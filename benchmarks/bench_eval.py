"""Eval-mode PyTorch against ONNX Runtime on the same weights, side by side in one run.

For each model: ``timm.create_model(name).eval()`` and nothing else, timed under ``torch.inference_mode()`` on an
NCHW batch, against the same weights exported by ``fractal_space.deploy.onnx.onnx_graph`` (checked against
PyTorch) in an ONNX Runtime CPU session with torch's thread count. A third row runs the eager model with batch-norm
folding switched off (``models/fold.py``'s ``folds`` patched to False for the run: conv -> BN -> ReLU as before), so the
fold's own share is visible. Rows are interleaved round by round (A B C, B C A, ...), each cell the median over the
rounds; the ratio is eager time / ONNX Runtime time (1.0 = as fast as ONNX Runtime). One thread each by default:
on the 2-core machine, 2 threads each gave eager/ORT ratios of 5-300x, ONNX Runtime's spinning worker threads taking
the cores from the eager rows that follow them in the same process.

    python benchmarks/bench_eval.py                                   # every model, batch 64 and 1
    python benchmarks/bench_eval.py --models fractalnet_c4 --batches 1 --rounds 9

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import timm
import torch

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.core.hardware import describe
from fractal_space.deploy.onnx import OrtModel, onnx_graph
from fractal_space.models import densenet_cifar, fold, resnet_cifar

MODELS = ("fractalnet_c3", "fractalnet_c4", "resnet20_cifar", "resnet56_cifar", "densenet_bc100_cifar")
FOLDING_MODULES = (fold, resnet_cifar, densenet_cifar)  # each calls its own ``folds`` name (FractalNet: fold's)


@contextlib.contextmanager
def unfolded() -> Iterator[None]:
    """Eager inference as before the fold: every ``folds`` check answers False."""
    saved = [m.folds for m in FOLDING_MODULES]
    for m in FOLDING_MODULES:
        m.folds = lambda bn, x: False
    try:
        yield
    finally:
        for m, f in zip(FOLDING_MODULES, saved, strict=True):
            m.folds = f


def _seconds(run: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def measure(name: str, batch: int, rounds: int, seconds_per_cell: float) -> dict[str, float]:
    """Median seconds per batch of each runtime over ``rounds`` interleaved rounds."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    session = OrtModel(onnx_graph(model, torch.randn(2, *model.pretrained_cfg["input_size"])))
    x = torch.randn(batch, *model.pretrained_cfg["input_size"])
    xn = x.numpy()

    def eager_unfolded() -> object:
        with unfolded():
            return model(x)

    runs = {"eager, BN folded (model.eval())": lambda: model(x), "eager, BN unfolded": eager_unfolded,
            "ONNX Runtime": lambda: session(xn)}
    with torch.inference_mode():
        for run in runs.values():  # warm-up: allocator, kernels, the first fold
            run()
        calls = {k: max(1, round(seconds_per_cell / _seconds(run, 1))) for k, run in runs.items()}
        times: dict[str, list[float]] = {k: [] for k in runs}
        keys = list(runs)
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                times[k].append(_seconds(runs[k], calls[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated timm model names")
    parser.add_argument("--batches", default="64,1", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=0.5, help="target seconds per cell and round")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads (default 1: with as many threads as cores, ONNX Runtime's "
                             "pool keeps spinning after each run and starves the eager rows interleaved with it)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in timm.list_models()]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches {args.batches!r} must be comma-separated integers")
    if not batches or min(batches) < 1 or args.rounds < 1:
        parser.error(f"--batches {args.batches!r} and --rounds {args.rounds} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{describe()}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds\n")
    print("| model | batch | ONNX Runtime ms/batch | eager (model.eval()) / ORT | eager, BN unfolded / ORT |")
    print("|---|---|---|---|---|")
    for name in names:
        for batch in batches:
            t = measure(name, batch, args.rounds, args.seconds)
            ort_s = t["ONNX Runtime"]
            print(f"| {name} | {batch} | {ort_s * 1e3:.2f} | {t['eager, BN folded (model.eval())'] / ort_s:.2f}x | "
                  f"{t['eager, BN unfolded'] / ort_s:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
