"""The shell entry points: the throwaway PostgreSQL server is stopped by whoever started it, and CI runs test.sh."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from search_cli import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
needs_postgres = pytest.mark.skipif(not PG_BIN, reason="Debian's postgresql package is not installed")


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (a postgres server started with -D path)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


def _ready(port: int) -> bool:
    return subprocess.run([str(PG_BIN[-1] / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0


@pytest.fixture
def shared_tmp():
    """A folder under /tmp that the postgres user may enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="fractal_space_test_", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@needs_postgres
def test_postgres_script_starts_quietly_and_stop_leaves_nothing(shared_tmp):
    port, cluster = free_port(), shared_tmp / "cluster"
    env = {**os.environ, "FRACTAL_SPACE_PG_PORT": str(port), "FRACTAL_SPACE_PG_DIR": str(cluster)}
    start = subprocess.run(["bash", "scripts/postgres.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    try:
        assert start.returncode == 0, start.stderr
        assert start.stdout.strip() == f"postgresql://postgres@127.0.0.1:{port}/fractal_space"
        assert start.stderr == ""  # no initdb / pg_ctl chatter at the top of the test log
        assert _ready(port) and _processes_using(cluster)
    finally:
        stop = subprocess.run(["bash", "scripts/postgres.sh", "stop"], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert not _ready(port) and not _processes_using(cluster) and not cluster.exists()


def test_ci_runs_exactly_the_readme_test_command():
    commands = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["bash scripts/test.sh"]
    assert "exec " not in (REPO_ROOT / "scripts" / "test.sh").read_text()  # exec would drop the cleanup trap


@needs_postgres
@pytest.mark.slow
@pytest.mark.parametrize("outcome", ["pass", "fail", "ctrl-c"])
def test_test_sh_stops_the_server_it_started(outcome, shared_tmp):
    started = shared_tmp / "started"
    body = {"pass": "assert True", "fail": "assert False", "ctrl-c": "time.sleep(120)"}[outcome]
    (shared_tmp / "test_tiny.py").write_text(
        f"import os, time\n\n\ndef test_tiny():\n"
        f"    open({str(started)!r}, 'w').write(os.environ['FRACTAL_SPACE_PG_URL'])\n    {body}\n")
    env = {k: v for k, v in os.environ.items() if k != "FRACTAL_SPACE_PG_URL"}
    proc = subprocess.Popen(["bash", "scripts/test.sh", str(shared_tmp / "test_tiny.py"), "-q", "-p",
                             "no:cacheprovider"], cwd=REPO_ROOT, env={**env, "TMPDIR": str(shared_tmp)},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if outcome == "ctrl-c":
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "pytest never started"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode in {"pass": (0,), "fail": (1,), "ctrl-c": (2, 130)}[outcome], out  # 2: pytest's own
    port = int(started.read_text().rsplit(":", 1)[1].split("/")[0])  # the server the tests were given
    assert not _ready(port), out
    assert not list(shared_tmp.glob("fractal_space_pg.*")) and not _processes_using(shared_tmp), out
