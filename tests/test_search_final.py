"""The final stage: the best distinct architectures and the baselines retrained, tested, exported as timm models;
resumable after SIGKILL; the report's headline table."""

import json
import os
import signal
import time

import onnxruntime
import optuna
import pandas as pd
import pytest
import timm
import torch
from search_cli import load_study, spawn_search, tiny_args

import fractal_space  # noqa: F401  (registers the timm models)
from fractal_space.core.hardware import usable_cpus
from fractal_space.deploy.onnx import OrtModel
from fractal_space.engine.checkpoint import read_checkpoint
from fractal_space.search.cli import main
from fractal_space.search.results.final import distinct_architectures, plan, search_ranking, spread_architectures
from fractal_space.search.space import JOIN_DIMS, MODEL, SearchSpace
from fractal_space.search.study.settings import FinalSettings, SearchSettings
from fractal_space.search.trial.budget import Budget

FINAL = ("--final-top", "2", "--final-spread", "1", "--final-epochs", "1", "--final-baselines", "resnet20_cifar")


def _results(runs, study) -> pd.DataFrame:
    path = runs / study / "final" / "results.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def test_final_stage_retrains_tests_and_exports_timm_models_and_resumes_after_sigkill(tmp_path):
    assert main(tiny_args(tmp_path, "final", "--trials", "4", rungs=2)) == 0  # the search alone
    study = load_study(tmp_path, "final")
    architectures = distinct_architectures(study, 2) + spread_architectures(study, 2, 1)
    names = {t.user_attrs["model"] for t in architectures}
    assert len(names) == len(architectures)  # distinct, each named by its B, C, widths and join

    proc = spawn_search(tmp_path, "final", "--trials", "4", *FINAL, rungs=2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(_results(tmp_path, "final")) < 1:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)  # during the second model
    proc.communicate(timeout=30)
    before = _results(tmp_path, "final")
    assert len(before) >= 1

    assert main(tiny_args(tmp_path, "final", "--trials", "4", *FINAL, rungs=2)) == 0
    after = _results(tmp_path, "final")
    assert len(after) == len(architectures) + 1 and list(after.name).count("resnet20_cifar") == 1
    assert list(after.role).count("spread") == len(architectures) - len(distinct_architectures(study, 2))
    kept = after.set_index("name").loc[before.name, "test_acc"]
    assert kept.tolist() == before.test_acc.tolist()  # a finished model is not trained again
    # The dashboard's study of the final stage: one trial per model, the killed one's taken over by the re-run, each
    # with its validation curve (one epoch) and its test accuracy as value.
    trials = load_study(tmp_path, "final-final", storage=f"sqlite:///{tmp_path / 'final' / 'study.db'}").trials
    retrained = {t.user_attrs["name"]: t for t in trials}
    assert sorted(retrained) == sorted(after.name) and len(trials) == len(after)
    for row in after.itertuples():
        trial = retrained[row.name]
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == row.test_acc
        assert trial.intermediate_values == {1: row.val_acc} and trial.user_attrs["role"] == row.role
    assert after.test_acc.between(0, 1).all() and (after.latency_ms_batch > 0).all() and (after.params > 0).all()
    # the default recipe, its flip test-time augmentation reported beside the plain forward pass
    assert set(after.recipe) == {"fast"} and set(after.tta) == {"flip"} and after.test_acc_tta.between(0, 1).all()

    x = torch.randn(3, 3, 32, 32)
    for row in after.itertuples():
        folder = tmp_path / "final" / "final" / row.name
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == row.model and (folder / "model.safetensors").exists()
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        kwargs = json.loads(row.model_kwargs)
        trained = timm.create_model(row.model, num_classes=10, **kwargs).eval()
        weights, state = read_checkpoint(folder / "run")
        assert state["config"]["num_threads"] == 1  # tiny_args' --threads 1 holds for the final stage too
        trained.load_state_dict(weights)
        torch.testing.assert_close(loaded(x), trained(x))  # the same network with the same trained weights
        torch.testing.assert_close(eval(row.load, {"timm": timm}).eval()(x), trained(x))  # the report's one line
        # ... and its ONNX Runtime line runs the folder's model.onnx with the same outputs
        deployed = eval(row.onnx, {"onnxruntime": onnxruntime, "x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(deployed), trained(x), atol=1e-4, rtol=1e-4)
        assert row.latency_runtime == "onnxruntime-cpu" and row.latency_ms > 0 and row.eager_latency_ms > 0
        if row.kind == "fractalnet":
            assert row.model == MODEL and len(row.column_test_acc) == kwargs["num_columns"]
            columns = [eval(line, {"timm": timm}).eval() for line in row.column_load]  # each column alone
            assert len(columns) == len(row.column_latency_ms) == (kwargs["num_columns"] if kwargs["num_columns"] > 1
                                                                  else 0)
            for k, column in enumerate(columns, 1):
                onnx = OrtModel(folder / "columns" / f"column{k}" / "model.onnx")(x)
                torch.testing.assert_close(torch.from_numpy(onnx), column(x), atol=1e-4, rtol=1e-4)

    report = (tmp_path / "final" / "report.md").read_text()
    headline = report.split("## Budgets")[0]
    assert "## Final test results" in headline and "baseline resnet20_cifar" in headline
    assert all("local-dir:" in line and "onnxruntime.InferenceSession(" in line
               for line in headline.splitlines() if line.startswith("| fractalnet"))
    assert "Latencies: deployed on ONNX Runtime, CPU provider" in headline
    assert "| test acc | test acc, TTA |" in headline and f"| {after.test_acc_tta.iloc[0]:.2%} (flip) |" in headline
    assert "recipe `fast` (schedule linear, test-time augmentation flip)" in report
    marked = [line for line in headline.splitlines() if "(spread: fidelity sample)" in line]
    assert len(marked) == list(after.role).count("spread")
    assert "Proxy fidelity:" in report and f"(n = {len(architectures)}," in report  # those with a search score
    assert "Spearman rho" in report and "Kendall tau" in report and "90% bootstrap interval" in report


def test_final_jobs_keep_each_trials_drop_path_warmup_and_baselines_get_none(tmp_path):
    space = SearchSpace.default(32, "cpu")
    study = optuna.create_study(direction="maximize")
    for number, (columns, warmup) in enumerate([(3, 0.4), (2, 0.1), (1, 0.0)]):
        point = {**space.reference_point(), "num_columns": columns, "drop_path_warmup": warmup}
        point = {k: v for k, v in point.items() if columns > 1 or k not in JOIN_DIMS}
        config = space.config(point).to_dict()
        study.add_trial(optuna.trial.create_trial(value=0.5 - number / 10, user_attrs={"config": config}))
    settings = SearchSettings("s", tmp_path, None, "accuracy", 3, space, Budget(device="cpu"),
                              final=FinalSettings(top=3, baselines=("resnet20_cifar",)))
    jobs = plan(settings, study)
    assert [j.regularization for j in jobs] == [{"drop_path_warmup": 0.4}, {"drop_path_warmup": 0.1},
                                                {"drop_path_warmup": 0.0}, {}]
    assert [j.kind for j in jobs] == ["fractalnet"] * 3 + ["baseline"]


def _ranked_study(space: SearchSpace, scores: list[float]) -> optuna.Study:
    """A study of COMPLETE search trials, trial i a distinct architecture (B, C vary) scoring ``scores[i]``."""
    study = optuna.create_study(direction="maximize")
    for number, score in enumerate(scores):
        point = {**space.reference_point(), "num_blocks": 2 + number % 4, "num_columns": 1 + number // 4 % 3,
                 "base_width": (4, 8, 16)[number // 12]}
        point = {k: v for k, v in point.items() if point["num_columns"] > 1 or k not in JOIN_DIMS}
        config = space.config(point).to_dict()
        study.add_trial(optuna.trial.create_trial(value=score, user_attrs={"config": config, "kind": "fractalnet"}))
    return study


def test_spread_architectures_are_distinct_below_the_top_and_evenly_spaced_by_rank(tmp_path):
    space = SearchSpace.default(32, "cpu")
    scores = [0.1 + 0.02 * i for i in range(12)]  # trial 11 is best, trial 0 worst
    study = _ranked_study(space, scores)
    config = study.trials[5].user_attrs["config"]  # trial 5's architecture again, scoring lower: not a new one
    study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs={"config": config, "kind": "fractalnet"}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"config": config}))
    top = [t.number for t in distinct_architectures(study, 3)]
    spread = [t.number for t in spread_architectures(study, 3, 4)]
    assert top == [11, 10, 9]
    # the 9 architectures below the top, ranked 0..8 (trials 8..0): ranks 0, 3, 5, 8 (evenly spaced, ends included)
    assert spread == [8, 5, 3, 0] and not set(spread) & set(top)
    assert [t.number for t in spread_architectures(study, 3, 20)] == list(range(8, -1, -1))  # all of the rest
    assert [t.number for t in spread_architectures(study, 3, 1)] == [4]  # the median one
    settings = SearchSettings("s", tmp_path, None, "accuracy", 12, space, Budget(device="cpu"),
                              final=FinalSettings(top=3, spread=4, baselines=("resnet20_cifar",)))
    jobs = plan(settings, study)
    assert [(j.trial, j.role) for j in jobs] == [(11, "top"), (10, "top"), (9, "top"), (None, "baseline"),
                                                 (8, "spread"), (5, "spread"), (3, "spread"), (0, "spread")]
    assert len({j.name for j in jobs}) == len(jobs) and plan(settings, study) == jobs  # the same names on a re-run


def test_final_top_0_is_no_final_stage_not_even_the_baselines(tmp_path):
    """--final-top 0 retrains nothing: the final baselines are part of the final stage too."""
    assert main(tiny_args(tmp_path, "nofinal", "--trials", "1", "--final-top", "0",
                          "--final-baselines", "resnet20_cifar")) == 0
    assert not (tmp_path / "nofinal" / "final").exists()
    assert "## Final test results" not in (tmp_path / "nofinal" / "report.md").read_text()


@pytest.mark.parametrize("args", [["--final-top", "-1"], ["--final-spread", "-2"], ["--final-epochs", "0"],
                                  ["--final-seeds", "0"], ["--final-baselines", "resnet999_cifar"]])
def test_bad_final_stage_options_are_one_line(tmp_path, capsys, args):
    assert main(tiny_args(tmp_path, "bad", *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_search_stage_baselines_train_on_every_core_and_are_timed_at_the_trials_threads(tmp_path):
    """They train alone before any trial starts: at a trial's one thread the other cores sat idle."""
    space = SearchSpace.default(32, "cpu")
    budget = Budget(device="cpu", num_threads=1)
    settings = SearchSettings("s", tmp_path, None, "accuracy", 3, space, budget)
    assert settings.baseline_budget()["num_threads"] == usable_cpus()
    assert settings.baseline_budget()["latency_threads"] == 1 and settings.budget["latency_threads"] is None
    given = SearchSettings("s", tmp_path, None, "accuracy", 3, space, budget, final=FinalSettings(threads=1))
    assert given.baseline_budget()["num_threads"] == 1  # --threads, as in the final stage


def _stopped(study: optuna.Study, config: dict, curve: dict[int, float]) -> None:
    """A search trial successive halving pruned after reporting ``curve`` (step: validation accuracy)."""
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values=curve,
                                              user_attrs={"config": config, "kind": "fractalnet"}))


def test_spread_architectures_come_from_lower_rungs_whole_when_the_top_rung_has_too_few(tmp_path):
    space = SearchSpace.default(32, "cpu")
    study = _ranked_study(space, [0.5, 0.6, 0.7, 0.8])  # 4 top-rung architectures: trials 3, 2, 1, 0 by rank
    configs = [_ranked_study(space, [0.0] * 12).trials[i].user_attrs["config"] for i in range(4, 12)]
    _stopped(study, study.trials[0].user_attrs["config"], {1: 0.2, 3: 0.9})  # a top-rung architecture again: not new
    _stopped(study, configs[0], {1: 0.3, 3: 0.4})  # trial 5, stopped at step 3
    _stopped(study, configs[1], {1: 0.3, 3: 0.45})  # trial 6, stopped at step 3, better there
    _stopped(study, configs[1], {1: 0.35})  # trial 7: trial 6's architecture again, lower rung
    for number, config in enumerate(configs[2:], 8):  # trials 8..13 stopped at step 1
        _stopped(study, config, {1: 0.1 + number / 100})
    assert [t.number for t in search_ranking(study)] == [3, 2, 1, 0, 6, 5, 13, 12, 11, 10, 9, 8]
    assert [t.number for t in spread_architectures(study, 3, 1)] == [0]  # the top rung still has one
    assert [t.number for t in spread_architectures(study, 3, 2)] == [0, 5]  # its rung joins whole: 0, 6, 5
    assert [t.number for t in spread_architectures(study, 3, 3)] == [0, 6, 5]
    assert [t.number for t in spread_architectures(study, 3, 4)] == [0, 13, 11, 8]  # step 1's rung joins: 9 of them
    assert [t.number for t in spread_architectures(study, 3, 20)] == [0, 6, 5, 13, 12, 11, 10, 9, 8]
    settings = SearchSettings("s", tmp_path, None, "accuracy", 14, space, Budget(device="cpu"),
                              final=FinalSettings(top=3, spread=3, baselines=()))
    top, second = settings.budget.rungs.images[-1], settings.budget.rungs.images[1]  # the rung of step 3
    jobs = plan(settings, study)
    assert [(j.trial, j.search_val_acc, j.search_images) for j in jobs] == [
        (3, 0.8, top), (2, 0.7, top), (1, 0.6, top), (0, 0.5, top), (6, 0.45, second), (5, 0.4, second)]
