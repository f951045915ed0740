"""FractalNet speed: fractal_space vs a straightforward public-style implementation, side by side in one run.

For each configuration it times the train step (forward + backward + SGD, the paper's drop-path: local p=0.15 mixed
50/50 with global, block dropout 0..0.4) and eval, interleaving the variants round by round (A B C A B C ...) and
reporting medians, so that load from other processes hits every variant alike. Achieved GFLOP/s counts the FLOPs a
variant actually executes (FlopCounterMode over sampled steps), and a CIFAR ResNet-56 measured in the same run gives
the reference rate.

    python benchmarks/bench_model.py                # C=3, C=4 reduced and the 20-layer network
    python benchmarks/bench_model.py --configs c4 --rounds 9

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings
(scripts/bench.sh does).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_fractalnet import PublicFractalNet  # noqa: E402

import fractal_space  # noqa: E402,F401  (registers the models)
from fractal_space.models.fractalnet import paper_block_dropout  # noqa: E402

CONFIGS = {
    "c3": dict(num_columns=3, widths=(16, 32, 64, 128, 128), batch=64, label="C=3 reduced (16..128)"),
    "c4": dict(num_columns=4, widths=(16, 32, 64, 128, 128), batch=64, label="C=4 reduced (16..128)"),
    "20layer": dict(num_columns=3, widths=(64, 128, 256, 512, 512), batch=32, label="20-layer (64..512)"),
}
DROP = dict(drop_path_rate=0.15, global_drop_fraction=0.5, block_dropout=paper_block_dropout(5))


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    channels_last: bool

    def __post_init__(self) -> None:
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.02, momentum=0.9)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self._layout(x)), y).backward()
        self.opt.step()

    def eval_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self._layout(x))


def _variants(cfg: dict) -> list[Variant]:
    kw = dict(num_columns=cfg["num_columns"], widths=cfg["widths"], **DROP)
    name = f"fractalnet_c{cfg['num_columns']}"
    torch.manual_seed(0)
    return [
        Variant("public (NCHW)", PublicFractalNet(**kw), channels_last=False),
        Variant("public (channels_last)", PublicFractalNet(**kw), channels_last=True),
        Variant("fractal_space (NCHW)", timm.create_model(name, **kw), channels_last=False),
        Variant("fractal_space", timm.create_model(name, **kw), channels_last=True),
    ]


def _train_flops_per_image(variant: Variant, samples: int = 16) -> float:
    """Mean FLOPs one training image really costs, over ``samples`` drop-path draws (batch 2)."""
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    total = 0
    for seed in range(samples):
        torch.manual_seed(seed)
        random.seed(seed)
        with FlopCounterMode(display=False) as counter:
            variant.train_step(x, y)
        total += counter.get_total_flops()
    return total / samples / 2


def _eval_flops_per_image(variant: Variant) -> float:
    with FlopCounterMode(display=False) as counter:
        variant.eval_step(torch.randn(1, 3, 32, 32), None)
    return counter.get_total_flops()


def interleaved_rates(variants: list[Variant], step: Callable[[Variant], Callable], batch: int, rounds: int,
                      steps_per_round: int) -> dict[str, float]:
    """Median images/s per variant, timing ``steps_per_round`` steps of each variant in turn, ``rounds`` times.

    Every variant starts each round from the same seed, so implementations that draw drop-path the same way (the
    two layouts of one implementation) see identical sequences of sampled paths, and the others the same
    distribution; a global step with a shallow column costs a tenth of a full one, so rounds need several steps.
    """
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for v in variants:  # warm-up: allocator, kernels, first-touch
        for _ in range(2):
            step(v)(x, y)
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            torch.manual_seed(r)
            random.seed(r)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(v)(x, y)
            rates[v.name].append(batch * steps_per_round / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="c3,c4,20layer", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement (median taken)")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}; choose from {sorted(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds "
          f"x {args.steps} steps, medians\n")

    torch.manual_seed(0)
    resnet = Variant("resnet56_cifar", timm.create_model("resnet56_cifar"), channels_last=True)
    resnet_rates = {
        "train": interleaved_rates([resnet], lambda v: v.train_step, 64, args.rounds, args.steps)[resnet.name],
        "eval": interleaved_rates([resnet], lambda v: v.eval_step, 64, args.rounds, args.steps)[resnet.name],
    }
    resnet_gflops = {"train": _train_flops_per_image(resnet, 1) * resnet_rates["train"] / 1e9,
                     "eval": _eval_flops_per_image(resnet) * resnet_rates["eval"] / 1e9}
    rows = []
    for key in names:
        cfg = CONFIGS[key]
        variants = _variants(cfg)
        flops = {v.name: (_train_flops_per_image(v), _eval_flops_per_image(v)) for v in variants}
        train = interleaved_rates(variants, lambda v: v.train_step, cfg["batch"], args.rounds, args.steps)
        evals = interleaved_rates(variants, lambda v: v.eval_step, cfg["batch"], args.rounds, args.steps)
        base = variants[0].name
        for v in variants:
            rows.append((cfg["label"], v.name, train[v.name], train[v.name] / train[base],
                         flops[v.name][0] * train[v.name] / 1e9, evals[v.name], evals[v.name] / evals[base],
                         flops[v.name][1] * evals[v.name] / 1e9))
    header = ("| network | implementation | train img/s | vs public | train GFLOP/s | eval img/s | vs public "
              "| eval GFLOP/s |")
    print(header)
    print("|" + "---|" * 8)
    for label, name, tr, tr_ratio, tr_gf, ev, ev_ratio, ev_gf in rows:
        print(f"| {label} | {name} | {tr:.0f} | {tr_ratio:.2f}x | {tr_gf:.0f} | {ev:.0f} | {ev_ratio:.2f}x "
              f"| {ev_gf:.0f} |")
    print(f"| CIFAR ResNet-56 | resnet56_cifar (channels_last) | {resnet_rates['train']:.0f} | | "
          f"{resnet_gflops['train']:.0f} | {resnet_rates['eval']:.0f} | | {resnet_gflops['eval']:.0f} |")
    print("\ntrain = forward + backward + SGD with the paper's drop-path; GFLOP/s counts the FLOPs each variant "
          "executes (skipped columns are not counted for fractal_space).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
