"""Parameter, FLOP and latency measures that the engine, search and baselines report."""

import pytest
import timm
import torch
from torch import nn

import fractal_space  # noqa: F401  (registers the FractalNet models)
from fractal_space.metrics import count_flops, count_params, measure_latency


def test_count_params_counts_trainable_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_params(model) == 16 + 10
    model[1].requires_grad_(False)
    assert count_params(model) == 16


def test_count_flops_is_per_image_with_two_flops_per_mac():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (3, 32, 32)) == 2 * 3 * 8 * 9 * 32 * 32
    with pytest.raises(ValueError, match=r"\(3, 32\)"):
        count_flops(conv, (3, 32))


def test_forward_kwargs_select_a_fractalnet_column_and_modes_are_restored():
    model = timm.create_model("fractalnet_c2", num_classes=10, widths=(8, 8, 8, 8, 8), drop_path_rate=0.15)
    model.train()
    full, shallow = count_flops(model, (3, 32, 32)), count_flops(model, (3, 32, 32), column=1)
    assert 0 < shallow < full
    assert model.training
    latency = measure_latency(model, (3, 32, 32), batch_size=4, repeats=3, column=2)
    assert isinstance(latency, float) and latency > 0 and model.training
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (3, 32, 32), repeats=0)


def test_latency_grows_with_work():
    small, large = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 256, 3, padding=1)
    torch.manual_seed(0)
    assert measure_latency(small, (3, 64, 64), batch_size=8) < measure_latency(large, (3, 64, 64), batch_size=8)
