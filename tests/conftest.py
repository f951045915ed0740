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


#: Files of end-to-end tests (child processes, Ray, storages): tens of seconds each. Run first, so that the two
#: xdist workers share them out and finish on the many short tests instead of one worker ending on a long one alone.
LONG_FIRST = ("test_search_reliability.py", "test_reproduce_paper.py", "test_gpu_check.py", "test_search_final.py",
              "test_search_ray.py", "test_search_optuna.py", "test_search_resume.py", "test_search_oneshot.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long files first (in LONG_FIRST's order), each file's own order kept; the order is the same in every worker."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
