"""The docs state facts, not history: generated tables match the code, and no tracked text narrates its writing."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def test_generated_tables_match_the_code():
    assert gen_docs.stale() == [], "a generated table is stale: run python scripts/gen_docs.py"


def test_a_hand_edited_table_is_found_stale(tmp_path):
    for page, _ in gen_docs.BLOCKS.values():
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    engine = tmp_path / "docs" / "engine.md"
    engine.write_text(engine.read_text().replace("| `--lr` | float | `0.02` |", "| `--lr` | float | `0.1` |"))
    assert gen_docs.stale(tmp_path) == [engine]


def test_every_trainconfig_field_has_a_row():
    from fractal_space.engine.config import TrainConfig

    table = gen_docs.trainconfig_table()
    for name in TrainConfig.__dataclass_fields__:
        assert f"`--{name.replace('_', '-')}" in table


def test_an_undescribed_trials_column_fails(monkeypatch):
    columns = dict(gen_docs.TRIALS_COLUMNS)
    del columns["val_acc"]
    monkeypatch.setattr(gen_docs, "TRIALS_COLUMNS", columns)
    with pytest.raises(ValueError, match=r"undescribed \['val_acc'\]"):
        gen_docs.trials_schema_table()


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="trainconfig"):
        gen_docs.fill("no markers here\n", "trainconfig", "| table |")
