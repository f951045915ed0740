"""The CIFAR baselines are the papers' architectures: parameter counts, depth, shortcuts and channel arithmetic."""

import math

import pytest
import timm
import torch
from timm.models.densenet import DenseLayer
from torch import nn

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.models.resnet_cifar import ZeroPadShortcut


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (name, the paper's count in millions, printed precision, the reference implementations' exact count)
PAPER_COUNTS = [
    ("resnet20_cifar", 0.27, 2, 269_722),
    ("resnet32_cifar", 0.46, 2, 464_154),
    ("resnet44_cifar", 0.66, 2, 658_586),
    ("resnet56_cifar", 0.85, 2, 853_018),
    ("resnet110_cifar", 1.7, 1, 1_727_962),
    ("densenet_bc100_cifar", 0.8, 1, 769_162),
    ("densenet_bc250_cifar", 15.3, 1, 15_324_406),
]


@pytest.mark.parametrize("name,paper_m,digits,exact", PAPER_COUNTS, ids=[c[0] for c in PAPER_COUNTS])
def test_parameter_count_matches_paper(name: str, paper_m: float, digits: int, exact: int) -> None:
    """At 10 classes: exactly the reference count, and the paper's figure at the precision the paper prints."""
    with torch.device("meta"):  # counts only, no memory or init time (DenseNet-BC-250 has 15M parameters)
        count = _params(timm.create_model(name, num_classes=10))
    assert count == exact
    assert round(count / 1e6, digits) == paper_m


@pytest.mark.parametrize("name", ["resnet20_cifar", "resnet56_cifar", "resnet110_cifar", "densenet_bc250_cifar"])
def test_parameter_count_within_3_percent_of_paper(name: str) -> None:
    paper_m = {n: m for n, m, _, _ in PAPER_COUNTS}[name]
    with torch.device("meta"):
        count = _params(timm.create_model(name))
    assert abs(count / 1e6 - paper_m) / paper_m <= 0.03


def test_densenet_bc100_paper_count_is_the_cifar100_head() -> None:
    """The paper's 0.8M for DenseNet-BC-100 is within 3% only with CIFAR-100's 100-way classifier (0.77M at 10)."""
    with torch.device("meta"):
        count = _params(timm.create_model("densenet_bc100_cifar", num_classes=100))
    assert abs(count / 1e6 - 0.8) / 0.8 <= 0.03


def _weighted_layers(model: nn.Module) -> int:
    """Depth as the papers count it: convolutions and the classifier, not the shortcut projections."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".downsample" not in n]
    return len(convs) + 1


@pytest.mark.parametrize(
    "name,depth",
    [("resnet20_cifar", 20), ("resnet56_cifar", 56), ("resnet110_cifar", 110), ("densenet_bc100_cifar", 100)],
)
def test_depth(name: str, depth: int) -> None:
    with torch.device("meta"):
        assert _weighted_layers(timm.create_model(name)) == depth


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()


def test_option_a_adds_no_parameters_and_option_b_adds_projections() -> None:
    a = timm.create_model("resnet20_cifar")
    b = timm.create_model("resnet20_cifar", shortcut_type="B")
    assert not any(".downsample" in n for n, _ in a.named_parameters())
    # two 1x1 conv + BN projections: 16->32 and 32->64
    assert _params(b) - _params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    with pytest.raises(ValueError, match="shortcut_type"):
        timm.create_model("resnet20_cifar", shortcut_type="C")


def test_option_a_block_is_identity_plus_residual() -> None:
    """With the residual branch zeroed (last BN scale 0), a widening block outputs relu(zero-padded subsample)."""
    model = timm.create_model("resnet20_cifar").eval()
    block = model.stages[1][0]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        out = block(x)
    expected = torch.zeros(2, 32, 16, 16)
    expected[:, :16] = x[:, :, ::2, ::2].relu()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name,shape", [("resnet20_cifar", (64, 8, 8)), ("densenet_bc100_cifar", (342, 8, 8))])
def test_shapes(name: str, shape: tuple[int, int, int]) -> None:
    model = timm.create_model(name).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feats = model.forward_features(x)
        assert feats.shape == (2, *shape)
        assert model.forward_head(feats).shape == (2, 10)
    assert [f["reduction"] for f in model.feature_info] == [1, 2, 4]


@pytest.mark.parametrize("depth,k", [(100, 12), (250, 24)])
def test_densenet_channel_arithmetic(depth: int, k: int) -> None:
    """2k stem channels, +k per layer, n = (L - 4) / 6 layers per block, transitions keep floor(0.5 * c)."""
    n = (depth - 4) // 6
    expected, chs = [], 2 * k
    for i in range(3):
        if i > 0:
            chs = math.floor(0.5 * chs)
        chs += n * k
        expected.append(chs)
    with torch.device("meta"):
        model = timm.create_model(f"densenet_bc{depth}_cifar")
    assert [f["num_chs"] for f in model.feature_info] == expected
    assert model.num_features == expected[-1]
    layers = [m for m in model.modules() if isinstance(m, DenseLayer)]  # timm's layer (folding subclasses it)
    assert len(layers) == 3 * n
    assert all(layer.conv1.out_channels == 4 * k and layer.conv2.out_channels == k for layer in layers)
