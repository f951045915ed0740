"""The timm model contract, checked the way timm's own test-suite does, for every model this project registers.

Each registered variant of every family must behave like a timm model everywhere timm (and our engine) touches it:
pretrained cfg, heads, features, intermediates, pruning, grad checkpointing, TorchScript, FX, device/dtype and weight
loading. Models are built with their variant's layout but small widths or depths (``SMALL_KWARGS``), batch 2 at the
cfg's input size, to keep this fast on 2 cores.
"""

import copy

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import create_feature_extractor, get_graph_node_names, group_parameters, model_entrypoint

import fractal_space  # noqa: F401  (registers the models)

# every model fractal_space registers with timm, whichever family module it comes from
CONTRACT_MODELS = [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("fractal_space.")]
IMAGENET_MODELS = {"fractalnet34"}
# constructor overrides that shrink a model for these checks (the contract is the code's, not the width's); each
# variant keeps its layout: FractalNet its blocks, columns and stem, the DenseNets their growth rate and transitions
# (tracing and scripting cost grows with the number of modules, so depth is cut too): fractalnet_c3 keeps the full
# five-block CIFAR layout, fractalnet34 its ImageNet layout, the other CIFAR FractalNets two blocks of their columns
# (the cfg's pool size follows), ResNet-20 its depth and the deeper ResNets two blocks in the first stage, one after.
_TWO_BLOCKS = dict(num_blocks=2, widths=(8, 16), pretrained_cfg_overlay=dict(pool_size=(8, 8)))
SMALL_KWARGS = {
    **{n: _TWO_BLOCKS for n in CONTRACT_MODELS if n.startswith("fractalnet")},
    "fractalnet_c3": dict(widths=(8, 8, 16, 16, 16)),
    "fractalnet34": dict(widths=(8, 8, 16, 16), stem_width=8),
    "fractalnet_plain": dict(_TWO_BLOCKS, convs_per_block=2, concat_join=True),  # every layer kind of a column
    **{n: dict(depths=(2, 1, 1)) for n in CONTRACT_MODELS if n.startswith("resnet") and n != "resnet20_cifar"},
    **{n: dict(block_depth=2) for n in CONTRACT_MODELS if n.startswith("densenet")},
}
# extra cases built from a registered model: a sub-fractal (FractalNet ``paths``), only its kept columns built, whose
# joins merge fewer inputs than the step has columns (block 0 keeps columns 1 and 3, block 1 columns 2 and 3)
SUB_FRACTAL = "fractalnet_c3[paths]"
CASES = {SUB_FRACTAL: ("fractalnet_c3", dict(_TWO_BLOCKS, paths=[[1, 3], [2, 3]]))}
# models without residual branches or joins take no drop_path_rate (timm's own DenseNet does not either)
NO_DROP_PATH = {n for n in CONTRACT_MODELS if n.startswith("densenet")} | {"fractalnet_plain"}

BATCH = 2
torch.manual_seed(0)


def _create(name: str, **kwargs) -> torch.nn.Module:
    """The registered model (or extra case), shrunk by ``SMALL_KWARGS`` where listed."""
    model, small = CASES.get(name, (name, SMALL_KWARGS.get(name, {})))
    return timm.create_model(model, **{**small, **kwargs})  # pretrained_cfg_overlay: kwargs win


def _input(model: torch.nn.Module) -> torch.Tensor:
    """A random batch of the model's default input size."""
    return torch.randn(BATCH, *model.pretrained_cfg["input_size"])


