"""Machine-level settings that shape a measurement, read from the effective user settings."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MeasurementSettings"]


@dataclass
class MeasurementSettings:
    """Machine-level settings that shape a measurement (from the user config / env)."""

    sampling_interval_ms: int = 100
    carbon_intensity_gco2_kwh: float | None = None
    carbon_intensity_source: str = "not configured"
    datacenter_pue: float = 1.0
    datacenter_pue_source: str = "default"
    datacenter_location: str | None = None
    baseline_ttl_s: float = 3600.0
    energy_backend: str = "auto"  # auto, nvml, zeus, codecarbon or none

    @classmethod
    def from_user_config(cls) -> MeasurementSettings:
        """Effective settings: env > user config file > defaults."""
        from llenergymeasure.config.user_config import effective_settings

        s = effective_settings()
        intensity = s["measurement.carbon_intensity_gco2_kwh"]
        pue = s["measurement.datacenter_pue"]
        return cls(
            sampling_interval_ms=int(s["measurement.sampling_interval_ms"].value),
            carbon_intensity_gco2_kwh=intensity.value,
            carbon_intensity_source=intensity.source
            if intensity.value is not None
            else "not configured",
            datacenter_pue=float(pue.value),
            datacenter_pue_source=pue.source,
            datacenter_location=s["measurement.datacenter_location"].value,
            energy_backend=str(s["measurement.energy_backend"].value),
        )
