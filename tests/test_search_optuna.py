"""The Optuna backend end to end on real CIFAR-10 subsets and real storages (tiny budgets)."""

import json
import multiprocessing
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState
from search_cli import dashboard_json, finished, load_study, run_search, trials_table

from fractal_space.core.recipes import DEFAULT_RECIPE, PRESETS
from fractal_space.search.cli import main
from fractal_space.search.results.table import FIXED_SCHEMA


def test_search_with_baseline_writes_parquet_report_and_resumes(tmp_path, capsys):
    assert run_search(tmp_path, "e2e", "--trials", "2", "--baselines", "resnet20_cifar", rungs=2) == 0
    out = capsys.readouterr().out
    study_dir = tmp_path / "e2e"
    assert f"report: {study_dir / 'report.md'}" in out

    table = pq.read_table(study_dir / "trials.parquet")
    for field in FIXED_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    params = {"param_num_blocks", "param_num_columns", "param_width_growth", "param_join", "param_drop_path_rate",
              "param_global_drop_fraction", "param_dropout_scale", "param_lr", "param_weight_decay"}
    assert params <= set(table.column_names)

    df = trials_table(tmp_path, "e2e")  # through pandas, as users read it
    for column in ("num_columns", "param_num_blocks", "param_num_columns", "params", "epochs_run"):
        assert str(df[column].dtype) == "Int64", column  # nullable ints stay ints although baseline rows are null
    base = df[df.kind == "baseline"]
    assert list(base.model) == ["resnet20_cifar"] and list(base.state) == ["COMPLETE"]
    assert list(base.train_threads) == list(base.latency_threads) == [1]  # --threads 1 holds for baselines too
    frac = df[df.kind == "fractalnet"]
    assert len(frac) == 2 and set(frac.state) <= {"COMPLETE", "PRUNED"}
    done = frac[frac.state == "COMPLETE"]
    assert len(done) >= 1
    for row in done.itertuples():
        assert 0.0 <= row.val_acc <= 1.0 and row.params > 0 and row.flops > 0 and row.latency_ms > 0
        config = json.loads(row.config)["model_kwargs"]
        assert len(row.column_val_acc) == len(row.column_latency_ms) == config["num_columns"] == row.num_columns
        assert len(row.val_acc_history) == row.epochs_run == 3 and row.duration_s > 0
        assert row.train_threads == row.latency_threads == 1
    reference = load_study(tmp_path, "e2e").trials[1]  # trial 0 is the baseline, trial 1 the reference point
    assert reference.user_attrs.get("reference") and reference.params["lr"] == PRESETS[DEFAULT_RECIPE]["lr"]

    report = (study_dir / "report.md").read_text()
    assert "resnet20_cifar" in report and "best FractalNet" in report
    best = done.loc[done.val_acc.idxmax()]
    multi_column = best.num_columns > 1  # a one-column network has no anytime curve and no "best column"
    assert ("its best column alone" in report) == multi_column
    for png in ("history.png", "pareto.png", *(["anytime.png"] if multi_column else [])):
        assert (study_dir / png).stat().st_size > 1000
    assert (study_dir / "anytime.png").exists() == multi_column

    # The same command with a larger --trials resumes: the total is 3, the baseline is not trained again.
    assert run_search(tmp_path, "e2e", "--trials", "3", "--baselines", "resnet20_cifar", rungs=2) == 0
    df2 = trials_table(tmp_path, "e2e")
    assert (df2.kind == "baseline").sum() == 1 and len(finished(load_study(tmp_path, "e2e"))) == 3
    assert df2.set_index("number").loc[done.number, "val_acc"].tolist() == done.val_acc.tolist()


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path):
    """A learning rate of 1e30 makes the loss non-finite: TrainingDiverged -> FAIL with the reason; run completes."""
    space = tmp_path / "diverge.yaml"
    space.write_text("lr: 1.0e+30\nnum_blocks: 2\nnum_columns: 2\nbase_width: 4\nwidth_growth: 1.0\nbatch_size: 25\n")
    assert run_search(tmp_path, "nan", "--trials", "2", "--space", str(space)) == 0
    df = trials_table(tmp_path, "nan")
    assert list(df.state) == ["FAIL", "FAIL"]
    assert all(r.startswith("TrainingDiverged") for r in df.fail_reason)
    assert "## Failed trials" in (tmp_path / "nan" / "report.md").read_text()


