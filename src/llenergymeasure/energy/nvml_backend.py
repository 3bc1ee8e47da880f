"""NVML energy backend: total-energy counter deltas, cross-checked by polled power."""

from __future__ import annotations

from dataclasses import dataclass

from llenergymeasure.energy.base import (
    DeviceEnergy,
    EnergyMeasurement,
    EnergyMethod,
    distribution_version,
)
from llenergymeasure.energy.devices import nvml_available
from llenergymeasure.energy.maths import (
    EnergyCounterResetError,
    counter_delta_mj,
    relative_difference,
)
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.sensors import DeviceInfo, GpuSensor, NvmlSensor
from llenergymeasure.exceptions import BackendError

__all__ = ["SHORT_WINDOW_S", "NvmlEnergyBackend"]

SHORT_WINDOW_S = 1.0
"""Below this window length the ~10 Hz counter update makes counter deltas coarse."""


@dataclass(frozen=True)
class _Mark:
    t: float
    energy_mj: int | None


class NvmlEnergyBackend:
    """Energy from the NVML total-energy counter (Volta+), per device, summed.

    ``begin()`` reads every device's counter, ``end()`` reads it again. Where a device has no
    counter (or it failed / was reset), the energy is the trapezoid integral of the
    ``sampler``'s polled power over the same window (``method="nvml_power_integration"``).
    When both exist the poll integral is kept as a cross-check. Without an injected
    ``sensor`` an ``NvmlSensor`` (honouring ``CUDA_VISIBLE_DEVICES``) is opened at ``begin()``.
    The sampler, if given, must poll the same sensor and be running across the window.
    """

    name = "nvml"

    def __init__(
        self, sensor: GpuSensor | None = None, sampler: EnergySampler | None = None
    ) -> None:
        self._sensor = sensor
        self._owns_sensor = False
        self.sampler = sampler
        self._info: list[DeviceInfo] = []
        self._begin: list[_Mark] | None = None

    def version(self) -> str | None:
        """Version of ``nvidia-ml-py`` (the pynvml bindings)."""
        return distribution_version("nvidia-ml-py", "pynvml")

    def is_available(self) -> bool:
        """An injected sensor with >= 1 device, or NVML initialising with >= 1 GPU."""
        if self._sensor is not None:
            try:
                return self._sensor.device_count() >= 1
            except Exception:
                return False
        return nvml_available()

    @property
    def sensor(self) -> GpuSensor:
        """The sensor in use (opened on first access when none was injected)."""
        if self._sensor is None:
            self._sensor = NvmlSensor()
            self._owns_sensor = True
        return self._sensor

    def begin(self) -> None:
        """Read every device's counter and note the time."""
        sensor = self.sensor
        n = sensor.device_count()
        if n < 1:
            raise BackendError("NVML energy backend: no GPU to measure")
        self._info = [sensor.device_info(i) for i in range(n)]
        self._begin = [self._mark(i) for i in range(n)]

    def _mark(self, i: int) -> _Mark:
        reading = self.sensor.read(i)
        energy = reading.energy_mj if self._info[i].supports_energy_counter else None
        return _Mark(t=reading.t, energy_mj=energy)

    def end(self) -> EnergyMeasurement:
        """Read the counters again and build the per-device and total measurement."""
        if self._begin is None:
            raise BackendError("NvmlEnergyBackend.end() called without begin()")
        begin, self._begin = self._begin, None
        end = [self._mark(i) for i in range(len(begin))]
        notes: list[str] = []
        devices = [
            self._device_energy(i, b, e, notes)
            for i, (b, e) in enumerate(zip(begin, end, strict=True))
        ]
        duration = max(0.0, end[0].t - begin[0].t)
        if self.sampler is not None and self.sampler.error is not None:
            notes.append(f"power sampler failed: {self.sampler.error!r}")
        if duration < SHORT_WINDOW_S:
            notes.append(
                f"window of {duration:.3f} s is short: the NVML energy counter updates about "
                "every 100 ms, so the relative error may be large"
            )

        energies = [d.energy_j for d in devices]
        total = sum(e for e in energies if e is not None) if None not in energies else None
        if total is None:
            missing = [d.device_index for d in devices if d.energy_j is None]
            notes.append(f"no energy for device(s) {missing}: total not reported")

        polls = [d.poll_energy_j for d in devices]
        poll_total = sum(p for p in polls if p is not None) if None not in polls else None
        both = [
            d for d in devices if d.counter_energy_j is not None and d.poll_energy_j is not None
        ]
        diff_pct = None
        if both:
            rel = relative_difference(
                sum(d.poll_energy_j or 0.0 for d in both),
                sum(d.counter_energy_j or 0.0 for d in both),
            )
            diff_pct = None if rel is None else rel * 100.0

        methods = {d.method for d in devices}
        method: EnergyMethod
        if total is None:
            method = "unavailable"
        elif "nvml_power_integration" in methods:
            method = "nvml_power_integration"
        else:
            method = "nvml_counter"
        return EnergyMeasurement(
            backend=self.name,
            backend_version=self.version(),
            available=total is not None,
            method=method,
            total_energy_j=total,
            duration_s=duration,
            devices=devices,
            poll_energy_j=poll_total,
            counter_vs_poll_diff_pct=diff_pct,
            poll_power_source=_common_source(devices),
            notes=notes,
        )

    def _device_energy(self, i: int, b: _Mark, e: _Mark, notes: list[str]) -> DeviceEnergy:
        info = self._info[i]
        counter_j: float | None = None
        if not info.supports_energy_counter:
            notes.append(f"device {i}: no NVML energy counter; using polled power")
        elif b.energy_mj is None or e.energy_mj is None:
            notes.append(f"device {i}: energy counter read failed; using polled power")
        else:
            try:
                counter_j = counter_delta_mj(b.energy_mj, e.energy_mj) / 1000.0
            except EnergyCounterResetError as exc:
                notes.append(f"device {i}: {exc}; using polled power")

        poll_j: float | None = None
        poll_avg_j: float | None = None
        if self.sampler is not None:
            poll_j = self.sampler.poll_energy_j(b.t, e.t, i)
            poll_avg_j = self.sampler.poll_energy_j(b.t, e.t, i, averaged=True)

        if counter_j is not None:
            energy, method = counter_j, "nvml_counter"
        elif poll_j is not None:
            energy, method = poll_j, "nvml_power_integration"
        else:
            energy, method = None, "unavailable"
            if self.sampler is None:
                notes.append(f"device {i}: no power sampler to fall back on")
        return DeviceEnergy(
            device_index=i,
            device_uuid=info.uuid,
            device_name=info.name,
            energy_j=energy,
            method=method,
            counter_energy_j=counter_j,
            poll_energy_j=poll_j,
            poll_power_source=info.power_source if poll_j is not None else None,
            poll_avg_energy_j=poll_avg_j,
        )

    def close(self) -> None:
        """Close the sensor if this backend opened it."""
        if self._owns_sensor and self._sensor is not None:
            self._sensor.close()
            self._sensor = None
            self._owns_sensor = False


def _common_source(devices: list[DeviceEnergy]) -> str | None:
    """The power reading every polled device used, or "mixed"."""
    sources = {d.poll_power_source for d in devices if d.poll_power_source is not None}
    if not sources:
        return None
    return sources.pop() if len(sources) == 1 else "mixed"
