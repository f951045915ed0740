"""The one training loop: search trials, baselines, benchmarks and the CLI all run through ``Trainer``.

``Trainer.epochs()`` yields one ``EpochReport`` per epoch so callers can report, prune or stop; every epoch is
validated, logged to ``metrics.jsonl`` and checkpointed before it is yielded, so stopping (or a crash) never loses
a finished epoch and a new ``Trainer`` on the same ``out_dir`` continues where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from fractal_space.core.files import remove_stale_temps, write_atomic
from fractal_space.core.hardware import native_bf16_flag, resolve_device, usable_cpus
from fractal_space.core.paper import PAPER
from fractal_space.data import BatchLoader, load_splits
from fractal_space.deploy.metrics import count_flops, count_params, measure_latency
from fractal_space.engine.averaging import WeightAverage, tta_views
from fractal_space.engine.checkpoint import read_checkpoint, save_checkpoint
from fractal_space.engine.config import TrainConfig, recipe_changes
from fractal_space.models.cifar import fit_whitening

METRICS_FILE = "metrics.jsonl"
EVAL_BATCH = 500
#: Training images a patch-whitening input layer is fitted to: about 900,000 patches for 27 dimensions at 32x32.
WHITENING_IMAGES = 1024


#: A training batch's mean loss above this many times ln(num_classes) (the loss of a uniform guess) counts as
#: diverged: it means the true class gets on average a probability below K^-100 (e^-230 for 10 classes), which no
#: healthy run reaches even in a spike (those stay within a few times ln K), while a run on its way to inf passes it.
DIVERGED_LOSS_FACTOR = 100.0


class TrainingDiverged(RuntimeError):
    """The training loss became NaN, infinite or absurdly large, or the validation loss non-finite: training further
    would only produce garbage, and nothing of that epoch is checkpointed."""


@dataclass
class ColumnReport:
    """One FractalNet column evaluated alone (with its own re-estimated batch-norm statistics) on one split: the
    validation split in an ``EpochReport``, the split asked for in an ``EvalReport``."""

    column: int
    acc: float
    latency_ms: float

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ColumnReport:
        """Read a metrics.jsonl entry, including those written before ``val_acc`` was renamed ``acc``."""
        values = dict(values)
        if "val_acc" in values:
            values["acc"] = values.pop("val_acc")
        return cls(**values)


@dataclass
class EpochReport:
    """What one epoch produced; accuracies are fractions in [0, 1], ``lr`` the epoch's last step's learning rate,
    ``latency_ms`` the full model's eager PyTorch per-image latency at batch 1 (cheap enough for every epoch; the
    deployment latency, ONNX Runtime's, is :func:`fractal_space.deploy.metrics.deployment_latency`, measured once).

    ``val_acc`` is always the plain forward pass (what an exported model computes); ``val_acc_tta`` is the accuracy
    with the config's test-time augmentation, None when it is off. With ``ema`` both are the averaged weights'.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    train_images_per_s: float
    epoch_seconds: float
    latency_ms: float
    columns: list[ColumnReport] = field(default_factory=list)
    val_acc_tta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochReport:
        return cls(**{**values, "columns": [ColumnReport.from_dict(c) for c in values.get("columns", [])]})


@dataclass
class EvalReport:
    """Accuracy and loss of the full model on one split, plus per-column results for FractalNet.

    ``acc`` is the plain forward pass, ``acc_tta`` the config's test-time augmentation's (None when off).
    ``columns[i].acc`` is the column's plain accuracy on the split this report is for (the test split for ``test()``).
    """

    loss: float
    acc: float
    latency_ms: float
    columns: list[ColumnReport] = field(default_factory=list)
    acc_tta: float | None = None


