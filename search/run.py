"""Run the FractalNet architecture search: ``python search/run.py --trials 200`` (``--help`` for every option).

Re-running the same command resumes the same study; the report path is printed at the end.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, also when not pip-installed

from fractal_space.search.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
