"""The declarative search space: sampling, exclusion of impossible ranges, file round trips, one-line errors."""

import json

import optuna
import pytest
import timm
import torch

import fractal_space  # noqa: F401  (registers the timm models)
from fractal_space.core.paper import PAPER
from fractal_space.core.recipes import DEFAULT_RECIPE, PRESETS
from fractal_space.search.space import DEFAULT, MODEL, SearchSpace, max_blocks, widths_for


def _configs(space: SearchSpace, n: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space.sample(study.ask()).to_dict() for _ in range(n)]


def test_every_sample_is_a_consistent_buildable_network():
    space = SearchSpace.default(32, "cpu")
    for cfg in _configs(space, 40):
        kw = cfg["model_kwargs"]
        assert 1 <= kw["num_blocks"] <= 5 and 1 <= kw["num_columns"] <= 4
        assert len(kw["widths"]) == len(kw["block_dropout"]) == kw["num_blocks"]
        assert kw["join"] in ("mean", "sum", "max", "concat") and max(kw["block_dropout"]) < 1
        assert set(cfg["train"]) == {"lr", "weight_decay", "batch_size", "drop_path_warmup"}
    kw = _configs(space, 1)[0]["model_kwargs"]
    model = timm.create_model(MODEL, num_classes=10, **kw).eval()
    assert model.num_columns == kw["num_columns"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cpu_space_tops_drop_path_at_the_papers_rate_and_keeps_the_reference_point():
    cpu, gpu = SearchSpace.default(32, "cpu"), SearchSpace.default(32, "cuda")
    assert cpu.to_dict()["drop_path_rate"] == {"low": 0.0, "high": PAPER.drop_path_rate}
    assert gpu.to_dict()["drop_path_rate"] == DEFAULT["drop_path_rate"]
    assert cpu.reference_point()["drop_path_rate"] == PAPER.drop_path_rate  # the paper's point is still inside
    assert all(c["model_kwargs"]["drop_path_rate"] <= PAPER.drop_path_rate for c in _configs(cpu, 30))


def test_widths_follow_the_paper_rule():
    assert widths_for(5, 16, 2.0) == (16, 32, 64, 128, 128)  # the paper's reduced widths
    assert widths_for(1, 16, 2.0) == (16,)
    assert widths_for(3, 8, 1.5) == (8, 12, 12)


def test_blocks_are_bounded_by_the_input_size():
    assert max_blocks(32) == 5 and max_blocks(28) == 4
    assert {c["model_kwargs"]["num_blocks"] for c in _configs(SearchSpace.default(16), 30)} <= {2, 3, 4}
    with pytest.raises(ValueError, match=r"^space field 'num_blocks': 6 blocks need an input of 64 px"):
        SearchSpace.from_dict({"num_blocks": {"low": 2, "high": 6}}, input_size=32)
    with pytest.raises(ValueError, match="num_blocks"):
        SearchSpace.from_dict({"num_blocks": {"low": 2, "high": "max"}}, input_size=2)


def test_the_reference_point_is_the_papers_network_at_the_default_recipes_training_values():
    space = SearchSpace.default(32, "cuda")
    cfg = space.config(space.reference_point()).to_dict()
    assert cfg["model_kwargs"]["widths"] == [16, 32, 64, 128, 128]
    assert cfg["model_kwargs"]["block_dropout"] == [0.0, 0.1, 0.2, 0.3, 0.4]
    # The paper has no drop-path warm-up: its constant rate from the first step.
    fast = PRESETS[DEFAULT_RECIPE]
    assert cfg["train"] == {"lr": fast["lr"], "weight_decay": fast["weight_decay"], "batch_size": fast["batch_size"],
                            "drop_path_warmup": 0.0}
    # a value outside a narrowed range is clipped to it: the nearest value the space can represent
    narrowed = space.replace(lr={"low": 0.005, "high": 0.1, "log": True}, batch_size={"choices": [32, 100]})
    assert narrowed.config(narrowed.reference_point()).train["lr"] == 0.1
    assert narrowed.config(narrowed.reference_point()).train["batch_size"] == 32
    fixed = space.replace(weight_decay=PAPER.weight_decay, lr=PAPER.lr, batch_size=PAPER.batch_size)
    assert fixed.sample(optuna.trial.FixedTrial(fixed.reference_point())).train == {
        "lr": PAPER.lr, "weight_decay": PAPER.weight_decay, "batch_size": PAPER.batch_size, "drop_path_warmup": 0.0}


@pytest.mark.parametrize(("dim", "value"), [
    ("drop_path_rate", 1.0), ("drop_path_rate", -0.1), ("global_drop_fraction", 1.5), ("num_columns", 11),
    ("join", "avg"), ("dropout_scale", 0.3),
])
def test_the_space_rejects_what_the_model_rejects(dim, value):
    """A space value the model would refuse fails when the space is built, not in every trial of the search."""
    space = SearchSpace.default(32, "cpu").replace(num_blocks=5, num_columns=2, base_width=4)
    config = space.sample(optuna.trial.FixedTrial(space.reference_point())).model_kwargs
    if dim == "dropout_scale":
        config["block_dropout"] = tuple(value * i for i in range(5))
    else:
        config[dim] = value
    with pytest.raises(ValueError):
        timm.create_model(MODEL, num_classes=10, **config)
    with pytest.raises(ValueError, match=f"space field '{dim}'"):
        space.replace(**{dim: value})


def test_narrow_fix_and_extend_from_python():
    space = SearchSpace.default().replace(num_columns=3, join={"choices": ["mean"]}, label_smoothing={"low": 0.0,
                                                                                                    "high": 0.2})
    assert "num_columns" not in space.searched and "label_smoothing" in space.searched
    for cfg in _configs(space, 10):
        assert cfg["model_kwargs"]["num_columns"] == 3 and cfg["model_kwargs"]["join"] == "mean"
        assert 0.0 <= cfg["train"]["label_smoothing"] <= 0.2


def test_user_objective_calls_the_space():
    space = SearchSpace.default(32, "cpu").replace(num_blocks=2, num_columns=2, base_width=4, width_growth=1.0)

    def objective(trial: optuna.Trial) -> float:
        cfg = space.sample(trial).to_dict()
        model = timm.create_model(MODEL, num_classes=10, **cfg["model_kwargs"])
        return float(sum(p.numel() for p in model.parameters())) * cfg["train"]["lr"]

    study = optuna.create_study()
    study.optimize(objective, n_trials=3)
    assert len(study.trials) == 3 and "lr" in study.best_params


def test_yaml_and_json_files(tmp_path):
    yml = tmp_path / "space.yaml"
    yml.write_text("num_columns: {low: 2, high: 3}\njoin: mean\nlr: {low: 0.01, high: 0.05, log: true}\n")
    space = SearchSpace.from_file(yml)
    assert space.to_dict()["num_columns"] == {"low": 2, "high": 3} and "join" not in space.searched
    js = tmp_path / "space.json"
    js.write_text(json.dumps(space.to_dict()))
    assert SearchSpace.from_file(js).to_dict() == space.to_dict()


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("num_columns: {low: 3, high: 1}", "space field 'num_columns': low 3 > high 1"),
    ("join: {choices: [mean, avg]}", "space field 'join': 'avg' is not one of"),
    ("lr: {low: 0, high: 0.1, log: true}", "space field 'lr': a log range needs low > 0"),
    ("depth: 3", "space field 'depth': not a known dimension"),
    ("batch_size: {choices: []}", "space field 'batch_size': 'choices' must be a non-empty list"),
    ("num_columns: {low: 1}", "space field 'num_columns': expected {low, high"),
    ("dropout_scale: 0.3", "space field 'dropout_scale': 0.3 gives the last block a dropout >= 1"),
    ("num_columns: [1, 2", "malformed YAML/JSON"),
    ("- 1\n- 2", "expected a mapping"),
])
def test_bad_space_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        SearchSpace.from_file(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_core_dimension_and_empty_space():
    with pytest.raises(ValueError, match="^space: empty"):
        SearchSpace({})
    specs = dict(DEFAULT)
    del specs["lr"]
    with pytest.raises(ValueError, match="^space field 'lr': missing"):
        SearchSpace(specs)


def test_ray_optuna_search_uses_the_same_define_by_run_function(tmp_path):
    """Ray's OptunaSearch runs the space's own suggest (no second definition of the space)."""
    import functools

    from ray.tune.search.optuna import OptunaSearch

    from fractal_space.search.backends.ray_backend import define_by_run

    space = SearchSpace.default(32, "cpu")
    searcher = OptunaSearch(functools.partial(define_by_run, space), metric="val_acc", mode="max")
    config = searcher.suggest("trial-a")
    assert config["trial_number"] == 0
    trial = space.config({k: v for k, v in config.items() if k != "trial_number"})
    assert len(trial.model_kwargs["widths"]) == trial.model_kwargs["num_blocks"]
    assert set(trial.train) == {"lr", "weight_decay", "batch_size", "drop_path_warmup"}


def test_a_one_column_network_samples_no_join_dimensions():
    """C=1 has no joins: no join type, drop-path rate or global fraction is sampled (nor shown as its parameters)."""
    space = SearchSpace.default(32, "cpu")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = {}

    def objective(trial):
        configs[trial.number] = space.sample(trial).to_dict()
        return 0.0

    study.optimize(objective, n_trials=40)
    by_columns = {c: [t for t in study.trials if t.params["num_columns"] == c] for c in (1, 2)}
    assert by_columns[1] and by_columns[2]
    join_dims = {"join", "drop_path_rate", "global_drop_fraction", "drop_path_warmup"}
    for t in by_columns[1]:
        assert not join_dims & set(t.params)
        kwargs = configs[t.number]["model_kwargs"]
        assert kwargs["drop_path_rate"] == 0.0 and timm.create_model(MODEL, num_classes=10, **kwargs)
        assert configs[t.number]["train"]["drop_path_warmup"] == 0.0  # no drop-path, nothing to warm up
    for t in by_columns[2]:
        assert join_dims <= set(t.params)
        warmup = configs[t.number]["train"]["drop_path_warmup"]  # a TrainConfig field: the engine ramps the rate
        assert warmup == t.params["drop_path_warmup"] and 0.0 <= warmup <= 0.5
    one_column = space.replace(num_columns=1)
    point = one_column.reference_point()
    assert "join" not in point
    assert one_column.sample(optuna.trial.FixedTrial(point)).model_kwargs["num_columns"] == 1
