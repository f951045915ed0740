"""DenseNet-BC-100 against ResNet-56 in training GFLOP/s, the levers tried, and what bounds it.

The final stage trains every baseline with one recipe, and on CPU DenseNet-BC-100 took most of its time: per FLOP it
trains at a fraction of ResNet-56's rate. This benchmark times train steps (forward + backward + SGD, batch 64 by
default) of ResNet-56 and of DenseNet-BC-100 in each variant below, interleaved round by round in one process
(``bench_model.interleaved_seconds``), and prints each variant's GFLOP/s over ResNet-56's with the per-round range:

- channels_last (the engine's CPU layout for baselines) and NCHW;
- timm's memory-efficient dense layers (``set_grad_checkpointing``: the concatenation and first BN-ReLU-conv of each
  layer recomputed in the backward pass, so the concatenated features are not kept);
- ``--compile``: ``torch.compile`` (inductor fuses concatenation, batch norm and ReLU); its compilation, minutes on
  CPU, is timed apart and left out of the rounds.

Every DenseNet variant is credited with the plain network's FLOPs (3x its forward FLOPs per image, FlopCounterMode),
so recomputation does not count as work. Then one profiled train step per model (channels_last) splits the time into
convolutions (forward and backward) and everything else (batch norm, ReLU, concatenation, gradient accumulation) and
prints the ratio DenseNet would reach if everything but its convolutions took no time: an upper bound for any change
that leaves oneDNN's convolutions as they are.

    python benchmarks/bench_densenet.py                    # every core, 5 rounds
    python benchmarks/bench_densenet.py --threads 1 --compile
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from bench_model import Variant, interleaved_seconds  # beside this script, which Python puts first on sys.path
from torch.profiler import ProfilerActivity, profile

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.core.hardware import describe
from fractal_space.deploy.metrics import count_flops

RESNET, DENSENET = "resnet56_cifar", "densenet_bc100_cifar"
#: The profiler's names for convolution work, forward and backward, on CPU.
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward")


def _variants(compiled: bool) -> list[Variant]:
    torch.manual_seed(0)
    checkpointed = timm.create_model(DENSENET)
    checkpointed.set_grad_checkpointing(True)
    variants = [Variant(f"{RESNET} (channels_last)", timm.create_model(RESNET), "channels_last"),
                Variant(f"{DENSENET} (channels_last)", timm.create_model(DENSENET), "channels_last"),
                Variant(f"{DENSENET} (NCHW)", timm.create_model(DENSENET), "contiguous"),
                Variant(f"{DENSENET} (channels_last, memory-efficient)", checkpointed, "channels_last")]
    if compiled:
        compiled_model = torch.compile(timm.create_model(DENSENET))
        variants.append(Variant(f"{DENSENET} (channels_last, torch.compile)", compiled_model, "channels_last"))
    return variants


def conv_share(variant: Variant, batch: int, steps: int = 3) -> float:
    """The fraction of a profiled train step's operator time spent in convolutions (forward and backward)."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    variant.train_step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            variant.train_step(x, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS) / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="train steps per variant and round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="also time DenseNet under torch.compile (minutes)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.batch < 2:
        parser.error("--rounds and --steps must be >= 1, --batch >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{describe()}, {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} interleaved rounds of "
          f"{args.steps} train steps\n")
    flops = {name: 3 * count_flops(timm.create_model(name), (3, 32, 32)) for name in (RESNET, DENSENET)}
    variants = _variants(args.compile)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    for v in variants:
        if "torch.compile" in v.name:
            start = time.perf_counter()
            v.train_step(x, y)
            print(f"{v.name}: first step (compilation) {time.perf_counter() - start:.0f} s\n")

    def seconds(v: Variant, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            v.train_step(x, y)
        return (time.perf_counter() - start) / args.steps

    times = interleaved_seconds(variants, seconds, args.batch, args.rounds)
    flops_of = {v.name: flops[v.name.split()[0]] for v in variants}
    rate = {v.name: args.batch * len(times[v.name]) / sum(times[v.name]) for v in variants}
    gflops = {name: rate[name] * flops_of[name] / 1e9 for name in rate}
    reference = variants[0].name
    print("| variant | train img/s | train GFLOP/s | vs ResNet-56 GFLOP/s (round range) |")
    print("|---|---|---|---|")
    for v in variants:
        per_round = [flops_of[v.name] * t_ref / (flops_of[reference] * t)
                     for t, t_ref in zip(times[v.name], times[reference], strict=True)]
        print(f"| {v.name} | {rate[v.name]:.0f} | {gflops[v.name]:.1f} | {gflops[v.name] / gflops[reference]:.2f}x "
              f"({min(per_round):.2f}-{max(per_round):.2f}) |")
    resnet, densenet = variants[0], variants[1]
    shares = {v.name: conv_share(v, args.batch) for v in (resnet, densenet)}
    densenet_convs = gflops[densenet.name] / shares[densenet.name]
    print(f"\nProfile (one train step each, channels_last): convolutions take {shares[resnet.name]:.0%} of ResNet-56's "
          f"operator time and {shares[densenet.name]:.0%} of DenseNet-BC-100's; DenseNet's convolutions alone run at "
          f"{densenet_convs:.1f} GFLOP/s. With every other op free, DenseNet-BC-100 would train at "
          f"{densenet_convs / gflops[reference]:.2f}x ResNet-56's GFLOP/s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
