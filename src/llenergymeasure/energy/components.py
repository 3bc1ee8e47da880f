"""Energy by component (gpu, cpu, dram) and the total with the host's share (issue 16).

The headline figures of a result stay GPU-only (comparable across machines and backends).
``energy_components`` puts the GPU figure beside the host components the machine exposes and
reports a ``total_with_host_j``. Host readings come, in the order the caller prefers, from:

- the RAPL reader (``energy.rapl``, ``method="rapl_sysfs"``),
- Zeus' ``Measurement.cpu_energy`` / ``dram_energy`` (J per CPU package; Zeus reads RAPL
  too), ``method="zeus"``,
- CodeCarbon's ``EmissionsData.cpu_energy`` / ``ram_energy`` (kWh), ``method="codecarbon"``:
  CodeCarbon's CPU figure is RAPL where it can read it and otherwise an estimate from the
  CPU's TDP, and its RAM figure is always an estimate from the installed memory, so they are
  flagged ``estimated``.

For each component the first source with a measured value wins; the others are not added
(they measure the same thing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.rapl import HostComponent, HostEnergyMeasurement, HostEnergyReading

__all__ = [
    "ComponentName",
    "EnergyComponent",
    "EnergyComponents",
    "energy_components",
    "host_energy_components",
    "host_readings_from_codecarbon",
    "host_readings_from_rapl",
    "host_readings_from_zeus",
]

J_PER_KWH = 3.6e6
ComponentName = Literal["gpu", "cpu", "dram"]

GPU_ONLY_NOTE = (
    "headline energy figures are GPU-only; total_with_host_j adds the measured cpu and dram "
    "components"
)


class EnergyComponent(BaseModel):
    """One component's energy over the window, and how it was obtained.

    ``method``: ``nvml_counter``/``nvml_power_integration``/``zeus``/``codecarbon`` for the
    GPU (the backend's method), ``rapl_sysfs``/``zeus``/``codecarbon`` for the host,
    ``unavailable`` when not measured. ``estimated``: the figure is modelled, not measured.
    """

    model_config = {"extra": "forbid"}

    component: ComponentName = Field(description="gpu, cpu or dram.")
    energy_j: float | None = Field(description="Energy over the window, J (None = not measured).")
    method: str = Field(
        description=(
            "How it was obtained: the GPU backend's method; rapl_sysfs, zeus or codecarbon for the"
            " host; unavailable."
        )
    )
    estimated: bool = Field(
        False, description="True when the figure is modelled, not measured (CodeCarbon's CPU/RAM)."
    )
    sources: list[str] = Field(
        default_factory=list, description="Where it was read (e.g. RAPL zones)."
    )
    notes: list[str] = Field(default_factory=list, description="Caveats.")


class EnergyComponents(BaseModel):
    """The ``energy.components`` breakdown of a result.

    ``gpu_energy_j`` is the headline (GPU-only) figure; ``host_energy_j`` sums the measured
    host components; ``total_with_host_j`` = gpu + host (``None`` without a GPU figure; equal
    to the GPU figure when no host component was measured).
    """

    model_config = {"extra": "forbid"}

    components: list[EnergyComponent] = Field(description="Each component's energy.")
    gpu_energy_j: float | None = Field(description="The headline, GPU-only energy, J.")
    host_energy_j: float | None = Field(description="Sum of the measured host components, J.")
    total_with_host_j: float | None = Field(
        description="GPU + host energy, J (None without a GPU figure)."
    )
    notes: list[str] = Field(
        default_factory=lambda: [GPU_ONLY_NOTE],
        description="Caveats (headline figures are GPU-only).",
    )

    def component(self, name: ComponentName) -> EnergyComponent | None:
        for c in self.components:
            if c.component == name:
                return c
        return None


def _per_index_j(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    try:
        return {int(k): float(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        return None


def host_readings_from_rapl(measurement: HostEnergyMeasurement) -> list[HostEnergyReading]:
    """The RAPL reader's components; when RAPL was unavailable, ``cpu`` as unavailable with why."""
    if measurement.available:
        return list(measurement.components)
    return [
        HostEnergyReading(
            component="cpu",
            energy_j=None,
            method="unavailable",
            notes=[f"RAPL: {measurement.reason}"] if measurement.reason else [],
        )
    ]


def host_readings_from_zeus(measurement: Any) -> list[HostEnergyReading]:
    """Host readings in a Zeus ``Measurement`` (``cpu_energy``/``dram_energy``: index -> J).

    Empty when Zeus measured no CPU (fields absent or ``None``).
    """
    out: list[HostEnergyReading] = []
    fields: tuple[tuple[HostComponent, str], ...] = (("cpu", "cpu_energy"), ("dram", "dram_energy"))
    for component, attr in fields:
        per_index = _per_index_j(getattr(measurement, attr, None))
        if not per_index:
            continue
        out.append(
            HostEnergyReading(
                component=component,
                energy_j=sum(per_index.values()),
                method="zeus",
                zones=[f"cpu {i}" for i in sorted(per_index)],
            )
        )
    return out


def host_readings_from_codecarbon(emissions_data: Any) -> list[HostEnergyReading]:
    """Host readings in a CodeCarbon ``EmissionsData`` (``cpu_energy``/``ram_energy``, kWh).

    Zero or missing figures are left out (CodeCarbon reports 0 for what it did not track).
    """
    out: list[HostEnergyReading] = []
    fields: tuple[tuple[HostComponent, str, str], ...] = (
        (
            "cpu",
            "cpu_energy",
            "CodeCarbon's CPU energy: RAPL where it could read it, else estimated from TDP",
        ),
        ("dram", "ram_energy", "CodeCarbon's RAM energy is estimated from the installed memory"),
    )
    for component, attr, note in fields:
        value = getattr(emissions_data, attr, None)
        if value is None:
            continue
        try:
            kwh = float(value)
        except (TypeError, ValueError):
            continue
        if kwh <= 0:
            continue
        out.append(
            HostEnergyReading(
                component=component,
                energy_j=kwh * J_PER_KWH,
                method="codecarbon",
                notes=[note],
            )
        )
    return out


def energy_components(
    gpu: EnergyMeasurement, *host_sources: Sequence[HostEnergyReading]
) -> EnergyComponents:
    """GPU figure plus host components, first measured source per component winning.

    ``host_sources`` in order of preference, e.g. ``(rapl.components, zeus_readings,
    codecarbon_readings)``. A host component that no source measured but one reported as
    unavailable is kept as ``unavailable`` with that source's notes.
    """
    gpu_component = EnergyComponent(
        component="gpu",
        energy_j=gpu.total_energy_j,
        method=gpu.method if gpu.total_energy_j is not None else "unavailable",
        sources=[gpu.backend],
        notes=[] if gpu.total_energy_j is not None else list(gpu.notes),
    )
    components = [gpu_component]
    order: tuple[HostComponent, ...] = ("cpu", "dram")
    for name in order:
        readings = [r for source in host_sources for r in source if r.component == name]
        measured = [r for r in readings if r.energy_j is not None]
        if measured:
            chosen = measured[0]
            others = [r.method for r in measured[1:]]
            notes = list(chosen.notes)
            if others:
                notes.append(f"also reported by {', '.join(others)} (not added)")
            components.append(
                EnergyComponent(
                    component=name,
                    energy_j=chosen.energy_j,
                    method=chosen.method,
                    estimated=chosen.method == "codecarbon",
                    sources=list(chosen.zones),
                    notes=notes,
                )
            )
        elif readings:
            components.append(
                EnergyComponent(
                    component=name,
                    energy_j=None,
                    method="unavailable",
                    sources=[z for r in readings for z in r.zones],
                    notes=[n for r in readings for n in r.notes],
                )
            )
    host_values = [
        c.energy_j for c in components if c.component != "gpu" and c.energy_j is not None
    ]
    host = sum(host_values) if host_values else None
    total = None
    if gpu.total_energy_j is not None:
        total = gpu.total_energy_j + (host or 0.0)
    return EnergyComponents(
        components=components,
        gpu_energy_j=gpu.total_energy_j,
        host_energy_j=host,
        total_with_host_j=total,
    )


def host_energy_components(
    gpu: EnergyMeasurement,
    rapl: HostEnergyMeasurement | None,
    energy_backend: Any = None,
) -> EnergyComponents:
    """``energy_components`` of a run's window: the GPU figure, then cpu/dram from RAPL, Zeus,
    CodeCarbon.

    ``rapl``: the RAPL reading of the window (``None``: not read). ``energy_backend``: the
    run's backend; a Zeus backend's last ``Measurement`` (``last_window``) and a CodeCarbon
    backend's ``last_emissions_data`` are read for their CPU/RAM figures. Read this right
    after the measurement window, before the backend measures another one.
    """
    sources: list[list[HostEnergyReading]] = []
    if rapl is not None:
        sources.append(host_readings_from_rapl(rapl))
    zeus_window = getattr(energy_backend, "last_window", None)
    if zeus_window is not None:
        sources.append(host_readings_from_zeus(zeus_window))
    emissions = getattr(energy_backend, "last_emissions_data", None)
    if emissions is not None:
        sources.append(host_readings_from_codecarbon(emissions))
    return energy_components(gpu, *sources)
