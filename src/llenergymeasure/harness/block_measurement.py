"""What a ``measure()`` block measured (``Measurement``), and how its figures are computed from
the open block (``block_figures``: the code that builds a run's result)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, cast

from pydantic import BaseModel, Field

from llenergymeasure.energy.base import DeviceEnergy, EnergyBackend
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.energy.components import EnergyComponents
from llenergymeasure.energy.maths import adjusted_energy_j, energy_per
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import LLEMError

__all__ = [
    "NEGATIVE_ADJUSTED_NOTE",
    "Measurement",
    "MeasurementNotReadyError",
    "OpenBlock",
    "block_figures",
]

NEGATIVE_ADJUSTED_NOTE = (
    "energy_adjusted_j is negative: the idle baseline exceeded the measured draw"
)


class MeasurementNotReadyError(LLEMError, RuntimeError):
    """A figure of a ``measure()`` block was read before the block finished (or it raised)."""


class Measurement(BaseModel):
    """What one ``measure()`` block measured (read it after the block).

    ``energy_j`` is GPU energy, summed over the measured GPUs, as a run's headline; the host
    (CPU package, DRAM) is in ``components``. ``None`` figures were not measured;
    ``not_measured_reason`` says why for ``energy_j``.
    """

    model_config = {"extra": "forbid", "frozen": True}

    energy_j: float | None = Field(
        description="GPU energy over the block, J, summed over the measured GPUs (None: not "
        "measured, see not_measured_reason)."
    )
    duration_s: float = Field(
        description="Seconds from just after the backend's begin() to the end of the closing "
        "device sync (time.perf_counter)."
    )
    energy_adjusted_j: float | None = Field(
        None,
        description="energy_j - baseline_power_w x duration_s, J: the energy above idle (None "
        "without a baseline or an energy figure; may be negative, never clipped).",
    )
    baseline_power_w: float | None = Field(None, description="Idle power subtracted, W.")
    baseline_energy_j: float | None = Field(None, description="baseline_power_w x duration_s, J.")
    baseline_source: Literal["given", "measured", "cached", "passed"] | None = Field(
        None,
        description="Where the baseline came from: given (watts passed), measured (idle polled "
        "before this block), cached (an idle baseline of this process reused), passed (a "
        "BaselineMeasurement passed in).",
    )
    baseline: BaselineMeasurement | None = Field(
        None, description="The idle baseline measurement used, where it was one."
    )
    gpus: list[int] = Field(
        default_factory=list,
        description="CUDA ordinals of the GPUs measured (positions among this process's visible "
        "GPUs); empty when no GPU was measured.",
    )
    devices: list[DeviceEnergy] = Field(
        default_factory=list,
        description="Each measured GPU's energy (counter and poll), device_index = CUDA ordinal.",
    )
    counter_energy_j: float | None = Field(
        None, description="Total-energy counter difference, J (GPUs that have the counter)."
    )
    poll_energy_j: float | None = Field(
        None, description="Integral of the background sampler's polled power, J."
    )
    counter_vs_poll_diff_pct: float | None = Field(
        None, description="(poll - counter) / counter x 100: the cross-check, as runs report it."
    )
    poll_power_source: str | None = Field(None, description="Which NVML power reading was polled.")
    backend: str = Field(description="Energy backend used (nvml, zeus, codecarbon, none).")
    backend_version: str | None = Field(None, description="Version of the backend's library.")
    method: str = Field(
        description="How energy_j was obtained (nvml_counter, nvml_power_integration, zeus, "
        "codecarbon, unavailable)."
    )
    components: EnergyComponents = Field(
        description="GPU, CPU package and DRAM energy; host figures from RAPL (measured) or "
        "Zeus / CodeCarbon (CodeCarbon's marked estimated)."
    )
    not_measured_reason: str | None = Field(
        None, description="Why energy_j is None (None when it was measured)."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="The runs' measurement_warnings flags that apply to a block "
        "(short_measurement_duration, nvml_low_sample_count, gpu_persistence_mode_off, "
        "thermal_drift_detected, energy_counter_poll_disagreement).",
    )
    notes: list[str] = Field(default_factory=list, description="Caveats of this measurement.")
    started_at_utc: datetime = Field(description="When the window opened (UTC).")

    @property
    def host_energy_j(self) -> float | None:
        """Measured or estimated CPU package + DRAM energy, J (None: none available)."""
        return self.components.host_energy_j

    def per_token(self, n: int, *, adjusted: bool = False) -> float | None:
        """Joules per token for ``n`` tokens (``adjusted``: of ``energy_adjusted_j``).

        ``None`` when the energy was not measured (or, with ``adjusted``, no baseline).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"per_token(n): n is a whole number of tokens >= 1, got {n!r}")
        return energy_per(self.energy_adjusted_j if adjusted else self.energy_j, n)

    def __str__(self) -> str:
        what = f"{len(self.gpus)} GPU(s)" if self.gpus else "no GPU"
        if self.energy_j is None:
            return (
                f"energy not measured over {self.duration_s:.3f} s ({what}): "
                f"{self.not_measured_reason}"
            )
        text = f"{self.energy_j:.3f} J over {self.duration_s:.3f} s ({what}, {self.method})"
        if self.energy_adjusted_j is not None:
            text += f", {self.energy_adjusted_j:.3f} J above idle"
        return text


