"""Reliability: SIGKILL and Ctrl-C lose no finished trial, re-running resumes to the exact count; PostgreSQL."""

import os
import signal
import subprocess
import time

import pytest
from optuna.trial import TrialState
from search_cli import REPO, finished, load_study, run_search, spawn_search, trials_table


def _wait_for(proc, runs, study, n_finished, timeout=150.0):
    """Wait until the child has ``n_finished`` counted trials and is training the next one.

    Training means the objective has started and tagged the trial with its worker: Optuna creates the RUNNING trial
    a moment earlier, and a worker killed in that moment leaves it to the RDB heartbeat, not to the local reaper.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if (runs / study / "study.db").exists():
            try:
                s = load_study(runs, study)
            except KeyError:  # study not created yet
                time.sleep(0.5)
                continue
            running = [t for t in s.get_trials() if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            if len(finished(s)) >= n_finished and running:
                return s
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {n_finished} finished trials within {timeout}s: {proc.stdout.read()}")


def test_sigkill_then_resume_loses_no_finished_trial(tmp_path):
    proc = spawn_search(tmp_path, "killed", "--trials", "2", rungs=2)
    study = _wait_for(proc, tmp_path, "killed", 1)
    before = {t.number: (t.state, t.values) for t in finished(study)}
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)

    assert run_search(tmp_path, "killed", "--trials", "2", rungs=2) == 0
    study = load_study(tmp_path, "killed")
    after = {t.number: (t.state, t.values) for t in finished(study)}
    assert len(after) == 2 and all(after[n] == before[n] for n in before)
    killed = [t for t in study.get_trials() if t.user_attrs.get("fail_reason") == "interrupted: worker process died"]
    assert len(killed) <= 1 and all(t.state == TrialState.FAIL for t in killed)  # reaped, not left RUNNING
    df = trials_table(tmp_path, "killed")
    assert "RUNNING" not in set(df.state) and len(df) == 2 + len(killed)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_leaves_the_storage_consistent(tmp_path):
    proc = spawn_search(tmp_path, "ctrl-c", "--trials", "3", rungs=2)
    _wait_for(proc, tmp_path, "ctrl-c", 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out and "report so far" in out
    study = load_study(tmp_path, "ctrl-c")
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
    assert len(interrupted) <= 1 and all(t.state == TrialState.FAIL for t in interrupted)  # 0 if between trials
    assert run_search(tmp_path, "ctrl-c", "--trials", "3", rungs=2) == 0
    assert len(finished(load_study(tmp_path, "ctrl-c"))) == 3


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server: scripts/test.sh exports its URL; otherwise start it with scripts/postgres.sh."""
    url = os.environ.get("FRACTAL_SPACE_PG_URL")
    if not url:
        done = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh")], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"scripts/postgres.sh failed: {done.stderr.strip()[-500:]}")
        url = done.stdout.strip().splitlines()[-1]
    return url


@pytest.mark.postgres
def test_search_against_a_real_postgresql(tmp_path, postgres_url):
    study = f"pg-{os.getpid()}-{time.time_ns()}"
    assert run_search(tmp_path, study, "--trials", "2", "--storage", postgres_url) == 0
    stored = load_study(tmp_path, study, storage=postgres_url)
    assert len(finished(stored)) == 2
    assert len(trials_table(tmp_path, study)) == 2
