"""TPE against random search at equal training images (``run.py``, result in ``README.md``)."""
