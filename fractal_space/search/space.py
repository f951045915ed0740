"""The one declarative FractalNet search space, rendered to Optuna (define-by-run) and, through it, to Ray Tune.

A space is a mapping from dimension name to a *spec*:

- a plain value (``0.02``, ``"mean"``): the dimension is fixed, nothing is searched;
- ``{"low": a, "high": b}`` with optional ``"log": true`` and ``"step": s``: an int (if both bounds are ints) or
  float range;
- ``{"choices": [...]}``: a categorical choice.

Widths are *base width + growth*, not one dimension per block: block ``i`` of ``B`` gets
``round(base_width * width_growth ** min(i, B - 2))`` channels, i.e. the width grows each block except the last,
which is exactly the paper's rule (16, 32, 64, 128, 128 = base 16, growth 2). Two dimensions instead of B
conditional ones keep TPE's model small and every sampled ``widths`` tuple consistent with the sampled ``B``.
``dropout_scale`` likewise expands to the paper's per-block dropout ramp ``(0, s, 2s, ..., (B-1)s)``.

The space is conditional: a one-column network has no joins, so ``join``, ``drop_path_rate``,
``global_drop_fraction`` and ``drop_path_warmup`` are not sampled for it (they are not among that trial's
parameters).

Ranges that cannot work are excluded when the space is bound to an input size: B max-pools need an input of at
least ``2**B`` pixels, so ``num_blocks`` may say ``high: "max"`` and an explicit bound beyond the input is an error.

One definition, every tool: :meth:`SearchSpace.suggest` samples the flat values with an Optuna trial (the Optuna
backend, Ray Tune's ``OptunaSearch`` and a user's own ``objective(trial)``), :meth:`SearchSpace.to_ray` renders the
space for Tune's own searchers and :meth:`SearchSpace.to_configspace` for ConfigSpace (SMAC3, DEHB, BOHB).
:meth:`SearchSpace.config` turns the flat values any of them gives into a :class:`TrialConfig`: the network's timm
arguments and the training overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fractal_space.core.paper import BLOCK_DROPOUT, DROP_PATH_RATE, GLOBAL_DROP_FRACTION, JOINS, MAX_COLUMNS, PAPER
from fractal_space.core.recipes import DEFAULT_RECIPE, PRESETS

#: Dimensions the expansion rules above understand; anything else must name a TrainConfig field or a
#: FractalNet constructor argument and is passed through unchanged.
CORE = ("num_blocks", "num_columns", "base_width", "width_growth", "join", "drop_path_rate",
        "global_drop_fraction", "dropout_scale", "lr", "weight_decay", "batch_size")

#: The default space: paper-centred, wide enough for a GPU search. ``SearchSpace.default(device="cpu")`` narrows it.
DEFAULT: dict[str, Any] = {
    "num_blocks": {"low": 2, "high": "max"},
    "num_columns": {"low": 1, "high": 4},
    "base_width": {"choices": [8, 16, 32, 64]},
    "width_growth": {"choices": [1.0, 1.5, 2.0]},
    "join": {"choices": list(JOINS)},
    "drop_path_rate": {"low": 0.0, "high": 0.3},
    "global_drop_fraction": {"low": 0.0, "high": 1.0},
    "drop_path_warmup": {"low": 0.0, "high": 0.5},
    "dropout_scale": {"low": 0.0, "high": 0.1},
    "lr": {"low": 0.05, "high": 0.8, "log": True},  # around the default recipe's (core.recipes), not the paper's
    "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    "batch_size": {"choices": [32, 64, 100, 128]},
}

#: Dimensions that only exist where there are joins: a C=1 network (one plain column) samples none of them and is
#: built with these values (no drop-path: there is no join input to drop). ``drop_path_warmup`` (a TrainConfig
#: field, so an extension dimension) is among them: at short budgets a warm-up of the local rate trains multi-column
#: nets better than the paper's constant rate (experiments/reproduce_paper/README.md).
JOIN_DIMS = ("join", "drop_path_rate", "global_drop_fraction", "drop_path_warmup")
NO_JOINS: dict[str, Any] = {"join": PAPER.join, "drop_path_rate": 0.0, "global_drop_fraction": 0.0,
                            "drop_path_warmup": 0.0}

#: Training fields any loop applies (the learning rate, weight decay and batch size of an optimiser and a loader);
#: the others a config carries only the project's engine applies (see :attr:`TrialConfig.engine_only`).
LOOP_FIELDS = ("lr", "weight_decay", "batch_size")
#: The paper's reduced-width 20-layer network (B=5, C=3, widths 16..128, its drop-path and dropout) with the default
#: recipe's learning rate, weight decay and batch size: the reference point (the first trial a search enqueues) and
#: the values the baselines and the final stage train with.
REFERENCE_POINT: dict[str, Any] = {
    "num_blocks": 5, "num_columns": 3, "base_width": 16, "width_growth": 2.0, "join": PAPER.join,
    "drop_path_rate": PAPER.drop_path_rate, "global_drop_fraction": PAPER.global_drop_fraction,
    "drop_path_warmup": 0.0, "dropout_scale": PAPER.dropout_step,
    **{name: PRESETS[DEFAULT_RECIPE][name] for name in LOOP_FIELDS},
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-6`` as a string; JSON and YAML 1.2 read it as a number, and so does this loader."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def max_blocks(input_size: int) -> int:
    """How many 2x2 max-pools an ``input_size`` x ``input_size`` image survives (each halves it)."""
    if input_size < 2:
        raise ValueError(f"input_size: {input_size} leaves no room for a single pooled block")
    return int(math.log2(input_size))


def widths_for(num_blocks: int, base_width: float, width_growth: float) -> tuple[int, ...]:
    """Per-block widths: grow by ``width_growth`` every block except the last (the paper's rule)."""
    return tuple(max(1, round(base_width * width_growth ** min(i, max(num_blocks - 2, 0))))
                 for i in range(num_blocks))


def _extra_targets() -> tuple[set[str], set[str]]:
    """Names an extension dimension may use: TrainConfig fields and FractalNet arguments (looked up lazily)."""
    from fractal_space.engine import TrainConfig
    from fractal_space.models.fractalnet import FractalNet

    model_args = set(inspect.signature(FractalNet.__init__).parameters) - {"self", "kwargs"}
    return {f.name for f in dataclasses.fields(TrainConfig)}, model_args


class _Dim:
    """One validated dimension; ``kind`` is 'fixed', 'int', 'float' or 'cat'."""

    def __init__(self, name: str, spec: Any) -> None:
        self.name = name
        self.log = False
        self.step: float | None = None
        if isinstance(spec, Mapping):
            keys = set(spec)
            if "choices" in spec:
                if keys - {"choices"}:
                    extra = sorted(keys - {"choices"})
                    raise ValueError(f"space field '{name}': 'choices' cannot be combined with {extra}")
                choices = list(spec["choices"]) if isinstance(spec["choices"], (list, tuple)) else None
                if not choices:
                    raise ValueError(f"space field '{name}': 'choices' must be a non-empty list")
                self.kind, self.choices = "cat", choices
                return
            if not {"low", "high"} <= keys or keys - {"low", "high", "log", "step"}:
                raise ValueError(f"space field '{name}': expected {{low, high[, log, step]}} or {{choices}}, "
                                 f"got keys {sorted(keys)}")
            self.low, self.high = spec["low"], spec["high"]
            self.log, self.step = bool(spec.get("log", False)), spec.get("step")
            for bound in (self.low, self.high):
                if bound != "max" and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                    raise ValueError(f"space field '{name}': bounds must be numbers, got {bound!r}")
            self.kind = "int" if all(isinstance(b, int) or b == "max" for b in (self.low, self.high)) else "float"
            if "max" not in (self.low, self.high):
                self._check_range()
            return
        if isinstance(spec, (list, tuple, set, dict)) or spec is None:
            raise ValueError(f"space field '{name}': expected a value, {{low, high}} or {{choices}}, got {spec!r}")
        self.kind, self.value = "fixed", spec

    def _check_range(self) -> None:
        if self.low > self.high:
            raise ValueError(f"space field '{self.name}': low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"space field '{self.name}': a log range needs low > 0, got {self.low}")
        if self.step is not None and (self.log or self.step <= 0):
            raise ValueError(f"space field '{self.name}': step must be > 0 and cannot be combined with log")

    def check(self, value: Any) -> Any:
        """``value`` as this dimension's type (NumPy scalars from ConfigSpace included), or a one-line error."""
        if self.kind == "cat":
            for choice in self.choices:
                if value == choice and type(value) is not bool or value is choice:
                    return choice
            raise ValueError(f"space field '{self.name}': {value!r} is not one of {self.choices}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise ValueError(f"space field '{self.name}': {value!r} is not a number")
        number = float(value)
        if self.kind == "int":
            if number != int(number):
                raise ValueError(f"space field '{self.name}': {value!r} is not an integer")
            number = int(number)
        if not self.low <= number <= self.high:
            raise ValueError(f"space field '{self.name}': {value!r} is outside [{self.low}, {self.high}]")
        return number

    def values(self) -> list[Any]:
        """The values a categorical or fixed dimension can take (for validation)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "cat":
            return self.choices
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "cat":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def spec(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "cat":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


class SearchSpace:
    """A validated, immutable FractalNet search space bound to an input size.

    Build it with :meth:`default`, :meth:`from_dict` or :meth:`from_file`; derive narrowed or extended copies with
    :meth:`replace`; sample a config with :meth:`suggest` inside any Optuna ``objective(trial)``.
    """

    def __init__(self, specs: Mapping[str, Any], input_size: int = 32) -> None:
        if not isinstance(specs, Mapping) or not specs:
            raise ValueError("space: empty; give at least one dimension (see fractal_space.search.space.DEFAULT)")
        missing = [name for name in CORE if name not in specs]
        if missing:
            raise ValueError(f"space field '{missing[0]}': missing (a fixed value is enough to leave it unsearched)")
        self.input_size = input_size
        self._dims = {str(name): _Dim(str(name), spec) for name, spec in specs.items()}
        self._bind_blocks()
        self._check_core()
        self._route_extras()

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def default(cls, input_size: int = 32, device: str = "cuda") -> SearchSpace:
        """The stock space. On CPU the widths are narrowed so that a trial fits the seconds-per-trial budget, and the
        local drop-path rate tops out at the paper's 0.15: at CPU budgets a lower rate trained the better network
        (experiments/reproduce_paper/README.md: 0.05 against 0.15, both without block dropout, after 200,000
        images)."""
        specs = copy.deepcopy(DEFAULT)
        if device == "cpu":
            specs["base_width"] = {"choices": [4, 8, 16]}
            specs["width_growth"] = {"choices": [1.0, 1.5, 2.0]}
            specs["drop_path_rate"] = {"low": 0.0, "high": PAPER.drop_path_rate}
        return cls(specs, input_size)

    @classmethod
    def from_dict(cls, specs: Mapping[str, Any], input_size: int = 32, base: Mapping[str, Any] | None = None
                  ) -> SearchSpace:
        """Overlay ``specs`` on ``base`` (the stock space by default), so a file only lists what it changes."""
        if not isinstance(specs, Mapping):
            raise ValueError(f"space: expected a mapping of dimension -> spec, got {type(specs).__name__}")
        merged = copy.deepcopy(dict(DEFAULT if base is None else base))
        merged.update(specs)
        return cls(merged, input_size)

    @classmethod
    def from_file(cls, path: str | Path, input_size: int = 32, base: Mapping[str, Any] | None = None
                  ) -> SearchSpace:
        """Read a YAML or JSON space file (YAML is a superset of JSON, so one parser reads both)."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"space file {path}: {exc.strerror}") from None
        try:
            specs = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ValueError(f"space file {path}: malformed YAML/JSON ({str(exc).splitlines()[0]})") from None
        if not specs:
            raise ValueError(f"space file {path}: empty")
        return cls.from_dict(specs, input_size, base)

    def replace(self, **specs: Any) -> SearchSpace:
        """A copy with some dimensions narrowed, widened, fixed or added: ``space.replace(num_columns={...})``."""
        return SearchSpace({**self.to_dict(), **specs}, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """The specs as a plain dict (what :meth:`from_dict` accepts); ``json.dumps`` of it is a valid space file."""
        return {name: dim.spec() for name, dim in self._dims.items()}

    def __repr__(self) -> str:
        return f"SearchSpace(input_size={self.input_size}, {json.dumps(self.to_dict())})"

    # -- validation ---------------------------------------------------------------------------------------------
    def _bind_blocks(self) -> None:
        dim, limit = self._dims["num_blocks"], max_blocks(self.input_size)
        if dim.kind in ("int", "float"):
            dim.low = limit if dim.low == "max" else dim.low
            dim.high = limit if dim.high == "max" else dim.high
            dim._check_range()
        elif "max" in dim.values():
            raise ValueError("space field 'num_blocks': 'max' is only allowed as a range bound")
        for value in dim.values():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"space field 'num_blocks': {value!r} is not an int >= 1")
            if value > limit:
                raise ValueError(f"space field 'num_blocks': {value} blocks need an input of {2 ** value} px, "
                                 f"the input is {self.input_size} px (at most {limit})")

    def _check_core(self) -> None:
        for name in ("num_blocks", "num_columns", "batch_size"):
            if self._dims[name].kind == "float":
                raise ValueError(f"space field '{name}': must be an int range or int choices")
        for name, low in (("num_columns", 1), ("batch_size", 1), ("base_width", 1), ("width_growth", 1)):
            bad = [v for v in self._dims[name].values() if not isinstance(v, (int, float)) or v < low]
            if bad:
                raise ValueError(f"space field '{name}': {bad[0]!r} is not a number >= {low}")
        bad = [v for v in self._dims["num_columns"].values() if v > MAX_COLUMNS]
        if bad:
            raise ValueError(f"space field 'num_columns': {bad[0]!r} is above the model's limit of {MAX_COLUMNS}")
        # The model's own rules (fractal_space.core.paper): a space value the model would reject fails here, not in
        # every trial.
        for name, allowed in (("drop_path_rate", DROP_PATH_RATE), ("global_drop_fraction", GLOBAL_DROP_FRACTION)):
            bad = [v for v in self._dims[name].values() if v not in allowed]
            if bad:
                raise ValueError(f"space field '{name}': {bad[0]!r} is outside {allowed}")
        for name in ("lr", "weight_decay"):
            bad = [v for v in self._dims[name].values() if not isinstance(v, (int, float)) or v < 0]
            if bad:
                raise ValueError(f"space field '{name}': {bad[0]!r} is outside [0, inf)")
        drop = self._dims["dropout_scale"]
        top = max(self._dims["num_blocks"].values()) - 1
        bad = [v for v in drop.values() if not isinstance(v, (int, float)) or v * top not in BLOCK_DROPOUT]
        if bad:
            raise ValueError(f"space field 'dropout_scale': {bad[0]!r} gives the last block a dropout >= 1 or < 0 "
                             f"(allowed per block: {BLOCK_DROPOUT})")
        bad = [v for v in self._dims["join"].values() if v not in JOINS]
        if bad:
            raise ValueError(f"space field 'join': {bad[0]!r} is not one of {', '.join(JOINS)}")

    def _route_extras(self) -> None:
        self._train_extras: list[str] = []
        self._model_extras: list[str] = []
        extras = [name for name in self._dims if name not in CORE]
        if not extras:
            return
        train_fields, model_args = _extra_targets()
        for name in extras:
            if name in train_fields:
                self._train_extras.append(name)
            elif name in model_args:
                self._model_extras.append(name)
            else:
                raise ValueError(f"space field '{name}': not a known dimension, TrainConfig field or FractalNet "
                                 "argument")

    # -- sampling -----------------------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[str, ...]:
        """Names of every dimension, fixed or searched."""
        return tuple(self._dims)

    @property
    def searched(self) -> list[str]:
        """Names of the dimensions that are actually searched (not fixed)."""
        return [name for name, dim in self._dims.items() if dim.kind != "fixed"]

    def is_active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether dimension ``name`` exists for a network with these values: join dimensions need two columns."""
        return name not in JOIN_DIMS or int(values["num_columns"]) > 1

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample the searched values with ``trial`` (an Optuna trial, or Ray's define-by-run captor): a flat dict, the
        same as ``trial.params`` afterwards. A one-column network samples no join dimension.

        Only ``suggest_*`` calls happen here, so Ray's ``OptunaSearch`` can run it as its define-by-run function.
        """
        first = {name: self._dims[name].suggest(trial) for name in ("num_blocks", "num_columns")}
        values = {**first, **{name: dim.suggest(trial) for name, dim in self._dims.items()
                              if name not in first and self.is_active(name, first)}}
        return {name: value for name, value in values.items() if name in self.searched}

    def config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The :class:`TrialConfig` of the flat sampled values any tool gives: Optuna's ``trial.params``, a Ray Tune
        config, a ConfigSpace ``Configuration`` (``dict(configuration)``). Values of inactive dimensions (join
        dimensions of a one-column network) are ignored; a missing, unknown or out-of-range value is a one-line
        ``ValueError`` naming it."""
        unknown = sorted(set(params) - set(self._dims))
        if unknown:
            raise ValueError(f"sampled value '{unknown[0]}': not a dimension of this space ({', '.join(self._dims)})")
        values: dict[str, Any] = {}
        for name in ("num_blocks", "num_columns", *self._dims):
            dim = self._dims[name]
            if name in values:
                continue
            if dim.kind == "fixed":
                values[name] = dim.value
            elif not self.is_active(name, values):
                values[name] = NO_JOINS[name]
            elif params.get(name) is None:
                raise ValueError(f"space field '{name}': missing from the sampled values")
            else:
                values[name] = dim.check(params[name])
        if not self.is_active("join", values):
            values.update({name: NO_JOINS[name] for name in JOIN_DIMS})
        blocks = int(values["num_blocks"])
        model_kwargs = {
            "num_blocks": blocks,
            "num_columns": int(values["num_columns"]),
            "widths": widths_for(blocks, values["base_width"], values["width_growth"]),
            "join": values["join"],
            "drop_path_rate": float(values["drop_path_rate"]),
            "global_drop_fraction": float(values["global_drop_fraction"]),
            "block_dropout": tuple(round(float(values["dropout_scale"]) * i, 6) for i in range(blocks)),
            **{name: values[name] for name in self._model_extras},
        }
        train = {"lr": float(values["lr"]), "weight_decay": float(values["weight_decay"]),
                 "batch_size": int(values["batch_size"]), **{name: values[name] for name in self._train_extras}}
        searched = {name: values[name] for name in self.searched if self.is_active(name, values)}
        return TrialConfig(params=searched, model_kwargs=model_kwargs, train=train,
                           engine_only=tuple(name for name in train if name not in LOOP_FIELDS))

    def sample(self, trial: Any) -> TrialConfig:
        """``config(suggest(trial))``: sample with an Optuna trial and build the config in one call."""
        return self.config(self.suggest(trial))

    # -- other tools ----------------------------------------------------------------------------------------------
    def to_ray(self, *, conditional: bool = True) -> dict[str, Any]:
        """The space as a Ray Tune ``param_space`` for Tune's own searchers (random and grid search through its
        ``BasicVariantGenerator``). With ``conditional`` the join dimensions are ``tune.sample_from`` functions that
        give None for a one-column network, so every sample is a valid network with no dead value; searchers that
        reject ``sample_from`` (HyperOpt, Ax, ...) take ``conditional=False``: plain domains, which
        :meth:`config` ignores for a one-column network. BOHB reads :meth:`to_configspace` instead."""
        from ray import tune

        out: dict[str, Any] = {}
        for name in self.searched:
            domain = _ray_domain(tune, self._dims[name])
            if conditional and name in JOIN_DIMS:
                out[name] = tune.sample_from(_InactiveWithOneColumn(domain))
            else:
                out[name] = domain
        return out

    def to_configspace(self, *, seed: int | None = None) -> Any:
        """The space as a ``ConfigSpace.ConfigurationSpace`` (SMAC3, DEHB, HpBandSter/BOHB, Ray's ``TuneBOHB``): log
        scales kept, and the join dimensions conditional on ``num_columns > 1``. Needs the ``configspace`` extra."""
        try:
            import ConfigSpace as CS
        except ImportError:
            raise ImportError("SearchSpace.to_configspace needs ConfigSpace: pip install 'fractal_space[configspace]'"
                              ) from None
        cs = CS.ConfigurationSpace(seed=seed)
        hyper = {name: _cs_hyperparameter(CS, self._dims[name]) for name in self.searched}
        cs.add(list(hyper.values()))
        columns = self._dims["num_columns"]
        if "num_columns" in hyper and 1 in range(int(min(columns.values())), int(max(columns.values())) + 1):
            parent = hyper["num_columns"]
            multi = [c for c in columns.values() if c > 1] if columns.kind == "cat" else None
            for name in JOIN_DIMS:
                if name in hyper:
                    cs.add(CS.InCondition(hyper[name], parent, multi) if multi is not None
                           else CS.GreaterThanCondition(hyper[name], parent, 1))
        return cs

    def reference_point(self) -> dict[str, Any]:
        """``REFERENCE_POINT`` projected into this space (each searched value clipped to its range or choices).

        Searches enqueue it as their first trial; baselines and the final stage train with its lr, weight decay and
        batch size.
        """
        point = {name: _project(self._dims[name], REFERENCE_POINT.get(name)) for name in self.searched}
        if _project(self._dims["num_columns"], REFERENCE_POINT["num_columns"]) == 1:  # no joins to configure
            point = {name: value for name, value in point.items() if name not in JOIN_DIMS}
        return point


def _project(dim: _Dim, want: Any) -> Any:
    """``want`` clipped into ``dim`` (its range, or its first choice); an extension's first choice or lower bound."""
    if dim.kind == "fixed":
        return dim.value
    if want is None:
        return dim.choices[0] if dim.kind == "cat" else dim.low
    if dim.kind == "cat":
        return want if want in dim.choices else dim.choices[0]
    return type(dim.low)(min(max(want, dim.low), dim.high))


def _ray_domain(tune: Any, dim: _Dim) -> Any:
    if dim.kind == "cat":
        return tune.choice(list(dim.choices))
    if dim.kind == "int":
        return (tune.lograndint if dim.log else tune.randint)(int(dim.low), int(dim.high) + 1) if not dim.step \
            else tune.qrandint(int(dim.low), int(dim.high), int(dim.step))
    if dim.step:
        return tune.quniform(float(dim.low), float(dim.high), float(dim.step))
    return (tune.loguniform if dim.log else tune.uniform)(float(dim.low), float(dim.high))


class _InactiveWithOneColumn:
    """A ``tune.sample_from`` function: the domain's sample where the sampled network has joins, else None.

    A class rather than a closure so that Ray can pickle it by reference."""

    def __init__(self, domain: Any) -> None:
        self.domain = domain

    def __call__(self, spec: Any) -> Any:
        return None if int(spec.config["num_columns"]) == 1 else self.domain.sample()


def _cs_hyperparameter(CS: Any, dim: _Dim) -> Any:  # noqa: N803 - the ConfigSpace module
    if dim.kind == "cat":
        return CS.Categorical(dim.name, list(dim.choices))
    if dim.kind == "int":
        return CS.Integer(dim.name, (int(dim.low), int(dim.high)), log=dim.log)
    return CS.Float(dim.name, (float(dim.low), float(dim.high)), log=dim.log)


#: The timm entry every sampled network is built with (any B, C, widths and join).
MODEL = "fractalnet"


@dataclass(frozen=True)
class TrialConfig:
    """One sampled network and its training overrides.

    ``model_kwargs`` are the arguments of ``timm.create_model("fractalnet", ...)``; ``train`` holds ``TrainConfig``
    fields (lr, weight_decay, batch_size and any extension). ``engine_only`` names the ``train`` fields only the
    project's engine applies (e.g. ``drop_path_warmup``): a loop of your own must implement them, or fix them in the
    space (``space.replace(drop_path_warmup=0.0)``) so that the sampler does not tune a knob nothing turns.
    """

    params: dict[str, Any]
    model_kwargs: dict[str, Any]
    train: dict[str, Any]
    engine_only: tuple[str, ...] = field(default=())

    @property
    def architecture(self) -> str:
        """The network's name from what defines it (:func:`architecture_name`)."""
        return architecture_name(self.model_kwargs)

    def create_model(self, **kwargs: Any) -> Any:
        """The network: ``timm.create_model("fractalnet", **model_kwargs, **kwargs)`` (``num_classes=...``, ...)."""
        import timm

        import fractal_space  # noqa: F401  (registers the models)

        return timm.create_model(MODEL, **{**self.model_kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        """``{"model_kwargs", "train"}`` as JSON values: what a trial stores and the engine reads back."""
        return json.loads(json.dumps({"model_kwargs": self.model_kwargs, "train": self.train}))


def architecture_name(model_kwargs: Mapping[str, Any]) -> str:
    """A FractalNet's honest name from what defines its architecture: B, C, widths and join (C=1 has no join), and
    a sub-fractal's kept columns per block.

    ``fractalnet_b5_c3_w16-32-64-128-128_mean`` is the paper's reduced-width 20-layer network;
    ``..._mean_p13-2-123-3-23`` keeps columns 1 and 3 of block 1, column 2 of block 2, and so on.
    """
    widths = "-".join(str(w) for w in model_kwargs["widths"])
    join = f"_{model_kwargs.get('join', 'mean')}" if model_kwargs["num_columns"] > 1 else ""
    paths = model_kwargs.get("paths")
    sep = "" if model_kwargs["num_columns"] < 10 else "."
    kept = "_p" + "-".join(sep.join(str(c) for c in sorted(cols)) for cols in paths) if paths else ""
    return f"fractalnet_b{model_kwargs['num_blocks']}_c{model_kwargs['num_columns']}_w{widths}{join}{kept}"
