"""The training engine: one loop (``Trainer``) for search trials, baselines, benchmarks and the command line."""

from fractal_space.engine.checkpoint import CheckpointError
from fractal_space.engine.config import TrainConfig
from fractal_space.engine.trainer import (
    ColumnReport,
    EpochReport,
    EvalReport,
    Trainer,
    TrainingDiverged,
    amp_dtype,
    lr_factor,
    precision,
    train,
)

__all__ = ["CheckpointError", "ColumnReport", "EpochReport", "EvalReport", "TrainConfig", "Trainer", "TrainingDiverged",
           "amp_dtype", "lr_factor", "precision", "train"]
