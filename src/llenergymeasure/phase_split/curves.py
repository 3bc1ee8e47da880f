"""Cumulative energy curves ``E(t)`` of the sampled devices, from the sampler's samples.

How the curve is built (its knots are the sensor's update instants, counter or power
integration, held slope beyond the edges) is rule 1 of ``phase_split.attribution``.
"""

from __future__ import annotations

import itertools
import math
import statistics
from bisect import bisect_right
from collections.abc import Sequence
from typing import Literal, TypeVar

from llenergymeasure.energy.maths import EnergyCounterResetError, counter_delta_mj
from llenergymeasure.energy.sampler import Sample

__all__ = ["CurveSource", "EnergyCurve", "curves_from_samples"]

CurveSource = Literal["counter", "power_integration"]
_V = TypeVar("_V", int, float)


#: Spans shorter than this give no slope to extrapolate with (two readings stamped at almost
#: the same instant; real sensors are read milliseconds apart).
_MIN_SLOPE_SPAN_S = 1e-6


class EnergyCurve:
    """Cumulative energy ``E(t)`` (J) of one device, from its samples (rule 1 of
    ``phase_split.attribution``).

    ``times_s`` are the knots (the sensor's update instants, see ``from_counter`` and
    ``from_power``); ``sample_times_s`` every sample's time (default: the knots), for the
    sampling interval and the samples in a window.
    """

    def __init__(
        self,
        times_s: Sequence[float],
        cumulative_j: Sequence[float],
        *,
        source: CurveSource,
        powers_w: Sequence[float] | None = None,
        sample_times_s: Sequence[float] | None = None,
    ) -> None:
        if len(times_s) != len(cumulative_j) or not times_s:
            raise ValueError("an energy curve needs matching, non-empty times and energies")
        if any(b < a for a, b in itertools.pairwise(times_s)):
            raise ValueError("sample times must not decrease")
        self.times_s = [float(t) for t in times_s]
        self.cumulative_j = [float(e) for e in cumulative_j]
        self.source: CurveSource = source
        self._powers = None if powers_w is None else [float(p) for p in powers_w]
        if source == "counter" and len(self.times_s) < 2:
            raise ValueError("a counter curve needs at least two samples")
        samples = self.times_s if sample_times_s is None else [float(t) for t in sample_times_s]
        if any(b < a for a, b in itertools.pairwise(samples)):
            raise ValueError("sample times must not decrease")
        self.sample_times_s = samples

    @classmethod
    def from_counter(cls, times_s: Sequence[float], energy_mj: Sequence[int | None]) -> EnergyCurve:
        """From total-energy counter readings (mJ); ``None`` readings are dropped.

        The knots are the first sample and each sample whose reading differs from the one
        before (the counter's update instants); a counter that never changed keeps its first
        and last sample. Each increment (wrap-aware) is spread linearly since the previous
        update. Raises ``EnergyCounterResetError`` when the counter was reset between two
        samples.
        """
        pairs = [
            (float(t), int(e)) for t, e in zip(times_s, energy_mj, strict=True) if e is not None
        ]
        pairs.sort(key=lambda p: p[0])
        if len(pairs) < 2:
            raise ValueError("a counter curve needs at least two samples with a counter")
        knots = _update_instants(pairs)
        if len(knots) < 2:
            knots = [pairs[0], pairs[-1]]
        cumulative = [0.0]
        for (_, a), (_, b) in itertools.pairwise(knots):
            cumulative.append(cumulative[-1] + counter_delta_mj(a, b) / 1000.0)
        return cls(
            [t for t, _ in knots],
            cumulative,
            source="counter",
            sample_times_s=[t for t, _ in pairs],
        )

    @classmethod
    def from_power(cls, times_s: Sequence[float], power_w: Sequence[float | None]) -> EnergyCurve:
        """From instantaneous power samples (W); ``None``/NaN readings are dropped.

        The knots are the first sample and each sample whose power differs from the one
        before (the sensor's update instants): the trapezoid integral runs over them, power
        linear between updates, the last power held beyond the last one.
        """
        pairs = sorted(
            (float(t), float(p))
            for t, p in zip(times_s, power_w, strict=True)
            if p is not None and math.isfinite(p) and math.isfinite(t)
        )
        if not pairs:
            raise ValueError("a power curve needs at least one sample with a power reading")
        knots = _update_instants(pairs)
        ts = [t for t, _ in knots]
        ps = [p for _, p in knots]
        cumulative = [0.0]
        for k in range(1, len(ts)):
            cumulative.append(cumulative[-1] + (ts[k] - ts[k - 1]) * (ps[k] + ps[k - 1]) / 2.0)
        return cls(
            ts,
            cumulative,
            source="power_integration",
            powers_w=ps,
            sample_times_s=[t for t, _ in pairs],
        )

    def energy_at(self, t: float) -> float:
        """``E(t)`` in joules (relative to the first sample)."""
        ts, es = self.times_s, self.cumulative_j
        if self._powers is not None:
            ps = self._powers
            if t <= ts[0]:
                return es[0] - (ts[0] - t) * ps[0]
            if t >= ts[-1]:
                return es[-1] + (t - ts[-1]) * ps[-1]
            k = bisect_right(ts, t) - 1
            span = ts[k + 1] - ts[k]
            p_t = ps[k] if span == 0 else ps[k] + (ps[k + 1] - ps[k]) * (t - ts[k]) / span
            return es[k] + (t - ts[k]) * (ps[k] + p_t) / 2.0
        if ts[0] < t < ts[-1]:
            k = bisect_right(ts, t) - 1
            span = ts[k + 1] - ts[k]
            # the fraction of the span, not a slope: bounded however short the span is
            return es[k] + (es[k + 1] - es[k]) * ((t - ts[k]) / span if span > 0 else 0.0)
        k = 0 if t <= ts[0] else len(ts) - 2
        return es[k] + self._end_slope(k) * (t - ts[k])

    def _end_slope(self, k: int) -> float:
        """Power (W) used beyond an end of a counter curve: that end span's, unless the span is
        too short to give one (timestamps closer than ``_MIN_SLOPE_SPAN_S``), then the whole
        curve's, else 0."""
        ts, es = self.times_s, self.cumulative_j
        span = ts[k + 1] - ts[k]
        if span >= _MIN_SLOPE_SPAN_S:
            return (es[k + 1] - es[k]) / span
        whole = ts[-1] - ts[0]
        return (es[-1] - es[0]) / whole if whole >= _MIN_SLOPE_SPAN_S else 0.0

    def energy_between(self, t0: float, t1: float) -> float:
        """Energy over ``[t0, t1]`` (J)."""
        return self.energy_at(t1) - self.energy_at(t0)

    def sampling_interval_s(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Median spacing of the samples; ``None`` with a single sample.

        With a window ``[t0, t1]``: of the spacings that overlap it (all of them when none does).
        """
        return _median_gap(self.sample_times_s, t0, t1)

    def update_interval_s(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Median spacing of the knots (the sensor's update interval); ``None`` with one knot.

        Equal to ``sampling_interval_s`` when every sample is a new reading. With a window
        ``[t0, t1]``: of the spacings that overlap it (all of them when none does).
        """
        return _median_gap(self.times_s, t0, t1)

    def samples_within(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.sample_times_s if t0 <= t <= t1)

    def longest_gap_s(self, t0: float, t1: float) -> float:
        """The longest stretch of ``[t0, t1]`` without a sample (its edges count as bounds
        only where no sample lies beyond them), seconds."""
        ts = self.sample_times_s
        bounds = [t0] if ts[0] > t0 else []
        bounds += [min(max(t, t0), t1) for t in ts]
        bounds += [t1] if ts[-1] < t1 else []
        return max((b - a for a, b in itertools.pairwise(bounds)), default=t1 - t0)


def _update_instants(pairs: Sequence[tuple[float, _V]]) -> list[tuple[float, _V]]:
    """The first ``(t, value)`` and each whose value differs from the one before it."""
    return [pairs[k] for k in range(len(pairs)) if k == 0 or pairs[k][1] != pairs[k - 1][1]]


def _median_gap(times: Sequence[float], t0: float | None, t1: float | None) -> float | None:
    gaps = list(itertools.pairwise(times))
    if not gaps:
        return None
    if t0 is not None and t1 is not None:
        overlapping = [(a, b) for a, b in gaps if b > t0 and a < t1]
        gaps = overlapping or gaps
    return statistics.median([b - a for a, b in gaps])


def curves_from_samples(samples: Sequence[Sample]) -> dict[int, EnergyCurve]:
    """One ``EnergyCurve`` per device of an ``EnergySampler``'s samples.

    Counter curve where every sample of the device has a counter reading and the counter
    was not reset; power curve otherwise. Devices with neither are left out. Either curve's
    knots are the sensor's update instants (repeated readings dropped; rule 1 of
    ``phase_split.attribution``).
    """
    by_device: dict[int, list[Sample]] = {}
    for s in samples:
        by_device.setdefault(s.device_index, []).append(s)
    curves: dict[int, EnergyCurve] = {}
    for device, rows in sorted(by_device.items()):
        rows.sort(key=lambda s: s.t)
        times = [s.t for s in rows]
        if len(rows) >= 2 and all(s.energy_mj is not None for s in rows):
            try:
                curves[device] = EnergyCurve.from_counter(times, [s.energy_mj for s in rows])
                continue
            except EnergyCounterResetError:
                pass
        if any(s.power_w is not None for s in rows):
            curves[device] = EnergyCurve.from_power(times, [s.power_w for s in rows])
    return curves
