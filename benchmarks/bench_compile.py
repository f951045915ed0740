"""torch.compile on CPU: its compile time and what it saves per step, against eager, in one run.

For each model: a train step (forward + backward + SGD; FractalNet with the paper's drop-path, whose per-batch path
plan is Python control flow that dynamo guards on) and an eval step (``torch.inference_mode``), eager and under
``torch.compile`` (default inductor backend). Printed per mode: the compiled variant's first-steps wall time (compile
included), its steady step time after those, eager's, the recompilations dynamo made, and the break-even in steps
(compile seconds / seconds saved per step), to compare with a search trial's steps.

    python benchmarks/bench_compile.py                       # fractalnet_c3 and resnet20_cifar, batch 64
    python benchmarks/bench_compile.py --models fractalnet_c4 --steps 20

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch._dynamo
import torch.nn.functional as F

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.core.paper import PAPER


def _step_fn(model: torch.nn.Module, train: bool, batch: int) -> Callable[[], None]:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if not train:
        model.eval()

        def evaluate() -> None:
            with torch.inference_mode():
                model(x)
        return evaluate
    opt = torch.optim.SGD(model.parameters(), lr=PAPER.lr, momentum=PAPER.momentum)
    model.train()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return train_step


def _timed(step: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, train: bool, batch: int, warm: int, steps: int) -> dict[str, float]:
    """Eager and compiled step times; the compiled model's first ``warm`` steps (compilation) timed separately."""
    kwargs = dict(PAPER.regularization(num_blocks=5)) if name.startswith("fractalnet") and train else {}
    torch.manual_seed(0)
    eager = timm.create_model(name, **kwargs)
    torch.manual_seed(0)
    compiled_model = timm.create_model(name, **kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model)
    eager_step, compiled_step = _step_fn(eager, train, batch), _step_fn(compiled, train, batch)
    _timed(eager_step, 2)
    torch.manual_seed(1)
    first = sum(_timed(compiled_step, warm))
    eager_s, compiled_s = [], []
    for _ in range(steps):  # interleaved, one step each
        torch.manual_seed(len(eager_s))
        eager_s += _timed(eager_step, 1)
        torch.manual_seed(len(compiled_s))
        compiled_s += _timed(compiled_step, 1)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    e, c = statistics.median(eager_s), statistics.median(compiled_s)
    compile_s = first - warm * c
    return {"eager": e, "compiled": c, "compile": compile_s, "graphs": frames,
            "break_even": compile_s / (e - c) if e > c else float("inf")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="fractalnet_c3,resnet20_cifar", help="comma-separated timm model names")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warm", type=int, default=3, help="compiled steps counted as compilation")
    parser.add_argument("--steps", type=int, default=12, help="interleaved steps per variant after that")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.warm < 1 or args.steps < 1:
        parser.error("--batch must be >= 2, --warm and --steps >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")
    print("| model | step | eager s/step | compiled s/step | speed-up | compile s | graphs | break-even steps |")
    print("|---|---|---|---|---|---|---|---|")
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        for train in (True, False):
            torch._dynamo.utils.counters.clear()
            r = measure(name, train, args.batch, args.warm, args.steps)
            print(f"| {name} | {'train' if train else 'eval'} | {r['eager']:.3f} | {r['compiled']:.3f} | "
                  f"{r['eager'] / r['compiled']:.2f}x | {r['compile']:.0f} | {r['graphs']} | {r['break_even']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
