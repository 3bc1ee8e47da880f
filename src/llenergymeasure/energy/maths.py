"""Pure energy arithmetic: counter deltas, power integration, means, relative differences."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from llenergymeasure.exceptions import BackendError

__all__ = [
    "EnergyCounterResetError",
    "adjusted_energy_j",
    "counter_delta_mj",
    "energy_per",
    "integrate_power_j",
    "mean_power_w",
    "relative_difference",
]


class EnergyCounterResetError(BackendError):
    """The energy counter went backwards by an implausible amount: it was reset, not wrapped."""


def counter_delta_mj(
    start: int,
    end: int,
    *,
    bits: int = 64,
    max_delta_mj: int | None = None,
) -> int:
    """Energy consumed between two readings of a ``bits``-wide total-energy counter (mJ).

    ``end >= start``: plain difference. ``end < start``: the counter either wrapped (the delta
    is ``(end - start) mod 2**bits``) or was reset (driver reload, GPU reset). It counts as a
    wrap only if the modular delta is at most ``max_delta_mj`` (default: half the counter
    range, so a 64-bit counter never "wraps" in practice); otherwise
    ``EnergyCounterResetError`` is raised, so the caller can fall back to power polling
    instead of recording a meaningless number. A plain (non-wrapping) delta larger than
    ``max_delta_mj``, when given, is also reported as implausible.
    """
    if bits <= 0:
        raise ValueError("bits must be positive")
    modulus = 1 << bits
    if not (0 <= start < modulus and 0 <= end < modulus):
        raise ValueError(f"counter values must lie in [0, 2**{bits})")
    limit = max_delta_mj if max_delta_mj is not None else modulus // 2
    if end >= start:
        delta = end - start
        if max_delta_mj is not None and delta > limit:
            raise EnergyCounterResetError(
                f"energy counter jumped by {delta} mJ (more than the plausible {limit} mJ)"
            )
        return delta
    delta = (end - start) % modulus
    if delta > limit:
        raise EnergyCounterResetError(
            f"energy counter went backwards ({start} -> {end} mJ): counter reset, not a wrap-around"
        )
    return delta


def _valid_points(
    times_s: Sequence[float], powers_w: Sequence[float | None]
) -> tuple[list[float], list[float]]:
    if len(times_s) != len(powers_w):
        raise ValueError("times_s and powers_w must have the same length")
    pairs = sorted(
        (float(t), float(p))
        for t, p in zip(times_s, powers_w, strict=True)
        if p is not None and math.isfinite(p) and math.isfinite(t)
    )
    return [t for t, _ in pairs], [p for _, p in pairs]


def _value_at(ts: list[float], ps: list[float], t: float) -> float:
    """Piecewise-linear interpolation; constant hold beyond the first/last sample."""
    if t <= ts[0]:
        return ps[0]
    if t >= ts[-1]:
        return ps[-1]
    k = bisect_right(ts, t)
    t_a, t_b, p_a, p_b = ts[k - 1], ts[k], ps[k - 1], ps[k]
    if t_b == t_a:
        return p_b
    return p_a + (p_b - p_a) * (t - t_a) / (t_b - t_a)


def integrate_power_j(
    times_s: Sequence[float],
    powers_w: Sequence[float | None],
    *,
    t0: float | None = None,
    t1: float | None = None,
) -> float | None:
    """Trapezoid integral of power over time, in joules.

    ``None``/NaN powers are dropped and the gap bridged by the trapezoid between the
    neighbouring valid samples. With a window ``[t0, t1]`` the curve is clipped there, with
    linear interpolation at the edges; where the window reaches beyond the samples, the
    nearest valid sample's power is held constant. Returns ``None`` when there is not enough
    data: no valid sample, or fewer than two without a window.
    """
    ts, ps = _valid_points(times_s, powers_w)
    if not ts or (len(ts) < 2 and (t0 is None or t1 is None)):
        return None
    start = ts[0] if t0 is None else float(t0)
    stop = ts[-1] if t1 is None else float(t1)
    if stop < start:
        raise ValueError(f"window end {stop} is before its start {start}")
    if stop == start:
        return 0.0
    lo = bisect_right(ts, start)
    hi = bisect_left(ts, stop)
    xs = [start, *ts[lo:hi], stop]
    ys = [_value_at(ts, ps, start), *ps[lo:hi], _value_at(ts, ps, stop)]
    return sum((xs[k + 1] - xs[k]) * (ys[k + 1] + ys[k]) / 2.0 for k in range(len(xs) - 1))


def mean_power_w(
    times_s: Sequence[float],
    powers_w: Sequence[float | None],
    *,
    t0: float | None = None,
    t1: float | None = None,
) -> float | None:
    """Time-weighted mean power (integral / duration); plain mean when the span is zero.

    Returns ``None`` when there is no valid sample.
    """
    ts, ps = _valid_points(times_s, powers_w)
    if not ts:
        return None
    start = ts[0] if t0 is None else float(t0)
    stop = ts[-1] if t1 is None else float(t1)
    if stop <= start:
        return sum(ps) / len(ps)
    energy = integrate_power_j(ts, list(ps), t0=start, t1=stop)
    return None if energy is None else energy / (stop - start)


def relative_difference(value: float, reference: float) -> float | None:
    """``(value - reference) / |reference|`` as a fraction; ``None`` when reference is 0.

    Multiply by 100 for percent: ``relative_difference(poll_j, counter_j) * 100``.
    """
    if reference == 0:
        return None
    return (value - reference) / abs(reference)


def energy_per(energy_j: float | None, count: int | None) -> float | None:
    """Energy per unit: J per output token (``count`` = output tokens), J per request, ...

    ``None`` when the energy is unknown or there is nothing to divide by (``count`` 0). The one
    place every J/token and J/request figure (offline and online results) is computed.
    """
    if energy_j is None or not count or count <= 0:
        return None
    return energy_j / count


def adjusted_energy_j(total_j: float, baseline_power_w: float, duration_s: float) -> float:
    """Baseline-subtracted energy: ``total - baseline_power_w * duration_s``.

    Not clipped at zero: a negative value means the baseline was higher than the measured
    draw, which the caller should report rather than hide.
    """
    return total_j - baseline_power_w * duration_s
