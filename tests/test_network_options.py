"""The network options every CIFAR family takes: input patch whitening (``whiten``) and identity init (``dirac_init``),
off by default, on in the model, fitted and kept by the engine."""

import pytest
import timm
import torch
import torch.nn.functional as F
from small_data import tiny_dataset
from torch import nn

import fractal_space  # noqa: F401  (registers the families)
from fractal_space.data import load_splits
from fractal_space.engine import TrainConfig, Trainer
from fractal_space.engine.trainer import WHITENING_IMAGES, _export
from fractal_space.models.cifar import PatchWhitening, fit_whitening

FAMILIES = ("resnet20_cifar", "densenet_bc100_cifar", "fractalnet_c3", "fractalnet_plain")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_whitening_is_a_fixed_first_layer_that_only_widens_the_first_convs(name):
    plain = timm.create_model(name, num_classes=10)
    whitened = timm.create_model(name, num_classes=10, whiten=True)
    assert isinstance(plain.whiten, nn.Identity) and set(plain.state_dict()) == set(
        k for k in whitened.state_dict() if k != "whiten.weight")  # off by default: the network as it was
    assert isinstance(whitened.whiten, PatchWhitening) and whitened.whiten.weight.shape == (27, 3, 3, 3)
    assert "whiten.weight" not in dict(whitened.named_parameters())  # a buffer: nothing trains it
    first_convs = [whitened.get_submodule(n.rsplit(".", 1)[0]) for n, p in whitened.named_parameters()
                   if p.ndim == 4 and p.shape[1] == 27]
    assert first_convs and _params(whitened) - _params(plain) == sum(24 * c.weight[:, 0].numel() for c in first_convs)
    x = torch.randn(2, 3, 32, 32)
    assert whitened.eval()(x).shape == (2, 10)
    if name != "densenet_bc100_cifar":  # it shares ResNet's base class, the part features_only reads
        features = timm.create_model(name, whiten=True, features_only=True)
        assert [f.shape[1] for f in features(x)] == features.feature_info.channels()


def test_fitted_whitening_decorrelates_the_patches_of_real_images():
    data = load_splits(tiny_dataset(), val_size=100, train_subset=WHITENING_IMAGES, download=False, with_test=False)
    images = data.norm(data.train.images)
    whitening = PatchWhitening()
    assert torch.equal(whitening.weight.reshape(27, 27), torch.eye(27))  # the patch's pixels until fitted
    assert fit_whitening(nn.Sequential(whitening), images) == 1
    assert fit_whitening(nn.Conv2d(3, 8, 3), lambda: pytest.fail("images prepared for a model without whitening")) == 0
    patches = F.unfold(images, 3).transpose(1, 2).reshape(-1, 27)
    raw = torch.corrcoef(patches.T)
    assert raw[~torch.eye(27, dtype=torch.bool)].abs().max() > 0.8  # neighbouring pixels of an image correlate
    whitened = patches @ whitening.weight.reshape(27, 27).T
    covariance = whitened.T @ whitened / len(whitened)
    # decorrelated, each direction at variance eigenvalue / (eigenvalue + eps): near 1 for the strong directions,
    # damped for the faint ones (fine pixel noise) rather than amplified
    eigenvalues = torch.linalg.eigvalsh(patches.T.double() @ patches.double() / len(patches)).float()
    expected = eigenvalues / (eigenvalues + whitening.eps)
    assert torch.allclose(covariance, torch.diag(expected), atol=0.01) and expected[-12:].min() > 0.9


def test_the_engine_fits_whitening_once_keeps_it_through_training_resume_and_export(tmp_path):
    cfg = TrainConfig(model="fractalnet_c2", model_kwargs={"whiten": True, "dirac_init": True},
                      dataset=tiny_dataset(), train_subset=100, val_size=100, batch_size=50, epochs=1,
                      progress=False, download=False, num_threads=1, out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    fitted = trainer.model.whiten.weight.clone()
    assert not torch.equal(fitted.reshape(27, 27), torch.eye(27))
    list(trainer.epochs())
    assert torch.equal(trainer.model.whiten.weight, fitted)  # frozen while the rest trains
    resumed = Trainer(cfg)  # a later run on the same folder starts from the checkpoint
    assert resumed.epoch == 1 and torch.equal(resumed.model.whiten.weight, fitted)
    _export(resumed, tmp_path / "export")
    exported = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    x = resumed.bn_inputs()[0]
    with torch.no_grad():
        assert torch.equal(exported.whiten.weight, fitted)
        assert torch.allclose(exported(x), resumed.model.eval()(x), atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_dirac_init_starts_each_conv_as_an_identity_on_its_first_channels(name):
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=10)
    dirac = timm.create_model(name, num_classes=10, dirac_init=True)
    convs = [(n, m) for n, m in dirac.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for n, conv in convs:
        k = min(conv.in_channels, conv.out_channels)
        x = torch.randn(1, conv.in_channels, 8, 8)
        y = F.conv2d(x, conv.weight[:k], padding=conv.kernel_size[0] // 2)
        assert torch.allclose(y, x[:, :k]), n
        if conv.out_channels > conv.in_channels:  # the other filters keep the family's random init
            assert conv.weight[k:].abs().sum() > 0
    plain_conv = dict(plain.named_modules())[convs[-1][0]]
    k = min(plain_conv.in_channels, plain_conv.out_channels)
    assert not torch.allclose(plain_conv.weight[:k], nn.init.dirac_(torch.empty_like(plain_conv.weight[:k])))


def test_a_column_of_a_whitened_fractalnet_reads_the_same_whitening():
    model = timm.create_model("fractalnet_c2", num_classes=10, whiten=True)
    fit_whitening(model, torch.randn(32, 3, 32, 32).cumsum(3))
    model.eval()
    column = model.extract_column(2).eval()
    sub = model.extract_paths([[2]] * 5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(column.whiten.weight, model.whiten.weight)
        assert torch.allclose(column(x), model(x, column=2), atol=1e-5)
        assert torch.equal(sub.whiten.weight, model.whiten.weight)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
