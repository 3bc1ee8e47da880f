"""GPU energy measurement: sensors, background sampler, energy backends, idle baseline.

Importing this package imports neither pynvml, torch, zeus nor codecarbon; those load lazily
when a backend or sensor is used.
"""

from __future__ import annotations

from llenergymeasure.energy.base import DeviceEnergy, EnergyBackend, EnergyMeasurement, EnergyMethod
from llenergymeasure.energy.baseline import (
    BaselineCache,
    BaselineMeasurement,
    default_baseline_cache,
    get_or_measure_baseline,
    measure_idle_baseline,
)
from llenergymeasure.energy.codecarbon_backend import CodeCarbonEnergyBackend
from llenergymeasure.energy.devices import nvml_available, visible_nvml_indices
from llenergymeasure.energy.maths import (
    EnergyCounterResetError,
    adjusted_energy_j,
    counter_delta_mj,
    integrate_power_j,
    mean_power_w,
    relative_difference,
)
from llenergymeasure.energy.null_backend import NullEnergyBackend
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler, Sample
from llenergymeasure.energy.select import BackendProbes, EnergyBackendChoice, select_energy_backend
from llenergymeasure.energy.sensors import (
    DeviceInfo,
    GpuSensor,
    NvmlSensor,
    SensorReading,
)
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend

__all__ = [
    "BackendProbes",
    "BaselineCache",
    "BaselineMeasurement",
    "CodeCarbonEnergyBackend",
    "DeviceEnergy",
    "DeviceInfo",
    "EnergyBackend",
    "EnergyBackendChoice",
    "EnergyCounterResetError",
    "EnergyMeasurement",
    "EnergyMethod",
    "EnergySampler",
    "GpuSensor",
    "NullEnergyBackend",
    "NvmlEnergyBackend",
    "NvmlSensor",
    "Sample",
    "SensorReading",
    "ZeusEnergyBackend",
    "adjusted_energy_j",
    "counter_delta_mj",
    "default_baseline_cache",
    "get_or_measure_baseline",
    "integrate_power_j",
    "mean_power_w",
    "measure_idle_baseline",
    "nvml_available",
    "relative_difference",
    "select_energy_backend",
    "visible_nvml_indices",
]
