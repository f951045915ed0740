"""Exported models and columns load back through timm's ``local-dir:`` source, and run from their ``model.onnx`` in
ONNX Runtime, with the outputs they were saved with."""

import json

import pytest
import timm
import torch
from timm.models import save_for_hf

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.deploy.export import export_column, export_model, load_line
from fractal_space.deploy.onnx import OrtModel
from fractal_space.models.anytime import reestimate_bn_stats
from fractal_space.search.space import MODEL

WIDTHS = (4, 4, 8, 8, 8)


def _trained(join: str) -> torch.nn.Module:
    """A tiny C=3 FractalNet after one SGD step with the paper's drop-path, so weights and BN statistics moved."""
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", num_classes=10, widths=WIDTHS, join=join, drop_path_rate=0.15,
                              block_dropout=(0.0, 0.1, 0.1, 0.1, 0.1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model.train()(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    optimizer.step()
    return model


def _load(folder) -> torch.nn.Module:
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def _assert_runs_in_onnx_runtime(folder, x: torch.Tensor, expected: torch.Tensor) -> None:
    """The folder's model.onnx gives ``expected`` in ONNX Runtime on a new batch ``x``.

    The export checked 1e-4 on its own batch; on another batch, these untrained deep columns (BN statistics from four
    random images) differ between the two runtimes' float32 rounding by up to 2e-4 of the output's scale, so 5e-4.
    """
    got = torch.from_numpy(OrtModel(folder / "model.onnx")(x))
    torch.testing.assert_close(got, expected, atol=5e-4 * max(1.0, float(expected.abs().max())), rtol=0)


@pytest.mark.parametrize("join", ["mean", "concat"])
def test_model_and_every_column_load_with_equal_outputs(join: str, tmp_path) -> None:
    model = _trained(join)
    x = torch.randn(2, 3, 32, 32)
    bn_batches = [torch.randn(4, 3, 32, 32)]
    export_model(model, tmp_path / "net", bn_batches[0])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_load(tmp_path / "net")(x), model(x))
        _assert_runs_in_onnx_runtime(tmp_path / "net", x, model(x))
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    assert config["architecture"] == "fractalnet"  # the generic entry, whichever variant built it
    args = config["model_args"]
    assert (args["num_blocks"], args["num_columns"], args["widths"]) == (5, 3, list(WIDTHS))
    assert args["join"] == join and args["drop_path_rate"] == 0.15

    for k in range(1, model.num_columns + 1):
        folder = export_column(model, k, tmp_path / f"column{k}", bn_batches)
        expected = model.extract_column(k)
        reestimate_bn_stats(expected, bn_batches)
        with torch.no_grad():
            out = _load(folder)(x)
            torch.testing.assert_close(out, expected.eval()(x))
            _assert_runs_in_onnx_runtime(folder, x, out)
            # the column's own statistics, not those it had inside the full network
            assert not torch.allclose(out, model(x, column=k))
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == "fractalnet_plain"
        args = config["model_args"]
        assert args["convs_per_block"] == 2 ** (k - 1) and args["concat_join"] == (join == "concat")
        assert args["widths"] == list(WIDTHS) and args["block_dropout"] == [0.0, 0.1, 0.1, 0.1, 0.1]
        assert f'"local-dir:{folder}"' in load_line(folder)


def test_searched_network_exports_as_fractalnet_and_variant_folders_written_before_still_load(tmp_path) -> None:
    """A searched architecture is ``timm.create_model(MODEL, **model_kwargs)``; its folder names the generic
    ``fractalnet`` with those arguments. Folders exported before it existed name ``fractalnet_c3`` with model_args
    overriding its B, C and widths, and load as they did."""
    torch.manual_seed(0)
    kwargs = dict(num_blocks=4, num_columns=4, widths=[4, 4, 8, 8], join="concat", paths=[[1, 3], [4], [2, 4], [4]])
    model = timm.create_model(MODEL, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    export_model(model, tmp_path / "new", x)
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["architecture"] == "fractalnet"
    assert {k: config["model_args"][k] for k in kwargs} == kwargs
    old = timm.create_model("fractalnet_c3", num_classes=10, **kwargs)
    old.load_state_dict(model.state_dict())
    save_for_hf(old, tmp_path / "old", model_args={}, safe_serialization=True)  # what export_model used to write
    assert json.loads((tmp_path / "old" / "config.json").read_text())["architecture"] == "fractalnet_c3"
    with torch.no_grad():
        for folder in ("new", "old"):
            assert torch.equal(_load(tmp_path / folder)(x), model(x))


def test_column_export_needs_bn_batches(tmp_path) -> None:
    with pytest.raises(ValueError, match="no batches"):
        export_column(_trained("mean"), 1, tmp_path / "column", [])
    assert not (tmp_path / "column").exists()


def test_plain_network_trains_and_exports_like_any_timm_model(tmp_path) -> None:
    """Table 4's 40-layer plain network: the column topology built from arguments, trained alone."""
    torch.manual_seed(0)
    plain = timm.create_model("fractalnet_plain", num_classes=10, convs_per_block=8, widths=WIDTHS)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in plain.modules()) == 40
    loss = plain.train()(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    export_model(plain, tmp_path / "plain", torch.randn(4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_load(tmp_path / "plain")(x), plain.eval()(x))