@dataclass
class OpenBlock:
    """What an open block holds until it closes."""

    sensor: GpuSensor | None
    energy: EnergyBackend
    sampler: EnergySampler | None
    window: MeasurementWindow
    gpus: list[int]
    baseline: BaselineMeasurement | None
    baseline_w: float | None
    baseline_source: str | None
    notes: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def block_figures(held: OpenBlock) -> Measurement:
    """The block's figures, computed by the code that builds a run's result."""
    from llenergymeasure.energy.components import host_energy_components
    from llenergymeasure.harness.assemble import energy_breakdown
    from llenergymeasure.harness.metrics import measurement_warnings

    reading = held.window.reading
    breakdown = energy_breakdown(
        reading.energy, held.baseline, reading.duration_s, held.sampler, reading.span
    )
    notes = [*held.notes, *breakdown.notes]
    adjusted, baseline_j = breakdown.adjusted_j, breakdown.baseline_energy_j
    if held.baseline is None and held.baseline_w is not None:  # watts given by the caller
        baseline_j = held.baseline_w * reading.duration_s
        if breakdown.total_j is not None:
            adjusted = adjusted_energy_j(breakdown.total_j, held.baseline_w, reading.duration_s)
            if adjusted < 0:
                notes.append(NEGATIVE_ADJUSTED_NOTE)
    ordinals = held.gpus
    devices = list(breakdown.per_device)
    if not isinstance(held.energy, ZeusEnergyBackend):  # Zeus numbers by CUDA ordinal already
        devices = [  # sensor position -> CUDA ordinal
            d.model_copy(update={"device_index": ordinals[d.device_index]})
            if d.device_index < len(ordinals)
            else d
            for d in devices
        ]
    return Measurement(
        energy_j=breakdown.total_j,
        duration_s=reading.duration_s,
        energy_adjusted_j=adjusted,
        baseline_power_w=held.baseline_w,
        baseline_energy_j=baseline_j,
        baseline_source=cast(Any, held.baseline_source),
        baseline=held.baseline,
        gpus=list(ordinals),
        devices=devices,
        counter_energy_j=breakdown.counter_energy_j,
        poll_energy_j=breakdown.poll_energy_j,
        counter_vs_poll_diff_pct=breakdown.counter_vs_poll_diff_pct,
        poll_power_source=breakdown.poll_power_source,
        backend=breakdown.backend,
        backend_version=breakdown.backend_version,
        method=breakdown.method,
        components=host_energy_components(reading.energy, reading.host, held.energy),
        not_measured_reason=breakdown.not_measured_reason,
        warnings=measurement_warnings(
            duration_s=reading.duration_s,
            window_samples=held.sampler.samples_between(*reading.span) if held.sampler else [],
            n_devices=len(ordinals),
            energy_available=breakdown.available,
            persistence_mode=[
                held.sensor.device_info(i).persistence_mode for i in range(len(ordinals))
            ]
            if held.sensor is not None
            else [],
            counter_vs_poll_diff_pct=breakdown.counter_vs_poll_diff_pct,
            thermal_floor_seconds=math.inf,  # no thermal floor of llem's to judge in a block
        ),
        notes=notes,
        started_at_utc=held.started,
    )
