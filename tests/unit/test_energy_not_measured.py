"""A backend that reports zero for a GPU it cannot see gives "not measured", never a 0 J
headline; the host's estimates stay, marked estimated (issue 29, item 5)."""

from __future__ import annotations

import pytest

from llenergymeasure.cli.run_experiment_cmd import format_summary, summary_dict
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.codecarbon_backend import J_PER_KWH, CodeCarbonEnergyBackend
from llenergymeasure.energy.null_backend import NULL_BACKEND_NOTE, NullEnergyBackend
from llenergymeasure.energy.select import BackendProbes, select_energy_backend
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import FakeCodeCarbonTracker
from llenergymeasure.testing.engines import FakeEngine

CPU_KWH, RAM_KWH = 2e-5, 4e-5  # 72 J and 144 J


def _cpu_only_codecarbon(**fake: object) -> CodeCarbonEnergyBackend:
    """CodeCarbon as it behaves on a machine without a GPU: gpu_count 0, gpu_energy 0."""
    settings = {
        "gpu_kwh": 0.0,
        "gpu_count": 0,
        "cpu_kwh": CPU_KWH,
        "ram_kwh": RAM_KWH,
        "total_kwh": CPU_KWH + RAM_KWH,
        **fake,
    }
    return CodeCarbonEnergyBackend(
        tracker_factory=lambda **kw: FakeCodeCarbonTracker(**settings), available=lambda: True
    )


def _run(backend: object) -> ExperimentResult:
    config = ExperimentConfig.model_validate(
        {
            "model": "fake-model",
            "backend": "pytorch",
            "dataset": {"n": 3, "input_len": 8, "output_len": 4},
            "n": 3,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
        }
    )
    orch = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=backend)  # type: ignore[arg-type]
    return orch.run(config).result


def test_codecarbon_that_tracked_no_gpu_measures_no_gpu_energy() -> None:
    backend = _cpu_only_codecarbon()
    backend.begin()
    m = backend.end()
    assert m.total_energy_j is None
    assert not m.available and m.method == "unavailable"
    assert m.not_measured_reason is not None and "tracked no GPU" in m.not_measured_reason


def test_a_zero_gpu_figure_is_not_a_measurement_even_with_a_gpu_counted() -> None:
    backend = _cpu_only_codecarbon(gpu_count=1)
    backend.begin()
    m = backend.end()
    assert m.total_energy_j is None and not m.available
    assert m.not_measured_reason is not None and "zero GPU energy" in m.not_measured_reason


def test_a_tracked_gpu_with_energy_is_still_measured() -> None:
    backend = _cpu_only_codecarbon(gpu_count=1, gpu_kwh=1e-4)
    backend.begin()
    m = backend.end()
    assert m.available and m.method == "codecarbon"
    assert m.total_energy_j == pytest.approx(1e-4 * J_PER_KWH)
    assert m.not_measured_reason is None


def test_a_cpu_run_with_codecarbon_has_no_energy_headline_and_says_why() -> None:
    result = _run(_cpu_only_codecarbon())

    assert result.energy_total_j is None
    assert result.energy_adjusted_j is None
    assert result.energy_per_output_token_j is None
    assert result.mean_power_w is None
    assert result.carbon.co2_g is None
    assert not result.energy.available and result.energy.total_j is None
    assert result.energy.backend == "codecarbon"
    reason = result.energy.not_measured_reason
    assert reason is not None and "CodeCarbon tracked no GPU" in reason


def test_a_cpu_run_with_codecarbon_keeps_its_host_estimates_marked_estimated() -> None:
    result = _run(_cpu_only_codecarbon())

    components = result.energy.components
    assert components is not None
    gpu = components.component("gpu")
    assert gpu is not None and gpu.energy_j is None and gpu.method == "unavailable"
    cpu, dram = components.component("cpu"), components.component("dram")
    assert cpu is not None and dram is not None
    assert (cpu.method, cpu.estimated) == ("codecarbon", True)
    assert (dram.method, dram.estimated) == ("codecarbon", True)
    assert cpu.energy_j == pytest.approx(CPU_KWH * J_PER_KWH)
    assert dram.energy_j == pytest.approx(RAM_KWH * J_PER_KWH)
    assert components.gpu_energy_j is None
    assert components.host_energy_j == pytest.approx((CPU_KWH + RAM_KWH) * J_PER_KWH)
    assert components.total_with_host_j is None  # no GPU figure to add the host to


def test_the_summary_says_not_measured_and_shows_the_host_estimate_apart() -> None:
    result = _run(_cpu_only_codecarbon())
    text = format_summary(result, None)
    assert "energy               not measured (codecarbon: CodeCarbon tracked no GPU" in text
    assert "host (CPU/DRAM)      216 J  (estimated, codecarbon)" in text
    assert "energy (raw)" not in text and "energy / out token" not in text
    data = summary_dict(result, None)
    assert data["energy_available"] is False and data["energy_total_j"] is None


def test_the_null_backend_gives_its_reason() -> None:
    result = _run(NullEnergyBackend())
    assert result.energy_total_j is None
    assert result.energy.not_measured_reason == NULL_BACKEND_NOTE
    assert f"not measured (none: {NULL_BACKEND_NOTE})" in format_summary(result, None)


def test_a_measured_run_has_no_not_measured_reason() -> None:
    result = _run(_cpu_only_codecarbon(gpu_count=1, gpu_kwh=1e-4))
    assert result.energy.available and result.energy_total_j == pytest.approx(360.0)
    assert result.energy.not_measured_reason is None


def test_auto_still_picks_codecarbon_on_a_cpu_machine_for_its_host_estimates() -> None:
    probes = BackendProbes(
        zeus_importable=lambda: False,
        codecarbon_importable=lambda: True,
        gpu_available=lambda: False,
    )
    assert isinstance(select_energy_backend("auto", probes=probes), CodeCarbonEnergyBackend)


def test_real_codecarbon_on_this_cpu_machine_gives_no_gpu_headline() -> None:
    """With the codecarbon extra installed on a machine without a GPU (skipped otherwise)."""
    pytest.importorskip("codecarbon")
    from llenergymeasure.energy.devices import nvml_available

    if nvml_available():
        pytest.skip("a GPU is visible: CodeCarbon measures it here")
    result = _run(CodeCarbonEnergyBackend())
    assert result.energy_total_j is None and not result.energy.available
    assert result.energy.not_measured_reason is not None
    components = result.energy.components
    assert components is not None
    assert all(c.estimated for c in components.components if c.energy_j is not None)