def lr_factor(schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1) of all steps.

    The first ``warmup`` share of the steps ramps linearly from 0 to 1; ``schedule`` then runs over the rest.
    ``paper``: divide by 10 each time the remaining steps halve (at 1/2, 3/4, 7/8, 15/16, i.e. epochs 200, 300, 350,
    375 of 400); ``cosine``: half-cosine to zero; ``linear``: straight to zero; ``constant``: 1.
    """
    if progress < warmup:
        return progress / warmup
    progress = (progress - warmup) / (1 - warmup)
    if schedule == "paper":
        return 0.1 ** sum(progress >= 1 - 2.0**-k for k in range(1, 5))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1 - progress
    return 1.0


def _tensorboard_writer(out_dir: Path) -> Any:
    """A TensorBoard writer when the ``tensorboard`` package is installed; metrics.jsonl is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp`` means on ``device`` (None: full fp32).

    ``auto`` is each device's measured best: on CUDA bf16 where supported, else fp16 with a gradient scaler; on a CPU
    with native bf16 (AVX-512 BF16, AMX, Arm BF16: :func:`hardware.native_bf16_flag`) bf16, which trained a C=4 step
    1.3x and evaluated 1.6x faster on an AVX-512 BF16 machine and held test accuracy at equal images seen within the
    seeds' spread (docs/performance.md, bf16 autocast on CPU); elsewhere fp32, since emulated bf16 is slower.
    """
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if amp == "fp16":
        raise ValueError("amp 'fp16' needs CUDA (CPU autocast is bf16 only); use bf16 or none on CPU")
    return torch.bfloat16 if amp == "bf16" or native_bf16_flag() else None


def precision(amp: str, device: str) -> str:
    """What a run with ``amp`` trains in on ``device`` here, and on CPU why, for reports' hardware line."""
    if device.startswith("cuda") and not torch.cuda.is_available():  # a CUDA study reported on another machine
        return f"amp {amp} on CUDA"
    resolved = resolve_device(device)
    dtype = amp_dtype(amp, resolved)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    if resolved.type != "cpu":
        return name
    flag = native_bf16_flag()
    if dtype is None:
        return f"{name} (this CPU has no native bf16)" if amp == "auto" else name
    return f"{name} (native: {flag})" if flag else f"{name} (emulated: this CPU has no native bf16)"


def _check_model_kwargs(cfg: TrainConfig) -> None:
    """Build the model on the meta device (no memory, milliseconds) so bad model_kwargs fail before any data loads."""
    try:
        with torch.device("meta"):
            timm.create_model(cfg.model, **cfg.model_kwargs)
    except (TypeError, ValueError) as err:  # an unknown keyword, or a value the model rejects
        reason = (str(err).splitlines() or [""])[0]
        raise ValueError(f"model_kwargs {json.dumps(cfg.model_kwargs)} rejected by {cfg.model}: {reason}") from err



