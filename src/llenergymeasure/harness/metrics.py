"""Derived metrics: latency statistics, FLOPs, CO2, steady state and measurement warnings.

Pure functions over raw records and samples, so they are testable without an engine or GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llenergymeasure.energy.sampler import Sample
from llenergymeasure.results.measurements import (
    CarbonEstimate,
    DistributionStats,
    FlopsEstimate,
    SteadyStateWindow,
)

SHORT_MEASUREMENT_S = 10.0
LOW_SAMPLE_COUNT = 10
THERMAL_DRIFT_C = 5.0
POLL_DISAGREEMENT_PCT = 5.0
#: On windows of at least POLL_TIGHT_WINDOW_S, counter and poll must agree within this.
POLL_DISAGREEMENT_TIGHT_PCT = 2.0
POLL_TIGHT_WINDOW_S = 10.0
THERMAL_FLOOR_RECOMMENDED_S = 30.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> DistributionStats:
    """Mean, p50/p90/p99, min, max of every raw value (never an average of averages)."""
    data = sorted(values)
    if not data:
        return DistributionStats(n=0, mean=None, p50=None, p90=None, p99=None, min=None, max=None)
    return DistributionStats(
        n=len(data),
        mean=math.fsum(data) / len(data),
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p99=percentile(data, 99),
        min=data[0],
        max=data[-1],
    )


def estimate_flops(
    parameter_count: int,
    input_tokens: int,
    output_tokens: int,
    *,
    extra_notes: Sequence[str] = (),
    draft_parameter_count: int = 0,
) -> FlopsEstimate:
    """2 x params x processed tokens (prefill + decode), the standard forward-pass estimate.

    Confidence is "medium": attention FLOPs (which grow with context length) and padding are
    not counted, and the parameter count includes embeddings. With speculative decoding the
    draft model's parameters are added (it also processes every token) and confidence drops
    to "low": rejected draft proposals are not counted.
    """
    tokens = input_tokens + output_tokens
    params = parameter_count + draft_parameter_count
    total = 2.0 * params * tokens
    notes = ["excludes attention-score FLOPs and padding tokens; warmup excluded"]
    if draft_parameter_count:
        notes.append(
            f"speculative decoding: parameter_count = target {parameter_count} + draft "
            f"{draft_parameter_count}; rejected draft proposals are not counted"
        )
    return FlopsEstimate(
        total_flops=total,
        flops_per_output_token=total / output_tokens if output_tokens else None,
        parameter_count=params,
        method="2 x parameters x (input + output tokens)",
        confidence="low" if draft_parameter_count else "medium",
        notes=[*notes, *extra_notes],
    )


def estimate_carbon(
    energy_j: float | None,
    *,
    intensity: float | None,
    intensity_source: str,
    pue: float,
    pue_source: str,
    location: str | None,
) -> CarbonEstimate:
    """CO2 (g) = kWh x gCO2/kWh x PUE; None where energy or intensity is unknown."""
    kwh = energy_j / 3.6e6 if energy_j is not None else None
    co2 = kwh * intensity * pue if kwh is not None and intensity is not None else None
    return CarbonEstimate(
        energy_kwh=kwh,
        co2_g=co2,
        carbon_intensity_gco2_kwh=intensity,
        carbon_intensity_source=intensity_source,
        datacenter_pue=pue,
        datacenter_pue_source=pue_source,
        datacenter_location=location,
    )


def window_power_series(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """Total power over devices at each sample time (devices summed per sampling tick)."""
    by_time: dict[float, float] = {}
    ticks: list[float] = []
    per_device_last: dict[int, float] = {}
    for s in sorted(samples, key=lambda s: (s.t, s.device_index)):
        if s.power_w is None:
            continue
        per_device_last[s.device_index] = s.power_w
        # samples of one tick are taken within microseconds; group by rounding
        key = round(s.t, 2)
        if key not in by_time:
            ticks.append(key)
        by_time[key] = sum(per_device_last.values())
    return [(t, by_time[t]) for t in ticks]


def steady_state_window(
    samples: Sequence[Sample], window_start: float, window_end: float, *, tolerance: float = 0.10
) -> SteadyStateWindow | None:
    """Longest contiguous run of samples whose total power is within ``tolerance`` of the median."""
    series = window_power_series([s for s in samples if window_start <= s.t <= window_end])
    if len(series) < 3:
        return None
    powers = sorted(p for _, p in series)
    median = percentile(powers, 50)
    if median <= 0:
        return None
    best: tuple[int, int] | None = None
    start = None
    for i, (_, p) in enumerate(series):
        if abs(p - median) <= tolerance * median:
            start = i if start is None else start
            if best is None or (i - start) > (best[1] - best[0]):
                best = (start, i)
        else:
            start = None
    if best is None or best[1] == best[0]:
        return None
    t0, t1 = series[best[0]][0], series[best[1]][0]
    inside = [p for _, p in series[best[0] : best[1] + 1]]
    duration = window_end - window_start
    return SteadyStateWindow(
        start_s=t0 - window_start,
        end_s=t1 - window_start,
        mean_power_w=math.fsum(inside) / len(inside),
        fraction_of_window=(t1 - t0) / duration if duration > 0 else 0.0,
    )


def thermal_drift_c(temperatures: Sequence[float]) -> float:
    """Sustained temperature change over a window: mean of the last tenth minus the first tenth.

    Averaging the ends ignores the one-sample spikes NVML reports during prefill bursts (seen on
    an H100: +10 C for a single 100 ms sample), which are not drift.
    """
    if len(temperatures) < 2:
        return 0.0
    k = max(1, len(temperatures) // 10)
    return math.fsum(temperatures[-k:]) / k - math.fsum(temperatures[:k]) / k


def measurement_warnings(
    *,
    duration_s: float,
    window_samples: Sequence[Sample],
    n_devices: int,
    energy_available: bool,
    persistence_mode: Sequence[bool | None],
    counter_vs_poll_diff_pct: float | None,
    thermal_floor_seconds: float,
    throttled: bool = False,
    trust_remote_code: bool = False,
    host_oversubscribed: bool = False,
) -> list[str]:
    """Warning flags for one measurement: conditions that make its numbers less trustworthy,
    and ``trust_remote_code`` when code from the model repository ran.

    ``host_oversubscribed``: a CPU run's host had more runnable work than CPUs, or the run
    more compute threads than usable CPUs (``harness.environment.oversubscription``)."""
    warnings: list[str] = []
    if trust_remote_code:
        warnings.append("trust_remote_code")
    if duration_s < SHORT_MEASUREMENT_S:
        warnings.append("short_measurement_duration")
    if energy_available and n_devices > 0:
        per_device = len([s for s in window_samples if s.power_w is not None]) / n_devices
        if per_device < LOW_SAMPLE_COUNT:
            warnings.append("nvml_low_sample_count")
    if any(p is False for p in persistence_mode):
        warnings.append("gpu_persistence_mode_off")
    temps_by_device: dict[int, list[float]] = {}
    for s in sorted(window_samples, key=lambda s: s.t):
        if s.temperature_c is not None:
            temps_by_device.setdefault(s.device_index, []).append(s.temperature_c)
    if any(thermal_drift_c(t) > THERMAL_DRIFT_C for t in temps_by_device.values()):
        warnings.append("thermal_drift_detected")
    if throttled:
        warnings.append("thermal_throttling")
    if counter_vs_poll_diff_pct is not None:
        long_window = duration_s >= POLL_TIGHT_WINDOW_S
        limit = POLL_DISAGREEMENT_TIGHT_PCT if long_window else POLL_DISAGREEMENT_PCT
        if abs(counter_vs_poll_diff_pct) > limit:
            warnings.append("energy_counter_poll_disagreement")
    if thermal_floor_seconds < THERMAL_FLOOR_RECOMMENDED_S:
        warnings.append("thermal_floor_below_recommended")
    if host_oversubscribed:
        warnings.append("host_oversubscribed")
    return warnings
