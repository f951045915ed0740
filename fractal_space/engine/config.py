"""The one training config every caller (search, baselines, benchmarks, CLI) fills in.

``recipe`` names a preset (``RECIPES``): every option it covers is its own field, left at ``None`` to take the preset's
value or set to override it. ``paper`` is the FractalNet paper's recipe; ``fast`` is a short-budget recipe (warm-up
then linear decay, Nesterov, label smoothing, weight decay off norms and biases, flip test-time augmentation), measured
in ``experiments/time_to_accuracy/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm

from fractal_space.core.hardware import DEVICES, is_device_name
from fractal_space.core.paper import PAPER, PATH_SAMPLINGS
from fractal_space.core.recipes import DEFAULT_RECIPE, PRESETS, RECIPES
from fractal_space.data import AUGMENTS, NAMED, check_dataset_spec

SCHEDULES = ("paper", "cosine", "linear", "constant")
#: Test-time augmentation of validation and test: flip averages the logits of each image and its mirror image;
#: flip-shift adds both translated by 2 px right-down and left-up (6 views).
TTAS = ("none", "flip", "flip-shift")
REGULARIZATIONS = ("paper", "none")
#: Field metadata of settings that only say how and where a run executes, not what it trains: a checkpoint may be
#: resumed with other values for them. Every other field is part of the recipe.
RUN_TIME = {"recipe": False}
AMPS = ("auto", "bf16", "fp16", "none")


def _option(default: Any, help: str, *, run_time: bool = False, choices: tuple[str, ...] = (),
            factory: Any = None) -> Any:
    """A field with its ``help`` (and ``choices``) in the metadata, which the command line shows."""
    metadata = {"help": help, **({"choices": choices} if choices else {}), **(RUN_TIME if run_time else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _preset(help: str, *, run_time: bool = False, choices: tuple[str, ...] = ()) -> Any:
    """A field the recipe fills in when it is left at None (``PRESETS``); its metadata says so for the CLI."""
    metadata = _option(None, help, run_time=run_time, choices=choices).metadata
    return field(default=None, metadata={**metadata, "preset": True})


@dataclass
class TrainConfig:
    """A JSON-serialisable training run: model, data, recipe and where to write checkpoints and metrics.

    Fields left at None take ``recipe``'s value (``PRESETS``) when the config is built, so a built config holds only
    concrete values (``dataclasses.replace(cfg, recipe=...)`` keeps the old recipe's values: build a new config
    instead). ``regularization="paper"`` gives FractalNet models the paper's drop-path and per-block dropout
    (``PAPER.regularization``); keys given in ``model_kwargs`` win. Other models are unchanged.
    """

    model: str = _option("fractalnet_c3", "timm model name (fractal_space registers fractalnet_* and the *_cifar "
                                          "baselines)")
    model_kwargs: dict[str, Any] = _option(None, "extra keyword arguments for timm.create_model, as a JSON object; "
                                                 "they win over the regularization preset", factory=dict)
    dataset: str = _option("cifar10", f"{', '.join(NAMED)}, imagefolder:<path> or parquet:<path>")
    data_dir: str | None = _option(None, "data root for named datasets (else $FRACTAL_SPACE_DATA, else "
                                         "~/.cache/fractal_space/data)", run_time=True)
    epochs: int = _option(10, "epochs in total, a resumed run included")
    epoch_images: int | None = _option(None, "training images per epoch, drawn from a new shuffle of the training "
                                             "split each epoch (none: one full pass); at most the split's size")
    recipe: str = _option(DEFAULT_RECIPE, "preset of the options whose default is the recipe's; each stays overridable",
                          choices=RECIPES)
    batch_size: int = _preset("training batch size")
    lr: float = _preset("peak learning rate of SGD")
    momentum: float = _option(PAPER.momentum, "SGD momentum")
    nesterov: bool = _preset("Nesterov momentum")
    weight_decay: float = _preset("L2 weight decay")
    norm_bias_decay: bool = _preset("weight decay on one-dimensional parameters too (normalisation weights and "
                                    "biases, all biases); off: on weight matrices and kernels only")
    schedule: str = _preset("learning-rate schedule after the warm-up; paper: divide by 10 each time the remaining "
                            "steps halve; linear: straight to 0", choices=SCHEDULES)
    lr_warmup: float = _preset("share of the training steps over which the learning rate first ramps linearly from 0 "
                               "to lr, in [0, 1); the schedule then runs over the remaining steps")
    label_smoothing: float = _preset("label smoothing of the cross-entropy loss, in [0, 1)")
    ema: float = _preset("decay per step of an exponential moving average of the weights, in [0, 1) (0: off); when "
                         "on, validation, test, the final checkpoint and an export use the averaged weights, with "
                         "their batch-norm statistics re-estimated")
    tta: str = _preset("test-time augmentation of validation and test, reported beside the plain accuracy (val_acc "
                       "stays the plain forward pass an export computes)", run_time=True, choices=TTAS)
    regularization: str = _option("paper", "paper: FractalNet gets the paper's drop-path and block dropout; none: "
                                           "off (other models are unchanged)", choices=REGULARIZATIONS)
    drop_path_warmup: float = _option(0.0, "share of the training steps over which FractalNet's local drop-path rate "
                                           "ramps linearly from 0 to its target (0: none); short budgets train "
                                           "better with one (experiments/reproduce_paper)")
    supernet_sampling: str = _option("none", "one-shot supernet training of a FractalNet: uniform draws a sub-fractal "
                                             "per batch (per block a uniform non-empty column subset), drop-path then "
                                             "acting within it; none: drop-path only", choices=PATH_SAMPLINGS)
    augment: str = _option(PAPER.augment, "none; +: mirror and translate by up to 4 px, zero padding; ++: the same "
                                          "with reflect padding", choices=AUGMENTS)
    train_subset: int | None = _option(None, "train on the first N images left after the validation split (none: "
                                             "all)")
    val_size: int | None = _option(None, "validation images drawn from the training split (none: min(5000, 10% of "
                                         "it))")
    val_seed: int = _option(0, "seed of the validation split, independent of --seed")
    seed: int = _option(0, "seed of initialisation, shuffling and augmentation")
    device: str = _option("auto", f"{', '.join(DEVICES)} or cuda:N; auto picks CUDA when present", run_time=True)
    amp: str = _option("auto", "mixed precision; auto: bf16 (or fp16 with a gradient scaler) on CUDA, bf16 on a CPU "
                               "with native bf16 (AVX-512 BF16, AMX), else none; fp16 on CUDA only",
                       run_time=True, choices=AMPS)
    channels_last: bool = _option(True, "channels_last memory layout (FractalNet on CPU: chosen per block)",
                                  run_time=True)
    num_threads: int | None = _option(None, "CPU threads (none: one per usable core; use 1 on a busy machine)",
                                      run_time=True)
    latency_threads: int | None = _option(None, "CPU threads latencies are timed at, eager and ONNX Runtime (none: "
                                                "num_threads's): a model trained on more cores than it is compared "
                                                "at", run_time=True)
    out_dir: str | None = _option(None, "folder for metrics.jsonl, checkpoints and summary.json; an existing run "
                                        "there is resumed", run_time=True)
    eval_columns: bool = _option(True, "also evaluate every FractalNet column alone each epoch", run_time=True)
    bn_batches: int = _option(10, "training batches for FractalNet's batch-norm re-estimation before evaluating",
                              run_time=True)
    progress: bool = _option(True, "show a progress bar", run_time=True)
    download: bool = _option(True, "let torchvision download a named dataset that is not on disk", run_time=True)

    def __post_init__(self) -> None:
        if self.recipe not in PRESETS:
            raise ValueError(f"TrainConfig.recipe must be one of {RECIPES}, got {self.recipe!r}")
        for name, value in PRESETS[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Reject bad values up front with a one-line message naming the field and the value."""
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.epoch_images is None or self.epoch_images >= 1, "epoch_images", "must be >= 1 or None"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.momentum > 0 or not self.nesterov, "nesterov", "needs momentum > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}"),
            (0 <= self.lr_warmup < 1, "lr_warmup", "must be in [0, 1)"),
            (self.amp in AMPS, "amp", f"must be one of {AMPS}"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
            (0 <= self.ema < 1, "ema", "must be in [0, 1)"),
            (self.tta in TTAS, "tta", f"must be one of {TTAS}"),
            (self.regularization in REGULARIZATIONS, "regularization", f"must be one of {REGULARIZATIONS}"),
            (0 <= self.drop_path_warmup <= 1, "drop_path_warmup", "must be in [0, 1]"),
            (self.supernet_sampling in PATH_SAMPLINGS, "supernet_sampling", f"must be one of {PATH_SAMPLINGS}"),
            (self.augment in AUGMENTS, "augment", f"must be one of {AUGMENTS}"),
            (self.train_subset is None or self.train_subset >= 1, "train_subset", "must be >= 1 or None"),
            (self.val_size is None or self.val_size >= 0, "val_size", "must be >= 0 or None (auto)"),
            (is_device_name(self.device), "device", f"must be one of {', '.join(DEVICES)}, cuda:N"),
            (self.num_threads is None or self.num_threads >= 1, "num_threads", "must be >= 1 or None"),
            (self.latency_threads is None or self.latency_threads >= 1, "latency_threads", "must be >= 1 or None"),
            (self.bn_batches >= 1, "bn_batches", "must be >= 1"),
            (isinstance(self.model_kwargs, dict), "model_kwargs", "must be a dict"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")
        if not timm.is_model(self.model):
            raise ValueError(f"unknown model {self.model!r}; see timm.list_models() (fractal_space registers "
                             f"fractalnet_* and the *_cifar baselines)")
        check_dataset_spec(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a search trial or a saved config); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def recipe_fields(cls: type = TrainConfig) -> tuple[str, ...]:
    """The fields of ``cls`` that define what is trained: all but those marked ``RUN_TIME``, so a new field is part
    of the recipe (and guards resume) unless it says otherwise."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("recipe", True))


#: A checkpoint may only be resumed by a config that agrees on all of these.
RECIPE_FIELDS = recipe_fields()


def recipe_changes(saved: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The recipe fields on which a saved config (a checkpoint's, a result's) and ``cfg`` differ.

    A field the saved config predates counts as its default, or for a field a recipe fills in, as the paper recipe's
    value (configs older than ``recipe`` were all the paper's), so adding a recipe field whose default is the old
    behaviour leaves earlier runs resumable.
    """
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}
    defaults.update(PRESETS["paper"], recipe="paper")
    return [k for k in RECIPE_FIELDS if saved.get(k, defaults[k]) != getattr(cfg, k)]
