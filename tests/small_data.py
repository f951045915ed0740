"""The real CIFAR-10 with a small test split, for tests whose runs end by testing (the engine's and the final stage's
test is the whole split: 10,000 images cost more than the tiny training runs before them)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
#: Test images kept: enough for an accuracy between 0 and 1 that means something, seconds per model to test.
TEST_IMAGES = 500


def tiny_dataset() -> str:
    """The real CIFAR-10 as a ``parquet:`` dataset: its training split, the first TEST_IMAGES test images.

    One folder for every test and run (the decoded-data cache is keyed by the dataset's path, so a folder per test
    would decode the 50,000 training images again each time); made whole in a private folder, then renamed into place,
    so that parallel test workers never see half of it."""
    folder = Path(tempfile.gettempdir()) / "fractal_space_tests" / f"cifar10_test{TEST_IMAGES}"
    if not (folder / "test.parquet").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        (staging / "train.parquet").symlink_to(SHARED_CIFAR10 / "train.parquet")
        pq.write_table(pq.read_table(SHARED_CIFAR10 / "test.parquet").slice(0, TEST_IMAGES), staging / "test.parquet")
        try:
            staging.rename(folder)
        except OSError:  # another worker made it first
            shutil.rmtree(staging)
    return f"parquet:{folder}"