def test_multi_objective_accuracy_vs_latency(tmp_path, capsys):
    assert run_search(tmp_path, "multi", "--trials", "2", "--objective", "latency") == 0
    assert "Optuna cannot prune multi-objective studies" in capsys.readouterr().out
    study = load_study(tmp_path, "multi")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    df = trials_table(tmp_path, "multi")
    assert set(df.state) == {"COMPLETE"} and all(len(v) == 2 for v in df["values"])
    assert all(v[1] == lat for v, lat in zip(df["values"], df.latency_ms, strict=True))
    # the objective is the deployed latency (ONNX Runtime), eager PyTorch's is its own column
    assert set(df.latency_runtime) == {"onnxruntime-cpu"} and (df.latency_ms > 0).all()
    assert (df.eager_latency_ms > 0).all() and (df.latency_ms != df.eager_latency_ms).all()
    assert (df.deploy_seconds > 0).all() and (df.deploy_seconds < df.wall_seconds).all()
    assert all(len(c) == len(a) for c, a in zip(df.column_latency_ms, df.column_val_acc, strict=True))
    report = (tmp_path / "multi" / "report.md").read_text()
    assert "Optuna cannot prune multi-objective studies" in report and "Pareto front" in report
    assert "deployed on ONNX Runtime, CPU provider" in report and "eager PyTorch b=1 (ms)" in report
    assert "Ranked by eager PyTorch latency instead, the full networks' Pareto front would" in report
    # each trial contributes its C columns to the accuracy-latency front
    assert "column" in report


def test_two_worker_processes_share_one_journal_with_the_exact_trial_count(tmp_path):
    journal = f"journal:{tmp_path / 'shared.journal'}"
    assert run_search(tmp_path, "workers", "--trials", "4", "--workers", "2", "--storage", journal) == 0
    study = load_study(tmp_path, "workers", storage=journal)
    search = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert len(finished(study)) == 4 and len(search) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in search)
    assert len({t.user_attrs["worker"] for t in search}) == 2  # both processes trained trials


