"""Command line for the training engine: ``python -m fractal_space.engine.cli --model fractalnet_c3 --dataset cifar10``.

Every ``TrainConfig`` field is a flag (``--batch-size``, ``--model-kwargs '{"drop_path_rate": 0.15}'``,
``--no-eval-columns``, ...), so the CLI can never drift from the config the search and baselines use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from fractal_space.data import DataNotFoundError
from fractal_space.engine import CheckpointError, EpochReport, TrainConfig, TrainingDiverged, train
from fractal_space.engine.config import PRESETS


def _optional(parse: Any) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_json_object.__name__ = "JSON object"


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line and exit 2, not the whole usage text."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _shown(value: Any) -> str:
    """A default as --help shows it: none, a bare string, on/off, or JSON."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else value if isinstance(value, str) else json.dumps(value)


def recipe_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, typed from the dataclass annotations, with the field's help, choices and
    default (each recipe's value where ``--recipe`` fills it in): the recipe, which ``baselines/run.py`` shares."""
    parser = _Parser(prog="fractal-train",
                     description="Train one model with the fractal_space engine; --recipe picks the defaults of the "
                                 "training options (paper: the FractalNet paper's CIFAR recipe; fast: a short-budget "
                                 "recipe), and any option given wins.",
                     epilog="Exit status: 0 done, 2 bad arguments or unusable data, 1 data not found, a damaged "
                            "checkpoint or a diverged run.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"].replace("%", "%%")
        shown = _shown(default)
        if f.metadata.get("preset"):  # None: the recipe's value
            shown = "the recipe's: " + ", ".join(f"{name} {_shown(values[f.name])}" for name, values in PRESETS.items())
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {shown})")
            continue
        optional = type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        parse = _json_object if typing.get_origin(base) is dict else base
        parser.add_argument(flag, type=_optional(parse) if optional else parse, default=default, choices=choices,
                            metavar=None if choices else f.name.upper(), help=f"{help_text} (default: {shown})")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """``fractal-train``'s flags: the recipe (:func:`recipe_parser`) and ``--export``."""
    parser = recipe_parser()
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="after training, export the model to DIR as a timm model folder with its model.onnx "
                             "(checked in ONNX Runtime) and a FractalNet's columns each alone in DIR/columns/, as the "
                             "search's final stage does; the summary gains their deployment latencies (default: "
                             "none, no export)")
    return parser


def _print_epoch(report: EpochReport) -> None:
    columns = " ".join(f"c{c.column}={c.acc:.3f}" for c in report.columns)
    tta = "" if report.val_acc_tta is None else f" (tta {report.val_acc_tta:.3f})"
    print(f"epoch {report.epoch}: train loss {report.train_loss:.3f} acc {report.train_acc:.3f} | val loss "
          f"{report.val_loss:.3f} acc {report.val_acc:.3f}{tta} {columns} | lr {report.lr:.3g} | "
          f"{report.train_images_per_s:.0f} img/s | {report.epoch_seconds:.0f} s", flush=True)


def _log_to_stderr() -> None:
    """The package's own log lines (which data folders were used, a checkpoint skipped) as ``fractal-train: ...``."""
    logger = logging.getLogger("fractal_space")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fractal-train: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Train one model; prints one line per epoch and the summary as JSON.

    Exit 2 for a bad argument (flag, model name, model_kwargs, dataset, split sizes, a recipe that does not match the
    checkpoint in --out-dir) or data that is there but unusable, each in one line before any training; exit 1 for
    data that is not found, a damaged checkpoint or a diverged run.
    """
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    export = ns.pop("export")
    try:
        cfg = TrainConfig.from_dict(ns)
    except ValueError as err:
        parser.error(str(err))
    _log_to_stderr()
    try:
        summary = train(cfg, callbacks=[_print_epoch], export=export)
    except ValueError as err:  # bad arguments found once the model and data are known; DataError is one too
        print(f"fractal-train: error: {err}", file=sys.stderr)
        return 2
    except (DataNotFoundError, CheckpointError, TrainingDiverged) as err:
        print(f"fractal-train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
