"""What every result page says it came from: the command, the commit, the machine and the date."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from fractal_space.core.hardware import describe

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine
        return ""


def checkout() -> str:
    """The commit the experiment runs from, and whether that checkout had uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "an unknown commit (not a git checkout)"
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return f"commit {commit} ({'with uncommitted changes' if changed else 'clean'})"


def header(command: str, device: str = "cpu", resumes: bool = True) -> str:
    """The page's provenance line: ``command``, the commit it ran from, the machine (``device``'s), the date."""
    how = "run from the repository root" + (" (a re-run resumes)" if resumes else "")
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
    return f"Written by `{command}`, {how}, at {checkout()} on {describe(device)}, {when}."
