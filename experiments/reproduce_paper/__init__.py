"""FractalNet's two central claims at CPU scale (``run.py``, result in ``README.md``)."""
