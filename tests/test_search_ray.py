"""The Ray Tune backend: a real local Ray (2 CPUs) end to end with the dashboard, and how trials reach Optuna."""

import json
import re
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState
from search_cli import finished, load_study, run_search, spawn_search, tiny_args, trials_table

from fractal_space.search.backends.ray_backend import StudySearch
from fractal_space.search.cli import build_parser, settings_from_args
from fractal_space.search.study.lifecycle import make_sampler
from fractal_space.search.study.storage import open_storage
from fractal_space.search.trial.record import TrialRecord


def _dashboard_get(url: str, path: str) -> dict | str:
    """A GET on the Ray dashboard's REST API, with the cluster's token when it uses token authentication."""
    token = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}
    with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=30) as page:
        body = page.read().decode()
    return json.loads(body) if body.startswith("{") else body


def test_ray_search_end_to_end_with_dashboard(tmp_path):
    """With the random-search control as sampler (TPE through the same searcher: test_asha_stopped_trials...). While it
    runs, Ray's own state API shows each trial actor by its study trial number and architecture, and its log holds
    its epoch lines; afterwards no process the search started is alive."""
    proc = spawn_search(tmp_path, "ray", "--backend", "ray", "--trials", "3", "--sampler", "random", rungs=2)
    urls, lines = {}, []
    deadline = time.monotonic() + 120
    while len(urls) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        for name in ("Ray dashboard: ", "Optuna dashboard, search: "):  # Optuna's too, on the same storage
            if line.startswith(name):
                urls[name] = line.split(": ", 1)[1].split()[0]
    assert len(urls) == 2, "".join(lines)
    url = urls["Ray dashboard: "]
    base, study_id = urls["Optuna dashboard, search: "].split("/dashboard/studies/")
    with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=60) as page:
        assert page.status == 200 and json.loads(page.read())["name"] == "ray"
    started, actors, logs = set(), {}, {}
    while proc.poll() is None:
        started |= {child for child in psutil.Process(proc.pid).children(recursive=True)}
        try:
            listed = _dashboard_get(url, "/api/v0/actors?limit=100&detail=1")["data"]["result"]["result"]
            for actor in listed:
                if actor.get("repr_name", "").startswith("trial "):
                    actors[actor["actor_id"]] = actor["repr_name"]
                    logs[actor["actor_id"]] = _dashboard_get(
                        url, f"/api/v0/logs/file?actor_id={actor['actor_id']}&suffix=out&lines=200")
        except (OSError, KeyError, ValueError):  # the dashboard starts, or has just gone with the search
            pass
        time.sleep(1)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, "".join(lines) + out
    time.sleep(1)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "left running"
    console = "".join(lines) + out  # the bar and the search's own lines only: none of Ray Tune's chatter
    for noise in ("tensorboard", "Configuration for experiment", "INFO", "WARNING", "worker process"):
        assert noise.lower() not in console.lower(), noise
    study = load_study(tmp_path, "ray")
    assert len(finished(study)) == 3 and study.user_attrs["sampler"] == "random"
    assert "- Sampler: random." in (tmp_path / "ray" / "report.md").read_text()
    names = {t.number: f"trial {t.number} {t.user_attrs['model']}" for t in study.trials}
    assert actors and set(actors.values()) <= set(names.values())
    for actor_id, name in actors.items():
        if isinstance(logs.get(actor_id), str) and "epoch" in logs[actor_id]:
            assert re.search(rf"^{re.escape(name)} epoch 1/3 rung 0 val_acc \d\.\d{{3}} \d+\.\d s$", logs[actor_id],
                             flags=re.M), logs[actor_id]
    assert any("epoch 1/3" in log for log in logs.values() if isinstance(log, str))
    df = trials_table(tmp_path, "ray")
    assert set(df.state) <= {"COMPLETE", "PRUNED"} and (df.state == "COMPLETE").any()
    # ASHA on the shared rungs (1 and 3 epochs): stopped trials stop at rung 0, the others reach the top rung
    assert set(df[df.state == "PRUNED"].epochs_run) <= {1} and set(df[df.state == "COMPLETE"].epochs_run) == {3}
    # columns are evaluated, and everything timed deployed, once a trial has spent its budget; a stopped trial has none
    done, stopped = df[df.state == "COMPLETE"], df[df.state == "PRUNED"]
    assert all(len(c) == len(lat) == n for c, lat, n in zip(done.column_val_acc, done.column_latency_ms,
                                                            done.num_columns, strict=True))
    assert set(done.latency_runtime) == {"onnxruntime-cpu"} and all(len(c) == 0 for c in stopped.column_val_acc)
    # the Optuna storage is whole: every epoch on the curve, pruned trials with their value and why, a note each
    for trial in study.trials:
        record = trial.user_attrs["record"]
        assert sorted(trial.intermediate_values) == list(range(1, record["epoch"] + 1))
        assert trial.value == record["val_acc"] and trial.user_attrs["model"]
        assert trial.state != TrialState.PRUNED or trial.user_attrs["pruned_reason"].startswith("stopped at rung 0")
    # Tune's own results, in folders named by the study's trial numbers
    folders = sorted((tmp_path / "ray" / "ray").glob("run-*/trial_*"))
    assert [f.name for f in folders] == [f"trial_{t.number:05d}" for t in study.trials]
    for folder in folders:
        assert (folder / "result.json").read_text().strip() and "val_acc" in (folder / "progress.csv").read_text()


