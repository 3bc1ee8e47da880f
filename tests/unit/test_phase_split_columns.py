"""Specification of the flat-table columns for issue 16 (``phase_split.columns``)."""

from __future__ import annotations

import pytest

from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.components import energy_components
from llenergymeasure.energy.rapl import HostEnergyReading
from llenergymeasure.phase_split.attribution import attribute_energy
from llenergymeasure.phase_split.columns import PHASE_COLUMNS, phase_columns
from llenergymeasure.phase_split.curves import EnergyCurve
from llenergymeasure.phase_split.differential import differential_phase_split
from llenergymeasure.phase_split.timeline import (
    BatchTokenTimes,
    RequestTokenTimes,
    steps_from_token_times,
)


def test_without_any_measurement_every_column_is_present_and_empty() -> None:
    row = phase_columns()
    assert tuple(row) == PHASE_COLUMNS
    assert all(v is None for v in row.values())


def test_columns_of_a_full_measurement() -> None:
    split, _ = differential_phase_split(
        total_energy_j=100.0,
        total_duration_s=1.0,
        input_tokens=20,
        output_tokens=4,
        requests=2,
        prefill_energy_j=20.0,
        prefill_duration_s=0.2,
        baseline_power_w=10.0,
    )
    curve = EnergyCurve.from_counter([0.0, 0.5, 1.0], [0, 25_000, 100_000])
    batch = BatchTokenTimes(
        0.0, [RequestTokenTimes(0, 15, [0.2, 1.0]), RequestTokenTimes(1, 5, [0.2, 1.0])]
    )
    attribution = attribute_energy(steps_from_token_times([batch]), curve)
    gpu = EnergyMeasurement(
        backend="nvml", available=True, method="nvml_counter", total_energy_j=100.0, duration_s=1
    )
    comps = energy_components(
        gpu, [HostEnergyReading(component="cpu", energy_j=30.0, method="rapl_sysfs")]
    )
    row = phase_columns(split, attribution, comps)
    assert tuple(row) == PHASE_COLUMNS
    assert row["phase_split_method"] == "differential"
    assert row["energy_prefill_j"] == 20.0
    assert row["j_per_decode_token_adjusted"] == pytest.approx((80.0 - 8.0) / 2)
    assert row["time_resolved_energy_prefill_j"] == pytest.approx(10.0)  # 0-0.2 s of the curve
    assert row["time_resolved_vs_differential_prefill_pct"] == pytest.approx(-50.0)
    assert row["attribution_confidence"] in {"high", "medium", "low"}
    assert row["request_energy_mean_j"] == pytest.approx(50.0)
    assert row["request_energy_max_j"] == pytest.approx(10.0 * 0.75 + 45.0)
    assert (row["energy_cpu_j"], row["energy_cpu_method"]) == (30.0, "rapl_sysfs")
    assert row["energy_dram_j"] is None
    assert row["energy_total_with_host_j"] == 130.0
