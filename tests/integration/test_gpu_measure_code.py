"""``llem.measure()`` on a real GPU: NVML counters, the sampler's cross-check, the idle baseline.

Run on a machine with an NVIDIA GPU: ``python -m pytest -m gpu tests/integration``.
"""

from __future__ import annotations

import time

import pytest

import llenergymeasure as llem

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.fixture(autouse=True)
def nvml_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_ENERGY_BACKEND", "nvml")  # the reference path, whatever is installed


def _queue_work(torch, seconds: float) -> None:
    """Queue about ``seconds`` of matmuls without waiting for them (the block's sync must)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    _ = a @ a  # first call: kernels and workspace
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.2:
        a = (a @ a).clamp_(-1, 1)
        n += 1
    torch.cuda.synchronize()
    per_op = (time.perf_counter() - start) / n
    for _ in range(int(seconds / per_op)):
        a = (a @ a).clamp_(-1, 1)


def test_a_block_measures_queued_cuda_work_with_counter_and_poll_in_agreement(torch_cuda) -> None:
    with llem.measure(gpus=0) as m:
        _queue_work(torch_cuda, 10.0)  # returns long before the GPU is done

    assert m.gpus == [0]
    assert m.energy_j is not None and m.energy_j > 0
    assert m.measurement.method == "nvml_counter"
    assert m.duration_s > 5.0  # the closing sync waited for the queued work
    assert m.counter_vs_poll_diff_pct is not None
    assert abs(m.counter_vs_poll_diff_pct) < 5.0
    assert m.energy_j / m.duration_s > 50.0  # a busy GPU draws more than idle


def test_an_idle_baseline_is_subtracted(torch_cuda) -> None:
    with llem.measure(gpus=0, baseline="measure", baseline_seconds=3.0) as m:
        _queue_work(torch_cuda, 5.0)
    assert m.baseline is not None and m.baseline_power_w is not None
    assert m.energy_adjusted_j is not None
    assert m.energy_adjusted_j == pytest.approx(m.energy_j - m.baseline_power_w * m.duration_s)
    assert 0 < m.energy_adjusted_j < m.energy_j
