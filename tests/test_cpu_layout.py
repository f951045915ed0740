"""Per-block memory layout and the per-tap weight gradient: same numbers as plain PyTorch, chosen where measured."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import symbolic_trace

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.models import cpu_conv
from fractal_space.models.cpu_conv import SmallMapConv2d, conv2d_tap_wgrad, cpu_prefers_channels_last

CL = torch.channels_last


def _layouts(model: nn.Module) -> list[bool]:
    """Per block: is its first conv weight channels_last (what oneDNN keys its layout on)?"""
    return [block.steps[0].convs[0].conv.weight.is_contiguous(memory_format=CL) for block in model.blocks]


def test_layout_rule_follows_the_measurements() -> None:
    assert cpu_prefers_channels_last(128, (2, 2))  # narrow: channels_last at any size
    assert cpu_prefers_channels_last(512, (8, 8))  # 8x8 and up: channels_last at any width
    assert not cpu_prefers_channels_last(256, (4, 4))  # wide on tiny maps: NCHW
    assert not cpu_prefers_channels_last(512, (2, 2))


def test_auto_layout_picks_per_block_and_keeps_the_outputs() -> None:
    """The paper's 20-layer widths on 32x32 inputs: blocks at 4x4 and 2x2 with 512 channels go NCHW."""
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", widths=(8, 16, 32, 256, 256), num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model.set_memory_format("auto")  # input size from the pretrained_cfg: 32x32
    assert [block.channels_last for block in model.blocks] == [True, True, True, False, False]
    assert _layouts(model) == [True, True, True, False, False]
    for inputs in (x, x.contiguous(memory_format=CL)):
        torch.testing.assert_close(model(inputs), expected)
    model.set_memory_format("auto", input_size=64)  # 8x8 at block 4 now: channels_last
    assert _layouts(model) == [True, True, True, True, False]
    model.set_memory_format("contiguous")
    assert _layouts(model) == [False] * 5
    torch.testing.assert_close(model(x.contiguous(memory_format=CL)), expected)


def test_auto_layout_at_reduced_widths_is_channels_last_everywhere() -> None:
    model = timm.create_model("fractalnet_c4")
    model.set_memory_format("auto")
    assert _layouts(model) == [True] * 5


def test_auto_layout_keeps_torchscript_and_fx_equal_to_eager() -> None:
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c2", num_blocks=2, widths=(8, 256), img_size=8, num_classes=5).eval()
    model.set_memory_format("auto", input_size=8)  # block 2 sees 4x4 maps at width 256: NCHW
    assert _layouts(model) == [True, False]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    torch.testing.assert_close(symbolic_trace(model)(x), model(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(memory_format="cl"), r"memory_format='cl' is not one of"),
    (dict(input_size=(16, 16)), r"input_size=\(16, 16\) must be \(H, W\), each an integer >= 32"),
    (dict(input_size=(32, 32, 3)), r"input_size=\(32, 32, 3\) must be \(H, W\)"),
])
def test_set_memory_format_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        timm.create_model("fractalnet_c1").set_memory_format(**kwargs)


@pytest.mark.parametrize("size, in_chs, out_chs, taps", [
    (2, 512, 512, True), (4, 256, 512, True), (2, 128, 128, True), (1, 256, 256, True), (3, 256, 256, True),
    (4, 128, 128, False), (8, 512, 512, False), (2, 64, 64, False),
])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_small_map_conv_trains_like_nn_conv2d(size: int, in_chs: int, out_chs: int, taps: bool, memory_format) -> None:
    """Same forward, input gradient and weight gradient (values and layout) as nn.Conv2d; the per-tap weight gradient
    only where in x out channels reach 4096 per pixel on maps of 4x4 and smaller (1x1 and odd sizes included)."""
    torch.manual_seed(0)
    conv = SmallMapConv2d(in_chs, out_chs).to(memory_format=memory_format)
    ref = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False).to(memory_format=memory_format)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(3, in_chs, size, size).contiguous(memory_format=memory_format).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = conv(x), ref(x_ref)
    assert (type(out.grad_fn).__name__ == "_TapWeightGradBackward") == taps
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert conv.weight.grad.stride() == ref.weight.grad.stride()


