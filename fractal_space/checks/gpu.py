"""The GPU acceptance check: five steps, each one line of pass/fail/skipped, numbers and error, minutes on one GPU.

    python -m fractal_space.checks.gpu             # needs CUDA: gpu-check/summary.json and gpu-check/summary.md
    python -m fractal_space.checks.gpu --dry-run   # the steps it can run, on CPU at the smallest size

It runs with the interpreter it is given and installs nothing: every step runs in a child process of the same
interpreter (``sys.executable``), which must find torch with CUDA and this package (installed, ``pip install --no-deps
-e .``, or on ``PYTHONPATH`` from a checkout).

1. ``families``: every registered FractalNet variant and CIFAR baseline trains ``family_steps`` steps through the
   engine with bf16 autocast and channels_last, keeps a finite loss and is evaluated (each FractalNet column too);
   ``fractalnet34`` at 224x224 (CIFAR-10 images upscaled).
2. ``throughput``: training images/s of the engine's loop (data and augmentation on the device) for fractalnet_c4
   (reduced widths, the paper's drop-path), fractalnet20_cifar, ResNet-56 and DenseNet-BC-100, interleaved round by
   round in one run; and, run from a checkout that has it, of the reference FractalNet (a public-style
   re-implementation in ``benchmarks/``) in both FractalNet configurations, with the ratio fractal_space / reference.
3. ``ray``: the search command line with ``--backend ray``, 8 tiny trials at ``--gpus-per-trial 0.25``; from the
   trials' own records (start time, wall time, device) exactly 4 ran at once, and every one trained on the GPU.
4. ``optuna``: the Optuna backend with 2 worker processes on the one GPU: both ran trials, on the GPU.
5. ``final``: that study's final stage (its best FractalNet and ResNet-20, one epoch) on the GPU; every exported folder
   loads on CPU with the outputs it gives on the device and the test accuracy the stage recorded, and its
   ``model.onnx`` runs in ONNX Runtime with the same outputs.

A step whose packages (``Step.needs``) are not installed is skipped, not failed. Each step that runs does so in its
own process under a timeout, so a hang or a crash costs that step only, and records its GPU memory peak
(``torch.cuda.max_memory_allocated``: its own process's and, for the searches, the trials'). The dry run uses a slice
of the real CIFAR-10 and widths of a few channels, and pins each step (and its workers) to one core; steps and checks
are the same. Exit code 0 only if every step that ran passed, 1 if one failed; 2 without torch, without CUDA (and no
--dry-run) or without CIFAR-10.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: The checkout holding this package (its parent folder); from a checkout, ``benchmarks/`` lies beside it.
CHECKOUT = Path(__file__).resolve().parents[2]
#: The reference FractalNet's file in a checkout's ``benchmarks/``, first match used; importing it registers it with
#: timm. The package itself never imports ``benchmarks/``: only the throughput step, when the file is there.
REFERENCE_FILES = ("reference_fractalnet.py", "public_fractalnet.py")
SIDE = 224  # fractalnet34's input side
SMALL_BLOCKS = 2  # FractalNet blocks in the dry run
#: Packages whose versions the summary records: (import name, distribution name).
VERSIONS = (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("optuna", "optuna"),
            ("optuna_dashboard", "optuna-dashboard"), ("ray", "ray"), ("onnxruntime", "onnxruntime"))


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: the GPU check's sizes, or the dry run's smallest ones (same steps, same code)."""

    device: str
    train_rows: int | None  # rows of CIFAR-10's training split used (None: the whole named dataset)
    test_rows: int | None
    side: tuple[int, int, int]  # the 224x224 set: training rows, validation images drawn from them, test rows
    val_size: int
    small_models: bool  # widths of a few channels for every model (the dry run)
    family_steps: int
    family_batch: int
    side_batch: int
    bn_batches: int
    throughput_batch: int
    throughput_steps: int  # per round and model
    throughput_rounds: int  # measured, after one warm-up round
    search_subset: int  # --train-subset of both searches and the final stage
    rung_images: int
    ray_trials: int
    ray_flags: tuple[str, ...]
    ray_at_once: int  # trials the resources fit at once: 1 / 0.25 GPU (dry run: 1 CPU / 0.25)
    optuna_trials: int
    timeouts: dict[str, int] = field(default_factory=dict)


