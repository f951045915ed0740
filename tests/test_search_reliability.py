"""The search's failure modes, each reproduced: kills at any moment, duplicate samples, the reference trial, bad
budgets, Ray flags and clusters, concurrent result writers, orphaned workers, swallowed Ctrl-C, surplus trials."""

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_cli import REPO, finished, free_port, load_study, run_search, spawn_search, tiny_args, trials_table

from fractal_space.search.backends import optuna_backend
from fractal_space.search.cli import build_parser, main, settings_from_args
from fractal_space.search.results.table import write_trials
from fractal_space.search.study import lifecycle
from fractal_space.search.study.runner import SurplusTrial
from fractal_space.search.study.storage import open_storage
from fractal_space.search.trial import stops
from fractal_space.search.trial.stops import ENV as KILL_AT

POINTS = ("trial-running", "trial-tagged", "epoch-recorded", "trial-finished")


def _settings(runs: Path, study: str, *extra: str):
    return settings_from_args(build_parser().parse_args(tiny_args(runs, study, *extra)))


def _configs(study: optuna.Study) -> list[str]:
    """The sampled configuration of every search trial that got one (surplus trials left out)."""
    return [json.dumps(t.params, sort_keys=True) for t in study.get_trials()
            if t.params and t.user_attrs.get("kind") != "baseline" and not t.user_attrs.get("surplus")]


def _assert_healthy(study: optuna.Study, trials: int, before: dict) -> dict:
    """The invariants every resume must restore; returns the counted trials for the next round."""
    counted = {t.number: (t.state, t.values) for t in finished(study)}
    assert len(counted) == trials
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert all(counted[n] == before[n] for n in before), "a finished trial changed"
    configs = _configs(study)
    assert len(configs) == len(set(configs)), f"a configuration was sampled twice: {configs}"
    references = [t for t in finished(study) if t.user_attrs.get("reference")]
    assert len(references) == 1 and references[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    return counted


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_trial_killed_before_its_worker_tagged_it_does_not_hang_the_next_run(tmp_path, storage):
    """A RUNNING trial with no worker tag and no heartbeat is failed, not waited on forever."""
    url = None if storage == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
    study = optuna.create_study(study_name="w", storage=open_storage(url, tmp_path / "w", heartbeat_s=None),
                                direction="maximize")
    study.ask()  # what a worker SIGKILLed right after Optuna marked its trial RUNNING leaves behind
    extra = ("--storage", url) if url else ()
    started = time.monotonic()
    assert run_search(tmp_path, "w", "--trials", "2", *extra) == 0
    assert time.monotonic() - started < 120
    study = load_study(tmp_path, "w", storage=url)
    assert len(finished(study)) == 2 and not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["interrupted"]


def test_two_samplers_with_one_seed_never_draw_the_same_configuration(tmp_path):
    """Every worker and every re-run builds its sampler from --seed; they drew identical configurations."""
    storage = open_storage(None, tmp_path, heartbeat_s=None)
    handles = [lifecycle.create_study("dup", storage, "accuracy", seed=0) for _ in range(2)]

    def objective(trial):
        return trial.suggest_float("x", 0, 1) + trial.suggest_categorical("c", [1, 2, 3])

    for _ in range(12):  # two workers taking turns on one storage, 24 trials in all
        for study in handles:
            study.optimize(objective, n_trials=1)
    configs = [json.dumps(t.params, sort_keys=True) for t in handles[0].get_trials()]
    assert len(set(configs)) == 24
    # ... while one worker on a fresh study is still reproducible from the seed
    again = lifecycle.create_study("dup2", open_storage(None, tmp_path / "b", heartbeat_s=None), "accuracy", seed=0)
    first = lifecycle.create_study("dup3", open_storage(None, tmp_path / "c", heartbeat_s=None), "accuracy", seed=0)
    for study in (again, first):
        study.optimize(objective, n_trials=5)
    assert [t.params for t in again.trials] == [t.params for t in first.trials]


@pytest.mark.slow
def test_two_workers_and_a_resume_sample_distinct_configurations(tmp_path):
    journal = f"journal:{tmp_path / 'shared.journal'}"
    assert run_search(tmp_path, "distinct", "--trials", "4", "--workers", "2", "--storage", journal) == 0
    assert run_search(tmp_path, "distinct", "--trials", "6", "--storage", journal) == 0  # a resume, one worker
    study = load_study(tmp_path, "distinct", storage=journal)
    configs = _configs(study)
    assert len(finished(study)) == 6 and len(configs) == len(set(configs)) >= 6


def test_an_interrupted_reference_trial_is_queued_again_and_a_second_queueing_is_surplus(tmp_path):
    settings = _settings(tmp_path, "ref", "--trials", "2")
    study = lifecycle.load(settings)
    lifecycle.enqueue_reference(study, settings)
    trial = study.ask()  # the reference trial, then Ctrl-C
    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("fail_reason", "interrupted: KeyboardInterrupt")
    study.tell(trial, state=TrialState.FAIL)
    lifecycle.enqueue_reference(study, settings)  # two invocations starting together both queue it
    study.enqueue_trial(settings.space.reference_point(), user_attrs={"reference": True})
    assert run_search(tmp_path, "ref", "--trials", "2") == 0
    study = load_study(tmp_path, "ref")
    references = [t for t in study.get_trials() if t.user_attrs.get("reference")]
    counted = [t for t in references if t in finished(study)]
    assert len(counted) == 1 and counted[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    surplus = [t for t in references if t.user_attrs.get("surplus")]
    assert len(surplus) == 1 and surplus[0].user_attrs["fail_reason"].startswith("surplus: the reference point")
    assert len(finished(study)) == 2


def test_gpus_per_trial_without_a_gpu_is_one_line_not_a_hang(tmp_path):
    proc = spawn_search(tmp_path, "gpu", "--backend", "ray", "--gpus-per-trial", "0.5")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "error: --gpus-per-trial 0.5: the Ray cluster has 0 GPU(s)" in out
    assert not (tmp_path / "gpu").exists()


def _without_ray_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **extra}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A cluster as `ray start --head` makes it for a user who has a Ray token: with token authentication. Yields
    its address and the home folder holding its token.

    `ray start --head` turns authentication on only when a token is already saved (~/.ray/auth_token), so the head
    gets a home of its own with a token generated there: in a fresh CI machine the user's home may hold none yet (one
    appears once any test has started a local Ray), and the tokenless join then succeeded and ran a whole search.
    Its port is one the OS says is free (a fixed guess could be a port of the other test worker's Ray, whose ports are
    random: the join tests would then talk to a cluster that goes away under them), and the tests start only once its
    GCS listens there."""
    port = free_port()
    home = tmp_path_factory.mktemp("ray_head")
    env = _without_ray_env(HOME=str(home))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    log = home / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                                 "--include-dashboard=false", "--disable-usage-stats"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail(f"ray start --head on port {port} did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"127.0.0.1:{port}", home
    os.killpg(head.pid, signal.SIGKILL)  # the whole cluster (its own session); SIGTERM drains for 30 s
    head.wait(30)


@pytest.mark.slow
@pytest.mark.xdist_group("ray_head")  # one cluster for both
def test_joining_a_plain_ray_start_cluster_works_with_its_defaults(ray_head, tmp_path):
    """No RAY_* variable set, as after a plain `ray start --head`: the CLI's connect joins with the saved token."""
    address, home = ray_head
    code = ("from pathlib import Path; from fractal_space.search.backends import ray_backend; "
            "from fractal_space.search.cli import build_parser, settings_from_args; from search_cli import tiny_args; "
            f"s = settings_from_args(build_parser().parse_args(tiny_args(Path({str(tmp_path)!r}), 'join', "
            f"'--backend', 'ray', '--address', {address!r}))); print(ray_backend.connect(s)); "
            "import ray; ray.shutdown()")
    joined = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO / "tests", env=_without_ray_env(HOME=str(home)))
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert f":{address.rsplit(':', 1)[1]}'" in joined.stdout  # connect returned the joined cluster's address


