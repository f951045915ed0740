"""Shared fixtures: real data from ../shared/data, small thread counts for a 2-core machine."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("FRACTAL_SPACE_DATA", str(SHARED_DATA))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real datasets (CIFAR-10 Parquet, Fashion-MNIST idx) shared with this project."""
    if not (SHARED_DATA / "cifar10" / "train.parquet").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need the real CIFAR-10 there")
    return SHARED_DATA