GPU = Sizes(device="cuda", train_rows=None, test_rows=None, side=(448, 64, 64), val_size=500, small_models=False,
            family_steps=20, family_batch=64, side_batch=16, bn_batches=4, throughput_batch=128, throughput_steps=40,
            throughput_rounds=3, search_subset=10_000, rung_images=5_000, ray_trials=8,
            ray_flags=("--gpus-per-trial", "0.25"), ray_at_once=4, optuna_trials=4,
            timeouts={"families": 120, "throughput": 90, "ray": 150, "optuna": 90, "final": 90})
DRY = Sizes(device="cpu", train_rows=160, test_rows=40, side=(8, 2, 4), val_size=20, small_models=True,
            family_steps=2, family_batch=2, side_batch=2, bn_batches=1, throughput_batch=4, throughput_steps=2,
            throughput_rounds=1, search_subset=40, rung_images=40, ray_trials=4,
            ray_flags=("--cpus-per-trial", "0.25", "--gpus-per-trial", "0"), ray_at_once=4, optuna_trials=2,
            timeouts=dict.fromkeys(GPU.timeouts, 600))  # a loaded shared CPU is 3-5x slower than an idle one
#: The tiny corner of the space the searches sample (trials of seconds).
SPACE = ("num_blocks: {low: 2, high: 3}\nnum_columns: {low: 1, high: 3}\nbase_width: 8\n"
         "width_growth: {choices: [1.0, 2.0]}\nbatch_size: 64\n")


@dataclass
class Context:
    """What every step needs: the sizes, the output folder and the datasets the parent prepared."""

    sizes: Sizes
    out: Path
    dataset: str  # CIFAR-10: the named dataset, or the dry run's Parquet slice of it
    side_dataset: str  # the 224x224 Parquet set
    data_dir: str

    @property
    def device(self) -> Any:
        import torch

        return torch.device(self.sizes.device)

    def model_kwargs(self, model: str) -> dict[str, Any]:
        """The dry run's tiny widths for ``model`` ({} at full size)."""
        return small_kwargs(model) if self.sizes.small_models else {}

    def search_args(self, study: str) -> list[str]:
        """The search command line's arguments of a tiny search writing under ``<out>/runs``; the final stage off."""
        space = self.out / "space.yaml"
        space.write_text(SPACE)
        s = self.sizes
        return ["--runs-dir", str(self.out / "runs"), "--study", study, "--dataset", self.dataset, "--data-dir",
                self.data_dir, "--device", s.device, "--rungs", "1", "--rung-images", str(s.rung_images),
                "--train-subset", str(s.search_subset), "--val-size", str(s.val_size), "--baselines", "",
                "--space", str(space), "--no-progress", "--no-dashboard", "--final-top", "0"]


@dataclass
class Outcome:
    """One step's result: its numbers, the checks that failed, and its GPU memory peak."""

    numbers: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    peak_memory_mb: float | None = None

    def check(self, ok: bool, failure: str) -> bool:
        if not ok:
            self.failures.append(failure)
        return ok

    def peak(self, *values: float | None) -> None:
        known = [v for v in (self.peak_memory_mb, *values) if v is not None and not _nan(v)]
        self.peak_memory_mb = max(known) if known else None


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def small_kwargs(model: str) -> dict[str, Any]:
    """The dry run's size of any registered family: 4-channel widths, 2 FractalNet blocks, 2 layers per dense block
    (each variant keeps what defines it: its columns, its stem; built on the meta device to read its shape)."""
    import timm
    import torch

    from fractal_space.models.densenet_cifar import DenseNetCifar
    from fractal_space.models.resnet_cifar import ResNetCifar

    with torch.device("meta"):
        net = timm.create_model(model)
    if isinstance(net, ResNetCifar):
        return {"channels": (4,) * len(net.stages)}
    if isinstance(net, DenseNetCifar):
        return {"growth_rate": 2, "block_depth": 2}
    if hasattr(net, "num_blocks"):  # FractalNet and its plain column network
        return {"num_blocks": SMALL_BLOCKS, "widths": (4,) * SMALL_BLOCKS, "stem_width": 8}
    raise ValueError(f"no small size known for {model!r}")