@pytest.mark.slow
@pytest.mark.xdist_group("ray_head")  # one cluster for both
def test_joining_without_the_cluster_token_is_one_line_saying_what_to_set(ray_head, tmp_path):
    address, _ = ray_head
    # one trial: a join that wrongly succeeds ends soon and fails the assertions instead of outliving the timeout
    args = tiny_args(tmp_path, "tokenless", "--trials", "1", "--backend", "ray", "--address", address)
    proc = subprocess.run([sys.executable, str(REPO / "search" / "run.py"), *args],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          # Ray retries a refused join once a second for 20 s by default; 2 tries say the same
                          env=_without_ray_env(HOME=str(tmp_path), RAY_gcs_server_port_wait_time_s="2"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "RAY_AUTH_MODE=token" in errors[0] and address in errors[0]
    assert not (tmp_path / "tokenless" / "study.db").exists()


def test_joining_an_address_nothing_listens_at_is_one_line_at_once(tmp_path):
    """Ray itself retries such an address for about 14 minutes (20 tries of ~40 s) before it gives up."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, str(REPO / "search" / "run.py"),
                           *tiny_args(tmp_path, "nowhere", "--backend", "ray", "--address", address)],
                          capture_output=True, text=True, timeout=90, cwd=REPO, env=_without_ray_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"error: --address {address}: nothing listens there (Connection refused)"]
    assert not (tmp_path / "nowhere").exists()


def _write_many(db: str, out: str, times: int) -> None:
    study = optuna.load_study(study_name="w", storage=db)
    for _ in range(times):
        write_trials(study, Path(out))


def test_concurrent_writers_of_trials_parquet_lose_no_write(tmp_path):
    db = f"sqlite:///{tmp_path / 'w.db'}"
    study = optuna.create_study(study_name="w", storage=db, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    ctx = multiprocessing.get_context("fork")  # the writers need no fresh interpreter, only their own process
    procs = [ctx.Process(target=_write_many, args=(db, str(tmp_path / "trials.parquet"), 30)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert not list(tmp_path.glob(".trials.parquet.*"))


def _children(pid: int) -> dict[int, str]:
    """``pid``'s child processes and their command lines (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = cmdline
    return found


def _worker_children(pid: int) -> list[int]:
    """Process ids of the search workers of main process ``pid``: the children of its multiprocessing forkserver."""
    servers = [child for child, cmdline in _children(pid).items() if "forkserver" in cmdline]
    return [worker for server in servers for worker in _children(server)]


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killing_the_main_process_takes_its_workers_with_it_and_the_next_run_writes_the_results(tmp_path):
    proc = spawn_search(tmp_path, "orphans", "--trials", "3", "--workers", "2", rungs=2)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _worker_children(proc.pid)
        time.sleep(0.5)
    assert len(workers) == 2
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)  # the workers share its stdout: it closes when the last of them has gone
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _running(w)], "workers outlived their parent"
    assert run_search(tmp_path, "orphans", "--trials", "3", rungs=2) == 0
    assert len(finished(load_study(tmp_path, "orphans"))) == 3
    assert (tmp_path / "orphans" / "trials.parquet").exists() and (tmp_path / "orphans" / "report.md").exists()


