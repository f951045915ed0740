"""Input pipeline speed: images/s of the batch loader alone vs the train step of ``fractalnet_c3``, in one run.

The loader must keep two CPU cores' worth of training fed without worker processes; this measures how much of a
training step the loader costs. Rounds interleave loader and model (L M L M ...) and medians are reported, so load
from other processes hits both alike.

    python benchmarks/bench_data.py                       # CIFAR-10 from $FRACTAL_SPACE_DATA, 5 rounds
    python benchmarks/bench_data.py --rounds 3 --batches 10 --model resnet20_cifar

Set MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 for stable small-batch CPU timings.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from fractal_space.data import AUGMENTS, BatchLoader, load_splits
from fractal_space.engine import TrainConfig, Trainer


def _loader_rate(loader: BatchLoader, batches: int, epoch: int) -> float:
    loader.set_epoch(epoch)
    start, seen = time.perf_counter(), 0
    for _, y in itertools.islice(loader, batches):
        seen += len(y)
    return seen / (time.perf_counter() - start)


def _train_rate(trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    trainer.model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = trainer.criterion(trainer.model(x), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    return sum(len(y) for _, y in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--model", default="fractalnet_c3")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: all usable CPUs)")
    args = parser.parse_args()

    start = time.perf_counter()
    data = load_splits(args.dataset, download=False)
    print(f"load {args.dataset} (decoded cache): {time.perf_counter() - start:.1f} s, {len(data.train)} train images")
    cfg = TrainConfig(model=args.model, dataset=args.dataset, batch_size=args.batch_size, progress=False,
                      download=False, eval_columns=False, num_threads=args.num_threads)
    trainer = Trainer(cfg)  # the engine's model, optimizer, layout and paper regularisation
    loaders = {a: BatchLoader(data.train, data.norm, args.batch_size, augment=a, shuffle=True,
                              channels_last=cfg.channels_last) for a in AUGMENTS}
    model_batches = list(itertools.islice(loaders["+"], args.batches))
    rates: dict[str, list[float]] = {f"loader {a}": [] for a in AUGMENTS} | {"train step": []}
    for r in range(args.rounds):
        for a, loader in loaders.items():
            rates[f"loader {a}"].append(_loader_rate(loader, args.batches, r))
        rates["train step"].append(_train_rate(trainer, model_batches))
    train_rate = statistics.median(rates["train step"])
    print(f"{args.model} ({trainer.num_params / 1e6:.2f}M params, {trainer.flops / 1e6:.0f} MFLOP/img), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.batches} batches, "
          f"medians:")
    for name, values in rates.items():
        rate = statistics.median(values)
        share = f"  (= {train_rate / rate:.1%} of a train step)" if name != "train step" else ""
        print(f"  {name:12s} {rate:10.0f} img/s  [min {min(values):.0f}, max {max(values):.0f}]{share}")


if __name__ == "__main__":
    main()
