"""FractalNet speed: fractal_space vs a straightforward public-style implementation, side by side in one run.

For each configuration it times the train step (forward + backward + SGD with the paper's drop-path and block dropout,
``fractal_space.core.paper.PAPER.regularization``) and eval, interleaving the variants round by round (A B C, B C A,
...) so that load from other processes hits every variant alike. A fractal_space train step's cost depends on its
drop-path draw, so its expected cost is measured stratified (``Variant.train_expectation``): each global column plan
timed alone, local draws averaged, weighted as the sampler weights them. Achieved GFLOP/s counts the FLOPs a variant
actually executes (FlopCounterMode, same expectation), and a CIFAR ResNet-56 measured in the same run gives the
reference rate. Both implementations run in NCHW and in channels_last, fractal_space also in its per-block 'auto'
layout (``FractalNet.set_memory_format``, the engine's CPU default), and in that layout under bf16 autocast (the
engine's ``--amp bf16``), whose ratio to the fp32 'auto' row is printed after the table; ratios in the table divide by
the faster public layout (fp32).

khanrc/pt.fractalnet (the fastest public PyTorch FractalNet) runs side by side too: its own ``fractal.py``, read at run
time from a local mirror of that repository (``--khanrc-git``, a bare git directory; nothing of it is copied here),
built as its README's CIFAR-10 default with the same columns, widths and the paper's drop-path and dropout. Without
the mirror its rows are skipped with a message. After the table, one line per configuration gives fractal_space's
'auto' layout against each reference (the faster layout of each).

    python benchmarks/bench_model.py                # C=3, C=4 reduced and the 20-layer network, batch 100
    python benchmarks/bench_model.py --configs c4 --rounds 9
    python benchmarks/bench_model.py --configs c4 --batch 64   # C=4 reduced at batch 64, against khanrc too

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import subprocess
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from public_fractalnet import PublicFractalNet  # beside this script, which Python puts first on sys.path
from torch.utils.flop_counter import FlopCounterMode

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.core.paper import PAPER
from fractal_space.models.fractalnet import FractalNet

CONFIGS = {
    "c3": dict(num_columns=3, widths=(16, 32, 64, 128, 128), label="C=3 reduced (16..128)"),
    "c4": dict(num_columns=4, widths=(16, 32, 64, 128, 128), label="C=4 reduced (16..128)"),
    "20layer": dict(num_columns=3, widths=(64, 128, 256, 512, 512), label="20-layer (64..512)"),
}
DROP = PAPER.regularization(num_blocks=5)
FP32, BF16 = "fractal_space (auto layout)", "fractal_space (auto layout, bf16 autocast)"
PUBLIC, KHANRC = "public", "khanrc"  # name prefixes of the two reference implementations' rows
KHANRC_GIT = Path("/work/.mirror/khanrc+pt.fractalnet/repo/.git")


def load_khanrc(git_dir: Path) -> types.ModuleType | None:
    """khanrc/pt.fractalnet's ``fractal.py`` at the mirror's HEAD, executed as a module; None without the mirror."""
    if not (git_dir / "HEAD").exists():
        return None
    source = subprocess.run(["git", f"--git-dir={git_dir}", "show", "HEAD:fractal.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("khanrc_fractal")
    exec(compile(source, f"{git_dir}:fractal.py", "exec"), module.__dict__)  # their public file, as they ship it
    return module


def khanrc_fractalnet(module: types.ModuleType, num_columns: int, widths: tuple[int, ...]) -> torch.nn.Module:
    """Their FractalNet as their README's CIFAR-10 default (max-pool after every block, linear head, Xavier init,
    conv -> dropout -> BN -> ReLU) at our widths, with the paper's local/global drop-path and per-block dropout."""
    doubling = tuple(widths[0] * 2 ** min(i, len(widths) - 2) for i in range(len(widths)))
    if tuple(widths) != doubling:
        raise ValueError(f"khanrc's FractalNet doubles its width per block but the last; {widths} is not {doubling}")
    had_int = hasattr(np, "int")
    np.int = int  # their block counts steps with np.int, removed in NumPy 1.24; only construction reads it
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # they print each block's channels
            return module.FractalNet((3, 32, 32, 10), num_columns, widths[0], DROP["drop_path_rate"],
                                     list(DROP["block_dropout"]), DROP["global_drop_fraction"], gap=0, init="xavier")
    finally:
        if not had_int:
            del np.int


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    layout: str  # 'contiguous', 'channels_last' or 'auto' (FractalNet.set_memory_format: per block)
    bf16: bool = False  # torch.autocast("cpu", dtype=torch.bfloat16), as the engine's --amp bf16

    def __post_init__(self) -> None:
        self.opt = torch.optim.SGD(self.model.parameters(), lr=PAPER.lr, momentum=PAPER.momentum)
        if hasattr(self.model, "set_memory_format"):
            self.model.set_memory_format(self.layout, input_size=32)
        else:
            self.model.to(memory_format=torch.contiguous_format if self.layout == "contiguous" else torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs arrive as the engine's loader delivers them: channels_last unless the model is all NCHW."""
        return x if self.layout == "contiguous" else x.contiguous(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, column: int | None = None) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(self._layout(x)) if column is None else self.model(self._layout(x), column=column)
            loss = F.cross_entropy(out, y)
        loss.backward()
        self.opt.step()

    def eval_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.model(self._layout(x))

    def train_expectation(self, measure: Callable[[int | None, int], float], steps: int) -> float:
        """Expected ``measure(column, n)`` (a mean over n train steps) under the paper's drop-path distribution.

        A fractal_space step costs from a tenth of a full step (global, shallowest column) to all of it, so a plain
        average over a few dozen draws is off by 5-15%. Stratify instead: the global share g is spread evenly over
        the C column plans, each deterministic and measured over ``steps // 8`` steps (at least 2), and the local
        share over ``steps`` local draws: E = g * mean_k M(column k) + (1 - g) * M(local). A public-style step
        computes everything whatever the draw, so it is measured over ``steps // 4`` ordinary steps.
        """
        if not isinstance(self.model, FractalNet):
            return measure(None, max(2, steps // 4))
        g = self.model.global_drop_fraction
        per_column = [measure(k, max(2, steps // 8)) for k in range(1, self.model.num_columns + 1)]
        self.model.set_regularization(global_drop_fraction=0.0)
        try:
            local = measure(None, steps)
        finally:
            self.model.set_regularization(global_drop_fraction=g)
        return g * sum(per_column) / len(per_column) + (1 - g) * local

    def train_step_seconds(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        return self.train_expectation(lambda column, n: _mean_seconds(lambda: self.train_step(x, y, column), n), steps)

    def eval_step_seconds(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        return _mean_seconds(lambda: self.eval_step(x, y), max(2, steps // 4))

    def train_flops_per_image(self) -> float:
        """FLOPs one training image really costs (batch 2, FlopCounterMode), expected over drop-path draws."""
        x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))

        def flops(column: int | None, n: int) -> float:
            total = 0
            for _ in range(n):
                with FlopCounterMode(display=False) as counter:
                    self.train_step(x, y, column)
                total += counter.get_total_flops()
            return total / n / 2

        return self.train_expectation(flops, 32)

    def eval_flops_per_image(self) -> float:
        # eval() first: a FractalNet's first eval() after training re-estimates its batch-norm statistics (once, not
        # per eval step), which is not the eval step's work.
        self.model.eval()
        with FlopCounterMode(display=False) as counter:
            self.eval_step(torch.randn(1, 3, 32, 32), None)
        return counter.get_total_flops()


def _mean_seconds(step: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def _variants(cfg: dict, khanrc: types.ModuleType | None) -> list[Variant]:
    kw = dict(num_columns=cfg["num_columns"], widths=cfg["widths"], **DROP)
    name = f"fractalnet_c{cfg['num_columns']}"
    torch.manual_seed(0)
    theirs = [] if khanrc is None else [
        Variant(f"{KHANRC} fractal.py ({layout_name})", khanrc_fractalnet(khanrc, cfg["num_columns"], cfg["widths"]),
                layout) for layout_name, layout in (("NCHW", "contiguous"), ("channels_last", "channels_last"))]
    return [
        *theirs,
        Variant(f"{PUBLIC} (NCHW)", PublicFractalNet(**kw), "contiguous"),
        Variant(f"{PUBLIC} (channels_last)", PublicFractalNet(**kw), "channels_last"),
        Variant("fractal_space (NCHW)", timm.create_model(name, **kw), "contiguous"),
        Variant("fractal_space (channels_last)", timm.create_model(name, **kw), "channels_last"),
        Variant(FP32, timm.create_model(name, **kw), "auto"),
        Variant(BF16, timm.create_model(name, **kw), "auto", bf16=True),
    ]


def interleaved_seconds(variants: list[Variant], seconds: Callable[[Variant, torch.Tensor, torch.Tensor], float],
                        batch: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each of ``rounds`` interleaved rounds.

    Each round measures every variant in turn (A B C, then B C A, ...) from the same seed, so load from other
    processes hits all of them alike and the layouts of one implementation see identical drop-path draws.
    """
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for v in variants:  # warm-up: allocator, kernels, first-touch
        seconds(v, x, y)
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            torch.manual_seed(r)
            random.seed(r)
            per_round[v.name].append(seconds(v, x, y))
    return per_round


def _rate(batch: int, seconds: list[float]) -> float:
    return batch * len(seconds) / sum(seconds)


def _ratio_cell(ours: list[float], base: list[float]) -> str:
    """Speed-up over the baseline on the mean step time, and its range over the rounds: a ratio is only as sure as
    its spread, which here comes from busy neighbours and, for fractal_space, from each round's local draws."""
    mean = sum(base) / sum(ours)
    if len(ours) < 2:
        return f"{mean:.2f}x"
    per_round = [b / o for b, o in zip(base, ours, strict=True)]
    return f"{mean:.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="c3,c4,20layer", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement")
    parser.add_argument("--steps", type=int, default=24,
                        help="local drop-path train steps per round and variant of fractal_space (plus steps/8 per "
                             "global column); fixed-cost measurements (public train, every eval) run steps/4")
    parser.add_argument("--batch", type=int, default=100,
                        help="batch size of every network, ResNet-56 too (default 100: the paper's and the engine's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--khanrc-git", type=Path, default=KHANRC_GIT,
                        help="bare git directory of khanrc/pt.fractalnet whose HEAD:fractal.py runs side by side")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}; choose from {sorted(CONFIGS)}")
    if args.batch < 2:
        parser.error(f"--batch {args.batch} is too small; batch norm needs at least 2 images")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.rounds} interleaved rounds, --steps {args.steps}\n")
    khanrc = load_khanrc(args.khanrc_git)
    if khanrc is None:
        print(f"khanrc/pt.fractalnet skipped: no git mirror at {args.khanrc_git} (--khanrc-git)\n")

    def train(v: Variant, x: torch.Tensor, y: torch.Tensor) -> float:
        return v.train_step_seconds(x, y, args.steps)

    def evaluate(v: Variant, x: torch.Tensor, y: torch.Tensor) -> float:
        return v.eval_step_seconds(x, y, args.steps)

    torch.manual_seed(0)
    baselines = [Variant(f"{name} (channels_last)", timm.create_model(name), "channels_last")
                 for name in ("resnet56_cifar", "densenet_bc100_cifar")]  # the engine's CPU layout for baselines
    baseline_times = {mode: interleaved_seconds(baselines, fn, args.batch, args.rounds)
                      for mode, fn in (("train", train), ("eval", evaluate))}
    baseline_rows = []
    for v in baselines:
        rates = {mode: _rate(args.batch, t[v.name]) for mode, t in baseline_times.items()}
        baseline_rows.append((v.name, rates, {"train": v.train_flops_per_image() * rates["train"] / 1e9,
                                              "eval": v.eval_flops_per_image() * rates["eval"] / 1e9}))
    rows, amp_notes, reference_notes = [], [], []
    for key in names:
        cfg = CONFIGS[key]
        variants = _variants(cfg, khanrc)
        flops = {v.name: (v.train_flops_per_image(), v.eval_flops_per_image()) for v in variants}
        times = {"train": interleaved_seconds(variants, train, args.batch, args.rounds),
                 "eval": interleaved_seconds(variants, evaluate, args.batch, args.rounds)}
        public = [v.name for v in variants if isinstance(v.model, PublicFractalNet)]
        base = {mode: min(public, key=lambda n: sum(t[n])) for mode, t in times.items()}  # the faster public layout
        label = f"{cfg['label']}, batch {args.batch}"
        for prefix, what in ((KHANRC, "khanrc/pt.fractalnet fractal.py"), (PUBLIC, "benchmarks/public_fractalnet.py")):
            ref = [v.name for v in variants if v.name.startswith(prefix)]
            if ref:
                fastest = {mode: min(ref, key=lambda n: sum(t[n])) for mode, t in times.items()}
                reference_notes.append(f"{label}: {FP32} vs {what} (faster layout), train "
                                       f"{_ratio_cell(times['train'][FP32], times['train'][fastest['train']])}, eval "
                                       f"{_ratio_cell(times['eval'][FP32], times['eval'][fastest['eval']])}")
        amp_notes.append(f"{label}: bf16 autocast vs fp32 (both auto layout), train "
                         f"{_ratio_cell(times['train'][BF16], times['train'][FP32])}, eval "
                         f"{_ratio_cell(times['eval'][BF16], times['eval'][FP32])}")
        for v in variants:
            tr, ev = (_rate(args.batch, times[mode][v.name]) for mode in ("train", "eval"))
            ratio = {mode: _ratio_cell(t[v.name], t[base[mode]]) for mode, t in times.items()}
            rows.append((label, v.name, tr, ratio["train"], flops[v.name][0] * tr / 1e9, ev, ratio["eval"],
                         flops[v.name][1] * ev / 1e9))
    header = ("| network | implementation | train img/s | vs best public (round range) | train GFLOP/s "
              "| eval img/s | vs best public (round range) | eval GFLOP/s |")
    print(header)
    print("|" + "---|" * 8)
    for label, name, tr, tr_ratio, tr_gf, ev, ev_ratio, ev_gf in rows:
        print(f"| {label} | {name} | {tr:.0f} | {tr_ratio} | {tr_gf:.0f} | {ev:.0f} | {ev_ratio} | {ev_gf:.0f} |")
    for name, rates, gflops in baseline_rows:
        print(f"| CIFAR baseline, batch {args.batch} | {name} | {rates['train']:.0f} | | {gflops['train']:.0f} | "
              f"{rates['eval']:.0f} | | {gflops['eval']:.0f} |")
    print("\ntrain = forward + backward + SGD with the paper's drop-path; 'vs best public' divides by the faster of "
          "the two public layouts; GFLOP/s counts the FLOPs each variant executes (skipped columns are not counted for "
          "fractal_space).")
    print("\n" + "\n".join(reference_notes))
    print("\n" + "\n".join(amp_notes))
    (_, _, resnet_gflops), (_, _, densenet_gflops) = baseline_rows
    print(f"\nDenseNet-BC-100 vs ResNet-56 (same rounds): train GFLOP/s "
          f"{densenet_gflops['train'] / resnet_gflops['train']:.2f}x, eval GFLOP/s "
          f"{densenet_gflops['eval'] / resnet_gflops['eval']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
