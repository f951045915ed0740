"""Parameter, FLOP and latency measures that the engine, search and baselines report."""

import pytest
import timm
import torch
from torch import nn

import fractal_space  # noqa: F401  (registers the FractalNet models)
from fractal_space.deploy.metrics import count_flops, count_params, deployment_latency, measure_latency, torch_threads


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


class _ThreadProbe(nn.Module):
    """Records torch's CPU thread count at each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.conv(x)


def test_latency_is_timed_at_the_thread_count_asked_for_and_torch_is_restored():
    """A search-stage baseline trains on every core but is timed at the trials' one thread, so latencies compare."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the test's point is a count other than the one asked for
        _check_thread_counts(2)
    finally:
        torch.set_num_threads(before)


def _check_thread_counts(before: int) -> None:
    probe = _ThreadProbe()
    measure_latency(probe, (3, 16, 16), repeats=2, warmup=1, threads=1)
    assert set(probe.seen) == {1} and torch.get_num_threads() == before
    probe.seen.clear()
    measure_latency(probe, (3, 16, 16), repeats=2, warmup=1)  # None: torch's own count
    assert set(probe.seen) == {before}
    deployed = deployment_latency(probe.conv, (3, 16, 16), repeats=2, warmup=1, threads=1)
    assert deployed.threads == 1 and torch.get_num_threads() == before
    assert deployment_latency(probe.conv, (3, 16, 16), repeats=2, warmup=1).threads == before
    with torch_threads(1) as count:
        assert count == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"), torch_threads(0):
        pass