def test_unknown_option_is_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--bogus"])
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: unrecognized arguments: --bogus\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "imagenet42"], "unknown dataset 'imagenet42'"),
    (["--baselines", "resnet999_cifar"], "unknown baseline model 'resnet999_cifar'"),
    (["--backend", "dask"], "unknown backend 'dask'"),
    (["--objective", "speed"], "unknown objective 'speed'"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open storage"),
    (["--storage", "mysql+nodriver://x/y"], "cannot open storage"),
    (["--space", "/nonexistent/space.yaml"], "space file /nonexistent/space.yaml"),
    (["--trials", "0"], "--trials, --workers and --threads must be >= 1"),
    (["--rungs", "0"], "rungs"),  # impossible budgets ...
    (["--val-size", "-1"], "val_size"),
    (["--train-subset", "-3"], "train_subset"),
    (["--gpus-per-trial", "0.5"], "--gpus-per-trial is an option of the Ray backend"),  # ... and misplaced flags
    (["--address", "127.0.0.1:1"], "--address is an option of the Ray backend"),
])
def test_bad_input_is_one_line_and_exits_before_any_trial(tmp_path, capsys, args, message):
    assert run_search(tmp_path, "bad", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()  # nothing written


def _open_after(barrier, url: str) -> None:
    from fractal_space.search.study.storage import open_storage

    barrier.wait()
    open_storage(url, Path("."), heartbeat_s=None)


def test_workers_opening_a_fresh_sqlite_storage_together_all_succeed(tmp_path):
    """Workers that start together on a new database race to create Optuna's schema; none may fail for it.

    Separate processes as in a real search, forked from a server that imported the storage module once (spawning
    each worker re-imported torch, timm and this module: 12 of those took most of this test's minute or more)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fractal_space.search.study.storage", __name__])
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'fresh{round_}.db'}"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_after, args=(barrier, url)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"round {round_}: a worker failed to open {url}"


def test_successive_halving_stops_trials_at_a_rung_and_promoted_ones_continue(tmp_path):
    """Rungs at 1 and 3 epochs of 50 images: a pruned trial stops exactly at rung 0; a promoted one trains on in the
    same run (its epochs are one sequence in one trial folder, not a restart) up to the top rung."""
    assert run_search(tmp_path, "sh", "--trials", "8", rungs=2) == 0
    df = trials_table(tmp_path, "sh")
    pruned, complete = df[df.state == "PRUNED"], df[df.state == "COMPLETE"]
    assert len(pruned) and len(complete)
    assert set(pruned.epochs_run) == {1} and set(complete.epochs_run) == {3}
    assert all(len(h) == 3 for h in complete.val_acc_history) and set(complete.epochs_budget) == {3}
    assert all(row.column_val_acc is not None and len(row.column_val_acc) == row.num_columns
               for row in complete.itertuples())  # the anytime metrics once the budget is spent
    best = load_study(tmp_path, "sh").best_trial
    assert best.intermediate_values.keys() == {1, 2, 3}  # every epoch reported, the last one too
    page = dashboard_json(tmp_path, "sh", "/api/studies/{id}")  # the study page says what a step is, the rungs, why
    assert "one epoch of 50 training images" in page["note"]["body"]
    assert "rung 0 at step 1 (50 images), rung 1 at step 3 (150 images)" in page["note"]["body"]
    reason = "stopped at rung 0 (1 epochs of 50 images) by successive halving"
    stopped = [t for t in page["trials"] if t["state"] == "Pruned"]
    assert len(stopped) == len(pruned)
    for trial in stopped:
        assert {"key": "pruned_reason", "value": reason} in trial["user_attrs"]
        assert trial["note"]["body"].endswith(f"Pruned: {reason}.")
    metrics = (tmp_path / "sh" / "trials" / f"{best.number:05d}" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3]


def test_every_option_has_help_with_its_default_and_choices():
    from fractal_space.search.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its options
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        if action.default not in (None, False):
            assert "default" in parser._get_formatter()._get_help_string(action), action.option_strings  # noqa: SLF001
    assert "{optuna,ray}" in text and "{accuracy,params,flops,latency}" in text and "(default: 200)" in text


def _get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=120) as page:
        assert page.status == 200, url
        return json.loads(page.read())


@pytest.mark.slow
def test_the_dashboard_serves_both_study_pages_until_the_run_ends_and_never_prints_on_the_console(tmp_path):
    """The printed URLs are the study pages of the search and of the final stage. They answer during the final stage,
    with the search process stopped meanwhile (the dashboard is a process of its own); computing importances makes
    Optuna warn ("Some regimes for parameter `join` ..." with 3 trials, one of them C=1), and that warning goes to the
    dashboard's log, not to the search's console. Afterwards the final study holds the retrained model's curve."""
    import re
    import signal
    import urllib.error
    import urllib.request

    import optuna
    import pandas as pd
    from search_cli import spawn_search

    proc = spawn_search(tmp_path, "dash", "--trials", "3", "--final-top", "1", "--final-epochs", "2")
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("final stage: "):  # the final stage's first model, its trial created
            break
    pages = dict(re.findall(r"^Optuna dashboard, (search|final stage): (\S+)", "".join(lines), re.MULTILINE))
    assert set(pages) == {"search", "final stage"}, "".join(lines)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        base, search_id = pages["search"].split("/dashboard/studies/")
        final_id = pages["final stage"].removeprefix(f"{base}/dashboard/studies/")
        with urllib.request.urlopen(pages["search"], timeout=120) as page:
            assert page.status == 200 and b"Optuna Dashboard" in page.read()
        search = _get_json(f"{base}/api/studies/{search_id}")
        final = _get_json(f"{base}/api/studies/{final_id}")
        importances = _get_json(f"{base}/api/studies/{search_id}/param_importances")["param_importances"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    console = "".join(lines) + out
    assert proc.returncode == 0, console
    assert search["name"] == "dash" and "rung 0 at step 1 (100 images)" in search["note"]["body"]
    for trial in search["trials"]:  # each note leads with the architecture and the trial number
        model = {a["key"]: a["value"] for a in trial["user_attrs"]}["model"]
        assert trial["note"]["body"].startswith(f"**{model}** (trial {trial['number']})"), trial["note"]
    assert final["name"] == "dash-final" and len(final["trials"]) == 1 and len(importances[0]) > 0
    name = pd.read_parquet(tmp_path / "dash" / "final" / "results.parquet").name.tolist()
    assert final["trials"][0]["note"]["body"].startswith(f"**{name[0]}** (final stage, trial 0)")
    assert "Some regimes" in (tmp_path / "dash" / "dashboard.log").read_text()  # Optuna warned, in the dashboard
    assert "Some regimes" not in console and "Warning" not in console
    assert f"reopen it with: {Path(sys.executable).parent / 'optuna-dashboard'} sqlite:///" in console
    retrained = optuna.load_study(study_name="dash-final", storage=f"sqlite:///{tmp_path / 'dash' / 'study.db'}")
    assert [t.user_attrs["name"] for t in retrained.trials] == name
    assert retrained.trials[0].intermediate_values.keys() == {1, 2} and retrained.trials[0].value is not None
    try:  # gone; the freed port may already serve another test's search (xdist), never this study
        with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as page:
            assert b'"dash"' not in page.read()
    except urllib.error.URLError:
        pass


def test_the_dashboard_takes_the_next_port_when_its_own_is_bound_but_not_yet_listening(tmp_path):
    """Two searches starting together: the other has bound the port and not yet listened on it. Probing for a
    listener found the port free and the bind then failed (EADDRINUSE), ending the search."""
    import socket
    import urllib.request

    from fractal_space.search.study.storage import open_storage
    from fractal_space.search.study.watch import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening
        port = taken.getsockname()[1]
        with serve(open_storage(None, tmp_path, heartbeat_s=None), tmp_path / "dashboard.log", port) as url:
            assert int(url.rsplit(":", 1)[1]) > port
            with urllib.request.urlopen(f"{url}/api/studies", timeout=30) as page:
                assert page.status == 200


def test_resuming_a_finished_study_says_so_and_trains_nothing(tmp_path, capsys):
    assert run_search(tmp_path, "done", "--trials", "1") == 0
    capsys.readouterr()
    before = load_study(tmp_path, "done").get_trials()
    assert run_search(tmp_path, "done", "--trials", "1") == 0
    out = capsys.readouterr().out
    assert "is already complete (1 finished trials and every baseline); nothing to search" in out
    assert len(load_study(tmp_path, "done").get_trials()) == len(before)  # no new trial
    assert "report: " in out  # the results are still (re)written


def test_random_sampler_is_recorded_and_a_study_resumes_only_with_its_own_sampler(tmp_path, capsys):
    assert run_search(tmp_path, "rand", "--trials", "2", "--sampler", "random") == 0
    study = load_study(tmp_path, "rand")
    assert study.user_attrs["sampler"] == "random" and len(finished(study)) == 2
    assert "- Sampler: random." in (tmp_path / "rand" / "report.md").read_text()
    capsys.readouterr()
    assert run_search(tmp_path, "rand", "--trials", "3", "--sampler", "tpe") == 2
    err = capsys.readouterr().err
    assert err == ("error: study 'rand' was searched with --sampler random, not tpe; resume it with --sampler random "
                   "or pick another --study\n")
    assert len(load_study(tmp_path, "rand").get_trials()) == 2  # nothing ran


def test_samplers_draw_per_trial_from_the_seed_and_random_shares_tpes_start_up_draws():
    """Each trial's draw is seeded by (seed, trial number): a fresh study is reproducible from --seed, and the random
    control draws exactly TPE's start-up configurations, so the two differ only where TPE models the results."""
    import optuna

    from fractal_space.search.space import SearchSpace
    from fractal_space.search.study.lifecycle import make_sampler

    space = SearchSpace.default(32, "cpu")

    def draws(sampler: str, seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed))
        study.optimize(lambda t: float(len(json.dumps(space.suggest(t)))), n_trials=4)
        return [t.params for t in study.trials]

    random0 = draws("random", 0)
    assert random0 == draws("random", 0) == draws("tpe", 0)  # 4 < TPE's 10 start-up trials
    assert random0 != draws("random", 1) and len({json.dumps(p, sort_keys=True) for p in random0}) == 4
    with pytest.raises(ValueError, match="unknown sampler 'nelder-mead'"):
        make_sampler("nelder-mead", 0)


def test_unknown_sampler_is_one_line(tmp_path, capsys):
    assert run_search(tmp_path, "bad", "--sampler", "nelder-mead") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown sampler 'nelder-mead'; expected one of tpe, random, gp, cmaes, qmc")
    assert err.count("\n") == 1
