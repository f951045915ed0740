"""Can the one-shot search be trusted? Rank fidelity of supernet scores against stand-alone training; records each
run's data beside this script (README.md says what the recorded runs found).

Following Ning et al. 2020 ("A Surgery of the Neural Architecture Evaluators"), the question is how well the
weight-sharing evaluator ranks architectures, measured as Kendall's tau between each sub-fractal's one-shot validation
accuracy (its weights inherited from a supernet, batch norm re-estimated through it) and its validation accuracy when
trained alone from scratch, with a 90% bootstrap interval, and which choices raise it:

- supernet sampling: ``uniform+dp`` (what ``--strategy oneshot`` trains: a uniform column subset per block and batch,
  the paper's drop-path 0.15 / 50% global inside it), ``uniform`` (subsets alone, SPOS-style single draws), and
  ``local-dp`` (no subsets: the paper's local drop-path alone, p = 0.15, no global);
- batch-norm re-estimation batches before scoring: 0 (the supernet's all-paths statistics), 1 and 10.

The sub-fractals are chosen to span the one-shot ranking: ``--sample`` distinct random sub-fractals are scored on the
``uniform+dp`` supernet and ``--n`` of them taken evenly by rank (best and worst included). Each is then trained alone
at the scale's stand-alone budget with the same recipe. The report also says whether the one-shot pick is the
stand-alone best of those, and the wall times.

Scale (``--scale``): ``small`` (default) is B=3, C=3 (7^3 = 343 sub-fractals), widths 16-32-32, stand-alone at 10,500
images (the CPU search's second rung), supernets at 31,500. ``medium`` is the default search space (B=5, C=4, 15^5
sub-fractals, the reference widths 16-32-64-128-128), stand-alone at 31,500 images (the third rung), the supernet at
315,000: about 1.5 h on 2 idle cores with ``--variants uniform+dp``. ``cpu`` is the CPU default's scale:
stand-alone at the top rung's 94,500 images, the supernet at the budget ``--strategy oneshot`` gives it on the CPU
default (the multi-trial search's compute: 318,093 images, ``oneshot.supernet_images``), which is medium's supernet,
so the two scales share their supernets (``Scale.supernets``) and ``cpu`` adds only the 15 longer stand-alone
trainings (about 2 h on 2 cores).

A run named ``--name`` (default: its scale) records its data in ``<data-dir>/<name>.json`` (default data dir: this
experiment's folder; ``smoke``: the run folder), the record a sharing scale or ``--rescore`` reads, and writes its
full report to ``<out-dir>/<scale>/<name>.md``.

    python -m experiments.oneshot_fidelity.run                 # small scale, resumable: re-run to continue
    python -m experiments.oneshot_fidelity.run --scale medium --variants uniform+dp
    python -m experiments.oneshot_fidelity.run --scale cpu --rescore --variants uniform+dp uniform+dp+warmup \
        --bn 10 --name warmup           # new supernets against the recorded stand-alone side

Everything trains through the engine into ``<out-dir>`` (checkpointed runs; each one-shot score a unit of
``<out-dir>/<scale>/ledger.json``, ``experiments/ledger.py``), so a re-run resumes and only rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ledger import Ledger
from experiments.provenance import header
from fractal_space.core.files import display_path, write_atomic
from fractal_space.core.hardware import describe
from fractal_space.engine import TrainConfig, Trainer
from fractal_space.search.backends.oneshot import parse_label, subset_labels
from fractal_space.search.results.fidelity import bootstrap_interval, kendall_tau, spearman

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = dict(model="fractalnet_c3", recipe="paper", regularization="none", schedule="cosine", batch_size=100, lr=0.02,
              weight_decay=0.0, val_size=2000, eval_columns=False, progress=False, augment="+")
VARIANTS = {
    "uniform+dp": dict(supernet_sampling="uniform", drop_path_rate=0.15, global_drop_fraction=0.5),
    "uniform": dict(supernet_sampling="uniform", drop_path_rate=0.0, global_drop_fraction=0.0),
    "local-dp": dict(supernet_sampling="none", drop_path_rate=0.15, global_drop_fraction=0.0),
    # uniform+dp with the local drop-path rate ramped up from 0 over the first half of training (the space's most)
    "uniform+dp+warmup": dict(supernet_sampling="uniform", drop_path_rate=0.15, global_drop_fraction=0.5,
                              drop_path_warmup=0.5),
}
TRAIN_FIELDS = ("supernet_sampling", "drop_path_warmup")  # what a variant sets in TrainConfig, not the model
BN_CHOICES = (0, 1, 10)


@dataclass(frozen=True)
class Scale:
    num_blocks: int
    num_columns: int
    widths: tuple[int, ...]
    epoch_images: int
    standalone_epochs: int
    supernet_epochs: int
    rung: str  # which rung of the CPU search the stand-alone budget is
    supernets: str | None = None  # the scale whose supernets this one shares (same architecture and budget)

    def paths(self, name: str) -> list[list[int]]:
        """The kept columns per block of a sub-fractal named like ``3-1-123-12-1``."""
        return [parse_label(p, self.num_columns) for p in name.split("-")]

    def kwargs(self, **extra: Any) -> dict[str, Any]:
        return dict(num_blocks=self.num_blocks, num_columns=self.num_columns, widths=list(self.widths),
                    block_dropout=[0.0] * self.num_blocks, **extra)


SCALES = {
    "small": Scale(3, 3, (16, 32, 32), 3_500, 3, 9, "the CPU search's second rung"),
    "medium": Scale(5, 4, (16, 32, 64, 128, 128), 3_500, 9, 90, "the CPU search's third rung"),
    "cpu": Scale(5, 4, (16, 32, 64, 128, 128), 3_500, 27, 90, "the CPU search's top rung", supernets="medium"),
    "smoke": Scale(2, 2, (4, 4), 200, 1, 2, "a smoke test"),  # the script end to end in a minute; no result
}


def _config(scale: Scale, out: Path, epochs: int, model_kwargs: dict[str, Any], **train: Any) -> TrainConfig:
    return TrainConfig(**RECIPE, epochs=epochs, epoch_images=scale.epoch_images, model_kwargs=model_kwargs,
                       out_dir=str(out), **train)


def variant_settings(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sampling variant's model keywords and its TrainConfig fields."""
    model = dict(VARIANTS[variant])
    return model, {name: model.pop(name) for name in TRAIN_FIELDS if name in model}