def test_a_swallowed_ctrl_c_still_stops_the_worker_before_its_next_trial(tmp_path):
    settings = _settings(tmp_path, "swallowed", "--trials", "3")
    previous = stops.install()
    try:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass  # what an SQLAlchemy or GC callback does with it ("Exception ignored in ...")
        with pytest.raises(KeyboardInterrupt):
            optuna_backend.worker(settings)
    finally:
        stops.restore(previous)
    assert lifecycle.load(settings).get_trials() == []  # no trial was started after Ctrl-C


def test_surplus_trials_say_why_they_exist(tmp_path):
    settings = _settings(tmp_path, "surplus", "--trials", "1")
    study = lifecycle.load(settings)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"kind": "fractalnet"}))
    with pytest.raises(SurplusTrial):
        study.optimize(lifecycle.trial_runner(settings).search, n_trials=1, catch=())
    extra = study.get_trials()[-1]
    assert extra.state == TrialState.FAIL and extra.user_attrs["surplus"]
    assert extra.user_attrs["fail_reason"] == "surplus: 1 trials already finished or running"
    table = write_trials(study, settings.study_dir / "trials.parquet").to_pandas()
    assert extra.number not in set(table.number)  # left out of the results


def _armed_search(armed: str, args: list[str]) -> None:
    """A forked child: the CLI's ``main`` armed to SIGKILL itself at ``armed`` (what ``search/run.py`` runs, without
    the 6 s a fresh interpreter spends importing torch, timm and torchvision)."""
    os.environ[KILL_AT] = armed
    sys.exit(main(args))


def _fault_injection(tmp_path: Path, kills: int, seed: int) -> None:
    """SIGKILL a search at random points of the trial life cycle, resume, and check the invariants every time."""
    rng = random.Random(seed)
    counted: dict = {}
    trials = 1
    points = [POINTS[i % len(POINTS)] for i in range(kills)]
    rng.shuffle(points)
    fork = multiprocessing.get_context("fork")
    for round_, point in enumerate(points):
        trials += 1
        armed = f"{point}:{rng.randint(1, 2)}"
        proc = fork.Process(target=_armed_search, args=(armed, tiny_args(tmp_path, "faults", "--trials", str(trials),
                                                                          "--seed", str(seed))))
        proc.start()
        proc.join(timeout=300)
        if proc.exitcode is None:  # hung: leave no process behind
            proc.kill()
            proc.join()
        assert proc.exitcode in (0, -signal.SIGKILL), f"round {round_} ({armed}): exit code {proc.exitcode}"
        assert run_search(tmp_path, "faults", "--trials", str(trials), "--seed", str(seed)) == 0
        counted = _assert_healthy(load_study(tmp_path, "faults"), trials, counted)
    df = trials_table(tmp_path, "faults")
    assert "RUNNING" not in set(df.state)


@pytest.mark.slow
def test_fault_injection_kills_at_every_point_of_the_trial_life_cycle(tmp_path):
    _fault_injection(tmp_path, kills=len(POINTS), seed=1)  # each point once; the slow test below repeats them


@pytest.mark.slow
def test_fault_injection_long_run(tmp_path):
    _fault_injection(tmp_path, kills=24, seed=2)
