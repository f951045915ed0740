"""The real CIFAR-10 with a small test split, for tests whose runs end by testing (the engine's and the final stage's
test is the whole split: 10,000 images cost more than the tiny training runs before them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fractal_space.data import parquet_with_test_subset, resolve_data_root

#: Test images kept: enough for an accuracy between 0 and 1 that means something, seconds per model to test.
TEST_IMAGES = 500


def tiny_dataset() -> str:
    """The shared CIFAR-10 (``$FRACTAL_SPACE_DATA``, which conftest points at ../shared/data) with its first TEST_IMAGES
    test images, as a ``parquet:`` dataset.

    One folder for every test and run: the decoded-data cache is keyed by the dataset's path, so a folder per test
    would decode the 50,000 training images again each time."""
    folder = Path(tempfile.gettempdir()) / "fractal_space_tests" / f"cifar10_test{TEST_IMAGES}"
    return parquet_with_test_subset(resolve_data_root() / "cifar10", TEST_IMAGES, folder)
