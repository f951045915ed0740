"""The paper's facts in one place: its training recipe and the rules a FractalNet's arguments obey.

Everything that needs the recipe (``TrainConfig`` defaults, the engine's paper preset, the search space's reference
point, the benchmarks) and everything that validates FractalNet arguments (the model, the search-space validator)
reads it from here, so they cannot disagree. Numbers are from Larsson et al., ICLR 2017 (Section 4); where the paper
is silent the choice is named below.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Join types FractalNet implements; the paper's is "mean".
JOINS = ("mean", "sum", "max", "concat")
#: Columns per block the model accepts (C=10 already means 512 convs on the longest path of a block).
MAX_COLUMNS = 10
#: How a FractalNet trained as a one-shot supernet draws its sub-fractal per mini-batch (none: drop-path only).
PATH_SAMPLINGS = ("none", "uniform")


@dataclass(frozen=True)
class Interval:
    """A closed-below interval ``[low, high)`` or ``[low, high]`` that a rate must lie in."""

    low: float
    high: float
    high_closed: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value and (value <= self.high if self.high_closed else value < self.high)

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"


#: Local drop-path rate p: 1 would drop every join input (the model keeps one, but that is no longer drop-path).
DROP_PATH_RATE = Interval(0.0, 1.0)
#: Share of mini-batches with global drop-path: 1 = always one column.
GLOBAL_DROP_FRACTION = Interval(0.0, 1.0, high_closed=True)
#: Per-block dropout probability (1 would zero the block's output).
BLOCK_DROPOUT = Interval(0.0, 1.0)


def check_rate(name: str, value: float, interval: Interval) -> None:
    """Raise a one-line ValueError naming ``name`` when ``value`` is outside ``interval``."""
    if value not in interval:
        raise ValueError(f"{name}={value!r} is outside the allowed range {interval}")


@dataclass(frozen=True)
class PaperRecipe:
    """The paper's CIFAR training recipe (Section 4.1)."""

    lr: float = 0.02
    momentum: float = 0.9
    batch_size: int = 100
    #: Not stated in the paper; none here (re-implementations use 1e-4 or none).
    weight_decay: float = 0.0
    epochs: int = 400
    schedule: str = "paper"  # lr / 10 each time the remaining epochs halve
    augment: str = "+"
    join: str = "mean"
    drop_path_rate: float = 0.15
    global_drop_fraction: float = 0.5
    #: Block i (0-based) gets dropout ``i * dropout_step``: (0, 0.1, 0.2, 0.3, 0.4) for B=5.
    dropout_step: float = 0.1
    init: str = "xavier"

    def block_dropout(self, num_blocks: int) -> tuple[float, ...]:
        """The per-block dropout ramp for ``num_blocks`` blocks."""
        return tuple(round(self.dropout_step * i, 10) for i in range(num_blocks))

    def regularization(self, num_blocks: int) -> dict[str, object]:
        """The FractalNet keyword arguments of the paper's regularisation (drop-path + block dropout)."""
        return {"drop_path_rate": self.drop_path_rate, "global_drop_fraction": self.global_drop_fraction,
                "block_dropout": self.block_dropout(num_blocks)}


PAPER = PaperRecipe()


def paper_block_dropout(num_blocks: int) -> tuple[float, ...]:
    """The paper's per-block dropout schedule (0, 0.1, 0.2, ...), used together with drop-path."""
    return PAPER.block_dropout(num_blocks)