def supernet(scale: Scale, out: Path, variant: str, threads: int, load: list[float]) -> Trainer:
    """Train (or resume, or load) one supernet variant, sampling the load average into ``load`` once an epoch;
    ``out`` is the scale's folder, and a scale that shares another's supernets finds them beside it."""
    model, train = variant_settings(variant)
    home = out.parent / scale.supernets if scale.supernets else out
    trainer = Trainer(_config(scale, home / f"supernet-{variant}", scale.supernet_epochs, scale.kwargs(**model),
                              num_threads=threads, **train))
    for report in trainer.epochs():
        load.append(os.getloadavg()[0])
        print(f"supernet {variant}: epoch {report.epoch}/{scale.supernet_epochs} val_acc {report.val_acc:.3f}",
              flush=True)
    return trainer


def label(paths: list[list[int]]) -> str:
    return "-".join("".join(str(c) for c in cols) for cols in paths)


def score(trainer: Trainer, paths: list[list[int]], bn: int) -> tuple[float, float]:
    """One-shot validation accuracy of ``paths`` on a supernet, after ``bn`` batch-norm re-estimation batches;
    and the seconds it took."""
    started = time.perf_counter()
    batches = trainer.bn_inputs()[:bn] if bn else None
    sub = trainer.model.extract_paths(paths, bn_batches=batches).eval()
    return trainer.accuracy(sub, "val")[1], time.perf_counter() - started


