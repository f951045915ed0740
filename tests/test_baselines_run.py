"""baselines/run.py trains every model with the same recipe through the engine and writes one comparison table."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ["resnet20_cifar", "resnet32_cifar"]


@pytest.fixture(scope="module")
def run_module():
    from fractal_space.engine import compare

    return compare


@pytest.fixture
def tiny_cifar(data_root: Path, tmp_path: Path) -> Path:
    """The first 300 training and 200 test images of the real CIFAR-10, as a ``parquet:<folder>`` dataset."""
    folder = tmp_path / "cifar10_tiny"
    folder.mkdir()
    for split, rows in (("train", 300), ("test", 200)):
        source = pq.ParquetFile(data_root / "cifar10" / f"{split}.parquet")
        first = next(source.iter_batches(batch_size=rows))  # reads only the first rows, not all 50,000
        pq.write_table(pa.Table.from_batches([first], schema=source.schema_arrow), folder / f"{split}.parquet")
    return folder


def test_one_epoch_comparison_writes_table(run_module, tiny_cifar: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "runs"
    # one thread: batch-1 latency probes and tiny batches are faster without thread sync on a shared 2-core machine
    argv = ["--models", *MODELS, "--dataset", f"parquet:{tiny_cifar}", "--epochs", "1", "--val-size", "100",
            "--no-progress", "--no-download", "--num-threads", "1", "--out-dir", str(out_dir)]
    assert run_module.main(argv) == 0

    table = pd.read_parquet(out_dir / "results.parquet")
    assert list(table.columns) == list(run_module.COLUMNS)
    assert list(table["model"]) == MODELS
    assert table["test_acc"].between(0, 1).all() and (table["epochs"] == 1).all()
    assert table["test_acc_tta"].between(0, 1).all()  # the fast recipe's flip TTA, beside the plain accuracy
    assert (table["train_images_per_s"] > 0).all() and (table["flops"] > 0).all()
    assert table["num_params"].tolist() == [269_722, 464_154]  # the architectures trained are the papers'
    for name in MODELS:  # each model trained through the engine into its own run folder
        assert (out_dir / name / "summary.json").exists()

    markdown = (out_dir / "results.md").read_text()
    assert "epochs=1" in markdown and "recipe=fast" in markdown and "lr=0.4" in markdown  # the shared recipe heads
    # the table, with the values the recipe filled in
    rows = [line for line in markdown.splitlines() if line.startswith("| resnet")]
    assert [r.split("|")[1].strip() for r in rows] == MODELS
    assert all(len(r.split("|")) == len(run_module.COLUMNS) + 2 for r in rows)


def test_rejects_a_bad_recipe_before_training(run_module, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_module.main(["--models", "resnet20_cifar", "--epochs", "0", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert not (tmp_path / "resnet20_cifar").exists()


def test_the_script_is_the_package_command_line(tmp_path: Path) -> None:
    """``baselines/run.py`` is a thin entry point over ``fractal_space.engine.compare`` (same parser and exit codes)."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "baselines" / "run.py"), "--models", "resnet20_cifar",
                           "--epochs", "0", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "epochs" in done.stderr and not (tmp_path / "resnet20_cifar").exists()
