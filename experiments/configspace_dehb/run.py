"""A ConfigSpace-driven optimizer over the FractalNet space: DEHB (Awad et al. 2021) through the project's engine.

    pip install --target /tmp/dehb dehb loguru dask distributed   # DEHB is not a dependency: this check only
    PYTHONPATH=/tmp/dehb python -m experiments.configspace_dehb.run --fevals 8

DEHB samples ``space.to_configspace()`` (the join dimensions conditional on ``num_columns > 1``), asks for each
configuration at a fidelity of 1 or 3 epochs of the lowest rung's images, and each evaluation is
``train_config(space.config(dict(configuration)), budget, epochs=fidelity)``: the training path of
``optuna_objective``, with its schedule over the top rung cut short at the fidelity. The page
(``experiments/configspace_dehb/README.md``) lists every evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.provenance import header
from fractal_space.search import Budget, SearchSpace, train_config

HERE = Path(__file__).resolve().parent


def run(*, fevals: int, seed: int, out_dir: Path, data_dir: str | None = None) -> list[dict[str, Any]]:
    """``fevals`` DEHB evaluations of the CPU default space on a small CIFAR-10 budget; one dict per evaluation."""
    from dehb import DEHB

    space = SearchSpace.default(input_size=32, device="cpu")
    budget = Budget(dataset="cifar10", data_dir=data_dir, rung_images=[300, 900], val_size=300, train_subset=3000,
                    device="cpu", num_threads=1)
    evaluations: list[dict[str, Any]] = []

    def evaluate(configuration: Any, fidelity: float, **_: Any) -> dict[str, Any]:
        config = space.config(dict(configuration))
        start = time.perf_counter()
        record = train_config(config, budget, epochs=int(round(fidelity)))
        evaluations.append({"architecture": config.architecture, "params": config.params,
                            "epochs": record.epoch, "val_acc": record.val_acc,
                            "seconds": round(time.perf_counter() - start, 2)})
        return {"fitness": 1.0 - record.val_acc, "cost": time.perf_counter() - start}

    optimizer = DEHB(f=evaluate, cs=space.to_configspace(seed=seed), min_fidelity=1, max_fidelity=budget.rungs.epochs,
                     eta=budget.rungs.factor, n_workers=1, seed=seed, output_path=str(out_dir))
    optimizer.run(fevals=fevals)
    return evaluations


def write_page(evaluations: list[dict[str, Any]], command: str) -> Path:
    """The result page: what ran, and every evaluation."""
    rows = "\n".join(f"| {i} | `{e['architecture']}` | {e['epochs']} | {e['val_acc']:.3f} | {e['seconds']:.1f} |"
                     for i, e in enumerate(evaluations))
    best = max(evaluations, key=lambda e: (e["epochs"], e["val_acc"]))
    page = HERE / "README.md"
    page.write_text(f"""# DEHB over the FractalNet space

{header(command, resumes=False)}

DEHB 0.1.2 drives `SearchSpace.default(device="cpu").to_configspace()` (ConfigSpace 1.2, the join dimensions
conditional on `num_columns > 1`); every evaluation is `train_config(space.config(dict(configuration)), budget,
epochs=fidelity)` on CIFAR-10 (3,000 training images, 300 validation images, rungs of 300 and 900 images: fidelity 1
or 3 epochs of 300). Each configuration DEHB proposed built and trained; the best at the top fidelity is
`{best['architecture']}` at {best['val_acc']:.3f} validation accuracy.

| # | architecture | epochs | val_acc | seconds |
|---|---|---|---|---|
{rows}

The evaluations as JSON: [evaluations.json](evaluations.json).
""")
    (HERE / "evaluations.json").write_text(json.dumps(evaluations, indent=1) + "\n")
    return page


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.configspace_dehb.run", description=__doc__.split("\n")[0])
    p.add_argument("--fevals", type=int, default=8, help="function evaluations DEHB runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("runs") / "configspace_dehb", help="DEHB's own files")
    p.add_argument("--data-dir", default=None, help="the data root (default: $FRACTAL_SPACE_DATA)")
    args = p.parse_args(argv)
    evaluations = run(fevals=args.fevals, seed=args.seed, out_dir=args.out_dir, data_dir=args.data_dir)
    print(write_page(evaluations, f"python -m experiments.configspace_dehb.run --fevals {args.fevals}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
