"""Command line for the training engine: ``python -m fractal_space.train --model fractalnet_c3 --dataset cifar10``.

Every ``TrainConfig`` field is a flag (``--batch-size``, ``--model-kwargs '{"drop_path_rate": 0.15}'``,
``--no-eval-columns``, ...), so the CLI can never drift from the config the search and baselines use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from fractal_space.data import DataNotFoundError
from fractal_space.engine import EpochReport, TrainConfig, TrainingDiverged, train


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


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, typed from the dataclass annotations, defaults from the paper recipe."""
    parser = argparse.ArgumentParser(prog="fractal-train", description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            continue
        optional = type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        parse = _json_object if typing.get_origin(base) is dict else base
        parser.add_argument(flag, type=_optional(parse) if optional else parse, default=default,
                            metavar=f.name.upper(), help=f"default: {json.dumps(default)}")
    return parser


def _print_epoch(report: EpochReport) -> None:
    columns = " ".join(f"c{c.column}={c.acc:.3f}" for c in report.columns)
    print(f"epoch {report.epoch}: train loss {report.train_loss:.3f} acc {report.train_acc:.3f} | val loss "
          f"{report.val_loss:.3f} acc {report.val_acc:.3f} {columns} | lr {report.lr:.3g} | "
          f"{report.train_images_per_s:.0f} img/s | {report.epoch_seconds:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Train one model; prints one line per epoch and the summary as JSON. Exits 2 on bad arguments, 1 on failure."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_dict(vars(ns))
    except ValueError as err:
        parser.error(str(err))
    try:
        summary = train(cfg, callbacks=[_print_epoch])
    except (ValueError, DataNotFoundError, TrainingDiverged) as err:
        print(f"fractal-train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
