"""benchmarks/time_to_accuracy.py: the runs' configs, training CPU time without evaluation, the table and the plot."""


import pytest
from small_data import tiny_dataset

from benchmarks import time_to_accuracy as bench
from fractal_space.engine import TrainConfig


def test_run_configs_are_the_engine_recipes_with_one_change_each():
    paper = bench.run_config("resnet20/paper", 90_000, 15_000, 1)
    assert (paper.model, paper.recipe, paper.schedule, paper.lr, paper.epochs) == ("resnet20_cifar", "paper",
                                                                                     "cosine", 0.02, 6)
    fast, ablated = (bench.run_config(f"fractalnet_c3/{v}", 90_000, 45_000, 1) for v in ("fast", "fast-no-nesterov"))
    assert fast.regularization == "none" and fast.epochs == 2
    assert [k for k, v in fast.to_dict().items() if ablated.to_dict()[k] != v] == ["nesterov"]
    with pytest.raises(ValueError, match="unknown run 'resnet20/slow'"):
        bench.run_config("resnet20/slow", 90_000, 15_000, 1)


def test_a_run_counts_training_cpu_time_and_resumes_where_it_was_killed(tmp_path):
    cfg = TrainConfig(model="test_efficientnet", dataset=tiny_dataset(), train_subset=200, val_size=100,
                      epoch_images=100, epochs=2, batch_size=50, tta="flip", progress=False, num_threads=1)
    result = bench.train_run("tiny/fast", cfg, tmp_path / "run")
    first, second = result["points"]
    assert (first["images"], second["images"]) == (100, 200)
    assert 0 < first["train_cpu_minutes"] < second["train_cpu_minutes"]
    assert all(0 <= p[k] <= 1 for p in result["points"] for k in ("test_acc", "test_acc_tta", "val_acc_tta"))

    log = tmp_path / "run" / "points.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3]) + "\n")  # killed after epoch 2 was trained, before its test was logged
    again = bench.train_run("tiny/fast", cfg, tmp_path / "run")
    assert again["points"][0] == first and again["points"][1]["train_cpu_minutes"] == second["train_cpu_minutes"]
    assert again["points"][1]["test_acc"] == second["test_acc"]  # tested again, on the checkpointed weights


def test_report_tabulates_minutes_to_each_threshold_and_plots(tmp_path):
    def run(name, accs):
        points = [{"images": 15_000 * i, "train_cpu_minutes": 2.0 * i, "wall_minutes": 3.0 * i, "test_acc": a,
                   "test_acc_tta": None} for i, a in enumerate(accs, 1)]
        return {"name": name, "config": {"recipe": name.split("/")[1], "epochs": len(accs), "epoch_images": 15_000},
                "points": points}

    results = [run("resnet20/paper", [0.4, 0.6]), run("resnet20/fast", [0.5, 0.72, 0.81])]
    assert bench.minutes_to(results[1]["points"], 0.7) == 4.0 and bench.minutes_to(results[0]["points"], 0.7) is None
    table = bench.report(results, tmp_path).splitlines()
    assert table[2].startswith("| resnet20/paper | paper | 30,000 (2 x 15,000) | 4.0 | 6.0 | 60.00% | - | - | -")
    assert "| 81.00% | - | 4.0 | 6.0 | - | - |" in table[3]
    assert (tmp_path / "accuracy_vs_cpu_minutes.png").stat().st_size > 0