def standalone(args: tuple[Scale, str, str]) -> dict[str, Any]:
    """Train one sub-fractal alone from scratch (its own engine run, resumable); its validation and test accuracy."""
    scale, out, name = args
    paths = scale.paths(name)
    model, _ = variant_settings("uniform+dp")  # its drop-path inside the kept columns; no subsets, no warm-up
    trainer = Trainer(_config(scale, Path(out) / "standalone" / name, scale.standalone_epochs,
                              scale.kwargs(paths=paths, **model), num_threads=1))
    for _ in trainer.epochs():
        pass
    test = trainer.test()
    return {"name": name, "val_acc": trainer.history[-1].val_acc, "test_acc": test.acc, "params": trainer.num_params,
            "seconds": sum(r.epoch_seconds for r in trainer.history)}


def recorded(scale: Scale, out: Path, data_dir: Path) -> dict[str, Any] | None:
    """The one-shot side (sub-fractals chosen, their scores, supernet seconds) that the scale whose supernets this one
    shares recorded in ``data_dir``, when those supernets are not on this machine: the stand-alone trainings then
    run against the recorded scores instead of retraining the supernet (an hour on 2 cores)."""
    if not scale.supernets or (out.parent / scale.supernets / "supernet-uniform+dp").exists():
        return None
    path = data_dir / f"{scale.supernets}.json"
    return json.loads(path.read_text()) if path.exists() else None


def cached_scores(ledger: Ledger) -> dict[str, Any]:
    """The scores ``ledger`` holds, as the report reads them: ``{key: {sub-fractal: accuracy}}`` for each key
    (``rank``, ``<variant>/bn<n>``), ``score_seconds`` (every timed score) and ``load`` (every invocation's samples)."""
    scores: dict[str, Any] = {"score_seconds": []}
    for unit, record in ledger.units().items():
        key, name = unit.rsplit("/", 1)
        scores.setdefault(key, {})[name] = record["acc"]
        if "seconds" in record:
            scores["score_seconds"].append(record["seconds"])
    scores["load"] = [sample for invocation in ledger.invocations() for sample in invocation["load"]]
    return scores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.oneshot_fidelity.run", description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small", choices=sorted(SCALES))
    p.add_argument("--out-dir", default=str(REPO / "runs" / "oneshot-fidelity"))
    p.add_argument("--sample", type=int, default=60, help="random sub-fractals scored on the main supernet")
    p.add_argument("--n", type=int, default=15, help="of them, spanning the ranking, trained alone")
    p.add_argument("--processes", type=int, default=2,
                   help="stand-alone trainings at once (one thread each); also the main supernet's threads")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="supernet sampling choices to compare (uniform+dp, what --strategy oneshot trains, always)")
    p.add_argument("--bn", type=int, nargs="+", default=list(BN_CHOICES), choices=BN_CHOICES,
                   help="batch-norm re-estimation batches to score with (10, what --strategy oneshot uses, always)")
    p.add_argument("--rescore", action="store_true",
                   help="train only the --variants supernets and score them against the sub-fractals and stand-alone "
                        "results this scale recorded in <data-dir>/<scale>.json (no stand-alone training)")
    p.add_argument("--name", help="this run's record, <data-dir>/<name>.json, and report, <out-dir>/<scale>/<name>.md "
                                  "(default: the scale)")
    p.add_argument("--data-dir", type=Path,
                   help="where runs record their data and read the records of others (default: this experiment's "
                        "folder; for --scale smoke, <out-dir>/smoke)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.bn = sorted({*args.bn, 10})
    args.name = args.name or args.scale
    scale = SCALES[args.scale]
    variants = ["uniform+dp", *(v for v in args.variants if v != "uniform+dp")]
    load: list[float] = []
    out = Path(args.out_dir) / args.scale
    out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or (out if args.scale == "smoke" else HERE)
    ledger = Ledger(out)
    started, start = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), time.perf_counter()
    source = recorded(scale, out, data_dir) if not args.rescore else None
    rescored = None
    # Recorded scores the report shows but the ledger never holds: a unit in the ledger counts as scored here, so a
    # later --rescore in this folder would skip scoring its own supernet and show the recorded number.
    borrowed: dict[str, Any] = {}
    if args.rescore:
        rescored = json.loads((data_dir / f"{args.scale}.json").read_text())
        chosen, alone = rescored["chosen"], rescored["standalone"]
        borrowed = {"rank": rescored["scores"]["rank"]}
        nets = {v: supernet(scale, out, v, args.processes, load) for v in variants}
        score_chosen(scale, nets, chosen, args.bn, ledger, load)
        supernet_seconds = trained_seconds(nets)
    elif source:
        print(f"one-shot side recorded by --scale {scale.supernets} ({source['machine']}); training the "
              f"{len(source['chosen'])} sub-fractals alone", flush=True)
        borrowed = source["scores"]
        variants, chosen, supernet_seconds = source["variants"], source["chosen"], source["supernet_seconds"]
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            alone = {}
            for r in pool.imap_unordered(standalone, [(scale, str(out), name) for name in chosen]):
                alone[r["name"]] = r
                load.append(os.getloadavg()[0])
    else:
        chosen, alone, supernet_seconds = one_shot_side(args, scale, out, variants, ledger, load)
    if load:  # it trained or scored something
        ledger.add_invocation(started=started, wall_seconds=time.perf_counter() - start, load=load)
    command = " ".join(["python -m experiments.oneshot_fidelity.run", *argv])
    write_doc(out / f"{args.name}.md", data_dir, command, args, scale, variants, chosen,
              {**cached_scores(ledger), **borrowed}, alone, supernet_seconds, time.perf_counter() - start, source,
              rescored)


