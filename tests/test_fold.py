"""Eval-mode batch-norm folding (models/fold.py): same outputs as conv -> BN, the BN really skipped, never stale,
autograd untouched, and timm's reparameterize_model route."""

import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.models.fold import FoldCache, FoldedConvNormAct

# one small case per family; each has convs whose BN folds (FractalNet units, ResNet blocks, DenseNet bottlenecks)
CASES = {
    "fractalnet_c2": dict(num_blocks=2, widths=(8, 16), drop_path_rate=0.15),
    "fractalnet_plain": dict(num_blocks=2, widths=(8, 16), convs_per_block=2),
    "resnet20_cifar": dict(depths=(1, 1, 1), channels=(8, 16, 16)),
    "densenet_bc100_cifar": dict(block_depth=2, growth_rate=4),
}
X = torch.randn(2, 3, 16, 16)  # small maps keep it cheap; every family takes them


def _trained(name: str) -> nn.Module:
    """A fresh copy of the model after two SGD steps (BN statistics and weights no longer their initial values)."""
    return copy.deepcopy(_train_once(name)).eval()


@functools.cache
def _train_once(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **CASES[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(X).logsumexp(1).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)  # no gradients left for a test to mistake for its own
    return model.eval()


def _unfolded(model: nn.Module) -> torch.Tensor:
    """The conv -> BN reference: with autograd on, nothing folds."""
    with torch.enable_grad():
        return model(X).detach()


def _bn_calls(model: nn.Module) -> list[int]:
    """A counter of batch-norm forward calls, via hooks."""
    calls = [0]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _unfoldable(model: nn.Module) -> int:
    """BNs no conv precedes: ResNet's stem BN follows its conv but stays (the stem is timm's plain Sequential);
    DenseNet's norm1, transition and final norms normalise before a ReLU and a conv."""
    return sum(1 for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
               and (n.endswith(("norm1", "transition.norm")) or n in ("norm_pre", "stem.1")))


@pytest.mark.parametrize("name", CASES)
def test_eval_inference_folds_and_matches_conv_bn(name: str) -> None:
    model = _trained(name)
    reference = _unfolded(model)
    calls = _bn_calls(model)
    with torch.no_grad():
        folded = model(X)
    with torch.inference_mode():
        torch.testing.assert_close(model(X), folded)
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
    assert calls[0] == 2 * _unfoldable(model) < 2 * _batch_norms(model)  # folded BNs never ran (two inferences)


@pytest.mark.parametrize("name", ["fractalnet_c2", "resnet20_cifar"])
def test_folded_weights_follow_every_change(name: str) -> None:
    model = _trained(name)
    with torch.no_grad():
        model(X)  # fold now, then change the weights under it in three ways
        for p in model.parameters():  # an in-place update, as an optimizer step in eval mode makes
            p.mul_(1.1)
    with torch.no_grad():
        torch.testing.assert_close(model(X), _unfolded(model), rtol=1e-5, atol=1e-5)
    other = _trained(name)
    model.load_state_dict({k: v * 0.9 if v.is_floating_point() else v for k, v in other.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(model(X), _unfolded(model), rtol=1e-5, atol=1e-5)
    model.train()  # drop-path steps, then eval(): a FractalNet re-estimates its BN statistics on eval()
    model(X).sum().backward()
    assert all(c.value is None for m in model.modules() for c in vars(m).values() if isinstance(c, FoldCache))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), _unfolded(model), rtol=1e-5, atol=1e-5)


def test_eval_mode_with_autograd_trains_the_conv_and_bn() -> None:
    """Fine-tuning with frozen BN statistics (eval mode, autograd on) must reach conv and BN parameters."""
    model = _trained("fractalnet_c2")
    model(X).sum().backward()
    unit = model.blocks[0].steps[0].convs[0]
    assert isinstance(unit, FoldedConvNormAct)
    assert unit.conv.weight.grad is not None and unit.bn.weight.grad is not None


@pytest.mark.parametrize("name", CASES)
def test_timm_reparameterize_model_gives_equal_outputs(name: str) -> None:
    model = _trained(name)
    with torch.no_grad():
        expected = model(X)
    fused = reparameterize_model(model)  # a deep copy: the model itself is untouched
    assert _batch_norms(model) > _batch_norms(fused) == _unfoldable(model)  # only the unfoldable BNs are left
    assert any(isinstance(m, nn.Conv2d) and m.bias is not None for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(X), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(X), _unfolded(fused), rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(fused)
    with torch.no_grad():
        torch.testing.assert_close(scripted(X), expected, rtol=1e-5, atol=1e-5)


def test_folded_weights_take_the_faster_cpu_layout_and_follow_conversions() -> None:
    model = _trained("resnet20_cifar")
    with torch.no_grad():
        model(X)
    weight, _ = model.stages[0][0].fold1.value
    assert weight.is_contiguous(memory_format=torch.channels_last)  # 8 channels on 16x16: channels_last on CPU
    model.double()  # replaces the tensors' data without a version bump
    x = X.double()
    with torch.no_grad():
        out = model(x)
    with torch.enable_grad():
        expected = model(x).detach()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