@pytest.mark.slow
def test_the_same_seeds_give_the_same_trials_and_curves_through_ray_and_optuna(tmp_path):
    """Ray's trials are the Optuna backend's: the same params and, where both trained, the same validation curves."""
    ray = spawn_search(tmp_path, "ray", "--backend", "ray", "--trials", "3", "--sampler", "random", rungs=2)
    out, _ = ray.communicate(timeout=600)
    assert ray.returncode == 0, out
    assert run_search(tmp_path, "same", "--trials", "3", "--sampler", "random", rungs=2) == 0
    study, optuna_side = load_study(tmp_path, "ray"), {t.number: t for t in load_study(tmp_path, "same").trials}
    for trial in study.trials:
        other = optuna_side[trial.number]
        assert trial.params == other.params
        common = set(trial.intermediate_values) & set(other.intermediate_values)
        assert common and all(trial.intermediate_values[e] == pytest.approx(other.intermediate_values[e], abs=1e-6)
                              for e in common)


@pytest.fixture(params=["tpe", "random"])
def searcher(tmp_path, request):
    settings = settings_from_args(build_parser().parse_args(tiny_args(tmp_path, "asha", "--sampler", request.param,
                                                                      rungs=2)))
    storage = open_storage(None, settings.study_dir, heartbeat_s=None)
    return StudySearch(settings, storage), settings


def _result(epoch, epochs=3, **extra):
    record = TrialRecord(epoch=epoch, epochs=epochs, val_acc=0.3, val_loss=2.0, train_loss=2.0, train_acc=0.3,
                         latency_ms=1.0, train_images_per_s=100.0, epoch_seconds=1.0, wall_seconds=float(epoch),
                         params=10, flops=100, num_columns=1, column_val_acc=[0.3], column_latency_ms=[1.0],
                         val_acc_history=[0.3] * epoch)
    return {"val_acc": 0.3, "record": json.dumps(record.to_dict()), **extra}


def test_asha_stopped_trials_reach_optuna_as_pruned_and_errors_as_fail(searcher):
    """Stock OptunaSearch tells an ASHA-stopped trial COMPLETE with its partial score; ours tells PRUNED."""
    search, settings = searcher
    assert isinstance(search._sampler, make_sampler(settings.sampler, 0).__class__)  # noqa: SLF001
    for trial_id in ("stopped", "complete", "raised", "crashed"):
        assert "num_blocks" in search.suggest(trial_id)
    search.on_trial_complete("stopped", result=_result(epoch=1))  # ASHA stopped it after epoch 1 of 3
    search.on_trial_complete("complete", result=_result(epoch=3))
    search.on_trial_complete("raised", result=_result(epoch=2, fail_reason="TrainingDiverged: loss became nan"))
    search.on_trial_complete("crashed", error=True)
    trials = load_study(settings.study_dir.parent, "asha").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert trials[1].values == [0.3] and trials[0].user_attrs["record"]["val_acc_history"] == [0.3]
    assert trials[2].user_attrs["fail_reason"].startswith("TrainingDiverged")
    assert "error" in trials[3].user_attrs["fail_reason"]


@pytest.mark.slow
def test_ray_search_killed_with_sigkill_is_restored(tmp_path):
    """SIGKILL the Ray driver mid-search; the same command calls Tuner.restore and ends at the exact count."""
    import os
    import signal

    proc = spawn_search(tmp_path, "ray-kill", "--backend", "ray", "--trials", "3", rungs=2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        db = tmp_path / "ray-kill" / "study.db"
        if db.exists() and list((tmp_path / "ray-kill" / "ray").glob("run-*")):
            try:
                if finished(load_study(tmp_path, "ray-kill")):
                    break
            except KeyError:
                pass
        time.sleep(1)
    before = {t.number: t.values for t in finished(load_study(tmp_path, "ray-kill"))}
    assert before
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)

    again = spawn_search(tmp_path, "ray-kill", "--backend", "ray", "--trials", "3", rungs=2)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "restoring Ray experiment" in out
    after = {t.number: t.values for t in finished(load_study(tmp_path, "ray-kill"))}
    assert len(after) == 3 and all(after[n] == before[n] for n in before)


@pytest.mark.slow
def test_ray_search_ctrl_c_exits_130_and_leaves_nothing_running(tmp_path):
    import signal

    proc = spawn_search(tmp_path, "ray-int", "--backend", "ray", "--trials", "4", rungs=2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            study = load_study(tmp_path, "ray-int") if (tmp_path / "ray-int" / "study.db").exists() else None
            if study and finished(study) and any(t.state == TrialState.RUNNING for t in study.get_trials()):
                break
        except KeyError:  # study not created yet
            pass
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "re-run the same command to resume" in out
    trials = load_study(tmp_path, "ray-int").get_trials()
    assert finished(load_study(tmp_path, "ray-int")) and not [t for t in trials if t.state == TrialState.RUNNING]


def test_gpu_trials_get_the_cores_shared_among_the_trials_the_gpus_fit():
    """Every core for each trial (the old GPU default) let Ray run one quarter-GPU trial at a time."""
    from fractal_space.search.backends.ray_backend import trials_at_once
    from fractal_space.search.cli import gpu_trial_cpus

    assert gpu_trial_cpus(cores=16, gpus_per_trial=0.25, gpus=1) == 4.0
    assert trials_at_once({"CPU": 16.0, "GPU": 1.0}, 4.0, 0.25) == 4
    assert gpu_trial_cpus(16, 1.0, 1) == 16.0 and gpu_trial_cpus(16, 0.5, 2) == 4.0 and gpu_trial_cpus(2, 0.1, 1) == 1
    assert gpu_trial_cpus(16, 0.0, 1) == 1.0  # a CPU-only trial on a GPU machine
    assert trials_at_once({"CPU": 16.0, "GPU": 1.0}, 16.0, 0.25) == 1 and trials_at_once({"CPU": 2.0}, 1.0, 0.0) == 2
