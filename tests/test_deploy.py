"""Deployment: verified ONNX exports, ONNX Runtime latency, and ``fractal-train --export``."""

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

import fractal_space  # noqa: F401  (registers the models)
from fractal_space.deploy.export import export_model
from fractal_space.deploy.metrics import deployment_latency
from fractal_space.deploy.onnx import OrtModel, export_onnx, onnx_graph
from fractal_space.engine.cli import main

WIDTHS = (4, 4, 8, 8, 8)


class _Negated(torch.autograd.Function):
    """Identity in PyTorch, but exported as ``Neg``: an op whose ONNX translation is wrong."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def symbolic(g, x):
        return g.op("Neg", x)


class _WronglyExported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return _Negated.apply(self.conv(x)).mean((2, 3))


def _trained_fractalnet(join: str) -> nn.Module:
    """A tiny C=3 FractalNet after two SGD steps with the paper's drop-path and block dropout, in training mode with
    its eval-mode statistics refreshed (so each export's copy need not refresh them again)."""
    torch.manual_seed(0)
    model = timm.create_model("fractalnet_c3", num_classes=10, widths=WIDTHS, join=join, drop_path_rate=0.15,
                              block_dropout=(0.0, 0.1, 0.1, 0.1, 0.1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model.train()(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().train()


def test_an_export_whose_onnx_differs_is_refused_and_nothing_is_written(tmp_path):
    model = _WronglyExported()
    batch = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^ONNX export of _WronglyExported differs from PyTorch by [\d.e+-]+ on a "
                                         r"batch of 2 \(tolerance 0.0001\); nothing was written$"):
        export_onnx(model, tmp_path / "m.onnx", batch)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export_model(model, tmp_path / "folder", batch)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("join, columns", [("mean", (None, 1, 3)), ("concat", (2,))])
def test_fractalnet_with_drop_path_exports_its_columns_and_the_full_net_with_a_dynamic_batch(join, columns):
    model = _trained_fractalnet(join)
    x = torch.randn(5, 3, 32, 32)  # not the export's batch size: the batch axis is dynamic
    sizes = {}
    for column in columns:
        kwargs = {} if column is None else {"column": column}
        graph = onnx_graph(model, torch.randn(2, 3, 32, 32), **kwargs)
        assert model.training  # the caller's model keeps its mode
        with torch.no_grad():
            expected = model.eval()(x, **kwargs).numpy()
        model.train()
        np.testing.assert_allclose(OrtModel(graph)(x), expected, atol=1e-4 * max(1, np.abs(expected).max()), rtol=0)
        sizes[column] = len(graph)
    if None in sizes:
        assert sizes[1] < sizes[None] / 2  # a column's graph holds only that column's weights


def test_deployment_latency_times_the_onnx_graph_in_onnx_runtime(tmp_path):
    small, large = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 256, 3, padding=1)
    large_graph = export_onnx(large, tmp_path / "large.onnx", torch.randn(2, 3, 64, 64))
    small.train()
    own = deployment_latency(small, (3, 64, 64), batch_sizes=(1, 4), repeats=5)
    assert own.runtime == "onnxruntime-cpu" and set(own.ms) == {1, 4} and all(v > 0 for v in own.ms.values())
    assert small.training
    # Given a graph, the graph is what runs: the large conv's file, timed for the small module, costs more.
    timed = deployment_latency(small, (3, 64, 64), batch_sizes=(4,), repeats=5, graph=large_graph)
    assert timed.ms[4] > own.ms[4]
    with pytest.raises(ValueError, match="batch_sizes"):
        deployment_latency(small, (3, 64, 64), batch_sizes=(0,))


def test_fractal_train_export_writes_a_timm_folder_and_onnx_that_agree(tmp_path, capsys, data_root):
    out = tmp_path / "export"
    argv = ["--model", "fractalnet_c2", "--model-kwargs", json.dumps({"widths": list(WIDTHS)}), "--train-subset",
            "100", "--val-size", "100", "--batch-size", "50", "--epochs", "1", "--bn-batches", "1", "--num-threads",
            "1", "--no-progress", "--no-download", "--export", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the epoch line
    export = summary["export"]
    assert export["latency_runtime"] == "onnxruntime-cpu" and export["latency_ms"] > 0
    assert export["latency_ms_batch"] > 0 and export["batch_size"] == 50 and len(export["columns"]) == 2
    x = torch.randn(3, 3, 32, 32)
    for folder in (out, out / "columns" / "column1", out / "columns" / "column2"):
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["config.json", "model.onnx",
                                                                           "model.safetensors"]
        with torch.no_grad():
            expected = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x).numpy()
        np.testing.assert_allclose(OrtModel(folder / "model.onnx")(x), expected, atol=1e-4, rtol=0)
    assert 'run(None, {"input": x})' in export["onnx"] and "model.onnx" in export["onnx"]


def test_the_report_says_whether_eager_latency_would_change_the_front():
    import pandas as pd

    from fractal_space.search.results.report import _eager_front_note

    # trial 2 is fast deployed but slow eager (many small modules)
    df = pd.DataFrame({"number": [0, 1, 2], "state": ["COMPLETE"] * 3, "val_acc": [0.5, 0.6, 0.7],
                       "latency_ms": [1.0, 3.0, 2.0], "eager_latency_ms": [2.0, 3.0, 9.0]})
    # deployed: trial 2 dominates trial 1, front {0, 2}; eager: nothing is dominated, front {0, 1, 2}
    assert _eager_front_note(df) == ("Ranked by eager PyTorch latency instead, the full networks' Pareto front would "
                                     "change: no trial would leave it, trial(s) 1 would join it (2 vs 3 trials on "
                                     "it).")
    same = df.assign(eager_latency_ms=df.latency_ms * 4)
    assert _eager_front_note(same).endswith("front would be the same 2 trial(s).")
