"""Rank fidelity of the one-shot supernet against training alone (``run.py``, result in ``README.md``)."""