def _first_convs(model: torch.nn.Module) -> tuple[str, ...]:
    """timm allows several first convs (a FractalNet's columns all read the image)."""
    first_conv = model.pretrained_cfg["first_conv"]
    return (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(params=CONTRACT_MODELS + list(CASES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# C=5 and C=6 unroll 16 and 32 steps per block: tracing, scripting and feature extraction cost grows with the module
# count (C=6 alone took ~50 s of these tests on 2 shared cores), and their code is C=4's. Those checks run with -m slow.
HEAVY_TO_TRACE = {"fractalnet_c5", "fractalnet_c6"}


@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_TO_TRACE else n
                        for n in CONTRACT_MODELS + list(CASES)])
def traced_name(request: pytest.FixtureRequest) -> str:
    """A registered model for the tracing and scripting checks (the deepest FractalNets in the slow suite)."""
    return request.param


def test_pretrained_cfg_matches_model(name: str) -> None:
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == ((3, 224, 224) if name in IMAGENET_MODELS else (3, 32, 32))
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["num_classes"] == model.num_classes
    state_dict = model.state_dict()
    for conv_name in _first_convs(model):  # timm adapts these to in_chans
        conv = model.get_submodule(conv_name)
        assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == 3
        assert conv_name + ".weight" in state_dict  # what timm's loader adapts
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert cfg["classifier"] + ".weight" in state_dict
    with torch.no_grad():
        feats = model.forward_features(_input(model))
    assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
    assert feats.shape[1] == model.num_features


def test_device_and_dtype_build_parameters_there(name: str) -> None:
    """timm's factory kwargs: parameters and buffers are created on ``device`` in ``dtype``, not moved afterwards."""
    meta = _create(name, device="meta")
    assert {t.device.type for t in meta.state_dict().values()} == {"meta"}
    model = _create(name, device="cpu", dtype=torch.bfloat16).eval()
    floats = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    assert floats == {torch.bfloat16}
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(_input(model).bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (BATCH, 3) and torch.isfinite(out).all()


def test_constructor_args_and_heads(name: str) -> None:
    model = _create(name, in_chans=1, num_classes=7, drop_rate=0.2, global_pool="catavgmax").eval()
    x = torch.randn(BATCH, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (BATCH, 7)
        feats = model.forward_features(x)
        pre_logits = model.forward_head(feats, pre_logits=True)
    assert pre_logits.shape == (BATCH, model.head_hidden_size)
    assert model.head_hidden_size == 2 * model.num_features  # catavgmax concatenates avg and max


def test_reset_classifier(name: str) -> None:
    model = _create(name).eval()
    x = _input(model)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(x).shape == (BATCH, 5)
        model.reset_classifier(0)
        assert model(x).shape == (BATCH, model.num_features)
        model.reset_classifier(0, "")
        out = model(x)
        _assert_close(out, model.forward_features(x))
    assert out.ndim == 4


def test_backward_reaches_every_parameter(name: str) -> None:
    model = _create(name, num_classes=42).train()
    out = model(_input(model))
    assert out.shape == (BATCH, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_group_matcher_covers_every_parameter(name: str) -> None:
    model = _create(name)
    all_names = sorted(n for n, _ in model.named_parameters())
    sizes = {}
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for names in groups.values() for n in names) == all_names
        head = [n for n in all_names if n.startswith(model.pretrained_cfg["classifier"] + ".")]
        assert head and set(head) <= set(groups[max(groups)])  # the classifier is the last group (layer decay)
        sizes[coarse] = len(groups)
    assert sizes[True] >= 3 and sizes[False] >= sizes[True]
    assert sizes[False] > sizes[True] or name == "fractalnet_c1"  # C=1: one conv per block, fine = coarse


def test_grad_checkpointing_gives_same_outputs_and_grads(name: str) -> None:
    torch.manual_seed(0)
    model = _create(name).train()
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing(True)
    x = _input(model)
    with torch.no_grad():  # before training: the recomputed forward updates batch-norm statistics a second time
        _assert_close(model.eval().forward_intermediates(x)[0], ckpt.eval().forward_intermediates(x)[0])
    results = []
    for m in (model.train(), ckpt.train()):
        out = m(x)
        out.sum().backward()
        results.append((out, [p.grad for p in m.parameters()]))
    _assert_close(results[0][0], results[1][0])
    for g, g_ckpt in zip(results[0][1], results[1][1], strict=True):
        _assert_close(g, g_ckpt)


def test_forward_intermediates(name: str) -> None:
    model = _create(name).eval()
    x = _input(model)
    size = x.shape[-1]
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        _assert_close(final, model.forward_features(x))
        assert len(intermediates) == len(model.feature_info)
        for feat, info in zip(intermediates, model.feature_info, strict=True):
            assert feat.shape == (BATCH, info["num_chs"], size // info["reduction"], size // info["reduction"])
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(only) == 2
        for a, b in zip(only, intermediates[-2:], strict=True):
            _assert_close(a, b)
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        _assert_close(first[0], intermediates[0])


def test_prune_intermediate_layers(name: str) -> None:
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        kept = model.prune_intermediate_layers(indices=[0, 1])
        assert kept == [0, 1]
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for a, b in zip(pruned, full[:2], strict=True):
            _assert_close(a, b)
        # features now end at the last kept tap and the head is gone: forward returns that feature map
        _assert_close(model(x), full[1])
    assert model.num_features == model.feature_info[1]["num_chs"]


def test_features_only(traced_name: str) -> None:
    name = traced_name
    torch.manual_seed(0)
    reference = _create(name).eval()
    x = _input(reference)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        for extractor in ({}, {"feature_cls": "fx"}):  # timm's default module wrapper and its FX-graph extractor
            torch.manual_seed(0)  # same seed, same weights
            model = _create(name, features_only=True, **extractor).eval()
            feats = model(x)
            assert len(feats) == len(reference.feature_info)  # every stage by default
            assert [f.shape[1] for f in feats] == model.feature_info.channels()
            assert [x.shape[-1] // f.shape[-1] for f in feats] == model.feature_info.reduction()
            for a, b in zip(feats, expected, strict=True):
                _assert_close(a, b)


def test_torchscript_matches_eager(traced_name: str) -> None:
    name = traced_name
    model = _create(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # as timm's tests: no JIT optimisation passes
        _assert_close(scripted(x), model(x))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fx_trace_matches_eager_and_scripts(traced_name: str, train: bool) -> None:
    """timm's FX feature extractor gives the eager outputs; in eval mode under ``torch.inference_mode()`` bit for bit,
    as timm's ``test_model_forward_fx`` demands (eager inference folds batch norms and sums joins in place, and the
    traced graph must do the same arithmetic). In eval mode a plain symbolic trace scripts and gives the eager outputs
    too (quantisation flows and timm's own tests trace, then script; compiling twice would double this file's cost)."""
    model = _create(traced_name).train(train)
    train_nodes, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, [(train_nodes if train else eval_nodes)[-1]]).train(train)
    x = _input(model)
    if not train:
        with torch.inference_mode():
            (fx_out,) = fx_model(x).values()
            assert torch.equal(fx_out, model(x))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        (fx_out,) = fx_model(x).values()
        _assert_close(fx_out, model(x))
        if not train:
            _assert_close(torch.jit.script(torch.fx.symbolic_trace(model))(x), model(x))


def test_drop_path_is_stochastic_only_in_training(name: str) -> None:
    if name in NO_DROP_PATH:
        with pytest.raises(TypeError):
            _create(name, drop_path_rate=0.1)
        return
    model = _create(name, drop_path_rate=0.5)
    x = _input(model)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.train()(x)
        torch.manual_seed(1)
        # one column has no joins, so there is nothing to drop
        assert torch.allclose(a, model(x)) == (getattr(model, "num_columns", None) == 1)
        _assert_close(model.eval()(x), model(x))


def test_safetensors_weights_load_through_pretrained_cfg(name: str, tmp_path) -> None:
    model = _create(name).eval()
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = _input(model)
    with torch.no_grad():
        _assert_close(loaded(x), model(x))
