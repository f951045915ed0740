"""Shared fixtures: real data from ../shared/data, small thread counts for a 2-core machine."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("FRACTAL_SPACE_DATA", str(SHARED_DATA))
# scripts/test.sh runs two pytest-xdist workers on this 2-core machine: one torch thread each, so that they do not
# oversubscribe the cores; a plain `pytest` run keeps two.
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts with the suite's torch thread count: the engine sets the process's count for its run, and a
    count left behind by one test changed the numerics (and so tolerances) of the next."""
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real datasets (CIFAR-10 Parquet, Fashion-MNIST idx) shared with this project."""
    if not (SHARED_DATA / "cifar10" / "train.parquet").exists():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need the real CIFAR-10 there")
    return SHARED_DATA
