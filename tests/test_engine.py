"""Training engine on small real CIFAR-10 subsets: one-epoch training, metrics, resume, divergence, CLI, columns."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from small_data import tiny_dataset

from fractal_space.core.hardware import native_bf16_flag
from fractal_space.data import Normalize
from fractal_space.engine import (
    EpochReport,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    amp_dtype,
    lr_factor,
    precision,
    train,
)
from fractal_space.engine.cli import build_parser, main
from fractal_space.engine.config import RECIPE_FIELDS, RUN_TIME, recipe_changes, recipe_fields

REPO_ROOT = Path(__file__).resolve().parents[1]
# One thread: on a shared 2-core machine, 2-thread OpenMP regions stall on every small op (measured 88 s vs 16 s for
# this file under load). The paper recipe: these tests check the engine's mechanics at the lr they set, from the first
# step (tests/test_recipe.py covers the recipes).
TINY = dict(model="test_efficientnet", dataset=tiny_dataset(), train_subset=100, val_size=100, batch_size=50,
            progress=False, download=False, num_threads=1, recipe="paper")


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def test_config_roundtrips_json_and_rejects_bad_values():
    cfg = _cfg(model_kwargs={"drop_rate": 0.1}, epochs=3)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="schedule .*'step'"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="augment .*'x'"):
        TrainConfig(augment="x")
    assert set(RECIPE_FIELDS) <= set(cfg.to_dict())


def test_recipe_fields_come_from_field_metadata():
    assert RECIPE_FIELDS == ("model", "model_kwargs", "dataset", "epochs", "epoch_images", "recipe", "batch_size",
                             "lr", "momentum", "nesterov", "weight_decay", "norm_bias_decay", "schedule", "lr_warmup",
                             "label_smoothing", "ema", "regularization", "drop_path_warmup", "supernet_sampling",
                             "augment", "train_subset", "val_size", "val_seed", "seed")
    run_time = dataclasses.field(default="", metadata=RUN_TIME)
    extended = dataclasses.make_dataclass("Extended", [("new_knob", int, 0), ("new_path", str, run_time)],
                                          bases=(TrainConfig,))
    assert recipe_fields(extended) == (*RECIPE_FIELDS, "new_knob")  # a new field guards resume unless marked RUN_TIME


def test_epoch_reports_written_before_the_column_rename_still_load():
    old = {"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "val_loss": 2.1, "val_acc": 0.25, "lr": 0.02,
           "train_images_per_s": 100.0, "epoch_seconds": 3.0, "latency_ms": 1.0,
           "columns": [{"column": 1, "val_acc": 0.2, "latency_ms": 0.5}]}
    report = EpochReport.from_dict(old)
    assert report.columns[0].acc == 0.2 and report.to_dict()["columns"] == [{"column": 1, "acc": 0.2,
                                                                             "latency_ms": 0.5}]


def test_paper_schedule_divides_when_remaining_epochs_halve():
    def at(epoch: int) -> float:
        return lr_factor("paper", epoch / 400)

    assert [at(e) for e in (0, 199, 200, 299, 300, 350, 375, 399)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4])
    assert lr_factor("cosine", 0) == 1 and lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("constant", 0.99) == 1


def test_one_epoch_on_real_subset_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    seen: list[EpochReport] = []
    summary = train(_cfg(epochs=1, out_dir=str(out), schedule="constant"), callbacks=[seen.append])
    assert [r.epoch for r in seen] == [1]
    report = seen[0]
    assert math.isfinite(report.train_loss) and 0 <= report.train_acc <= 1 and 0 <= report.val_acc <= 1
    assert report.lr == pytest.approx(0.02) and report.train_images_per_s > 0 and report.latency_ms > 0
    assert report.columns == []  # not a FractalNet
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [report.to_dict()]
    pointer = json.loads((out / "checkpoint.json").read_text())
    assert pointer["epoch"] == 1
    weights = load_file(out / pointer["weights"])
    assert any(k.endswith("running_mean") for k in weights)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["epochs"] == 1 and 0 <= summary["test_acc"] <= 1 and summary["num_params"] > 0
    assert summary["flops"] > 0
    assert summary["train_seconds"] == pytest.approx(report.epoch_seconds)  # sum of epoch seconds
    assert summary["wall_seconds"] > summary["train_seconds"]  # this invocation, with setup and the test pass


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    recipe = dict(epochs=2, lr=0.05, schedule="constant", augment="none")
    cfg = _cfg(**recipe, out_dir=str(tmp_path / "a"))
    first = Trainer(cfg)
    for report in first.epochs():
        assert report.epoch == 1
        break  # interrupted after epoch 1 (as search pruning does)
    metrics = tmp_path / "a" / "metrics.jsonl"
    with open(metrics, "a") as f:  # an epoch logged but never checkpointed, as after a crash in between
        f.write(json.dumps({**report.to_dict(), "epoch": 2}) + "\n")
    resumed = Trainer(cfg)
    assert resumed.epoch == 1
    assert [r.epoch for r in resumed.epochs()] == [2]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "a").glob("epoch-*")) == [  # the newest epoch and the one before
        f"epoch-000{e}.{ext}" for e in (1, 2) for ext in ("json", "safetensors", "state.safetensors")]
    assert list(Trainer(cfg).epochs()) == []  # already complete: nothing more to train

    straight = Trainer(_cfg(**recipe, out_dir=str(tmp_path / "b")))
    losses = [r.train_loss for r in straight.epochs()]
    assert losses[1] < losses[0]  # it learns from the real images
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_resume_refuses_a_different_recipe(tmp_path):
    list(Trainer(_cfg(epochs=1, train_subset=50, out_dir=str(tmp_path))).epochs())
    with pytest.raises(ValueError, match="lr differ"):
        Trainer(_cfg(epochs=1, train_subset=50, lr=0.1, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="model differ"):  # refused before any weights are loaded
        Trainer(_cfg(epochs=1, train_subset=50, model="test_resnet", out_dir=str(tmp_path)))


def test_a_checkpoint_older_than_a_recipe_field_resumes_as_its_default():
    saved = _cfg().to_dict()
    del saved["drop_path_warmup"]  # written before the field existed: trained without a warm-up
    assert recipe_changes(saved, _cfg()) == []
    assert recipe_changes(saved, _cfg(drop_path_warmup=0.5)) == ["drop_path_warmup"]
    assert recipe_changes({**saved, "num_threads": 7}, _cfg()) == []  # run-time settings may differ


def _training_rates(trainer: Trainer, epochs: int | None = None) -> list[float]:
    """The local drop-path rate each training step ran with (read by a forward pre-hook), for ``epochs`` epochs."""
    rates: list[float] = []
    hook = trainer.model.register_forward_pre_hook(
        lambda model, args: rates.append(model.drop_path_rate) if model.training else None)
    for report in trainer.epochs():
        if report.epoch == epochs:
            break
    hook.remove()
    return rates


def test_drop_path_warmup_ramps_the_local_rate_per_step_and_resumes_mid_ramp(tmp_path):
    recipe = dict(model="fractalnet_c2", model_kwargs={"widths": [4, 4, 4, 4, 4]}, epochs=2, train_subset=200,
                  drop_path_warmup=0.5, eval_columns=False, bn_batches=1)
    trainer = Trainer(_cfg(**recipe))
    straight = _training_rates(trainer)
    steps = 2 * 200 // 50  # 4 steps per epoch, 8 in all: the rate reaches 0.15 at step 4 and stays
    assert straight == pytest.approx([0.15 * min(1.0, s / 4) for s in range(1, steps + 1)])
    assert trainer.model.drop_path_rate == 0.15  # what an export writes: the target

    cfg = _cfg(**recipe, out_dir=str(tmp_path))
    first = _training_rates(Trainer(cfg), epochs=1)  # interrupted after epoch 1, mid-ramp, then resumed
    assert first + _training_rates(Trainer(cfg)) == pytest.approx(straight)


def _sampled_paths(trainer: Trainer, epochs: int | None = None) -> list[list[list[bool]]]:
    """The join inputs each training step kept, per block (read by forward pre-hooks on the blocks)."""
    steps: list[list[list[bool]]] = []

    def record(block, args):
        if block.training:
            if block is trainer.model.blocks[0]:
                steps.append([])
            steps[-1].append(list(args[1]))

    hooks = [block.register_forward_pre_hook(record) for block in trainer.model.blocks]
    for report in trainer.epochs():
        if report.epoch == epochs:
            break
    for hook in hooks:
        hook.remove()
    return steps


def test_supernet_sampling_draws_sub_fractals_per_batch_and_resumes_the_same_draws(tmp_path):
    """One-shot supernet training: a uniform column subset per block and batch, with the paper's drop-path warmed up
    inside it; the draws come from the model's torch.rand, so an interrupted run resumes the same sequence."""
    recipe = dict(model="fractalnet_c3", model_kwargs={"num_blocks": 2, "widths": [4, 4]}, epochs=2, train_subset=200,
                  supernet_sampling="uniform", drop_path_warmup=0.5, eval_columns=False, bn_batches=1)
    trainer = Trainer(_cfg(**recipe))
    assert trainer.model.path_sampling == "uniform"
    straight = _sampled_paths(trainer)
    assert len(straight) == 8 and len({json.dumps(s) for s in straight}) > 1
    assert sum(step != [[True] * len(k) for k in step] for step in straight) >= 6  # mostly sub-fractals

    cfg = _cfg(**recipe, out_dir=str(tmp_path))
    first = Trainer(cfg)
    resumed_paths = _sampled_paths(first, epochs=1)
    resumed = Trainer(cfg)
    assert resumed.model.path_sampling == "uniform"
    assert resumed_paths + _sampled_paths(resumed) == straight
    for (name, a), b in zip(resumed.model.state_dict().items(), trainer.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    with pytest.raises(ValueError, match="supernet_sampling='uniform' needs a model with drop-path"):
        Trainer(_cfg(supernet_sampling="uniform"))
    with pytest.raises(ValueError, match="supernet_sampling must be one of"):
        _cfg(supernet_sampling="spos")


def test_drop_path_warmup_is_refused_for_a_model_without_drop_path():
    with pytest.raises(ValueError, match=r"drop_path_warmup must be in \[0, 1\], got 1.5"):
        _cfg(drop_path_warmup=1.5)
    with pytest.raises(ValueError, match="drop_path_warmup=0.5 needs a model with drop-path.*test_efficientnet"):
        Trainer(_cfg(drop_path_warmup=0.5))


def test_nan_loss_stops_with_a_clear_error_and_keeps_no_garbage(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 1, step \d+"):
        list(Trainer(_cfg(lr=1e30, schedule="constant", out_dir=str(tmp_path))).epochs())
    assert not (tmp_path / "checkpoint.json").exists()


def test_fractalnet_reports_every_column_with_repeatable_bn_estimates():
    cfg = _cfg(model="fractalnet_c2", model_kwargs={"widths": [8, 8, 8, 8, 8]}, epochs=1, bn_batches=2)
    trainer = Trainer(cfg)
    assert trainer.model.drop_path_rate == 0.15  # the paper's regularisation preset
    assert [b.channels_last for b in trainer.model.blocks] == [True] * 5  # CPU: per-block 'auto' layout, all narrow
    (report,) = list(trainer.epochs())
    assert [c.column for c in report.columns] == [1, 2]
    assert all(0 <= c.acc <= 1 and c.latency_ms > 0 for c in report.columns)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    again = trainer.evaluate("val")  # columns are evaluated on copies; the full model's estimate is repeatable
    assert again.acc == report.val_acc and [c.acc for c in again.columns] == [c.acc for c in report.columns]
    alone = trainer.evaluate_columns("val")  # what a search trial asks for after its last epoch
    assert [(c.column, c.acc) for c in alone] == [(c.column, c.acc) for c in report.columns]
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked"))


def test_cli_bad_arguments_exit_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--epochs", "0"])
    assert exit_info.value.code == 2 and "epochs" in capsys.readouterr().err
    assert main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download", "--model",
                 "test_efficientnet"]) == 1
    assert str(tmp_path / "cifar10" / "train.parquet") in capsys.readouterr().err
    assert main(["--model", "fractalnet_c2", "--model-kwargs", '{"widthz": 8}', "--train-subset", "50"]) == 2
    assert "widthz" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "fractal_space.engine.cli", "--augment", "+++"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'+++'" in proc.stderr


