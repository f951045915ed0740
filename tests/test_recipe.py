"""Training recipes: the paper and fast presets, each option on and off, weight averaging through resume and export,
test-time augmentation beside the plain accuracy."""

import json

import pytest
import timm
import torch
from small_data import tiny_dataset

from fractal_space.core.paper import PAPER
from fractal_space.engine import TrainConfig, Trainer, lr_factor, train
from fractal_space.engine.averaging import tta_views
from fractal_space.engine.cli import build_parser
from fractal_space.engine.config import DEFAULT_RECIPE, PRESETS, RECIPE_FIELDS, recipe_changes
from fractal_space.engine.trainer import _export

TINY = dict(model="test_efficientnet", dataset=tiny_dataset(), train_subset=100, val_size=100, batch_size=50,
            progress=False, download=False, num_threads=1)


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def _trained(cfg: TrainConfig, epochs: int | None = None) -> Trainer:
    trainer = Trainer(cfg)
    for report in trainer.epochs():
        if report.epoch == epochs:
            break
    return trainer


def test_a_recipe_fills_only_the_options_left_unset():
    paper = TrainConfig(recipe="paper")
    assert (paper.lr, paper.batch_size, paper.momentum, paper.weight_decay, paper.schedule) == (
        PAPER.lr, PAPER.batch_size, PAPER.momentum, PAPER.weight_decay, PAPER.schedule)
    assert (paper.nesterov, paper.norm_bias_decay, paper.lr_warmup, paper.label_smoothing, paper.ema, paper.tta) == (
        False, True, 0.0, 0.0, 0.0, "none")  # every later option off: the engine as it was before recipes
    fast = TrainConfig(recipe="fast", nesterov=False, lr=0.3)
    assert {k: getattr(fast, k) for k in PRESETS["fast"]} == {**PRESETS["fast"], "nesterov": False, "lr": 0.3}
    assert TrainConfig.from_dict(json.loads(json.dumps(fast.to_dict()))) == fast
    assert TrainConfig().recipe == "fast"


@pytest.mark.parametrize("field, value, message", [
    ("recipe", "slow", "recipe must be one of"),
    ("ema", 1.0, r"ema must be in \[0, 1\)"),
    ("lr_warmup", 1.0, r"lr_warmup must be in \[0, 1\)"),
    ("tta", "crop", "tta must be one of"),
    ("schedule", "step", "schedule must be one of"),
])
def test_bad_recipe_values_are_one_line_errors_naming_the_value(field, value, message):
    with pytest.raises(ValueError, match=f"{message}.*{value!r}"):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        TrainConfig(nesterov=True, momentum=0.0)


def test_recipe_changes_flags_a_changed_recipe_and_reads_older_configs_as_the_papers():
    paper, fast = _cfg(recipe="paper"), _cfg(recipe="fast", batch_size=50)
    assert set(recipe_changes(paper.to_dict(), fast)) == {"recipe", "lr", "nesterov", "weight_decay",
                                                          "norm_bias_decay", "schedule", "lr_warmup",
                                                          "label_smoothing"}
    assert recipe_changes(paper.to_dict(), _cfg(recipe="fast", **{k: getattr(paper, k) for k in PRESETS["paper"]
                                                                  if k in RECIPE_FIELDS})) == ["recipe"]
    older = {k: v for k, v in paper.to_dict().items()
             if k not in ("recipe", "nesterov", "norm_bias_decay", "lr_warmup", "ema", "tta")}
    assert recipe_changes(older, paper) == []  # written before recipes existed: it trained the paper's recipe
    assert recipe_changes(older, _cfg(recipe="paper", nesterov=True)) == ["nesterov"]
    assert recipe_changes({**paper.to_dict(), "tta": "flip"}, paper) == []  # evaluation only: may differ on resume


def test_lr_warmup_ramps_then_the_schedule_runs_over_the_rest():
    assert [lr_factor("linear", p, 0.2) for p in (0.0, 0.1, 0.2, 0.6, 0.9)] == pytest.approx([0, 0.5, 1, 0.5, 0.125])
    assert lr_factor("cosine", 0.6, 0.2) == pytest.approx(0.5)
    assert [lr_factor("linear", p) for p in (0.0, 0.25)] == [1.0, 0.75]
    trainer = Trainer(_cfg(recipe="fast", batch_size=50, epochs=2, lr=0.4, tta="none"))  # 4 steps, 1 of warm-up
    lrs = [0.4 * trainer.scheduler.lr_lambdas[0](step) for step in range(4)]
    assert lrs == pytest.approx([0.0, 0.4 * 0.9375, 0.4 * 0.625, 0.4 * 0.3125])  # progress 0, 1/4, 1/2, 3/4
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # the first step's


def test_nesterov_and_norm_bias_decay_shape_the_optimizer():
    paper = Trainer(_cfg(recipe="paper"))
    (group,) = paper.optimizer.param_groups  # one group, as before recipes
    assert group["nesterov"] is False and group["weight_decay"] == 0.0
    fast = Trainer(_cfg(recipe="fast"))
    decay, no_decay = fast.optimizer.param_groups
    assert decay["nesterov"] is True and decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(fast.model.parameters()))
    assert len(Trainer(_cfg(recipe="fast", norm_bias_decay=True)).optimizer.param_groups) == 1
    assert fast.criterion.label_smoothing == 0.1 and paper.criterion.label_smoothing == 0.0


