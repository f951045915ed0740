"""One-shot against multi-trial search at equal compute (``run.py``, result in ``README.md``)."""
