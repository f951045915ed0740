"""Writes the tables of docs/ that the code defines, so the pages cannot drift from it.

- ``docs/engine.md``, block ``trainconfig``: one row per ``TrainConfig`` field (its flag, type, default, whether it is
  part of the recipe, and the help text the ``fractal-train`` parser shows).
- ``docs/results.md``, block ``trials-schema``: one row per fixed column of ``trials.parquet`` (``FIXED_SCHEMA``:
  the trial's own columns, then the ``TrialRecord`` fields with their Arrow types and column names).

Each table sits between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``; the rest of the page
is written by hand. ``tests/test_docs.py`` fails when a committed page differs from what this script writes.

    python scripts/gen_docs.py           # rewrite the blocks
    python scripts/gen_docs.py --check   # exit 1, naming the pages, if any block is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: What each fixed column of ``trials.parquet`` holds. A column added to the schema without a line here (or a line
#: for a column that no longer exists) makes the generator fail, so the page and the schema move together.
TRIALS_COLUMNS = {
    "number": "the Optuna trial number",
    "kind": "`fractalnet` (a search trial) or `baseline`",
    "model": "timm model name",
    "state": "`COMPLETE`, `PRUNED`, `FAIL`, `RUNNING` or `WAITING`",
    "fail_reason": "why a `FAIL` trial failed (exception type and message, `interrupted: ...`, `stale heartbeat`)",
    "values": "the study's objective values, validation accuracy first",
    "duration_s": "start to finish as the storage recorded it",
    "datetime_start": "when the storage started the trial",
    "datetime_complete": "when the storage finished the trial",
    "config": "JSON of the `model_kwargs` and training values the trial was built from",
    "worker": "the process that ran it, `host:pid`",
    "epochs_run": "epochs trained (the last one reported, once finished)",
    "epochs_budget": "epochs the trial's budget allows (the top rung's)",
    "val_acc": "validation accuracy (fraction) after the last epoch run",
    "val_loss": "validation loss after the last epoch run",
    "train_loss": "mean training loss of the last epoch",
    "train_acc": "training accuracy of the last epoch",
    "latency_ms": "deployment latency, ms per image at batch 1 (ONNX Runtime on CPU; NaN for a pruned trial)",
    "train_images_per_s": "training throughput of the last epoch",
    "epoch_seconds": "wall time of the last epoch",
    "wall_seconds": "trial start to the end of its last epoch, data loading and evaluation included",
    "params": "parameters",
    "flops": "forward FLOPs per image",
    "num_columns": "FractalNet columns (null for other models)",
    "column_val_acc": "validation accuracy of each column alone, column 1 (shallowest) first",
    "column_latency_ms": "deployment latency of each column alone, column 1 first",
    "val_acc_history": "validation accuracy after each epoch",
    "latency_runtime": "what timed `latency_ms` (ONNX Runtime and its provider, or eager CUDA)",
    "eager_latency_ms": "eager PyTorch's latency at batch 1, for comparison",
    "deploy_seconds": "what the ONNX exports, their checks and their timing cost the trial",
    "device": "where the trial trained: `cpu`, `cuda:0 (<GPU name>)`",
    "started_at": "Unix time the trial started (with `wall_seconds`: its interval)",
    "peak_memory_mb": "GPU memory peak in MiB (null on CPU)",
    "train_threads": "CPU threads it trained with (null for a one-shot sub-fractal, which is not trained)",
    "latency_threads": "CPU threads its latencies were timed at",
}


def _markdown(text: str) -> str:
    """A table cell: pipes escaped, so help text cannot break the row."""
    return text.replace("|", "\\|")


def _plain(text: str) -> str:
    """Help text as Markdown: words with ``<placeholders>`` or ``*`` in code spans, so none reads as markup."""
    return re.sub(r"[^\s(),;]*[<*][^\s(),;]*", lambda m: f"`{m.group(0)}`", text)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if optional else hint
    name = "JSON object" if typing.get_origin(base) is dict else base.__name__
    return f"{name} or none" if optional else name


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else value if isinstance(value, str) else json.dumps(value)


def trainconfig_table() -> str:
    """``TrainConfig``'s fields as the ``fractal-train`` flags they become."""
    from fractal_space.engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    lines = ["| flag | type | default | recipe | what |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            flag += f" / --no-{f.name.replace('_', '-')}"
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + (f" (one of: {', '.join(choices)})" if choices else "")
        recipe = "yes" if f.metadata.get("recipe", True) else "no"
        lines.append(f"| `{flag}` | {_markdown(_type_name(hints[f.name]))} | `{_default(f)}` | {recipe} | "
                     f"{_markdown(_plain(help_text))} |")
    return "\n".join(lines)


def trials_schema_table() -> str:
    """``trials.parquet``'s fixed columns with their Arrow types, then the ``param_<name>`` columns."""
    from fractal_space.search.results.table import FIXED_SCHEMA, TRIAL_SCHEMA
    from fractal_space.search.trial.record import record_columns

    names = list(FIXED_SCHEMA.names)
    missing, extra = sorted(set(names) - set(TRIALS_COLUMNS)), sorted(set(TRIALS_COLUMNS) - set(names))
    if missing or extra:
        raise ValueError(f"TRIALS_COLUMNS is out of date: undescribed {missing}, no longer in the schema {extra}")
    fields = {column: name for name, column, _ in record_columns()}
    lines = ["| column | Arrow type | from | what |", "|---|---|---|---|"]
    for f in FIXED_SCHEMA:
        source = "trial" if f.name in TRIAL_SCHEMA.names else f"`TrialRecord.{fields[f.name]}`"
        lines.append(f"| `{f.name}` | `{f.type}` | {source} | {_markdown(TRIALS_COLUMNS[f.name])} |")
    lines.append("| `param_<name>` | `int64`, `double` or `string` | trial | one column per searched dimension: the "
                 "sampled value |")
    return "\n".join(lines)


#: Generated block name -> (page, renderer).
BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "trainconfig": ("docs/engine.md", trainconfig_table),
    "trials-schema": ("docs/results.md", trials_schema_table),
}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` replaced by ``body``; the markers must be there exactly once."""
    pattern = re.compile(rf"(<!-- BEGIN generated: {re.escape(name)} -->\n)(?:.*?\n)?(<!-- END generated: "
                         rf"{re.escape(name)} -->)", re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"generated block {name!r}: expected one pair of BEGIN/END markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render(root: Path = ROOT) -> dict[Path, str]:
    """Every page with generated blocks, as it should read."""
    pages: dict[Path, str] = {}
    for name, (page, renderer) in BLOCKS.items():
        path = root / page
        pages[path] = fill(pages.get(path, path.read_text()), name, renderer())
    return pages


def stale(root: Path = ROOT) -> list[Path]:
    """The pages whose committed text differs from what the code gives."""
    return [path for path, text in render(root).items() if path.read_text() != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the code-defined tables of docs/.")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is stale: run python scripts/gen_docs.py", file=sys.stderr)
        return 1 if old else 0
    for path, text in render().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
