"""``python -m fractal_space.search``: the same command line as ``search/run.py``."""

from fractal_space.search.cli import main

raise SystemExit(main())
