"""Train a set of models with one identical recipe and budget; write one comparison table as Parquet + Markdown.

The logic behind ``baselines/run.py``::

    python baselines/run.py --models fractalnet_c3 resnet20_cifar densenet_bc100_cifar --epochs 10

Every recipe flag is the training CLI's (``fractal-train --help``) and is applied unchanged to every
model, so the only difference between rows is the architecture. Each model trains through the project's one engine
into ``<out-dir>/<model>/`` (checkpoints, metrics.jsonl, summary.json), so an interrupted comparison resumes where it
stopped; the table goes to ``<out-dir>/results.parquet`` and ``<out-dir>/results.md``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fractal_space.core.files import atomic_path, write_atomic
from fractal_space.engine import TrainConfig, train
from fractal_space.engine.cli import recipe_parser

DEFAULT_MODELS = ("fractalnet_c3", "resnet20_cifar", "resnet56_cifar", "densenet_bc100_cifar")
COLUMNS = ("model", "test_acc", "test_acc_tta", "num_params", "flops", "train_images_per_s", "val_acc", "epochs",
           "train_seconds")
# the table's Markdown rendering: column -> (header, format)
MARKDOWN = {
    "model": ("model", "{}"),
    "test_acc": ("test acc (%)", "{:.2%}"),
    "test_acc_tta": ("test acc, TTA (%)", "{:.2%}"),
    "num_params": ("params (M)", "{:.3f}"),
    "flops": ("MFLOPs / image", "{:.1f}"),
    "train_images_per_s": ("train images/s", "{:.0f}"),
    "val_acc": ("val acc (%)", "{:.2%}"),
    "epochs": ("epochs", "{}"),
    "train_seconds": ("train time (s, all epochs)", "{:.0f}"),
}
SCALE = {"num_params": 1e-6, "flops": 1e-6}
DEFAULT_OUT_DIR = "runs/baselines"


def build_parser() -> argparse.ArgumentParser:
    """The training CLI's recipe flags, with ``--models`` for the set and ``--out-dir`` as the comparison's root."""
    parser = recipe_parser()
    parser.prog = "baselines/run.py"
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(model=None, out_dir=DEFAULT_OUT_DIR)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                        help=f"timm model names, trained in this order (default: {' '.join(DEFAULT_MODELS)})")
    return parser


def run_baselines(models: Sequence[str], recipe: dict[str, Any], out_dir: Path) -> pd.DataFrame:
    """Train each model with ``recipe`` (TrainConfig fields except model/out_dir) and write the comparison table."""
    if not models:
        raise ValueError("no models to compare")
    rows = []
    for name in models:
        cfg = TrainConfig.from_dict({**recipe, "model": name, "out_dir": str(out_dir / name)})
        summary = train(cfg)
        rows.append({"model": name, **{c: math.nan if summary[c] is None else summary[c] for c in COLUMNS
                                       if c != "model"}})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_table(table, recipe, out_dir)
    return table


def to_markdown(table: pd.DataFrame, recipe: dict[str, Any]) -> str:
    """The table as GitHub Markdown, headed by the recipe every row shares."""
    shared = ", ".join(f"{k}={v}" for k, v in sorted(recipe.items()) if k not in ("progress", "out_dir"))
    lines = [
        "# Baseline comparison",
        "",
        f"One recipe for every model: {shared}.",
        "",
        "Test accuracy is the plain forward pass (what an exported model gives); the TTA column adds the recipe's "
        "test-time augmentation (- where it is off).",
        "",
        "| " + " | ".join(MARKDOWN[c][0] for c in COLUMNS) + " |",
        "|" + "|".join("---" if c == "model" else "---:" for c in COLUMNS) + "|",
    ]
    for row in table.itertuples(index=False):
        cells = ["-" if isinstance(v := getattr(row, c), float) and math.isnan(v) else
                 MARKDOWN[c][1].format(v * SCALE.get(c, 1)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, recipe: dict[str, Any], out_dir: Path) -> None:
    """``results.parquet`` (raw numbers, accuracies as fractions) and ``results.md`` (rounded, for reading)."""
    with atomic_path(out_dir / "results.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    write_atomic(out_dir / "results.md", to_markdown(table, recipe))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the Markdown table. Exits 2 on bad arguments."""
    parser = build_parser()
    recipe = vars(parser.parse_args(argv))
    models, out_dir = recipe.pop("models"), Path(recipe.pop("out_dir"))
    if recipe.pop("model") is not None:
        parser.error("give the models to compare with --models")
    try:  # reject a bad recipe before the first model trains; the table shows the values the recipe filled in
        recipe = {k: v for k, v in TrainConfig.from_dict(recipe).to_dict().items() if k in recipe}
    except ValueError as err:
        parser.error(str(err))
    table = run_baselines(models, recipe, out_dir)
    print(to_markdown(table, recipe))
    return 0
