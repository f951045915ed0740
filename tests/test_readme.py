"""README.md's "Use the space in your own study" snippets, run as written (one process, in order), so the README
cannot drift from the code. Running them trains 10 small networks and starts a Ray cluster (minutes on 2 cores), so
that run is behind the ``slow`` marker; the default suite checks the section's shape."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from fractal_space.data import cache_dir

SECTION = "## Use the space in your own study"


def snippets() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_four_ways_in():
    code = snippets()
    assert len(code) == 4
    for name in ("optuna_objective(space, budget)", "ray_trainable(space, budget)", "space.to_configspace(",
                 "space.config(space.suggest(trial))"):
        assert any(name in block for block in code), name


@pytest.mark.slow
def test_the_readme_snippets_run(data_root, tmp_path):
    checks = ("\nassert len(study.trials) == 4 and all(t.state.name in ('COMPLETE', 'PRUNED') for t in study.trials)"
              "\nassert cfg.create_model(num_classes=10) is not None\nimport ray; ray.shutdown()\nprint('ok')\n")
    env = {**os.environ, "FRACTAL_SPACE_DATA": str(data_root), "FRACTAL_SPACE_CACHE": str(cache_dir()),
           "HOME": str(tmp_path), "RAY_ADDRESS": "local",  # a cluster of its own; Tune writes under ~/ray_results
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
    done = subprocess.run([sys.executable, "-c", "\n".join(snippets()) + checks], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("ok"), done.stderr[-3000:]
