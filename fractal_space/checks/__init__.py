"""Acceptance checks run from a checkout with the interpreter they are given: ``python -m fractal_space.checks.gpu``
(the GPU path, or its dry run on CPU)."""
