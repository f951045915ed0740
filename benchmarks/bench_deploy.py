"""Eager PyTorch against ONNX Runtime on the same weights, for every model family, measured side by side in one run.

Each model is built as ``timm.create_model`` gives it (CIFAR-10 input, eval mode), exported once to ONNX (checked
against PyTorch), and timed in rounds that interleave the four measurements (eager and ONNX Runtime, batch 1 and the
batch size given), so a neighbour's load hits both runtimes alike; the table gives medians over the rounds and the
eager / ONNX Runtime ratio (1.0 = eager PyTorch costs what the deployed model costs), and the seconds the export and
its ONNX Runtime check took (what a search trial pays per network it times).

    python benchmarks/bench_deploy.py                         # every family, 2 threads, batch 1 and 64
    python benchmarks/bench_deploy.py --models fractalnet_c4 resnet20_cifar --rounds 5 --out docs/x.md

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.deploy import onnx_graph
from fractal_space.hardware import describe
from fractal_space.metrics import deployment_latency, measure_latency

MODELS = ("fractalnet_c3", "fractalnet_c4", "fractalnet20_cifar", "resnet20_cifar", "resnet56_cifar",
          "densenet_bc100_cifar")
INPUT = (3, 32, 32)


def measure(names: list[str], batch: int, rounds: int, repeats: int) -> list[dict]:
    """Per model: median ms / image over ``rounds`` of (eager b=1, ORT b=1, eager b=batch, ORT b=batch)."""
    models, graphs, export_s = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = timm.create_model(name, num_classes=10).eval()
        start = time.perf_counter()
        graphs[name] = onnx_graph(models[name], torch.randn(2, *INPUT))
        export_s[name] = time.perf_counter() - start
    times: dict[tuple[str, str, int], list[float]] = {}
    for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr):
        for name in names:
            for b in (1, batch):
                times.setdefault((name, "eager", b), []).append(
                    measure_latency(models[name], INPUT, batch_size=b, repeats=repeats))
                times.setdefault((name, "ort", b), []).append(
                    deployment_latency(models[name], INPUT, (b,), repeats=repeats, graph=graphs[name]).ms[b])
    return [{"model": name, "export_s": export_s[name], **{f"{kind}_{b}": statistics.median(times[name, kind, b])
                               for kind in ("eager", "ort") for b in (1, batch)}} for name in names]


def table(rows: list[dict], batch: int) -> str:
    lines = [f"| model | eager b=1 (ms) | ONNX Runtime b=1 (ms) | eager / ORT b=1 | eager b={batch} (ms / image) | "
             f"ONNX Runtime b={batch} (ms / image) | eager / ORT b={batch} | export + check (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eager_1']:.2f} | {r['ort_1']:.2f} | {r['eager_1'] / r['ort_1']:.2f}x | "
                     f"{r[f'eager_{batch}']:.3f} | {r[f'ort_{batch}']:.3f} | "
                     f"{r[f'eager_{batch}'] / r[f'ort_{batch}']:.2f}x | {r['export_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="timm model names (default: every family)")
    parser.add_argument("--batch", type=int, default=64, help="the second batch size (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per measurement (default 10)")
    parser.add_argument("--out", type=Path, help="also write the table with its machine line to this Markdown file")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if not timm.is_model(m)]
    if unknown or args.batch < 1 or args.threads < 1 or args.rounds < 1 or args.repeats < 1:
        parser.error(f"unknown model(s) {unknown}" if unknown else
                     "--batch, --threads, --rounds and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = measure(args.models, args.batch, args.rounds, args.repeats)
    text = (f"Machine: {describe('cpu')}; {args.threads} threads for eager PyTorch and ONNX Runtime (CPU provider); "
            f"medians of {args.rounds} interleaved rounds of {args.repeats} forwards each "
            f"({time.perf_counter() - started:.0f} s).\n\n{table(rows, args.batch)}\n")
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