def test_tta_accuracy_is_the_views_mean_and_only_where_tta_is_on():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    plain, mirror, *shifted = tta_views(x, "flip-shift")
    assert torch.equal(plain, x) and torch.equal(mirror, x.flip(3)) and len(shifted) == 4
    assert torch.equal(shifted[0][..., 2:, 2:], x[..., :2, :2]) and shifted[0][..., :2, :].eq(0).all()
    assert torch.equal(shifted[1][..., :2, :2], x[..., 2:, 2:])
    assert tta_views(x, "none") == [x] and len(tta_views(x, "flip")) == 2

    trainer = _trained(_cfg(recipe="paper", epochs=1, lr=0.1, amp="none"))
    off = trainer.evaluate("test")
    assert off.acc_tta is None and trainer.history[-1].val_acc_tta is None
    trainer.cfg.tta = "flip"
    on = trainer.evaluate("test")
    model = trainer.model.eval()
    with torch.no_grad():
        pairs = [((model(x) + model(x.flip(3))).argmax(1), model(x).argmax(1), y) for x, y in trainer.test_loader]
    assert on.acc == off.acc and on.acc_tta == pytest.approx(sum(int((m == y).sum()) for m, _, y in pairs) / 500)
    assert on.acc == pytest.approx(sum(int((p == y).sum()) for _, p, y in pairs) / 500)
    summary = train(_cfg(recipe="fast", batch_size=50, epochs=1))
    assert summary["recipe"] == "fast" and 0 <= summary["test_acc_tta"] <= 1 and 0 <= summary["val_acc_tta"] <= 1


def _momentum(trainer: Trainer) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in trainer.optimizer.state_dict()["state"].values()]


def test_ema_evaluates_resumes_and_exports_the_average(tmp_path):
    recipe = dict(recipe="paper", epochs=2, lr=0.1, schedule="constant", augment="none")
    plain = _trained(_cfg(**recipe))
    straight = _trained(_cfg(**recipe, ema=0.9))
    assert plain.average is None and straight.average.updates == 4
    assert all(torch.equal(a, b) for a, b in zip(_momentum(plain), _momentum(straight), strict=True))  # averaging
    # leaves the training steps as they were; the run ends on the average, not on the trained weights
    assert straight.model.conv_stem.weight.equal(straight.eval_model.conv_stem.weight)
    assert not straight.model.conv_stem.weight.equal(plain.model.conv_stem.weight)

    cfg = _cfg(**recipe, ema=0.9, out_dir=str(tmp_path / "run"))
    _trained(cfg, epochs=1)  # interrupted after epoch 1, then resumed from the checkpoint's average
    resumed = Trainer(cfg)
    assert resumed.average.updates == 2
    list(resumed.epochs())
    for name, value in straight.average.module.state_dict().items():
        assert torch.allclose(resumed.average.module.state_dict()[name].float(), value.float(), atol=1e-5), name
    assert Trainer(cfg).model.conv_stem.weight.equal(resumed.average.module.conv_stem.weight)  # final checkpoint
    _export(resumed, tmp_path / "export")
    exported = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    x = resumed.bn_inputs()[0]
    with torch.no_grad():
        assert torch.allclose(exported(x), resumed.average.module(x), atol=1e-4)
        assert not torch.allclose(exported(x), plain.model.eval()(x), atol=1e-2)


def test_cli_recipe_flag_and_overrides():
    parser = build_parser()
    args = vars(parser.parse_args(["--recipe", "paper", "--nesterov", "--tta", "flip"]))
    del args["export"]
    cfg = TrainConfig.from_dict(args)
    assert (cfg.recipe, cfg.lr, cfg.nesterov, cfg.tta, cfg.lr_warmup) == ("paper", 0.02, True, "flip", 0.0)
    fast = TrainConfig.from_dict({k: v for k, v in vars(parser.parse_args(["--no-norm-bias-decay"])).items()
                                  if k != "export"})
    assert fast.recipe == "fast" and fast.lr == PRESETS["fast"]["lr"] and fast.norm_bias_decay is False
    assert "peak learning rate of SGD (default: the recipe's: paper 0.02, fast 0.4)" in " ".join(
        parser.format_help().split())


def test_search_trials_the_final_stage_and_baselines_train_with_the_default_recipe_around_its_learning_rate():
    from fractal_space.search import Budget, SearchSpace
    from fractal_space.search.cli import build_parser, settings_from_args

    fast = PRESETS[DEFAULT_RECIPE]
    cfg = Budget(device="cpu").config()
    assert DEFAULT_RECIPE == "fast" and (cfg.recipe, cfg.schedule, cfg.nesterov) == ("fast", "linear", True)
    assert cfg.augment == "none" and Budget(device="cpu", augment="+").config().augment == "+"  # CPU's 2 passes
    assert Budget(device="cpu", recipe="paper").config().schedule == PAPER.schedule  # one keyword away
    space = SearchSpace.default(32, "cpu")
    low, high = space.to_dict()["lr"]["low"], space.to_dict()["lr"]["high"]
    assert low < fast["lr"] < high and not low <= PAPER.lr <= high  # the recipe's range, not the paper's
    settings = settings_from_args(build_parser().parse_args(["--device", "cpu"]))
    train = settings.baseline_train()
    assert train == {k: fast[k] for k in ("lr", "weight_decay", "batch_size")}
    assert cfg.tta == "none"  # trials rank on the plain accuracy: no second pass per evaluation