def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _seeded_rng_state(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global generators' state after ``torch.manual_seed(seed)``, taken without leaving them seeded."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _rng_state(device)


def _scoped(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a :class:`Trainer` method inside its :meth:`Trainer._scope`."""
    @functools.wraps(method)
    def wrapper(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        with self._scope():
            return method(self, *args, **kwargs)
    return wrapper


def _scoped_generator(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """A generator method whose work between two yields runs inside :meth:`Trainer._scope`; the caller's code
    between them runs with its own thread count and random stream."""
    @functools.wraps(method)
    def wrapper(self: Trainer, *args: Any, **kwargs: Any) -> Iterator[Any]:
        steps = method(self, *args, **kwargs)
        while True:
            with self._scope():
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item
    return wrapper


class Trainer:
    """Builds data, model, optimizer and schedule from a ``TrainConfig``; resumes from ``cfg.out_dir`` if possible."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        _check_model_kwargs(cfg)
        self.threads = (cfg.num_threads or usable_cpus()) if self.device.type == "cpu" else torch.get_num_threads()
        self._own_rng = _seeded_rng_state(cfg.seed, self.device)
        self._scope_depth = 0
        with self._scope():
            self._build()

    @contextmanager
    def _scope(self) -> Iterator[None]:
        """The trainer's thread count and random stream inside the block; the caller's, as they were, after it.

        torch's thread count and global RNG are process state: a library call must not leave them changed (a
        user's loop, other trainers in the same process). The trainer keeps its own RNG state between blocks, so
        its random numbers (initialisation, dropout, drop-path) do not depend on what the caller draws meanwhile."""
        if self._scope_depth:
            self._scope_depth += 1
            try:
                yield
            finally:
                self._scope_depth -= 1
            return
        caller = _rng_state(self.device), torch.get_num_threads()
        _set_rng_state(self._own_rng, self.device)
        torch.set_num_threads(self.threads)
        self._scope_depth = 1
        try:
            yield
        finally:
            self._scope_depth = 0
            self._own_rng = _rng_state(self.device)
            _set_rng_state(caller[0], self.device)
            torch.set_num_threads(caller[1])

    def _build(self) -> None:
        cfg = self.cfg
        self.data = load_splits(cfg.dataset, cfg.data_dir, cfg.val_size, cfg.train_subset, cfg.val_seed,
                                cfg.download)
        self.input_size = (self.data.in_chans, *self.data.image_size)
        self.model = self._create_model()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self._set_memory_format()
        self.num_params = count_params(self.model)
        self.flops = count_flops(self.model, self.input_size)
        self.num_columns = int(getattr(self.model, "num_columns", 0))
        # The model's local drop-path rate is the target a warm-up ramps to (_ramp_drop_path, before each step).
        self.drop_path_target = float(getattr(self.model, "drop_path_rate", 0.0))
        for name in ("drop_path_warmup", "supernet_sampling"):
            if getattr(cfg, name) not in (0.0, "none") and not hasattr(self.model, "set_regularization"):
                raise ValueError(f"{name}={getattr(cfg, name)!r} needs a model with drop-path (FractalNet); "
                                 f"{cfg.model} has none")

        if cfg.epoch_images is not None and cfg.epoch_images > len(self.data.train):
            raise ValueError(f"epoch_images={cfg.epoch_images} is more than the {len(self.data.train)} training images")
        loader = dict(norm=self.data.norm, device=self.device, channels_last=cfg.channels_last)
        self.train_loader = BatchLoader(self.data.train, batch_size=cfg.batch_size, augment=cfg.augment, shuffle=True,
                                        seed=cfg.seed, drop_last=len(self.data.train) >= cfg.batch_size,
                                        max_batches=None if cfg.epoch_images is None else
                                        max(1, cfg.epoch_images // cfg.batch_size), **loader)
        self.val_loader = BatchLoader(self.data.val, batch_size=EVAL_BATCH, **loader)
        self.test_loader = BatchLoader(self.data.test, batch_size=EVAL_BATCH, **loader) if self.data.test else None
        # Batch-norm re-estimation for a column uses un-augmented training images, never validation images.
        self.bn_loader = BatchLoader(self.data.train, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, **loader)
        # A patch-whitening input layer (model option ``whiten``) is fitted to un-augmented training images before the
        # first step, and before the weight average copies the model; a resumed run loads the same filters. The images
        # are normalised only for a model that has one.
        fit_whitening(self.model, lambda: self.data.norm(self.data.train.images[:WHITENING_IMAGES].to(self.device)))

        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.max_loss = DIVERGED_LOSS_FACTOR * math.log(max(self.data.num_classes, 2))
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        total_steps = cfg.epochs * len(self.train_loader)
        self.warmup_steps = cfg.drop_path_warmup * total_steps if self.drop_path_target > 0 else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg.schedule, step / total_steps, cfg.lr_warmup))
        self.average = WeightAverage(self.model, cfg.ema) if cfg.ema else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.history: list[EpochReport] = []
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        self.tensorboard = None
        if self.out_dir is not None:
            self._resume(self.out_dir)
            self.tensorboard = _tensorboard_writer(self.out_dir)

    def _create_model(self) -> nn.Module:
        """timm model for this dataset; FractalNet gets the paper's drop-path + dropout under ``regularization``."""
        cfg = self.cfg
        model = timm.create_model(cfg.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                  **cfg.model_kwargs)
        if cfg.regularization == "paper" and hasattr(model, "set_regularization"):
            paper = PAPER.regularization(len(model.blocks))
            model.set_regularization(**{k: v for k, v in paper.items() if k not in cfg.model_kwargs})
        if cfg.supernet_sampling != "none" and hasattr(model, "set_regularization"):
            model.set_regularization(path_sampling=cfg.supernet_sampling)
        return model.to(self.device)

    def _param_groups(self) -> Any:
        """The optimizer's parameters: one group, or without ``norm_bias_decay`` the one-dimensional parameters
        (normalisation weights, biases) in a second group without weight decay."""
        if self.cfg.norm_bias_decay:
            return self.model.parameters()
        params = list(self.model.parameters())
        return [{"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluation measures: the weight average with ``ema``, else the trained model."""
        return self.average.module if self.average is not None else self.model

    def _set_memory_format(self) -> None:
        """channels_last where asked; on CPU a FractalNet picks it per block (NCHW for wide blocks on tiny maps)."""
        if not hasattr(self.model, "set_memory_format"):
            self.model.to(memory_format=self.memory_format)
        elif self.cfg.channels_last and self.device.type == "cpu":
            self.model.set_memory_format("auto", input_size=self.input_size[1:])
        else:
            self.model.set_memory_format("channels_last" if self.cfg.channels_last else "contiguous")

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _resume(self, out_dir: Path) -> None:
        """Continue from the newest checkpoint in ``out_dir`` that verifies, after removing what killed writes left."""
        if out_dir.is_dir():
            remove_stale_temps(out_dir)
        checkpoint = read_checkpoint(out_dir)
        if checkpoint is not None:
            weights, state = checkpoint
            differ = recipe_changes(state["config"], self.cfg)
            if differ:
                raise ValueError(f"checkpoint in {out_dir} was written by a different recipe ({', '.join(differ)} "
                                 f"differ); use a new out_dir or the same settings to resume")
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.average is not None:
                self.average.load_state_dict(state["ema"])
            torch.set_rng_state(state["rng"])
            self.epoch = state["epoch"]
        metrics = out_dir / METRICS_FILE
        if metrics.exists():  # keep only checkpointed epochs: a crash may fall between the log line and the checkpoint
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            self.history = [EpochReport.from_dict(r) for r in lines if r["epoch"] <= self.epoch]
            write_atomic(metrics, "".join(json.dumps(r.to_dict()) + "\n" for r in self.history))

    @_scoped_generator
    def epochs(self) -> Iterator[EpochReport]:
        """Train until ``cfg.epochs`` epochs are done, yielding a validated, checkpointed report after each."""
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            train_loss, train_acc, images_per_s, lr = self._train_epoch(self.epoch + 1)
            val = self.evaluate("val", columns=self.cfg.eval_columns)
            if not math.isfinite(val.loss):
                raise TrainingDiverged(f"validation loss became {val.loss} after epoch {self.epoch + 1} (train loss "
                                       f"{train_loss:.3g}, lr {lr:.3g}); the last checkpoint is kept, lower the "
                                       f"learning rate")
            self.epoch += 1
            if self.average is not None and self.epoch == self.cfg.epochs:
                self.model.load_state_dict(self.average.module.state_dict())  # the run's result: the average
            report = EpochReport(self.epoch, train_loss, train_acc, val.loss, val.acc, lr, images_per_s,
                                 time.perf_counter() - start, val.latency_ms, val.columns, val.acc_tta)
            self.history.append(report)
            if self.out_dir is not None:
                self._save(report)
            yield report

    def _save(self, report: EpochReport) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(report.to_dict()) + "\n")
        state = {"config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": torch.get_rng_state()}
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        save_checkpoint(self.out_dir, self.epoch, self.model, state)
        if self.tensorboard is not None:
            for key, value in report.to_dict().items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, report.epoch)
            for column in report.columns:
                self.tensorboard.add_scalar(f"column_{column.column}/val_acc", column.acc, report.epoch)
            self.tensorboard.flush()

    def _train_epoch(self, epoch: int) -> tuple[float, float, float, float]:
        self.model.train()
        self.train_loader.set_epoch(epoch)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.cfg.epochs}", disable=not self.cfg.progress,
                   leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        for step, (x, y) in enumerate(bar, 1):
            if self.warmup_steps:
                self._ramp_drop_path()
            with self._autocast():
                logits = self.model(x)
                loss = self.criterion(logits, y)
            value = loss.item()
            if not value <= self.max_loss:  # also catches NaN
                raise TrainingDiverged(f"loss became {value:.3g} at epoch {epoch}, step {step} (lr "
                                       f"{self.scheduler.get_last_lr()[0]:.3g}; diverged above {self.max_loss:.3g} = "
                                       f"{DIVERGED_LOSS_FACTOR:g} x ln(classes)); the last checkpoint is kept, "
                                       f"lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.average is not None:
                self.average.update(self.model)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            total_loss += value * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if self.cfg.progress:
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        seconds = time.perf_counter() - start
        return total_loss / seen, correct / seen, seen / seconds, lr

    def _ramp_drop_path(self) -> None:
        """The local drop-path rate of the coming step: the target times step / warm-up steps, at most the target.

        The step count is the scheduler's, so a resumed run continues the ramp where it stopped.
        """
        step = self.scheduler.last_epoch + 1
        self.model.set_regularization(drop_path_rate=self.drop_path_target * min(1.0, step / self.warmup_steps))

    @torch.no_grad()
    def _accuracy(self, model: nn.Module, loader: BatchLoader, tta: str = "none") -> tuple[float, float, float | None]:
        """Loss and accuracy of the plain forward pass, and with ``tta`` the accuracy of its views' mean logits."""
        model.eval()
        total_loss, correct, correct_tta, seen = 0.0, 0, 0, 0
        for x, y in loader:
            with self._autocast():
                logits = model(x)
                others = [model(view) for view in tta_views(x, tta)[1:]]
            total_loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            if others:  # the views' summed logits rank classes as their mean does
                correct_tta += int((sum(v.float() for v in others) + logits.float()).argmax(1).eq(y).sum())
            seen += len(y)
        if not seen:
            return math.nan, math.nan, None if tta == "none" else math.nan
        return total_loss / seen, correct / seen, None if tta == "none" else correct_tta / seen

    @_scoped
    def bn_inputs(self) -> list[torch.Tensor]:
        """The ``bn_batches`` un-augmented training batches (inputs only) every batch-norm re-estimation uses."""
        return [x for x, _ in itertools.islice(self.bn_loader, self.cfg.bn_batches)]

    @_scoped
    def evaluate(self, split: str = "val", columns: bool = True) -> EvalReport:
        """Full-model loss/accuracy on ``split`` (``val``/``test``); with ``columns``, every FractalNet column too.

        For FractalNet, batch-norm running statistics gathered under drop-path mix single-column and joined batches
        and misjudge the full network (measured: 9% vs 26% validation accuracy after one CIFAR-10 epoch), so they are
        re-estimated through all paths from ``bn_batches`` un-augmented training batches before evaluating; this only
        changes running statistics, which training itself never uses. The same holds for the weight average of
        ``ema`` (:attr:`eval_model`), for every model. Each column is extracted as a standalone plain network
        (``model.extract_column(k)``, no shared tensors), its statistics re-estimated through that column alone, and
        its accuracy and eager batch-1 latency measured. With ``tta`` the report also has the augmented accuracy.
        """
        loader = self._loader(split)
        model = self.eval_model
        bn_inputs = None
        if self.num_columns or self.average is not None:
            from fractal_space.models.anytime import reestimate_bn_stats

            bn_inputs = self.bn_inputs()
            reestimate_bn_stats(model, bn_inputs)
        loss, acc, acc_tta = self._accuracy(model, loader, self.cfg.tta)
        report = EvalReport(loss, acc, measure_latency(model, self.input_size, threads=self.cfg.latency_threads),
                            acc_tta=acc_tta)
        if columns:
            report.columns = self.evaluate_columns(split, bn_inputs)
        self.model.train()
        return report

    @_scoped
    def evaluate_columns(self, split: str = "val", bn_inputs: list[torch.Tensor] | None = None) -> list[ColumnReport]:
        """Each FractalNet column of :meth:`evaluate` alone (none for other networks), without evaluating the whole
        network again: a search trial wants its columns once, after the last epoch's validation."""
        if not self.num_columns:
            return []
        from fractal_space.models.anytime import reestimate_bn_stats

        loader = self._loader(split)
        bn_inputs = self.bn_inputs() if bn_inputs is None else bn_inputs
        reports = []
        for k in self.model.anytime_columns():  # a sub-fractal's: the columns it keeps in every block
            column = self.eval_model.extract_column(k).to(memory_format=self.memory_format)
            reestimate_bn_stats(column, bn_inputs)
            _, col_acc, _ = self._accuracy(column, loader)
            reports.append(ColumnReport(k, col_acc, measure_latency(column, self.input_size,
                                                                    threads=self.cfg.latency_threads)))
        return reports

    def _loader(self, split: str) -> BatchLoader:
        loader = {"val": self.val_loader, "test": self.test_loader}.get(split)
        if loader is None:
            raise ValueError(f"no {split!r} split for dataset {self.cfg.dataset!r}")
        return loader

    @_scoped
    def accuracy(self, model: nn.Module, split: str = "val") -> tuple[float, float]:
        """Loss and accuracy on ``split`` of another model on this run's data (a sub-fractal extracted from this run's
        supernet), measured as :meth:`evaluate` measures this run's model, without test-time augmentation."""
        return self._accuracy(model, self._loader(split))[:2]

    @_scoped
    def test(self) -> EvalReport:
        """Test-set accuracy (+ per-column for FractalNet); for final reporting only, never for selection."""
        return self.evaluate("test", columns=self.cfg.eval_columns)


def train(cfg: TrainConfig, callbacks: Sequence[Callable[[EpochReport], None]] = (),
          export: str | Path | None = None) -> dict[str, Any]:
    """Train to the end (resuming if possible), evaluate on the test set and return a JSON-ready summary.

    ``train_seconds`` sums every epoch's seconds (training + validation), resumed invocations included, so it is the
    cost of the whole run; ``wall_seconds`` is this invocation's wall time (with setup and the test pass). With
    ``cfg.out_dir`` the summary is also written to ``summary.json`` there. With ``export`` the trained model goes to
    that folder as the search's final stage exports its models (timm folder + ``model.onnx``, a FractalNet's columns
    each alone), and the summary gains its deployment latencies and load lines. ``val_acc`` and ``test_acc`` are the
    plain forward pass the export computes; ``val_acc_tta`` and ``test_acc_tta`` are with ``cfg.tta`` (None when off).
    """
    start = time.perf_counter()
    trainer = Trainer(cfg)
    for report in trainer.epochs():
        for callback in callbacks:
            callback(report)
    test = trainer.test() if trainer.test_loader is not None else EvalReport(math.nan, math.nan, math.nan)
    last = trainer.history[-1] if trainer.history else None
    summary = {
        "config": cfg.to_dict(),
        "recipe": cfg.recipe,
        "num_params": trainer.num_params,
        "flops": trainer.flops,
        "epochs": trainer.epoch,
        "val_acc": last.val_acc if last else math.nan,
        "val_loss": last.val_loss if last else math.nan,
        "test_acc": test.acc,
        "test_loss": test.loss,
        "val_acc_tta": last.val_acc_tta if last else None,
        "test_acc_tta": test.acc_tta,
        "latency_ms": test.latency_ms,
        "amp_dtype": str(trainer.amp_dtype or torch.float32).removeprefix("torch."),
        "columns": [{"column": c.column, "test_acc": c.acc, "latency_ms": c.latency_ms} for c in test.columns],
        "val_columns": [dataclasses.asdict(c) for c in last.columns] if last else [],
        "train_images_per_s": (sum(r.train_images_per_s for r in trainer.history) / len(trainer.history)
                               if trainer.history else math.nan),
        "train_seconds": sum(r.epoch_seconds for r in trainer.history),
        "wall_seconds": time.perf_counter() - start,
    }
    if export is not None:
        summary["export"] = _export(trainer, Path(export))
        summary["wall_seconds"] = time.perf_counter() - start
    if trainer.out_dir is not None:
        write_atomic(trainer.out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _export(trainer: Trainer, folder: Path) -> dict[str, Any]:
    """Export ``trainer``'s model (:func:`fractal_space.deploy.export.export_trained`); what the summary says of it."""
    from fractal_space.deploy.export import export_trained, load_line
    from fractal_space.deploy.onnx import run_line

    batch = trainer.cfg.batch_size
    done = export_trained(trainer.model, folder, trainer.bn_inputs(), data=trainer.data, batch_sizes=(1, batch))
    return {"folder": str(folder), "load": load_line(folder), "onnx": run_line(folder),
            "latency_runtime": done.latency.runtime, "latency_ms": done.latency.ms[1],
            "latency_ms_batch": done.latency.ms[batch], "batch_size": batch,
            "columns": [{"column": k, "load": load_line(f), "latency_ms": lat.ms[1]}
                        for k, (f, lat) in enumerate(zip(done.column_folders, done.column_latency, strict=True), 1)]}
