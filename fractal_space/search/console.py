"""What a search prints: Optuna kept quiet (failed trials are one line with their reason), one progress bar."""

from __future__ import annotations

import warnings

import optuna
from tqdm import tqdm


def quiet_optuna() -> None:
    """Failed trials are logged once, as one line with their reason, not as Optuna's traceback."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Progress:
    """A bar of finished trials out of ``total``; ``update(finished)`` may be called from any backend's hook."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled)

    def update(self, finished: int) -> None:
        self.bar.n = min(finished, self.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
