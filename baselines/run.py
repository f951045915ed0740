"""Train a set of models with one identical recipe; write one comparison table (``--help`` for every option).

    python baselines/run.py --models fractalnet_c3 resnet20_cifar densenet_bc100_cifar --epochs 10

The logic lives in ``fractal_space.engine.compare``; re-running the same command resumes an interrupted comparison.
"""

from fractal_space.engine.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
