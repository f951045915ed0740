"""The search space as a plugin: flat values in any tool's format, a typed config out, every sample a network timm
builds, and library calls that leave the caller's process state alone."""

import json
import subprocess
import sys

import optuna
import pytest
import timm
import torch

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.engine import TrainConfig, Trainer
from fractal_space.search import Budget, SearchSpace, TrialConfig

SAMPLES = 200


def _builds(cfg: TrialConfig) -> None:
    """``timm.create_model("fractalnet", ...)`` accepts the config (built on the meta device: structure, no weights)."""
    with torch.device("meta"):
        model = timm.create_model("fractalnet", num_classes=10, **cfg.model_kwargs)
    assert model.num_columns == cfg.model_kwargs["num_columns"] and len(model.blocks) == cfg.model_kwargs["num_blocks"]


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.default(input_size=32, device="cpu")


def test_optuna_samples_are_flat_params_and_build(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_one_column = False
    for _ in range(SAMPLES):
        trial = study.ask()
        params = space.suggest(trial)
        assert params == trial.params  # the flat values, as Optuna stores them
        cfg = space.config(trial.params)
        seen_one_column |= cfg.model_kwargs["num_columns"] == 1
        if cfg.model_kwargs["num_columns"] == 1:
            assert "join" not in params and cfg.model_kwargs["drop_path_rate"] == 0.0
        _builds(cfg)
        study.tell(trial, 0.0)
    assert seen_one_column


def test_ray_default_searcher_samples_build(space):
    from ray.tune.search.variant_generator import generate_variants

    param_space = space.to_ray()
    samples = [config for _ in range(SAMPLES) for _, config in generate_variants(param_space)]
    assert len(samples) == SAMPLES
    for config in samples:
        cfg = space.config(config)
        if config["num_columns"] == 1:
            assert all(config[name] is None for name in ("join", "drop_path_rate", "global_drop_fraction"))
        _builds(cfg)


def test_configspace_samples_build_and_carry_the_conditions(space):
    cs = space.to_configspace(seed=0)
    assert {c.child.name for c in cs.conditions} == {"join", "drop_path_rate", "global_drop_fraction",
                                                     "drop_path_warmup"}
    assert cs["lr"].log and cs["weight_decay"].log
    for configuration in cs.sample_configuration(SAMPLES):
        values = dict(configuration)
        cfg = space.config(values)
        assert ("join" in values) == (values["num_columns"] > 1)
        _builds(cfg)
        json.dumps(cfg.to_dict())  # NumPy scalars from ConfigSpace become plain values


def test_config_names_the_bad_value_in_one_line(space):
    good = space.suggest(optuna.trial.FixedTrial(space.reference_point()))
    cases = [({**good, "lr": 5.0}, "space field 'lr': 5.0 is outside [0.05, 0.8]"),
             ({k: v for k, v in good.items() if k != "batch_size"}, "space field 'batch_size': missing"),
             ({**good, "join": "median"}, "space field 'join': 'median' is not one of"),
             ({**good, "depth": 3}, "sampled value 'depth': not a dimension of this space"),
             ({**good, "num_blocks": 2.5}, "space field 'num_blocks': 2.5 is not an integer")]
    for params, message in cases:
        with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace(".", r"\.")) as info:
            space.config(params)
        assert "\n" not in str(info.value)


def test_trial_config_marks_engine_only_fields_and_builds_the_generic_model(space):
    cfg = space.config(space.reference_point())
    assert cfg.engine_only == ("drop_path_warmup",)
    assert space.replace(drop_path_warmup=0.0).config(space.reference_point()).engine_only == ("drop_path_warmup",)
    assert set(cfg.train) >= {"lr", "weight_decay", "batch_size"}
    model = cfg.create_model(num_classes=10)
    assert model.pretrained_cfg["architecture"] == "fractalnet" and model.num_columns == 3


def test_budget_rung_images_must_be_geometric():
    assert Budget(rung_images=[500, 1500, 4500], device="cpu").rungs.images == [500, 1500, 4500]
    with pytest.raises(ValueError, match=r"^rung_images: \[500, 1200\] is not geometric"):
        Budget(rung_images=[500, 1200], device="cpu")
    with pytest.raises(ValueError, match="unknown"):
        Budget(device="cpu", learning_rate=0.1)


def test_a_trainer_leaves_the_callers_threads_and_random_state_as_they_were(data_root):
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    before = torch.get_rng_state().clone()
    trainer = Trainer(TrainConfig(model="resnet20_cifar", dataset="cifar10", data_dir=str(data_root), epochs=1,
                                  epoch_images=128, val_size=64, train_subset=256, num_threads=2, progress=False))
    assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), before)
    for _ in trainer.epochs():
        assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), before)
    trainer.evaluate("val")
    assert trainer.threads == 2
    assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), before)


def test_a_trainers_random_stream_does_not_depend_on_what_the_caller_draws(data_root):
    def run(draw_between: bool) -> float:
        trainer = Trainer(TrainConfig(model="fractalnet_c2", dataset="cifar10", data_dir=str(data_root), epochs=2,
                                      epoch_images=128, val_size=64, train_subset=256, progress=False,
                                      model_kwargs={"widths": (4, 4, 4, 4, 4)}, regularization="paper"))
        losses = []
        for report in trainer.epochs():
            losses.append(report.train_loss)
            if draw_between:
                torch.rand(1000)
        return losses[-1]

    assert run(False) == run(True)


def test_importing_the_search_package_imports_neither_ray_nor_the_dashboard_nor_the_cli():
    code = ("import sys, fractal_space.search; "
            "print([m for m in ('ray', 'optuna_dashboard', 'fractal_space.search.cli') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    assert sorted(fractal_space.search.__all__) == sorted(
        ["OBJECTIVES", "Budget", "Rungs", "SearchSpace", "TrialConfig", "TrialRecord", "architecture_name", "main",
         "optuna_objective", "ray_trainable", "train_config"])
