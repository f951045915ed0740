"""Run the FractalNet architecture search: ``python search/run.py --trials 200`` (``--help`` for every option).

Re-running the same command resumes the same study; the report path is printed at the end.
"""

from fractal_space.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