def test_huge_lr_is_a_diverged_run_with_nothing_written(tmp_path, capsys):
    args = ["--recipe", "paper", "--model", "test_efficientnet", "--train-subset", "100", "--val-size", "100",
            "--batch-size", "50", "--no-progress", "--no-download", "--num-threads", "1", "--epochs", "1",
            "--lr", "1e6"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "loss became" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "checkpoint.json").exists()


def test_nan_validation_loss_is_diverged_and_not_checkpointed(tmp_path):
    trainer = Trainer(_cfg(epochs=1, out_dir=str(tmp_path)))
    norm = trainer.val_loader.norm
    trainer.val_loader.norm = Normalize(norm.mean, (0.0,) * len(norm.std))  # division by zero: NaN/inf inputs
    with pytest.raises(TrainingDiverged, match="validation loss became nan after epoch 1"):
        list(trainer.epochs())
    assert not (tmp_path / "checkpoint.json").exists() and not list(tmp_path.glob("epoch-*"))


def _exit_code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_info:  # argparse and TrainConfig errors exit from the parser
        return exit_info.code


@pytest.mark.parametrize("args, names", [
    (["--model", "resnet_nope"], "resnet_nope"),
    (["--dataset", "cifar11"], "cifar11"),
    (["--model", "fractalnet_c2", "--model-kwargs", '{"widthz": 8}'], "widthz"),
    (["--model", "fractalnet_c2", "--model-kwargs", '{"join": "median"}'], "join='median'"),
    (["--model-kwargs", "[1, 2]"], "--model-kwargs"),
    (["--epochs", "two"], "'two'"),
    (["--schedule", "step"], "'step'"),
    (["--amp", "fp16", "--device", "cpu"], "fp16"),
    (["--val-size", "60000"], "val_size"),
])
def test_cli_bad_arguments_are_one_line_and_exit_2_before_training(args, names, tmp_path, capsys, data_root):
    out = tmp_path / "out"
    code = _exit_code(["--num-threads", "1", "--no-progress", "--no-download", "--epochs", "1", *args,
                       "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and names in err, err
    assert err.startswith("fractal-train: error: ") and not list(out.glob("epoch-*"))


def test_cli_unreadable_image_is_exit_2_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "tree" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "notes.png").write_text("a text file named .png\n")
    assert main(["--dataset", f"imagefolder:{tmp_path / 'tree'}", "--model", "test_efficientnet",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(folder / "notes.png") in err


def test_cli_help_describes_every_option_with_choices_and_default():
    parser = build_parser()
    options = [a for a in parser._actions if a.dest != "help"]
    assert {a.dest for a in options} == {f.name for f in dataclasses.fields(TrainConfig)} | {"export"}
    for action in options:
        assert action.help and not action.help.startswith("default") and "(default: " in action.help, action.dest
    text = parser.format_help()
    for flag, choices in (("--schedule", "{paper,cosine,linear,constant}"), ("--regularization", "{paper,none}"),
                          ("--augment", "{none,+,++}"), ("--amp", "{auto,bf16,fp16,none}")):
        assert f"{flag} {choices}" in text
    assert "auto, cpu, cuda or cuda:N" in text  # --device takes cuda:N too, so its values are listed in words


def test_bf16_autocast_on_cpu_trains_and_is_recorded(tmp_path):
    cfg = _cfg(model="fractalnet_c2", model_kwargs={"widths": [8, 8, 16, 16, 16]}, epochs=1, amp="bf16",
               eval_columns=False, bn_batches=1, out_dir=str(tmp_path))
    summary = train(cfg)
    assert summary["amp_dtype"] == "bfloat16" and math.isfinite(summary["val_loss"]) and 0 <= summary["test_acc"] <= 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(lines[0]["train_loss"])
    assert train(_cfg(epochs=1, amp="none", eval_columns=False))["amp_dtype"] == "float32"


def test_auto_precision_on_cpu_is_bf16_exactly_where_the_cpu_has_native_bf16():
    """bf16 autocast is the CPU default only where the CPU computes bf16 natively (emulated bf16 is slower)."""
    x86 = ["processor\t: 0", "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", ""]
    assert native_bf16_flag(x86) == "avx512_bf16"
    assert native_bf16_flag(["flags\t: avx2 amx_tile amx_bf16"]) == "amx_bf16"
    assert native_bf16_flag(["Features\t: fp asimd sve bf16 i8mm"]) == "bf16"  # Arm (Neoverse V1 and later)
    assert native_bf16_flag(["flags\t: fpu sse2 avx2 fma avx512f"]) is None and native_bf16_flag([]) is None
    here = native_bf16_flag()
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) == (torch.bfloat16 if here else None)
    assert amp_dtype("bf16", cpu) == torch.bfloat16 and amp_dtype("none", cpu) is None
    assert Trainer(_cfg(epochs=1)).amp_dtype == amp_dtype("auto", cpu)  # what TrainConfig's default trains in
    assert precision("auto", "cpu") == (f"bf16 autocast (native: {here})" if here else
                                        "fp32 (this CPU has no native bf16)")
    assert precision("none", "cpu") == "fp32"


def test_epoch_images_makes_an_epoch_a_fresh_random_subset_of_the_split(tmp_path):
    """The search's rungs count training images: an epoch of ``epoch_images`` from a new shuffle each epoch."""
    trainer = Trainer(_cfg(train_subset=300, epoch_images=100, epochs=2, eval_columns=False))
    assert len(trainer.train_loader) == 2  # 100 images of batch 50
    batches = []
    for epoch in (1, 2):
        trainer.train_loader.set_epoch(epoch)
        batches.append(torch.cat([y for _, y in trainer.train_loader]))
    assert len(batches[0]) == 100 and not torch.equal(batches[0], batches[1])
    assert [r.epoch for r in trainer.epochs()] == [1, 2]
    with pytest.raises(ValueError, match="epoch_images=301 is more than the 300 training images"):
        Trainer(_cfg(train_subset=300, epoch_images=301))