def one_shot_side(args: argparse.Namespace, scale: Scale, out: Path, variants: list[str], ledger: Ledger,
                  load: list[float]) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, float]]:
    """Train the supernets, rank ``--sample`` random sub-fractals on the main one and choose ``--n`` spanning that
    ranking, score them on every supernet and BN choice (each score a ledger unit) while the pool trains them alone;
    returns the chosen, their stand-alone results and each supernet's seconds."""
    labels = subset_labels(scale.num_columns)
    space = ["-".join(c) for c in product(labels, repeat=scale.num_blocks)]
    rng = random.Random(0)
    sample = rng.sample(space, min(args.sample, len(space)))
    main_net = supernet(scale, out, "uniform+dp", args.processes, load)
    done = ledger.units()
    ranked = {}
    for name in sample:
        if f"rank/{name}" not in done:
            ledger.complete(f"rank/{name}", {"acc": score(main_net, scale.paths(name), 10)[0]})
            done = ledger.units()
        ranked[name] = done[f"rank/{name}"]["acc"]
    order = sorted(sample, key=lambda n: -ranked[n])
    chosen = [order[round(i * (len(order) - 1) / (args.n - 1))] for i in range(args.n)]

    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        pending = pool.map_async(standalone, [(scale, str(out), name) for name in chosen])
        nets = {"uniform+dp": main_net, **{v: supernet(scale, out, v, 1, load) for v in variants[1:]}}
        score_chosen(scale, nets, chosen, args.bn, ledger, load)
        alone = {r["name"]: r for r in pending.get()}
    return chosen, alone, trained_seconds(nets)


def score_chosen(scale: Scale, nets: dict[str, Trainer], chosen: list[str], bns: list[int], ledger: Ledger,
                 load: list[float]) -> None:
    """Score each chosen sub-fractal on every supernet at every BN choice (each score a ledger unit, once)."""
    done = ledger.units()
    for variant, trainer in nets.items():
        for bn in bns:
            for name in chosen:
                if f"{variant}/bn{bn}/{name}" not in done:
                    acc, seconds = score(trainer, scale.paths(name), bn)
                    ledger.complete(f"{variant}/bn{bn}/{name}", {"acc": acc, "seconds": seconds})
                    load.append(os.getloadavg()[0])


