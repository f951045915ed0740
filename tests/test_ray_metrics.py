"""Per-trial metrics where Ray users look for them: a real Prometheus (Debian's package) scrapes a Ray search's
metrics endpoint, and a PromQL query returns each trial's validation-accuracy series, tagged by study and trial."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from search_cli import free_port, load_study, spawn_search

#: Where Ray writes the Prometheus service-discovery file of its nodes' metrics endpoints.
DISCOVERY = Path("/tmp/ray/prom_metrics_service_discovery.json")


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)["data"]["result"]


@pytest.mark.slow
def test_prometheus_scrapes_the_trials_metrics(tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "needs Debian's prometheus package (apt-get install prometheus)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ray\n    file_sd_configs:\n"
                      f"      - files: ['{DISCOVERY}']\n        refresh_interval: 1s\n")
    server = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    search = spawn_search(tmp_path, "metrics", "--backend", "ray", "--trials", "3", rungs=2)
    series: list[dict] = []
    try:
        while search.poll() is None and not series:
            time.sleep(2)
            try:
                series = _query(port, 'ray_fractal_space_trial_val_acc{study="metrics"}')
            except OSError:
                continue
        out, _ = search.communicate(timeout=600)
        assert search.returncode == 0, out
        series = series or _query(port, 'ray_fractal_space_trial_val_acc{study="metrics"}')
    finally:
        server.terminate()
        server.wait(timeout=30)
        if search.poll() is None:
            search.kill()
    assert series, "no trial series reached Prometheus"
    numbers = {t.number for t in load_study(tmp_path, "metrics").trials}
    for one in series:
        assert one["metric"]["study"] == "metrics" and int(one["metric"]["trial"]) in numbers
        assert 0.0 <= float(one["value"][1]) <= 1.0
    print(json.dumps(series))
