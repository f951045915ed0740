"""The search strategies: the Optuna and Ray Tune multi-trial backends and the one-shot supernet search."""
