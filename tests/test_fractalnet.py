"""FractalNet against the paper: expansion rule, flat joins, drop-path, skipped work, anytime columns, Table 3."""

import math
import operator

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.models.anytime import reestimate_bn_stats
from fractal_space.models.fractalnet import FractalBlock, FractalNet, Join, paper_block_dropout
from fractal_space.models.fractalnet_paths import fractalnet_args, paths_state_dict

TINY = dict(widths=(8, 8, 8, 8, 8))


def _x(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def _column_conv(block: FractalBlock, column: int, m: int) -> nn.Module:
    """The m-th conv unit (0-based) of ``column`` (0 = shallowest), located by the expansion rule alone."""
    span = 2 ** (block.num_columns - 1 - column)
    step = block.steps[(m + 1) * span - 1]
    return step.convs[column - step.first_col]


def _reference_join_inputs(block: FractalBlock, z: torch.Tensor, lo: int, m0: int, join) -> list[torch.Tensor]:
    """Inputs of the final join of f_C over columns lo..C-1, by the paper's recursion with collapsed joins.

    f_{C}(z) = join(f_{C-1}(f_{C-1}(z)), conv(z)): the deeper columns run the smaller fractal twice, with one join
    between; their last join is merged with the new shallow conv into one flat join. ``m0`` counts conv units of
    the deepest column already used, to find the right modules.
    """
    n_cols = block.num_columns - lo
    if n_cols == 1:
        return [_column_conv(block, lo, m0)(z)]
    half = 2 ** (n_cols - 2)  # conv units of the deepest column in one half
    first = _reference_join_inputs(block, z, lo + 1, m0, join)
    second = _reference_join_inputs(block, join(first), lo + 1, m0 + half, join)
    span_lo = 2 ** (block.num_columns - 1 - lo)
    shallow = _column_conv(block, lo, m0 // span_lo)  # the shallow column spans exactly these steps
    return second + [shallow(z)]


def _mean(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(xs).mean(0)


@pytest.mark.parametrize("num_columns", [1, 2, 3, 4])
def test_block_follows_expansion_rule_with_flat_joins(num_columns: int) -> None:
    torch.manual_seed(0)
    block = FractalBlock(3, 8, num_columns, join="mean", downsample=False).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = _mean(_reference_join_inputs(block, x, 0, 0, _mean))
        torch.testing.assert_close(block(x), expected)
    # column j holds 2^(j-1) conv units, the block 2^C - 1 in all
    convs_per_column = [sum(1 for d in range(1, 2 ** (num_columns - 1) + 1) if d % 2 ** (num_columns - 1 - c) == 0)
                        for c in range(num_columns)]
    assert convs_per_column == [2 ** c for c in range(num_columns)]
    assert sum(len(step.convs) for step in block.steps) == 2 ** num_columns - 1


def test_last_join_weights_every_column_equally() -> None:
    """A flat mean over C=3 columns weights the shallow column 1/3; a nested pairwise mean would give it 1/2."""
    torch.manual_seed(0)
    block = FractalBlock(4, 4, 3, join="mean", downsample=False).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        inputs = _reference_join_inputs(block, x, 0, 0, _mean)
        assert len(inputs) == 3
        flat = _mean(inputs)
        nested = 0.5 * (0.5 * (inputs[0] + inputs[1]) + inputs[2])
        out = block(x)
    torch.testing.assert_close(out, flat)
    assert not torch.allclose(out, nested, atol=1e-4)


@pytest.mark.parametrize("join", ["mean", "sum", "max", "concat"])
def test_join_types_run_and_differ(join: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", join=join, **TINY).eval()
    with torch.no_grad():
        out = model(_x())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if join == "concat":  # the 1x1 projection back to the block width: width * inputs -> width
        proj = model.blocks[0].steps[-1].join.proj
        assert proj.in_channels == 8 * 3 and proj.out_channels == 8


def test_join_is_flat_over_survivors() -> None:
    xs = [torch.full((1, 1, 1, 1), v) for v in (1.0, 2.0, 6.0)]
    assert Join("mean")(xs, [0, 1, 2]).item() == 3.0
    assert Join("sum")(xs, [0, 1, 2]).item() == 9.0
    assert Join("max")(xs, [0, 1, 2]).item() == 6.0
    assert Join("mean")(xs[:1], [2]) is xs[0]


def test_depth_and_layer_counts_of_variants() -> None:
    for c in range(1, 5):
        model = timm.create_model(f"fractalnet_c{c}", **TINY)
        convs = [m for m in model.extract_column(c).modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 5 * 2 ** (c - 1)  # B * 2^(C-1): 5, 10, 20, 40 layers
        # the plain network of the same depth trained alone (Table 4) is the column's architecture
        plain = timm.create_model("fractalnet_plain", convs_per_block=2 ** (c - 1), **TINY)
        assert plain.state_dict().keys() == model.extract_column(c).state_dict().keys()
    for name, depth in (("fractalnet20_cifar", 20), ("fractalnet40_cifar", 40)):
        model = timm.create_model(name)
        convs = [m for m in model.extract_column(model.num_columns).modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == depth
    model = timm.create_model("fractalnet34", widths=(8, 8, 8, 8), stem_width=8)
    assert [f["reduction"] for f in model.feature_info] == [8, 16, 32, 32]
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(1, 3, 224, 224)).shape[-2:] == (7, 7)


@pytest.mark.parametrize(("name", "kwargs", "reductions"), [
    ("fractalnet34", dict(widths=(8,) * 4, stem_width=8), [8, 16, 32, 32]),  # ImageNet layout: 4 blocks
    ("fractalnet_c2", dict(num_blocks=3, widths=(8,) * 3), [2, 4, 8]),  # a search-space depth
])
def test_features_only_taps_every_block(name: str, kwargs: dict, reductions: list[int]) -> None:
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    assert model.feature_info.reduction() == reductions
    size = model.pretrained_cfg["input_size"][-1]
    with torch.no_grad():
        feats = model(_x(1, size))
    assert [size // f.shape[-1] for f in feats] == reductions


# Paper Table 3 (CIFAR-100, reduced widths 16..128), parameters in millions, one decimal.
TABLE3_PARAMS = {1: 0.3, 2: 0.8, 3: 2.1, 4: 4.8, 5: 10.2, 6: 21.1}


@pytest.mark.parametrize("num_columns", sorted(TABLE3_PARAMS))
def test_parameter_counts_match_table3(num_columns: int) -> None:
    model = timm.create_model(f"fractalnet_c{num_columns}", num_classes=100)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    paper = TABLE3_PARAMS[num_columns]
    # Table 3 prints one decimal: the count must round to it, and be within 3% wherever that precision allows.
    assert round(millions, 1) == paper
    if paper >= 2:
        assert abs(millions - paper) / paper < 0.03


def test_paper_20_layer_network_size() -> None:
    millions = sum(p.numel() for p in timm.create_model("fractalnet20_cifar").parameters()) / 1e6
    assert abs(millions - 33.7) < 0.1  # the plain layout's count (the paper quotes 38.6M)


# ---- drop-path ------------------------------------------------------------------------------------------------


def _model_with_drop_path(**kwargs) -> FractalNet:
    return timm.create_model("fractalnet_c4", **{"drop_path_rate": 0.15, **TINY, **kwargs})


def test_local_drop_path_keeps_one_input_per_join_and_drops_at_rate_p() -> None:
    torch.manual_seed(0)
    model = _model_with_drop_path(global_drop_fraction=0.0).train()
    dropped = total = 0
    for _ in range(300):
        plan = model._sample_plan(torch.device("cpu"))
        for block, keep in zip(model.blocks, plan, strict=True):
            for d, first in enumerate(block.first_cols):
                step = keep[block.offsets[d]:block.offsets[d] + block.num_columns - first]
                assert any(step)
                if len(step) > 1:
                    dropped += step.count(False)
                    total += len(step)
    # the survivor rule lifts the rate slightly above p only when every input drops (p^n, small here)
    assert 0.12 < dropped / total < 0.17


def test_global_drop_path_picks_one_column_for_the_whole_network() -> None:
    torch.manual_seed(0)
    model = _model_with_drop_path(global_drop_fraction=0.5).train()
    counts = {"global": 0, "local": 0}
    columns = set()
    for _ in range(400):
        plan = model._sample_plan(torch.device("cpu"))
        for c in range(model.num_columns):
            if plan == model.column_keeps[c]:
                counts["global"] += 1
                columns.add(c)
                break
        else:
            counts["local"] += 1
    assert columns == set(range(model.num_columns))
    assert 0.4 < counts["global"] / 400 < 0.6
    # a global plan keeps exactly one consistent column in every block
    for c, plan in enumerate(model.column_keeps):
        for block, keep in zip(model.blocks, plan, strict=True):
            needed = block.needed(keep)
            active = {col for step in needed for col, on in enumerate(step) if on}
            assert active == {c}


def test_eval_uses_every_path_and_training_without_rate_has_no_drop_path() -> None:
    model = _model_with_drop_path(block_dropout=paper_block_dropout(5)).eval()
    x = _x(1)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(a, model(x))
    plain = timm.create_model("fractalnet_c4", **TINY).train()
    assert plain._plan(x, None) is None


def test_drop_path_draws_all_randomness_in_one_device_call_per_step() -> None:
    """No host round trip per join: one torch.rand and one read-back for the whole network per forward."""
    calls = []

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.rand, torch.Tensor.tolist):
                calls.append(func)
            return func(*args, **(kwargs or {}))

    model = _model_with_drop_path().train()
    with Count():
        model(_x())
    assert calls == [torch.rand, torch.Tensor.tolist]


def _naive_block(block: FractalBlock, x: torch.Tensor, keep: list[bool]) -> torch.Tensor:
    """Computes every conv of every step, then joins the kept ones: what public FractalNets do."""
    states = [x] * block.num_columns
    for d, step in enumerate(block.steps):
        outs = [conv(states[step.first_col + j]) for j, conv in enumerate(step.convs)]
        kept = [o for j, o in enumerate(outs) if keep[block.offsets[d] + j]]
        cols = [step.first_col + j for j in range(len(outs)) if keep[block.offsets[d] + j]]
        if kept:
            y = step.join(kept, cols)
            states = states[:step.first_col] + [y] * (block.num_columns - step.first_col)
    return block.drop(block.pool(states[-1]))


@pytest.mark.parametrize("join", ["mean", "concat"])
def test_skipping_dropped_work_does_not_change_the_result(join: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c4", join=join, drop_path_rate=0.4, global_drop_fraction=0.5, **TINY)
    model.eval()  # fixed BN statistics, so that both computations see the same normalisation
    x = torch.randn(2, 8, 16, 16)
    block = model.blocks[1]
    with torch.no_grad():
        for _ in range(20):
            keep = model._sample_plan(torch.device("cpu"))[1]
            torch.testing.assert_close(block(x, keep), _naive_block(block, x, keep))


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_global_drop_path_step_costs_only_its_column() -> None:
    """Train step (forward + backward) FLOPs with global column k equal those of column k extracted, within 5%."""
    small = dict(num_blocks=2, widths=(8, 8))  # FlopCounterMode is slow per op; the ratio does not need depth
    model = timm.create_model("fractalnet_c4", drop_path_rate=0.15, global_drop_fraction=1.0, **small).train()
    x = _x(2)

    def step(m, **kw):
        return lambda: m(x, **kw).sum().backward()

    costs = {c: _flops(step(model.extract_column(c).train())) for c in range(1, 5)}
    full = _flops(step(timm.create_model("fractalnet_c4", **small).train()))
    for c, cost in costs.items():
        assert _flops(step(model, column=c)) == pytest.approx(cost, rel=0.05)
        assert cost < full * (0.6 if c == 4 else 0.3)
    # a sampled global step costs one of the column costs, never the full network
    for seed in range(3):
        torch.manual_seed(seed)
        sampled = _flops(step(model))
        assert any(sampled == pytest.approx(v, rel=0.05) for v in costs.values())


def test_local_drop_path_skips_convs_whose_output_is_dropped() -> None:
    model = timm.create_model("fractalnet_c3", drop_path_rate=0.5, global_drop_fraction=0.0, **TINY).train()
    x = _x(2)
    full = _flops(lambda: timm.create_model("fractalnet_c3", **TINY)(x))
    cheaper = 0
    for seed in range(6):
        torch.manual_seed(seed)
        flops = _flops(lambda: model(x))
        assert flops <= full
        cheaper += flops < full
    assert cheaper >= 4


# ---- anytime columns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("join", ["mean", "max", "concat"])
def test_extracted_column_equals_column_path(join: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", join=join, **TINY)
    model.train()
    model(_x(8))  # move the BN statistics away from their initial values
    model.eval()
    x = _x()
    with torch.no_grad():
        for k in range(1, 4):
            column = model.extract_column(k).eval()
            assert not any(isinstance(m, Join) for m in column.modules())
            torch.testing.assert_close(column(x), model(x, column=k))
            assert not torch.allclose(model(x, column=k), model(x))


def test_extracted_column_keeps_device_and_dtype() -> None:
    """A concat join's column slice is a new conv: it is built where and in the dtype the parent's weights are."""
    model = timm.create_model("fractalnet_c2", join="concat", dtype=torch.bfloat16, **TINY).eval()
    column = model.extract_column(2)
    assert {p.dtype for p in column.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        x = _x().bfloat16()
        torch.testing.assert_close(column(x), model(x, column=2))


def test_bn_reestimation_uses_the_column_path_only(data_root) -> None:
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", **TINY).eval()
    column = model.extract_column(2)
    batches = [_x(16) for _ in range(3)]
    before = {n: b.clone() for n, b in column.named_buffers()}
    assert reestimate_bn_stats(column, batches) == 3
    means = [m.running_mean for m in column.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.equal(m, torch.zeros_like(m)) for m in means)
    assert any(not torch.equal(b, before[n]) for n, b in column.named_buffers())
    assert not column.training
    # on the parent, layers off the column's path keep their statistics
    parent_before = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    reestimate_bn_stats(model, batches, column=1)
    changed = {n for n, b in model.named_buffers() if "running_mean" in n and not torch.equal(b, parent_before[n])}
    assert changed and all(".convs.0." in n for n in changed)
    with pytest.raises(ValueError, match="no batches"):
        reestimate_bn_stats(column, [])


# ---- sub-fractals ---------------------------------------------------------------------------------------------

PATHS = [[1, 3], [2], [1, 2, 3, 4], [4], [2, 4]]  # per block the kept columns of a C=4, B=5 network


def _moved(join: str = "mean", **kwargs) -> FractalNet:
    """A tiny C=4 network whose BN statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c4", join=join, **{**TINY, **kwargs}).train()
    with torch.no_grad():
        model(_x(8))
    return model.eval()


def _dropping_other_paths(model: FractalNet, x: torch.Tensor, paths: list[list[int]]) -> torch.Tensor:
    """The full network with every join input of a column outside ``paths`` dropped (the drop-path mechanism)."""
    x = model.stem(x)
    for block, kept in zip(model.blocks, paths, strict=True):
        x = block(x, [c + 1 in kept for first in block.first_cols for c in range(first, block.num_columns)])
    return model.forward_head(x)


def _conv_units(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


@pytest.mark.parametrize("join", ["mean", "concat"])
def test_sub_fractal_equals_the_full_network_with_the_other_paths_dropped(join: str) -> None:
    model = _moved(join)
    sub = model.extract_paths(PATHS)
    assert not sub.training and sub.paths == [sorted(p) for p in PATHS]
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(sub(x), _dropping_other_paths(model, x, PATHS))
    # built by the registry from its arguments, so it is a timm model like any other
    again = timm.create_model("fractalnet", **fractalnet_args(model, PATHS))
    again.load_state_dict(paths_state_dict(model, PATHS))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), sub(x))
    assert not any(a.data_ptr() == b.data_ptr() for a in sub.state_dict().values() for b in model.state_dict().values())


def test_sub_fractal_builds_and_costs_only_its_kept_paths() -> None:
    model = _moved()
    sub = model.extract_paths(PATHS)
    # column c has 2^(c-1) conv units per block; only kept columns' units exist
    assert _conv_units(sub) == sum(2 ** (c - 1) for kept in PATHS for c in kept) < _conv_units(model)
    params = sum(p.numel() for p in sub.parameters())
    expected = (sum(p.numel() for p in model.head.parameters())
                + sum(sum(p.numel() for p in step.conv_of(c - 1).parameters())
                      for i, kept in enumerate(PATHS) for step in model.blocks[i].steps
                      for c in kept if c - 1 in step.cols))
    assert params == expected
    x = _x(1)
    with torch.no_grad():
        assert _flops(lambda: sub(x)) == _flops(lambda: _dropping_other_paths(model, x, PATHS))
    # one column kept everywhere is that column: the plain network's cost and outputs
    for k in (1, 4):
        single = model.extract_paths([[k]] * 5)
        column = model.extract_column(k)
        assert sum(p.numel() for p in single.parameters()) == sum(p.numel() for p in column.parameters())
        assert single.anytime_columns() == [k]
        with torch.no_grad():
            torch.testing.assert_close(single(x), column(x))
            torch.testing.assert_close(single.extract_column(k)(x), column(x))
    assert sub.anytime_columns() == []
    with pytest.raises(ValueError, match="column=1 is not kept in every block"):
        sub(x, column=1)


def test_extract_paths_reestimates_bn_statistics_through_the_sub_fractal() -> None:
    model = _moved()
    parent = {n: b.clone() for n, b in model.named_buffers()}
    batches = [_x(16) for _ in range(2)]
    sub = model.extract_paths(PATHS, bn_batches=batches)
    assert all(torch.equal(b, parent[n]) for n, b in model.named_buffers())  # the supernet is untouched
    stale = model.extract_paths(PATHS)
    with torch.no_grad():
        # block 0's column 3 reads the image at its first unit (step 2): its BN mean is the exact batch average
        unit = sub.blocks[0].steps[1].conv_of(2)
        expected = torch.stack([unit.conv(x).mean((0, 2, 3)) for x in batches]).mean(0)
    torch.testing.assert_close(unit.bn.running_mean, expected)
    changed = [n for n, b in sub.named_buffers() if "running_mean" in n and not torch.equal(b, stale.state_dict()[n])]
    assert len(changed) == sum(1 for n in stale.state_dict() if n.endswith("running_mean"))  # every BN on the path
    reestimate_bn_stats(stale, batches)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(stale(x), sub(x))


def test_sub_fractal_drop_path_and_uniform_sampling_stay_within_the_kept_columns() -> None:
    """A sub-fractal trains with drop-path on its own joins; a supernet draws a uniform non-empty column subset per
    block, over all 2^C - 1 of them, then drops paths within it."""
    torch.manual_seed(0)
    sub = timm.create_model("fractalnet_c4", drop_path_rate=0.3, paths=PATHS, path_sampling="uniform", **TINY).train()
    supernet = timm.create_model("fractalnet_c4", path_sampling="uniform", **TINY).train()
    seen: dict[tuple[bool, ...], int] = {}
    for _ in range(600):
        for block, keep in zip(sub.blocks, sub._sample_plan(torch.device("cpu")), strict=True):
            active = {c for step in block.needed(keep) for c, on in enumerate(step) if on}
            assert active and all(block.kept[c] for c in active)
        plan = supernet._sample_plan(torch.device("cpu"))
        block = supernet.blocks[0]
        needed = block.needed(plan[0])
        columns = tuple(any(step[c] for step in needed) for c in range(4))
        seen[columns] = seen.get(columns, 0) + 1
    assert len(seen) == 15 and min(seen.values()) > 600 / 15 / 2  # every non-empty subset, about uniformly
    # without drop-path a sampled subset is exactly a sub-fractal: every kept column's units run
    for columns in seen:
        assert any(columns)
    with pytest.raises(ValueError, match="path_sampling='spos'"):
        supernet.set_regularization(path_sampling="spos")


@pytest.mark.parametrize(("paths", "match"), [
    ([[1]] * 4, r"paths=\[\[1\], \[1\], \[1\], \[1\]\] must give each of the 5 blocks"),
    ([[1], [], [1], [1], [1]], r"block 1 keeps \[\]"),
    ([[0]] * 5, r"block 0 keeps \[0\].*in 1..4"),
    ([[5]] * 5, r"block 0 keeps \[5\]"),
    ([[1, 1]] * 5, r"block 0 keeps \[1, 1\]"),
    ("1234", "paths='1234'"),
    ([[True]] * 5, r"block 0 keeps \[True\]"),
])
def test_bad_paths_are_one_line_errors_naming_the_value(paths, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        timm.create_model("fractalnet_c4", paths=paths, **TINY)
    assert "\n" not in str(info.value)


def test_sub_fractal_round_trips_through_a_timm_folder(tmp_path) -> None:
    """``paths`` is a constructor argument timm records, so a saved sub-fractal rebuilds from its config.json."""
    from timm.models import save_for_hf

    sub = _moved().extract_paths(PATHS, bn_batches=[_x(8)])
    save_for_hf(sub, tmp_path, safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert loaded.paths == sub.paths and _conv_units(loaded) == _conv_units(sub)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub(x))


def test_extract_paths_of_a_sub_fractal_stays_within_it() -> None:
    sub = _moved().extract_paths(PATHS)
    inner = sub.extract_paths([[3], [2], [1, 4], [4], [2]])
    assert _conv_units(inner) == 4 + 2 + 9 + 8 + 2
    with pytest.raises(ValueError, match=r"block 0 keeps column\(s\) \[2\], which this sub-fractal does not have"):
        sub.extract_paths([[2]] * 5)


# ---- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_columns=0), "num_columns=0"),
    (dict(num_blocks=0, widths=()), "num_blocks=0"),
    (dict(widths=(8, 8)), r"widths=\(8, 8\).*5"),
    (dict(join="median"), "join='median'"),
    (dict(drop_path_rate=1.0), r"drop_path_rate=1.0.*\[0, 1\)"),
    (dict(drop_rate=-0.1), "drop_rate=-0.1"),
    (dict(global_drop_fraction=1.5), r"global_drop_fraction=1.5.*\[0, 1\]"),
    (dict(block_dropout=(0, 0, 0, 0, 2)), r"block_dropout\[4\]=2"),
    (dict(block_dropout=(0.1,)), "block_dropout=.*5 entries"),
    (dict(img_size=16), "img_size=16 is too small"),
])
def test_bad_arguments_name_the_argument_and_range(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        timm.create_model("fractalnet_c2", **kwargs)


def test_input_too_small_and_bad_column_are_value_errors() -> None:
    model = timm.create_model("fractalnet_c2", **TINY).eval()
    with pytest.raises(ValueError, match=r"input of size \(16, 16\) is too small.*32x32"):
        model(_x(1, 16))
    with pytest.raises(ValueError, match="column=3 is outside 1..2"):
        model(_x(1), column=3)
    with pytest.raises(ValueError, match="column=0"):
        model.extract_column(0)
    assert math.isclose(sum(paper_block_dropout(5)), 1.0)


def test_generic_fractalnet_takes_any_layout_and_names_the_convs_that_read_the_image() -> None:
    """``fractalnet`` takes every FractalNet argument (defaults: fractalnet_c3's layout); its cfg's first convs, which
    timm adapts to ``in_chans``, follow num_columns, the first block's kept columns and the stem."""
    assert timm.create_model("fractalnet").state_dict().keys() == timm.create_model("fractalnet_c3").state_dict().keys()
    for kwargs in (dict(num_columns=4), dict(num_columns=4, paths=[[2, 4]] + [[1]] * 4),
                   dict(num_blocks=4, widths=(8,) * 4, stem="resnet", stem_width=8, downsample_last=False)):
        model = timm.create_model("fractalnet", **{**TINY, **kwargs})
        first_conv = model.pretrained_cfg["first_conv"]
        first_convs = {first_conv} if isinstance(first_conv, str) else set(first_conv)
        assert first_convs == {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3}


def test_timm_train_script_model_creation() -> None:
    """timm's train.py (``--device-modules fractal_space``) imports us, then creates the model like this."""
    import importlib

    importlib.import_module("fractal_space")
    model = timm.create_model(
        "fractalnet_c2", pretrained=False, in_chans=3, num_classes=10, drop_rate=0.1, drop_path_rate=0.15,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False, checkpoint_path="",
    )
    assert model.drop_path_rate == 0.15 and model.head.drop.p == 0.1
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["crop_pct"] == 1.0


def test_torchscript_runs_drop_path_like_eager() -> None:
    model = _model_with_drop_path(num_columns=3).train()
    scripted = torch.jit.script(model)
    x = _x()
    for seed in range(3):
        torch.manual_seed(seed)
        expected = model(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(scripted(x), expected)
    model.eval()  # refreshes the all-paths BN statistics, which the scripted copy shares
    torch.testing.assert_close(scripted.eval()(x, 2), model(x, column=2))


def test_set_regularization_matches_construction_and_validates() -> None:
    """The engine's paper preset sets drop-path and block dropout on a built model instead of building it twice."""
    torch.manual_seed(0)
    built = timm.create_model("fractalnet_c2", drop_path_rate=0.15, global_drop_fraction=0.3,
                              block_dropout=paper_block_dropout(5), **TINY)
    torch.manual_seed(0)
    preset = timm.create_model("fractalnet_c2", **TINY)
    preset.set_regularization(drop_path_rate=0.15, global_drop_fraction=0.3, block_dropout=paper_block_dropout(5))
    assert repr(preset) == repr(built)
    assert (preset.drop_path_rate, preset.global_drop_fraction) == (0.15, 0.3)
    x = _x()
    for seed in range(3):
        torch.manual_seed(seed)
        expected = built.train()(x)
        torch.manual_seed(seed)
        torch.testing.assert_close(preset.train()(x), expected)
    with pytest.raises(ValueError, match=r"drop_path_rate=1.5"):
        preset.set_regularization(drop_path_rate=1.5)
    with pytest.raises(ValueError, match="block_dropout=.*5 entries"):
        preset.set_regularization(block_dropout=(0.1,))
    preset.set_regularization(block_dropout=(0.0,) * 5)
    assert all(isinstance(block.drop, nn.Identity) for block in preset.blocks)


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_join_in_eager_inference_sums_in_place_with_the_same_result_and_leaves_its_inputs_alone(mode):
    """Eager inference joins in place (one output buffer); autograd, FX and tracing get the out-of-place ops."""
    xs = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    copies = [x.clone() for x in xs]
    join = Join(mode)
    for n in (2, 3, 4):
        with torch.no_grad():
            fast = join(xs[:n], list(range(n)))
        reference = join([x.clone().requires_grad_() for x in xs[:n]], list(range(n)))
        assert torch.equal(fast, reference.detach())
        assert all(torch.equal(x, c) for x, c in zip(xs, copies, strict=True))
    class Three(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.join = join

        def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return self.join([a, b, c], [0, 1, 2])

    traced = torch.fx.symbolic_trace(Three())
    assert sum(node.target is operator.add for node in traced.graph.nodes) == 2  # no in-place op lost to FX
    with torch.no_grad():
        assert torch.equal(traced(*xs[:3]), join(xs[:3], [0, 1, 2]))