def family_models() -> list[str]:
    """Every registered FractalNet variant, then every CIFAR baseline."""
    import timm

    import fractal_space  # noqa: F401  (registers the families)

    return timm.list_models("fractalnet*") + timm.list_models(["resnet*_cifar", "densenet*_cifar"])


def max_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals that overlap at one moment (an interval ending when another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    return most


def _free() -> None:
    """Return the last model's CUDA memory so the next one's peak is its own, once the caller has dropped its
    references (on CPU there is no peak to keep apart, and a full collection costs ~0.25 s a model)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _train_config(ctx: Context, model: str, **fields: Any) -> Any:
    """The check's recipe: bf16 autocast and channels_last on the check's device, no bars, no downloads."""
    from fractal_space.engine import TrainConfig

    base = dict(model=model, dataset=ctx.dataset, data_dir=ctx.data_dir, device=ctx.sizes.device, amp="bf16",
                channels_last=True, val_size=ctx.sizes.val_size, bn_batches=ctx.sizes.bn_batches, progress=False,
                download=False)
    if "model_kwargs" not in fields:
        base["model_kwargs"] = ctx.model_kwargs(model)
    return TrainConfig(**{**base, **fields})


def step_families(ctx: Context, out: Outcome) -> None:
    """Every family trains ``family_steps`` steps with bf16 autocast and channels_last and is evaluated."""
    import torch

    from fractal_space.core.errors import first_line
    from fractal_space.core.hardware import peak_memory_mb, reset_peak_memory
    from fractal_space.engine import Trainer

    s = ctx.sizes
    models = family_models()
    out.numbers["models"] = len(models)
    for model in models:
        side = model == "fractalnet34"
        batch = s.side_batch if side else s.family_batch
        trainer = None
        reset_peak_memory(ctx.device)
        try:
            cfg = _train_config(ctx, model, epochs=1, epoch_images=s.family_steps * batch, batch_size=batch,
                                **({"dataset": ctx.side_dataset, "val_size": s.side[1]} if side else {}))
            trainer = Trainer(cfg)
            report = next(trainer.epochs())
            print(f"{model}: loss {report.train_loss:.3f}, {report.epoch_seconds:.1f} s", flush=True)
            out.check(trainer.amp_dtype == torch.bfloat16, f"{model}: autocast dtype {trainer.amp_dtype}, not bf16")
            out.check(math.isfinite(report.train_loss) and math.isfinite(report.val_loss),
                      f"{model}: loss {report.train_loss} / val {report.val_loss}")
            out.check(len(report.columns) == trainer.num_columns, f"{model}: {len(report.columns)} of "
                      f"{trainer.num_columns} columns evaluated")
            if ctx.device.type == "cuda":  # on CPU a FractalNet picks its layout per block, by design
                convs = [p for p in trainer.model.parameters() if p.dim() == 4]
                out.check(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs),
                          f"{model}: conv weights not channels_last")
            out.numbers[model] = {"loss": round(report.train_loss, 3), "val_acc": round(report.val_acc, 3),
                                  "images_per_s": round(report.train_images_per_s),
                                  "input": f"{trainer.input_size[1]}x{trainer.input_size[2]}",
                                  "peak_memory_mb": _round(peak_memory_mb(ctx.device))}
            out.peak(peak_memory_mb(ctx.device))
        except Exception as exc:  # noqa: BLE001 - one family failing must not hide the others
            out.failures.append(f"{model}: {type(exc).__name__}: {first_line(exc)}")
        finally:
            del trainer  # the last reference to the model, its optimizer and its data
            _free()


#: The reference FractalNet's configurations: (label, columns, widths key), and the network each is compared with.
REFERENCE_CONFIGS = (("C=4", 4, "c4"), ("20-layer", 3, "20layer"))
COMPARED = {"C=4": "fractalnet_c4", "20-layer": "fractalnet20_cifar"}


def reference_model() -> tuple[str | None, str]:
    """The timm name of the checkout's reference FractalNet, registered by importing its file from ``benchmarks/``;
    or None and why not (the package installed without a checkout, or the checkout without the file)."""
    import timm

    path = next((CHECKOUT / "benchmarks" / name for name in REFERENCE_FILES
                 if (CHECKOUT / "benchmarks" / name).is_file()), None)
    if path is None:
        return None, f"no benchmarks/{REFERENCE_FILES[0]} beside the package at {CHECKOUT}"
    if path.stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    registered = timm.list_models(module=path.stem)
    if len(registered) != 1:
        return None, f"benchmarks/{path.name} registers {len(registered)} timm models, not 1"
    return registered[0], f"benchmarks/{path.name}"


def throughput_variants(ctx: Context, reference: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, timm model, kwargs): the four networks and, given its timm name, the reference FractalNet in both
    FractalNet configurations."""
    from fractal_space.core.paper import PAPER
    from fractal_space.models.fractalnet import PAPER_WIDTHS, REDUCED_WIDTHS

    widths = {"c4": REDUCED_WIDTHS, "20layer": PAPER_WIDTHS}
    if ctx.sizes.small_models:
        widths = {k: (4,) * SMALL_BLOCKS for k in widths}
    blocks = len(widths["c4"])
    drop = dict(PAPER.regularization(blocks))  # the drop-path the engine gives fractal_space's nets
    variants = [
        ("fractalnet_c4", "fractalnet_c4", {"num_blocks": blocks, "widths": widths["c4"]}),
        ("fractalnet20_cifar", "fractalnet20_cifar", {"num_blocks": blocks, "widths": widths["20layer"]}),
        ("resnet56_cifar", "resnet56_cifar", ctx.model_kwargs("resnet56_cifar")),
        ("densenet_bc100_cifar", "densenet_bc100_cifar", ctx.model_kwargs("densenet_bc100_cifar")),
    ]
    if reference is not None:
        variants += [(f"reference {config}", reference, {"num_columns": columns, "widths": widths[key], **drop})
                     for config, columns, key in REFERENCE_CONFIGS]
    return variants


def step_throughput(ctx: Context, out: Outcome) -> None:
    """Training images/s through the engine, the variants interleaved round by round (A B C, B C A, ...)."""
    from fractal_space.engine import Trainer

    s = ctx.sizes
    reference, source = reference_model()
    variants = throughput_variants(ctx, reference)
    trainers = {label: Trainer(_train_config(ctx, model, model_kwargs=kwargs, epochs=s.throughput_rounds + 1,
                                             epoch_images=s.throughput_steps * s.throughput_batch,
                                             batch_size=s.throughput_batch, eval_columns=False))
                for label, model, kwargs in variants}
    epochs = {label: trainer.epochs() for label, trainer in trainers.items()}
    rates: dict[str, list[float]] = {label: [] for label in trainers}
    labels = list(trainers)
    for r in range(s.throughput_rounds + 1):  # round 0 warms up (kernels, autotuning, allocator)
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            report = next(epochs[label])
            if r:
                rates[label].append(report.train_images_per_s)
    out.numbers["batch"] = s.throughput_batch
    out.numbers["images_per_s"] = {label: round(statistics.median(v)) for label, v in rates.items()}
    out.numbers["reference"] = source if reference is not None else f"skipped: {source}"
    if reference is not None:
        for config, ours in COMPARED.items():
            ratio = statistics.median(a / b for a, b in zip(rates[ours], rates[f"reference {config}"], strict=True))
            out.numbers[f"{ours} / reference"] = round(ratio, 2)
    out.check(all(v > 0 and math.isfinite(v) for r in rates.values() for v in r), "a non-positive rate")


def _search(ctx: Context, study: str, *flags: str) -> tuple[int, Any]:
    """Run the search command line in this process; its exit code and trials.parquet (None if absent)."""
    import pandas as pd

    from fractal_space.search.cli import main

    code = main([*ctx.search_args(study), *flags])
    table = ctx.out / "runs" / study / "trials.parquet"
    return code, pd.read_parquet(table) if table.exists() else None


def _check_trials(ctx: Context, out: Outcome, code: int, trials: Any, want: int) -> Any:
    """The search exited 0 with ``want`` finished search trials, each trained on the check's device; returns them."""
    out.check(code == 0, f"the search exited {code}")
    if trials is None:
        out.failures.append("no trials.parquet")
        return None
    done = trials[(trials.kind == "fractalnet") & trials.state.isin(["COMPLETE", "PRUNED"])]
    out.check(len(done) == want, f"{len(done)} of {want} trials finished (states {sorted(set(trials.state))})")
    devices = sorted(set(done.device.fillna("?")))
    out.check(all(d.startswith(ctx.sizes.device) for d in devices), f"trials trained on {devices}")
    intervals = [(a, a + w) for a, w in zip(done.started_at, done.wall_seconds, strict=True)]
    out.numbers.update(trials=len(done), devices=devices, at_once=max_at_once(intervals),
                       trial_seconds=round(statistics.median(done.wall_seconds), 1) if len(done) else None)
    out.peak(*done.peak_memory_mb.dropna().tolist())
    return done


def step_ray(ctx: Context, out: Outcome) -> None:
    """8 tiny Ray trials sharing the GPU by quarters: from their own records, exactly 4 at once, each on the GPU."""
    s = ctx.sizes
    code, trials = _search(ctx, "ray", "--backend", "ray", "--trials", str(s.ray_trials), *s.ray_flags)
    if _check_trials(ctx, out, code, trials, s.ray_trials) is not None:
        out.check(out.numbers["at_once"] == s.ray_at_once,
                  f"{out.numbers['at_once']} trials ran at once, the resources fit {s.ray_at_once}")


def _optuna_flags(ctx: Context) -> list[str]:
    return ["--trials", str(ctx.sizes.optuna_trials), "--workers", "2"]


def step_optuna(ctx: Context, out: Outcome) -> None:
    """The Optuna backend with 2 worker processes on the one device: both ran trials."""
    code, trials = _search(ctx, "optuna", *_optuna_flags(ctx))
    done = _check_trials(ctx, out, code, trials, ctx.sizes.optuna_trials)
    if done is not None:
        workers = sorted(set(done.worker))
        out.numbers["workers"] = len(workers)
        out.check(len(workers) == 2, f"trials ran in {len(workers)} worker process(es), not 2")


def step_final(ctx: Context, out: Outcome) -> None:
    """The Optuna study's final stage on the device, then every exported folder loaded on CPU and in ONNX Runtime.

    Re-running the Optuna step's command resumes its study: it only searches if that step did not finish.
    """
    import pandas as pd

    from fractal_space.data import BatchLoader, load_splits
    from fractal_space.search.cli import main

    code = main([*ctx.search_args("optuna"), *_optuna_flags(ctx), "--final-top", "1", "--final-spread", "0",
                 "--final-epochs", "1", "--final-baselines", "resnet20_cifar"])
    out.check(code == 0, f"the search exited {code}")
    final = ctx.out / "runs" / "optuna" / "final"
    if not out.check((final / "results.parquet").exists(), "no final/results.parquet"):
        return
    results = pd.read_parquet(final / "results.parquet")
    out.check(len(results) == 2, f"{len(results)} final models, not 2 (1 FractalNet, ResNet-20)")
    s = ctx.sizes
    data = load_splits(ctx.dataset, ctx.data_dir, s.val_size, s.search_subset, download=False)
    test = BatchLoader(data.test, data.norm, batch_size=500)
    sample = next(iter(test))[0][:8]
    folders = []
    for row in results.itertuples():
        folders.append((final / row.name, row.test_acc))
        folders += [(final / row.name / "columns" / f"column{k}", acc)
                    for k, acc in enumerate(row.column_test_acc, 1) if len(row.column_test_acc) > 1]
    checked = []
    for folder, recorded in folders:
        name = str(folder.relative_to(final))
        checked.append({"folder": name, **_check_export(ctx, out, folder, name, recorded, sample, test)})
    out.numbers["exports"] = checked
    out.numbers["test_acc"] = {row.name: round(row.test_acc, 3) for row in results.itertuples()}


def _check_export(ctx: Context, out: Outcome, folder: Path, name: str, recorded: float, sample: Any,
                  test: Any) -> dict[str, Any]:
    """One exported folder: CPU outputs = device outputs, CPU test accuracy = the stage's, model.onnx runs alike."""
    import timm
    import torch

    import fractal_space  # noqa: F401  (local-dir: needs the families registered)

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    cpu = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    device = copy.deepcopy(cpu).to(ctx.device)
    with torch.no_grad():
        ref = cpu(sample)
        diff = float((device(sample.to(ctx.device)).cpu() - ref).abs().max())
        correct = sum(int((cpu(x).argmax(1) == y).sum()) for x, y in test)
    scale = float(ref.abs().max())
    acc = correct / len(test.labels)
    tolerance = max(1 / len(test.labels), 0.005)  # the stage tested under the device's autocast
    out.check(diff <= 1e-4 * (1 + scale), f"{name}: CPU and {ctx.device.type} outputs differ by {diff:.2g}")
    out.check(abs(acc - recorded) <= tolerance, f"{name}: test accuracy {acc:.4f} on CPU, {recorded:.4f} recorded")
    result = {"max_diff": float(f"{diff:.2g}"), "cpu_test_acc": round(acc, 4), "onnx_max_diff": None}
    onnx = folder / "model.onnx"
    if not out.check(onnx.exists(), f"{name}: no model.onnx (the export does not write it)"):
        return result
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    result["onnx_max_diff"] = float(f"{float(abs(got - ref.numpy()).max()):.2g}")
    out.check(result["onnx_max_diff"] <= 1e-4 * (1 + scale),
              f"{name}: ONNX Runtime and PyTorch outputs differ by {result['onnx_max_diff']}")
    return result


@dataclass(frozen=True)
class Step:
    """A step and the packages it imports (import names): with one of them not installed the step is skipped, not
    failed, so that an environment without Ray or Optuna still checks the rest."""

    run: Callable[[Context, Outcome], None]
    needs: tuple[str, ...]

    def missing(self) -> list[str]:
        return [name for name in self.needs if not installed(name)]


#: What training through the engine imports (timm needs torchvision; the engine times deployment in ONNX Runtime).
TRAINING = ("torch", "torchvision", "timm", "onnxruntime")
#: What the search command line imports (the trial runner writes notes for the Optuna dashboard).
SEARCH = ("optuna", "optuna_dashboard")
STEPS: dict[str, Step] = {
    "families": Step(step_families, TRAINING),
    "throughput": Step(step_throughput, TRAINING),
    "ray": Step(step_ray, (*TRAINING, "ray", *SEARCH)),
    "optuna": Step(step_optuna, (*TRAINING, *SEARCH)),
    "final": Step(step_final, (*TRAINING, *SEARCH, "onnx")),  # torch.onnx.export needs onnx
}


def installed(name: str) -> bool:
    """Whether ``import name`` finds the package (without importing it: Ray alone takes seconds). A bare folder of
    that name on the path (Ray's temporary folder /tmp/ray, seen from /tmp) is a namespace package, not the package."""
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # a finder that refuses the name
        return False
    return spec is not None and spec.origin is not None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_step(name: str, ctx: Context) -> dict[str, Any]:
    """Run one step in this process; never raises (an exception is the step's error)."""
    from fractal_space.core.errors import first_line
    from fractal_space.core.hardware import peak_memory_mb, reset_peak_memory

    out = Outcome()
    reset_peak_memory(ctx.device)
    try:
        STEPS[name].run(ctx, out)
    except Exception as exc:  # noqa: BLE001 - the step's error, in its one line
        out.failures.append(f"{type(exc).__name__}: {first_line(exc)}")
    out.peak(peak_memory_mb(ctx.device))
    return {"passed": not out.failures, "numbers": out.numbers, "error": "; ".join(out.failures) or None,
            "peak_memory_mb": _round(out.peak_memory_mb)}


# ------------------------------------------------------------------------------------------------ the parent process


def prepare_data(sizes: Sizes, out: Path) -> tuple[str, str, str]:
    """The datasets of the steps: (CIFAR-10 spec, the 224x224 spec, data root). Written once under ``out/data``."""
    import torch

    from fractal_space.data import load_split, resolve_data_root

    root = resolve_data_root()
    train, test = (load_split("cifar10", split, root, download=False) for split in ("train", "test"))
    dataset = "cifar10"
    if sizes.train_rows is not None:
        folder = _write_parquet(out / "data" / "cifar10-slice", train, test, sizes.train_rows, sizes.test_rows)
        dataset = f"parquet:{folder}"

    def upscale(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(images.float(), size=(SIDE, SIDE), mode="bilinear").round().byte()

    side_train, _, side_test = sizes.side
    side = _write_parquet(out / "data" / f"cifar10-{SIDE}", train, test, side_train, side_test, upscale)
    return dataset, f"parquet:{side}", str(root)


def _write_parquet(folder: Path, train: Any, test: Any, train_rows: int, test_rows: int,
                   transform: Callable[[Any], Any] | None = None) -> Path:
    """The first rows of CIFAR-10's splits as a Parquet image dataset (PNG: the pixels stay exact)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for split, data, rows in (("train", train, train_rows), ("test", test, test_rows)):
        path = folder / f"{split}.parquet"
        if path.exists():
            continue
        images = data.images[:rows] if transform is None else transform(data.images[:rows])
        blobs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            blobs.append({"bytes": buffer.getvalue(), "path": None})
        table = pa.table({"img": blobs, "label": data.labels[:rows].numpy()})
        table = table.replace_schema_metadata({"classes": ",".join(data.classes)})
        pq.write_table(table, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return folder


def _spawn_step(name: str, args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    """Run one step in a child process of this interpreter (its own session, killed whole on timeout), importing
    this package from where this process did; its result line."""
    logs = ctx.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "fractal_space.checks.gpu", "--step", name, "--out", str(ctx.out),
               "--context", json.dumps([ctx.dataset, ctx.side_dataset, ctx.data_dir])]
    command += ["--dry-run"] * args.dry_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
    timeout = ctx.sizes.timeouts[name]
    started = time.perf_counter()
    with open(logs / f"{name}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's Ray cluster and workers too
            proc.wait()
            code = None
    seconds = round(time.perf_counter() - started, 1)
    if result.exists():
        line = json.loads(result.read_text())
    else:
        why = f"timed out after {timeout} s" if code is None else f"its process exited {code} without a result"
        line = {"passed": False, "numbers": {}, "error": f"{why} (last log line: {_last_line(logs / f'{name}.log')})",
                "peak_memory_mb": None}
    return {"step": name, **line, "skipped": None, "seconds": seconds, "timeout_s": timeout}


def _skipped_step(name: str, missing: Sequence[str], ctx: Context) -> dict[str, Any]:
    """The result line of a step not run because packages it imports are not installed."""
    names = f"{', '.join(missing[:-1])} and {missing[-1]}" if len(missing) > 1 else missing[0]
    why = f"{names} {'is' if len(missing) == 1 else 'are'} not installed"
    return {"step": name, "passed": None, "numbers": {}, "error": None, "peak_memory_mb": None, "skipped": why,
            "seconds": 0.0, "timeout_s": ctx.sizes.timeouts[name]}


def package_version(name: str, distribution: str) -> str | None:
    """The installed version of the package ``import name`` finds, or None where it is not installed."""
    if not installed(name):
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:  # importable, but not from an installed distribution
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version as ``nvidia-smi`` reports it; None where there is no nvidia-smi or it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def environment() -> dict[str, Any]:
    """What the check ran with: the interpreter, the GPU, its driver, torch's CUDA and the versions of the packages
    the steps import (None: not installed, or no GPU)."""
    import torch

    gpu = torch.cuda.is_available()
    return {"python": f"{platform.python_version()} ({sys.executable})",
            "gpu": torch.cuda.get_device_name(0) if gpu else None, "driver": nvidia_driver() if gpu else None,
            "cuda": torch.version.cuda, **{dist: package_version(name, dist) for name, dist in VERSIONS}}


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "none"


def _compact(numbers: dict[str, Any]) -> str:
    """A step's numbers as one Markdown-safe line."""
    parts = []
    for key, value in numbers.items():
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"{key}={text}")
    return "; ".join(parts).replace("|", "/")


def _environment_line(env: dict[str, Any]) -> str:
    """The environment as one line: a package's None reads "not installed", the GPU's and driver's "none"."""
    packages = {distribution for _, distribution in VERSIONS}
    return ", ".join(f"{key} {value if value is not None else 'not installed' if key in packages else 'none'}"
                     for key, value in env.items())


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` and ``summary.md`` (one table row per step, the numbers and error in full)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    steps = summary["steps"]
    ran = [s for s in steps if s["skipped"] is None]
    skipped = ", ".join(f"{s['step']} ({s['skipped']})" for s in steps if s["skipped"]) or "none"
    lines = [f"# GPU check{' (dry run on CPU)' if summary['dry_run'] else ''}", "",
             f"- machine: {summary['machine']}", f"- started: {summary['started']}, {summary['seconds']:.0f} s in all",
             f"- command: `{summary['command']}`",
             f"- environment: {_environment_line(summary['environment'])}",
             f"- result: **{sum(s['passed'] for s in ran)} of {len(ran)} steps that ran passed**; skipped: {skipped}",
             "", "| step | result | seconds (timeout) | GPU memory peak (MiB) | error |", "|---|---|---|---|---|"]
    for s in steps:
        if s["skipped"]:
            lines.append(f"| {s['step']} | skipped: {s['skipped']} | - | - | |")
            continue
        peak = "n/a (CPU)" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"
        error = (s["error"] or "").replace("|", "/")
        lines.append(f"| {s['step']} | {'pass' if s['passed'] else 'FAIL'} | {s['seconds']:.0f} ({s['timeout_s']}) | "
                     f"{peak} | {error} |")
    lines += ["", "## Numbers", ""] + [f"- **{s['step']}**: {_compact(s['numbers'])}" for s in ran]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _print_step(line: dict[str, Any]) -> None:
    if line["skipped"]:
        print(f"{line['step']}: skipped: {line['skipped']}", flush=True)
        return
    peak = "" if line["peak_memory_mb"] is None else f", peak {line['peak_memory_mb']:.0f} MiB"
    print(f"{line['step']}: {'pass' if line['passed'] else 'FAIL'} ({line['seconds']:.0f} s{peak}) "
          f"{_compact(line['numbers'])}{'; error: ' + line['error'] if line['error'] else ''}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the steps (or, with the internal ``--step``, one step in this process); the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fractal_space.checks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the steps it can run, on CPU at the smallest size")
    parser.add_argument("--out", default="gpu-check", help="folder for summary.json, summary.md, logs/ and runs/")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    parser.add_argument("--context", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    out = Path(args.out).resolve()
    if args.step:
        if args.dry_run:  # one core for the step and its workers: on a shared CPU, extra threads cost 10-20x
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        ctx = Context(sizes, out, *json.loads(args.context))
        (out / "logs" / f"{args.step}.json").write_text(json.dumps(run_step(args.step, ctx)))
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        print(f"error: unknown step {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(STEPS)}",
              file=sys.stderr)
        return 2
    if not installed("torch"):
        print(f"error: torch is not installed for {sys.executable}: the GPU check needs torch with CUDA",
              file=sys.stderr)
        return 2
    import torch

    from fractal_space.core.hardware import describe
    from fractal_space.data import DataNotFoundError

    if not args.dry_run and not torch.cuda.is_available():
        print(f"error: no CUDA device for {sys.executable} (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}): the GPU check needs one; --dry-run runs its steps on CPU", file=sys.stderr)
        return 2
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        ctx = Context(sizes, out, *prepare_data(sizes, out))
    except DataNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    for name in steps:
        missing = STEPS[name].missing()
        line = _skipped_step(name, missing, ctx) if missing else _spawn_step(name, args, ctx)
        results.append(line)
        _print_step(line)
    ran = [r for r in results if r["skipped"] is None]
    summary = {"dry_run": args.dry_run, "device": sizes.device, "machine": describe(sizes.device),
               "environment": environment(), "started": started.isoformat(timespec="seconds"),
               "seconds": round(time.perf_counter() - clock, 1),
               "command": " ".join(["python -m fractal_space.checks.gpu",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "passed": all(r["passed"] for r in ran), "skipped": [r["step"] for r in results if r["skipped"]],
               "steps": results, "sizes": asdict(sizes)}
    write_summary(out, summary)
    print(f"summary: {out / 'summary.md'} ({sum(r['passed'] for r in ran)} of {len(ran)} steps that ran passed, "
          f"{len(results) - len(ran)} skipped)")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