def trained_seconds(nets: dict[str, Trainer]) -> dict[str, float]:
    """Each supernet's training seconds, summed over its epochs."""
    return {v: sum(r.epoch_seconds for r in t.history) for v, t in nets.items()}


def write_doc(doc: Path, data_dir: Path, command: str, args: argparse.Namespace, scale: Scale, variants: list[str],
              chosen: list[str], scores: dict[str, Any], alone: dict[str, dict[str, Any]],
              supernet_seconds: dict[str, float], wall: float, source: dict[str, Any] | None = None,
              rescored: dict[str, Any] | None = None) -> None:
    """The run's report ``doc``, and its record ``<data_dir>/<args.name>.json`` (what a scale that shares this one's
    supernets, or a ``--rescore``, reads). ``source`` is the recorded one-shot side a stand-alone-only run used,
    ``rescored`` the recorded stand-alone side a ``--rescore`` run scored its new supernets against."""
    keys = [f"{v}/bn{bn}" for v, bn in product(variants, BN_CHOICES) if f"{v}/bn{bn}" in scores]
    machine = source["machine"] if source else describe()
    sample = source["sample"] if source else rescored["sample"] if rescored else args.sample
    record = {"machine": machine, "sample": sample, "variants": variants, "chosen": chosen,
              "supernet_seconds": supernet_seconds,
              "scores": {"rank": {n: scores["rank"][n] for n in chosen},
                         **{k: {n: scores[k][n] for n in chosen} for k in keys},
                         "score_seconds": scores.get("score_seconds", [])},
              "standalone": alone, **({"standalone_machine": rescored["machine"]} if rescored else {})}
    write_atomic(data_dir / f"{args.name}.json", json.dumps(record, indent=1))
    y = [alone[n]["val_acc"] for n in chosen]
    rows = []
    for key in keys:
        variant, bn = key.split("/bn")
        x = [scores[key][n] for n in chosen]
        lo, hi = bootstrap_interval(x, y, kendall_tau)
        pick = max(chosen, key=lambda n: scores[key][n])
        rank = 1 + sorted(y, reverse=True).index(alone[pick]["val_acc"])
        rows.append(f"| {variant} | {bn} | {kendall_tau(x, y):.2f} [{lo:.2f}, {hi:.2f}] | {spearman(x, y):.2f} | "
                    f"{np.mean(x):.1%} | `{pick}`: {rank} of {len(chosen)} |")
    best = max(chosen, key=lambda n: alone[n]["val_acc"])
    pick = max(chosen, key=lambda n: scores["uniform+dp/bn10"][n])
    images = scale.epoch_images
    table = "\n".join(
        f"| `{n}` | {scores['rank'][n]:.1%} | {scores['uniform+dp/bn10'][n]:.1%} | {alone[n]['val_acc']:.1%} | "
        f"{alone[n]['test_acc']:.1%} | {alone[n]['params']:,} |" for n in chosen)
    per_score = float(np.median(scores.get("score_seconds", [math.nan])))
    params = [alone[n]["params"] for n in chosen]
    main_x = [scores["uniform+dp/bn10"][n] for n in chosen]
    tau_main, tau_size_alone, tau_size_oneshot = kendall_tau(main_x, y), kendall_tau(params, y), kendall_tau(params,
                                                                                                            main_x)
    gains = [np.mean([scores[f"{v}/bn10"][n] - scores[f"{v}/bn0"][n] for n in chosen]) for v in variants
             if f"{v}/bn0" in scores]
    bn_text = (f"BN re-estimation raises one-shot accuracy by {np.mean(gains) * 100:.1f} points on average (10 batches"
               " against the supernet's all-paths statistics)" if gains else
               "Only the 10-batch scores were recorded for these sub-fractals (the BN comparison is the source run's)")
    verdict = ("**inverted**: the higher the supernet scores a sub-fractal, the worse it tends to train alone"
               if tau_main < 0 else "positive" if tau_main > 0.3 else "weak")
    # Equal compute: the supernet's images buy this many stand-alone trainings; the expected best of that many
    # sub-fractals drawn from the trained ones (without replacement) is what a random multi-trial search would reach.
    k = max(1, min(len(chosen), round(scale.supernet_epochs / scale.standalone_epochs)))
    ranked_alone = sorted(y)  # ascending; P(max of k draws is the i-th smallest) = C(i, k-1) / C(n, k)
    expected_best = sum(math.comb(i, k - 1) * v for i, v in enumerate(ranked_alone)) / math.comb(len(y), k)
    size_note = ("; inherited weights favour the sub-fractals with more paths (each path trained on every batch that"
                 " kept it, a join of several averaging out their errors), while training alone at this budget favours"
                 " the small ones that learn fastest" if tau_size_oneshot > 0.3 and tau_size_alone < 0 else "")
    ning = ("Ning et al. report the same failure mode (weight sharing ranks by what the shared weights favour, not by"
            " stand-alone quality) and correlations that their tricks only partly repair." if tau_main < 0.3 else "")
    load = scores.get("load", [])
    load_text = (f"{np.median(load):.1f} in the median ({min(load):.1f}-{max(load):.1f}, sampled {len(load)} times; the"
                 " script itself keeps about 2 cores busy)" if load else "not recorded")
    provenance = (f"\n\nThe one-shot side (the ranking, the sub-fractals chosen from it, their scores, the supernet's"
                  f" seconds) is what `--scale {scale.supernets}` recorded in"
                  f" `{display_path(data_dir / f'{scale.supernets}.json')}` on"
                  f" {machine}: the supernet was not retrained for this run, only the stand-alone nets."
                  if source else
                  f"\n\nThe sub-fractals (chosen from the ranking column's scores) and their stand-alone results are"
                  f" what this scale recorded in `{display_path(data_dir / f'{args.scale}.json')}` on"
                  f" {rescored['machine']}"
                  f" (`--rescore`): only the supernets were trained and scored for this run, on this machine."
                  if rescored else "")
    elsewhere = f"; recorded by `--scale {scale.supernets}`, not run here" if source else ""
    threads = (f"each on {args.processes} threads, one after the other" if rescored else
               f"the first ran alone on {args.processes} threads, any others on one thread beside the stand-alone"
               " trainings")
    warmup = ("" if "uniform+dp+warmup" in variants else
              "\n- Drop-path warm-up (`drop_path_warmup`) in the supernet was not varied.")
    scope = ("the CPU default's scale" if args.scale == "cpu" else
             "the default search space at a third of the CPU default's stand-alone budget" if args.scale == "medium"
             else "smaller than the CPU default's")
    text = f"""# One-shot search: how far the supernet's ranking can be trusted

{header(command)} Load average while it ran: {load_text}. Anchor: Ning et al. 2020, "A Surgery of
the Neural Architecture Evaluators" (weight-sharing evaluators ranked NAS-Bench-201 architectures with Kendall tau of
roughly 0.5-0.8 after their tricks, far less before).

## Scale: {scope}

The CPU default's scale (`--scale cpu`) is B=5, C=4 (15^5 sub-fractals), each stand-alone net at the multi-trial
search's top rung of 94,500 images, the supernet at the budget `--strategy oneshot` gives it on the CPU default: the
multi-trial search's compute, 318,093 images (`oneshot.supernet_images`; 90 epochs of 3,500 here), which makes it
the medium scale's supernet. This run is **B={scale.num_blocks}, C={scale.num_columns}
({(2 ** scale.num_columns - 1) ** scale.num_blocks} sub-fractals), widths {'-'.join(map(str, scale.widths))}**:
each supernet trained on {scale.supernet_epochs * images:,} CIFAR-10 images, each of the {len(chosen)} sub-fractals
trained alone on {scale.standalone_epochs * images:,} images ({scale.rung}), validation on 2,000
held-out training images, the paper's recipe with a cosine schedule (SGD lr 0.02, batch 100, augmentation +, no block
dropout).
At these budgets accuracies are low and close together, so the correlations
measure the evaluator at a very short training budget, not at convergence.

The {len(chosen)} sub-fractals were chosen to span the one-shot ranking: {sample} distinct random sub-fractals
scored on the `uniform+dp` supernet (10 BN batches), taken evenly by rank, best and worst included.{provenance}

## Rank fidelity: one-shot validation accuracy vs stand-alone validation accuracy (n = {len(chosen)})

| supernet | BN batches | Kendall tau [90% bootstrap] | Spearman | mean one-shot acc | one-shot pick: stand-alone rank |
|---|---|---|---|---|---|
{chr(10).join(rows)}

`uniform+dp` is what `search/run.py --strategy oneshot` trains; `uniform` is subsets alone (SPOS-style); `local-dp`
is the paper's local drop-path alone (no subsets, no global drop-path); `uniform+dp+warmup` is `uniform+dp` with
the local drop-path rate ramped up from 0 over the first half of training (`drop_path_warmup=0.5`, the most the
search space allows); this run compared {', '.join(variants)}.
BN 0 scores each sub-fractal with the supernet's all-paths statistics.

## What this says

At this scale the one-shot ranking is {verdict} (Kendall tau {tau_main:.2f} for what `--strategy oneshot` trains).
Size: Kendall tau between parameter count and one-shot accuracy is {tau_size_oneshot:.2f}, between parameter count and
stand-alone accuracy {tau_size_alone:.2f}{size_note}. {bn_text}; compare the rows above for whether it, or the
sampling choice, moves the correlation beyond the other rows' bootstrap intervals.

**Equal compute, estimated.** One supernet's {scale.supernet_epochs * images:,} images pay for {k} stand-alone
trainings of {scale.standalone_epochs * images:,}. The best of {k} sub-fractals drawn at random from the
{len(chosen)} trained here reaches {expected_best:.1%} validation accuracy in expectation; the one-shot pick
(`uniform+dp`, BN 10) reaches {alone[pick]['val_acc']:.1%} trained alone. This stands in for "the multi-trial search's
best at equal compute" (a random search of {k} trials over this sub-fractal space, no successive halving); the real
comparison, two searches retrained by the final stage, is not part of this script (see
experiments/oneshot_compare/README.md, the CPU default end to end).
{ning}

## The sub-fractals (column sets per block, 1 = shallowest)

| sub-fractal | one-shot (ranking pass) | one-shot (uniform+dp, BN 10) | alone: val | alone: test | params |
|---|---|---|---|---|---|
{table}

Best stand-alone: `{best}` ({alone[best]['val_acc']:.1%} val, {alone[best]['test_acc']:.1%} test). The one-shot pick
(`uniform+dp`, BN 10): `{pick}` ({alone[pick]['val_acc']:.1%} val, {alone[pick]['test_acc']:.1%} test stand-alone).

## Compute (wall seconds)

- Supernets: {', '.join(f'{v} {s:.0f} s' for v, s in supernet_seconds.items())} (training + per-epoch validation;
  {threads}){elsewhere}.
- One-shot score of one sub-fractal (extract, BN re-estimation, 2,000 validation images):
  median {per_score:.1f} s{elsewhere}.
- Stand-alone training: median {np.median([alone[n]['seconds'] for n in chosen]):.0f} s each, \
{sum(alone[n]['seconds'] for n in chosen):.0f} s for all {len(chosen)}{"; recorded, not run here" if rescored else ""}.
- This invocation: {wall / 60:.0f} min (a re-run reuses every finished run and score; the training above is the
  whole cost).

## Not measured here

- **The one-shot best against the multi-trial search's best at equal total compute**, as two real searches over the
  same space at the same compute, each retrained by the final stage, is not part of this script (`search/run.py`
  with `--strategy oneshot` and without it; experiments/oneshot_compare/README.md reports the CPU default's two
  runs); the estimate
  above stands in for it here.{warmup}
"""
    write_atomic(doc, text)
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
