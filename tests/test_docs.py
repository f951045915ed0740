"""The docs state facts, not history: generated tables match the code, and no tracked text narrates its writing."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import gen_docs

ROOT = Path(__file__).resolve().parents[1]




def test_generated_tables_match_the_code():
    assert gen_docs.stale() == [], "a generated table is stale: run python scripts/gen_docs.py"


def test_a_hand_edited_table_is_found_stale(tmp_path):
    for page, _ in gen_docs.BLOCKS.values():
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    engine = tmp_path / "docs" / "engine.md"
    engine.write_text(engine.read_text().replace("| `--epochs` | int | `10` |", "| `--epochs` | int | `11` |"))
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


#: Words that narrate how a file came to be written instead of stating what holds. Each entry: (pattern, why).
NARRATIVE = [
    (r"\bissues? #?\d+", "an issue number"),
    (r"\bissue'?s\b", "the issue as a reference point"),
    (r"^#+ .*\bissue\b", "a heading named after an issue"),
    (r"\bgoals? \d+\b", "a numbered goal of a work item"),
    (r"\b(this|that|next|previous|last|earlier|later|another|each|every|per|one|a|the) sessions?\b", "a session"),
    (r"\bsession's\b|\b\w*(minute|hour)s?[ _]session\b", "a session"),
    (r"\bwork periods?\b", "a work period"),
    (r"\btooling\b", "the tooling it was written with"),
    (r"\bdevice tool\b", "the tooling it was written with"),
    (r"\blent\b", "a lent machine"),
    (r"\bnot run (at the time|this|in this)\b", "what was not run at the time"),
    (r"\bestimated, not measured\b", "a note about the writing"),
    (r"\bfarm-[a-z]", "a helper tool's name"),
    (r"`issues\b|\bissues (create|list|show|close|comment|view)\b", "a helper tool's name"),
    (r"\bthe CEO\b", "a person"),
    (r"\b(another|other|three|four|\d+) (engineers?|developers?)\b|\bdevelopers' ", "other people at work"),
    (r"\blead engineer\b", "a person"),
]
PATTERNS = [(re.compile(p, re.I | re.M), why) for p, why in NARRATIVE]
#: Texts the patterns must catch: each pattern catches at least one, and every one is caught.
CAUGHT = [
    "## Issue 21: the speed goals, measured",
    """DenseNet-BC-100 against ResNet-56 (issue 21, goal 3).""",
    "def test_default_budget_fits_a_180_minute_session(tmp_path):",
    '"""Issue 12\'s search defects, each reproduced"""',
    "The issue's scale (`--scale cpu`) is B=5, C=4",
    "This session (2026-12-03, AMD EPYC, 2 cores, quiet machine)",
    "the next work period",
    "run with this machine's tooling",
    "### Running it on a lent GPU machine (the device tool)",
    "not run at the time",
    "#: Estimated, not measured: the CPU default's final stage took ~46 min",
    "started with farm-run",
    "filed with `issues create`",
    "as the CEO asked",
    "another engineer moved it",
    "shared with three other developers' jobs while this ran",
    "Measured on the shared 2-core CPU (4 developers at once, load averages 6-13)",
    "what the lead engineer merges",
]
#: Ordinary technical uses of the same words, which must not be caught.
NOT_CAUGHT = [
    "session = onnxruntime.InferenceSession(path)",
    '@pytest.fixture(scope="session")',
    "os.killpg(head.pid, signal.SIGKILL)  # the whole cluster (its own session)",
    "subprocess.Popen(command, start_new_session=True)",
    "recorded by `--scale medium`, not run here",
    "an ONNX Runtime session: OrtModel(path)(x)",
    "the silent default",
]
TEXT_SUFFIXES = {".md", ".py", ".sh", ".toml", ".txt", ".json", ".yaml", ".yml", ".cfg"}
#: This file lists the patterns and their samples.
SKIP = {"tests/test_docs.py"}


def narrative_hits(text: str) -> list[tuple[int, str, str]]:
    """(line number, matched text, why) of every narrating phrase in ``text``."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(0), why)
            for pattern, why in PATTERNS for m in pattern.finditer(text)]


@pytest.mark.parametrize("text", CAUGHT)
def test_each_narrating_sample_is_caught(text):
    assert narrative_hits(text)


@pytest.mark.parametrize("text", NOT_CAUGHT)
def test_technical_uses_are_not_caught(text):
    assert narrative_hits(text) == []


def test_every_pattern_catches_a_sample():
    idle = [p.pattern for p, _ in PATTERNS if not any(p.search(text) for text in CAUGHT)]
    assert idle == []


def _tracked_text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines()
            if Path(name).suffix in TEXT_SUFFIXES and name not in SKIP and (ROOT / name).exists()]


def test_no_tracked_text_narrates_its_writing():
    found = [f"{name}:{line}: {match!r} ({why})" for name in _tracked_text_files()
             for line, match, why in narrative_hits((ROOT / name).read_text(errors="replace"))]
    assert not found, "text that narrates how it was written:\n" + "\n".join(found)
