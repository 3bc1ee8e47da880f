"""Derived metrics: percentiles, thermal drift, carbon and FLOPs arithmetic."""

from __future__ import annotations

import pytest

from llenergymeasure.energy.sampler import Sample
from llenergymeasure.harness import metrics as m


def _samples(temps: list[float]) -> list[Sample]:
    return [
        Sample(
            t=float(i) / 10,
            device_index=0,
            device_uuid="GPU-x",
            phase="measurement",
            power_w=200.0,
            energy_mj=None,
            temperature_c=c,
            sm_clock_mhz=None,
            utilization_pct=None,
            memory_used_bytes=None,
        )
        for i, c in enumerate(temps)
    ]


def _warnings(temps: list[float]) -> list[str]:
    return m.measurement_warnings(
        duration_s=60,
        window_samples=_samples(temps),
        n_devices=1,
        energy_available=True,
        persistence_mode=[True],
        counter_vs_poll_diff_pct=0.0,
        thermal_floor_seconds=60,
    )


def test_a_one_sample_temperature_spike_is_not_thermal_drift() -> None:
    temps = [35.0] * 50 + [50.0] + [35.0] * 49
    assert "thermal_drift_detected" not in _warnings(temps)


def test_a_sustained_rise_of_more_than_five_degrees_is_thermal_drift() -> None:
    temps = [35.0 + 8.0 * i / 99 for i in range(100)]
    assert m.thermal_drift_c(temps) > 5
    assert "thermal_drift_detected" in _warnings(temps)


def _poll_warning(diff_pct: float, duration_s: float) -> bool:
    warnings = m.measurement_warnings(
        duration_s=duration_s,
        window_samples=_samples([35.0] * 200),
        n_devices=1,
        energy_available=True,
        persistence_mode=[True],
        counter_vs_poll_diff_pct=diff_pct,
        thermal_floor_seconds=60,
    )
    return "energy_counter_poll_disagreement" in warnings


@pytest.mark.parametrize(
    ("diff_pct", "duration_s", "flagged"),
    [
        (-1.9, 12.0, False),
        (-2.1, 12.0, True),  # windows >= 10 s must agree within 2 %
        (2.5, 10.0, True),
        (-4.9, 8.0, False),  # shorter windows: SPEC's 5 %
        (5.1, 8.0, True),
    ],
)
def test_counter_poll_disagreement_is_flagged_at_2_percent_on_long_windows_5_on_short(
    diff_pct: float, duration_s: float, flagged: bool
) -> None:
    assert _poll_warning(diff_pct, duration_s) is flagged


def test_percentiles_interpolate_like_numpy() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    assert m.percentile(data, 50) == pytest.approx(2.5)
    assert m.percentile(data, 90) == pytest.approx(3.7)
    stats = m.distribution([4.0, 1.0, 3.0, 2.0])
    assert (stats.n, stats.mean, stats.min, stats.max) == (4, 2.5, 1.0, 4.0)


def test_carbon_is_kwh_times_intensity_times_pue_and_none_without_intensity() -> None:
    c = m.estimate_carbon(
        7.2e6, intensity=300.0, intensity_source="x", pue=1.2, pue_source="y", location=None
    )
    assert c.energy_kwh == pytest.approx(2.0) and c.co2_g == pytest.approx(720.0)
    none = m.estimate_carbon(
        7.2e6,
        intensity=None,
        intensity_source="not configured",
        pue=1.0,
        pue_source="default",
        location=None,
    )
    assert none.co2_g is None


def test_flops_count_two_per_parameter_per_processed_token() -> None:
    f = m.estimate_flops(1_000, input_tokens=30, output_tokens=10)
    assert f.total_flops == 2 * 1_000 * 40
    assert f.flops_per_output_token == pytest.approx(8_000)