@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (0, 1)])
def test_tap_weight_grad_without_input_grad_matches_autograd(padding: tuple[int, int]) -> None:
    """Only the weight's gradient when the input needs none (the image before a first conv); any padding."""
    torch.manual_seed(0)
    weight = torch.randn(512, 512, 3, 3, requires_grad=True)
    x = torch.randn(2, 512, 4, 4)
    out = conv2d_tap_wgrad(x, weight, padding)
    assert type(out.grad_fn).__name__ == "_TapWeightGradBackward"
    grad = torch.randn_like(out)
    out.backward(grad)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0],
                                                   1, [False, True, False])[1]
    torch.testing.assert_close(weight.grad, expected, rtol=1e-4, atol=1e-4)


def test_small_map_conv_is_plain_in_eval_scriptable_and_an_fx_leaf() -> None:
    conv = SmallMapConv2d(512, 512)
    x = torch.randn(2, 512, 2, 2)
    with torch.no_grad():
        assert conv(x).grad_fn is None
    torch.testing.assert_close(torch.jit.script(conv)(x), F.conv2d(x, conv.weight, padding=1))
    graph = symbolic_trace(conv)
    assert any(n.op == "call_function" and n.target.__name__ == "conv2d_tap_wgrad" for n in graph.graph.nodes)
    out = graph(x.requires_grad_())
    assert type(out.grad_fn).__name__ == "_TapWeightGradBackward"


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=["fp32-input", "bf16-input"])
def test_tap_weight_grad_under_cpu_bf16_autocast(in_dtype: torch.dtype) -> None:
    """Under torch.autocast('cpu', bfloat16) the per-tap path computes in bf16 like F.conv2d would, returns each
    gradient in its input's dtype, and matches oneDNN's bf16 conv (fp32 within bf16 tolerance)."""
    torch.manual_seed(0)
    weight = torch.randn(256, 256, 3, 3, requires_grad=True)
    x = torch.randn(4, 256, 2, 2).to(in_dtype).requires_grad_()
    grads = {}
    for name, conv in (("taps", conv2d_tap_wgrad), ("onednn", F.conv2d)):
        weight.grad = x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x, weight, padding=(1, 1))
        assert out.dtype == torch.bfloat16
        if name == "taps":
            assert type(out.grad_fn).__name__ == "_TapWeightGradBackward"
        out.float().square().mean().backward()
        assert weight.grad.dtype == torch.float32 and x.grad.dtype == in_dtype
        grads[name] = weight.grad.clone(), x.grad.clone()
    for taps, onednn in zip(grads["taps"], grads["onednn"], strict=True):
        assert torch.isfinite(taps).all()
        torch.testing.assert_close(taps.float(), onednn.float(), rtol=2e-2, atol=2e-2 * onednn.abs().max().item())


def test_fractalnet_trains_under_cpu_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A train step under bf16 autocast, with a block on 2x2 maps wide enough for the per-tap weight gradient:
    finite gradients, as close to fp32's as PyTorch's own bf16 convs get, and the wide conv's equal to oneDNN's."""
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c2", widths=(8, 8, 8, 8, 128)).train()
    wide = model.blocks[4].steps[1].convs[1].conv.weight  # 128 x 128 on 2x2 maps: the per-tap weight gradient
    x = torch.randn(8, 3, 32, 32)

    def grads(amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), wide.grad.clone()

    fp32, _ = grads(False)
    taps, taps_wide = grads(True)
    monkeypatch.setattr(cpu_conv, "TAPS_MAX_PIXELS", 0)  # oneDNN's bf16 weight gradient everywhere
    onednn, onednn_wide = grads(True)
    assert torch.isfinite(taps).all()
    torch.testing.assert_close(taps_wide, onednn_wide, rtol=2e-2, atol=2e-2 * onednn_wide.abs().max().item())
    # bf16 keeps 8 bits of mantissa: measured cosine 0.98 to fp32 for both paths on this tiny random batch
    assert F.cosine_similarity(taps, fp32, dim=0) >= F.cosine_similarity(onednn, fp32, dim=0) - 1e-3 > 0.95
