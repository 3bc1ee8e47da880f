"""Time-resolved energy attribution: energy per engine step, per request, prefill vs decode.

Pure functions over data the run already has: the power/energy samples of the measurement
window and the timeline of engine steps (from per-token timestamps). Nothing here runs inside
the measurement window.

The rule
--------

1. **Energy curve.** Each device's samples give a cumulative energy ``E(t)``. A sensor
   publishes a new reading at its own update period, which can be coarser than the polling
   (NVML's counter and power on an H200 with driver 580: about every 100 ms, polled every
   10 ms); between updates the sampler records the same value again. So the curve's knots are
   the sensor's update instants: the first sample and every sample whose reading differs from
   the sample before it (a new value is placed at the sample that first shows it, at most one
   polling interval after the real update; the repeats carry nothing new and are dropped).
   From counter samples (``energy_mj``): the counter differences between consecutive knots
   (wrap-aware), each increment spread linearly over the time since the previous update
   (``source="counter"``). Without counter: the trapezoid integral of the instantaneous power
   over the knots, power linear between updates (``source="power_integration"``; equal to
   ``maths.integrate_power_j`` over the knots, and over all samples when every sample is a
   new reading). Beyond the first/last knot the edge slope (power) is held; in particular
   repeated readings at the end of the samples (energy the counter has not reported yet) are
   extrapolated at the last update's rate, not booked as zero. The window's edges fall
   between updates: ``E(t0)`` and ``E(t1)`` are read on the update interval around them, so
   the increment straddling an edge is split in proportion to time (the run passes the
   samples of every phase, so there are updates on both sides of its window). When every
   sample is a new reading (100 ms polling, or a sensor that updates faster than it is
   polled) the knots are all the samples. Several devices of one engine (tensor parallel)
   are summed.
2. **Charge intervals.** Steps are sorted by start and may not overlap. The window
   ``[t0, t1]`` is cut at the end of every step that did work; the interval of a step runs
   from the previous cut (``t0`` for the first) to its own end, the last one to ``t1``. So
   the energy of the time *between* steps (idle gaps, host-side work, tokenisation, the gap
   between static batches) goes to the step that follows it, and the tail after the last
   step goes to the last step. A step without tokens is merged into the next step with
   tokens. The step's energy is ``E(end) - E(previous cut)``.
3. **Split among requests.** A step's energy is shared among the requests in it in
   proportion to the tokens each processed in that step: its prompt tokens in the step that
   produced its first token (prefill), one token per decode step (``k`` for ``k`` tokens
   accepted at once by speculative decoding). The prefill/decode split of the window is the
   sum of the prefill-token shares and of the decode-token shares.
4. **Conservation.** The intervals partition the window, so the step energies telescope to
   ``E(t1) - E(t0)`` and the request energies sum to the window energy exactly, to float
   rounding. With ``total_energy_j`` (the headline figure of the energy backend, read at
   slightly different instants) every interval is scaled by ``total / (E(t1) - E(t0))`` so
   that the requests sum to that figure; ``scale_factor`` records the factor.
5. **Confidence.** Interpolation cannot resolve steps shorter than the time between two
   readings. That time is the larger of the sampling interval (median spacing of the samples)
   and the sensor's update interval (median spacing of the knots), both over the stretches of
   the curve that overlap the window, each the largest over the engine's devices (the
   coarsest device limits the summed curve); ``sensor_update_interval_s`` records the update
   interval, equal to the sampling interval when every sample is a new reading. With that
   interval over half the median step length the energy of one step is smeared over its
   neighbours, so the prefill/decode split and the energies of requests in different steps
   are approximate (``"low"``; totals stay exact). Over a tenth of it: ``"medium"``;
   otherwise ``"high"``. Fewer than two samples in the window: ``"low"``; so is a stretch
   without samples (a stalled or stopped sampler) longer than half the median step and a
   tenth of the window, whose steps are split by time alone. The reason names
   the sensor's update interval when it is coarser than the sampling interval.
6. **Steps must be steps.** Every token of one engine step must carry the same time (the
   PyTorch streamer's per-step stamp, the vLLM step loop's ``token_times_s``). An engine that
   stamps each request's tokens on their own (per streamed response) yields slivers between
   the requests' stamps instead of steps: a median step under ``MIN_STEP_S`` (50 us, shorter
   than any forward pass) is refused, since each real step's energy would go to whichever
   request's token came first.

Clocks: sample times and token times must come from the same clock. The NVML sampler uses
``time.monotonic`` and the PyTorch step timer ``time.perf_counter``; on Linux both read
``CLOCK_MONOTONIC`` (check with ``time.get_clock_info``).
"""

from __future__ import annotations

import itertools
import math
import statistics
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, Field

from llenergymeasure.energy.maths import EnergyCounterResetError, counter_delta_mj
from llenergymeasure.energy.sampler import Sample

__all__ = [
    "BatchTokenTimes",
    "Confidence",
    "EnergyAttribution",
    "EnergyCurve",
    "EngineStep",
    "RequestEnergy",
    "RequestTokenTimes",
    "RequestWork",
    "StepPhase",
    "attribute_energy",
    "attribute_run",
    "attribution_confidence",
    "batches_from_records",
    "curves_from_samples",
    "steps_from_token_times",
]

StepPhase = Literal["prefill", "decode"]
Confidence = Literal["high", "medium", "low"]
CurveSource = Literal["counter", "power_integration"]
_V = TypeVar("_V", int, float)

HIGH_CONFIDENCE_RATIO = 0.1
LOW_CONFIDENCE_RATIO = 0.5
MIN_STEP_S = 50e-6
"""A median engine step shorter than this is no forward pass: the timeline is not per step."""


# -- timeline -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestWork:
    """Tokens one request processed in one step: prompt tokens (prefill) or generated ones."""

    request: int
    tokens: int
    phase: StepPhase


@dataclass(frozen=True)
class EngineStep:
    """One engine step (a forward pass over the batch), from ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    work: tuple[RequestWork, ...]

    @property
    def tokens(self) -> int:
        return sum(w.tokens for w in self.work)


@dataclass(frozen=True)
class RequestTokenTimes:
    """One request's prompt length and the time each of its generated tokens appeared."""

    request: int
    prompt_tokens: int
    token_times_s: Sequence[float]


@dataclass(frozen=True)
class BatchTokenTimes:
    """Requests generated together, from the engine call's start ``start_s``.

    A static batch (PyTorch ``generate``): every request shares the batch's step times, a
    request that stopped early simply has fewer. A continuous-batching engine loop can be
    given as one "batch" whose requests have their own token times.
    """

    start_s: float
    requests: Sequence[RequestTokenTimes]


def steps_from_token_times(batches: Sequence[BatchTokenTimes]) -> list[EngineStep]:
    """The step timeline of a run from per-request token timestamps.

    Per batch, every distinct token time ends a step; the first step starts at the batch's
    ``start_s`` and each next one where the previous ended. A request's first token ends its
    prefill step (its ``prompt_tokens`` are the work it did there); each later token time
    is one decode token of that request (tokens sharing a time count together). A request
    without any token (nothing generated) is counted in the batch's first step with its
    prompt. Batches must not overlap in time.
    """
    steps: list[EngineStep] = []
    previous_end: float | None = None
    for b, batch in enumerate(sorted(batches, key=lambda x: x.start_s)):
        if previous_end is not None and batch.start_s < previous_end:
            raise ValueError(
                f"batch {b} starts at {batch.start_s} before the previous batch's last token "
                f"at {previous_end}: batches must not overlap"
            )
        per_request: list[tuple[RequestTokenTimes, Counter[float], float | None]] = []
        ends: set[float] = set()
        for r in batch.requests:
            times = [float(t) for t in r.token_times_s]
            if any(b_ < a_ for a_, b_ in itertools.pairwise(times)):
                raise ValueError(f"request {r.request}: token times must not decrease")
            if times and times[0] < batch.start_s:
                raise ValueError(
                    f"request {r.request}: first token at {times[0]} is before its batch "
                    f"started at {batch.start_s}"
                )
            if r.prompt_tokens < 0:
                raise ValueError(f"request {r.request}: prompt_tokens must be >= 0")
            ends.update(times)
            per_request.append((r, Counter(times), times[0] if times else None))
        if not ends:
            raise ValueError(
                f"batch {b} has no token timestamps (beam search cannot stream): "
                "its steps cannot be reconstructed"
            )
        first_end = min(ends)
        start = batch.start_s
        for end in sorted(ends):
            work: list[RequestWork] = []
            for r, counts, first in per_request:
                n = counts.get(end, 0)
                if first == end or (first is None and end == first_end):
                    work.append(RequestWork(r.request, r.prompt_tokens, "prefill"))
                    n -= 1 if first == end else 0  # its first token came with the prefill
                if n > 0:
                    work.append(RequestWork(r.request, n, "decode"))
            steps.append(EngineStep(start_s=start, end_s=end, work=tuple(work)))
            start = end
        previous_end = start
    return steps


class TokenTimedRecord(Protocol):
    """What ``batches_from_records`` reads of an engine's ``RequestRecord``."""

    @property
    def index(self) -> int: ...

    @property
    def input_tokens(self) -> int: ...

    @property
    def ttft_s(self) -> float | None: ...

    @property
    def itl_s(self) -> Sequence[float]: ...

    @property
    def batch_index(self) -> int: ...


def batches_from_records(
    records: Sequence[TokenTimedRecord], batch_start_s: Mapping[int, float]
) -> list[BatchTokenTimes]:
    """Per-batch token times rebuilt from engine records and each batch's start time.

    A record's token times are ``start + ttft_s`` and then each ``itl_s`` gap added in turn
    (the PyTorch engine's records: ``ttft_s`` from the start of the batch's ``generate``,
    ``itl_s`` the gaps between its tokens). ``batch_start_s`` maps ``batch_index`` to the
    absolute start of that batch on the sampler's clock. Records of one static batch share
    the same gaps, so their rebuilt times coincide exactly and they share steps.
    """
    grouped: dict[int, list[RequestTokenTimes]] = {}
    for r in records:
        if r.ttft_s is None:
            raise ValueError(
                f"request {r.index} has no first-token time (beam search cannot stream): "
                "its steps cannot be reconstructed"
            )
        if r.batch_index not in batch_start_s:
            raise ValueError(f"no start time for batch {r.batch_index} (request {r.index})")
        t = batch_start_s[r.batch_index] + r.ttft_s
        times = [t]
        for gap in r.itl_s:
            t += gap
            times.append(t)
        grouped.setdefault(r.batch_index, []).append(
            RequestTokenTimes(r.index, r.input_tokens, times)
        )
    return [
        BatchTokenTimes(batch_start_s[b], reqs)
        for b, reqs in sorted(grouped.items(), key=lambda kv: batch_start_s[kv[0]])
    ]


# -- energy curves ------------------------------------------------------------------------


class EnergyCurve:
    """Cumulative energy ``E(t)`` (J) of one device, from its samples. See the module rule.

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
        if t <= ts[0]:
            k = 0
        elif t >= ts[-1]:
            k = len(ts) - 2
        else:
            k = bisect_right(ts, t) - 1
        span = ts[k + 1] - ts[k]
        slope = 0.0 if span == 0 else (es[k + 1] - es[k]) / span
        return es[k] + slope * (t - ts[k])

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
    knots are the sensor's update instants (repeated readings dropped; module rule, point 1).
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


# -- attribution --------------------------------------------------------------------------


class RequestEnergy(BaseModel):
    """Energy attributed to one request, and the tokens it was attributed for."""

    model_config = {"extra": "forbid"}

    request: int = Field(description="Request index.")
    energy_j: float = Field(description="Energy attributed to the request, J.")
    prefill_energy_j: float = Field(description="Its prefill share, J.")
    decode_energy_j: float = Field(description="Its decode share, J.")
    prefill_tokens: int = Field(description="Prompt tokens attributed in its first-token step.")
    decode_tokens: int = Field(description="Decode tokens attributed.")


class EnergyAttribution(BaseModel):
    """Time-resolved split of a window's energy over steps, requests and phases.

    ``energy_j`` is what was attributed (the window energy, scaled to ``total_energy_j``
    when given: ``curve_energy_j`` x ``scale_factor``); the requests' ``energy_j`` sum to it.
    ``between_steps_energy_j`` is the part of it that fell between steps (charged to the
    following step). ``confidence``/``confidence_reason``: see the module rule.
    """

    model_config = {"extra": "forbid"}

    method: Literal["time_resolved"] = Field(
        "time_resolved", description="How the split was obtained."
    )
    source: str = Field(description="Energy curve used: counter or power_integration.")
    window_start_s: float = Field(description="Window start on the sampler's clock, seconds.")
    window_end_s: float = Field(description="Window end on the sampler's clock, seconds.")
    energy_j: float = Field(
        description="Energy attributed, J (curve energy x scale_factor); the requests sum to it."
    )
    curve_energy_j: float = Field(description="Window energy from the sampled curve, J.")
    scale_factor: float = Field(description="Backend total / curve energy.")
    energy_prefill_j: float = Field(description="Sum of the prefill-token shares, J.")
    energy_decode_j: float = Field(description="Sum of the decode-token shares, J.")
    between_steps_energy_j: float = Field(
        description="Energy that fell between steps (charged to the following step), J."
    )
    n_steps: int = Field(description="Engine steps in the window.")
    sampling_interval_s: float | None = Field(
        description="Sampling interval (median spacing of the samples over the window), seconds."
    )
    sensor_update_interval_s: float | None = Field(
        None,
        description=(
            "How often the sensor's reading (energy counter, or power) actually changed: "
            "median spacing of its updates over the window, the coarsest device, seconds. "
            "Equals sampling_interval_s when every sample is a new reading; None in results "
            "written before it was recorded."
        ),
    )
    median_step_s: float | None = Field(description="Median step length, seconds.")
    confidence: Confidence = Field(
        description=(
            "high, medium or low (the larger of the sampling and sensor update intervals vs "
            "the median step)."
        )
    )
    confidence_reason: str = Field(description="Why that confidence.")
    requests: list[RequestEnergy] = Field(
        default_factory=list,
        description="Per-request energies (empty in results: they are in requests[i]).",
    )

    @property
    def share_prefill(self) -> float | None:
        return self.energy_prefill_j / self.energy_j if self.energy_j else None

    @property
    def share_decode(self) -> float | None:
        return self.energy_decode_j / self.energy_j if self.energy_j else None


def attribution_confidence(
    sampling_interval_s: float | None,
    median_step_s: float | None,
    samples_in_window: int,
    *,
    update_interval_s: float | None = None,
    reading: str = "sensor reading",
    longest_gap_s: float | None = None,
    window_s: float | None = None,
) -> tuple[Confidence, str]:
    """Confidence of a time-resolved split, and why (see the module rule).

    ``update_interval_s``: the sensor's update interval (``None``: not measured, taken to be
    the sampling interval); the larger of the two is compared with the median step.
    ``reading``: what updates ("energy counter", "power reading"), named in the reason when
    its update interval is the coarser one. ``longest_gap_s``: the longest stretch of the
    window (``window_s`` long) without a sample; over half the median step and over a tenth
    of the window, the steps in it are split by time alone: ``"low"``, whatever the median.
    """
    if samples_in_window < 2 or sampling_interval_s is None:
        return "low", (
            f"{samples_in_window} sample(s) inside the window: step energies are "
            "extrapolated, not measured; totals stay exact"
        )
    if median_step_s is None or median_step_s <= 0:
        return "low", "steps have no measurable duration: the split is not time-resolved"
    step = f"median step {median_step_s * 1e3:.1f} ms"
    if (
        longest_gap_s is not None
        and window_s
        and longest_gap_s > LOW_CONFIDENCE_RATIO * median_step_s
        and longest_gap_s > HIGH_CONFIDENCE_RATIO * window_s
    ):
        return "low", (
            f"no reading for {longest_gap_s * 1e3:.1f} ms of the {window_s * 1e3:.1f} ms window "
            f"(sampler stalled or stopped) vs {step}: the steps in that stretch are split by "
            "time alone; totals stay exact"
        )
    if update_interval_s is not None and update_interval_s > sampling_interval_s:
        ratio = update_interval_s / median_step_s
        what = (
            f"{reading} updates every {update_interval_s * 1e3:.1f} ms (sampled every "
            f"{sampling_interval_s * 1e3:.1f} ms) vs {step} (ratio {ratio:.2f})"
        )
    else:
        ratio = sampling_interval_s / median_step_s
        what = f"sampling interval {sampling_interval_s * 1e3:.1f} ms vs {step} (ratio {ratio:.2f})"
    if ratio > LOW_CONFIDENCE_RATIO:
        return "low", (
            f"{what}: more than half a step, so each step's energy is interpolated across "
            "several steps and the prefill/decode and per-request splits are smeared; "
            "totals stay exact"
        )
    if ratio > HIGH_CONFIDENCE_RATIO:
        return "medium", f"{what}: a few samples per step"
    return "high", f"{what}: many samples per step"


_READING_NAMES: dict[str, str] = {"counter": "energy counter", "power_integration": "power reading"}


def _largest(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def attribute_energy(
    steps: Sequence[EngineStep],
    curves: EnergyCurve | Sequence[EnergyCurve],
    *,
    window: tuple[float, float] | None = None,
    total_energy_j: float | None = None,
) -> EnergyAttribution:
    """Split the window's energy over ``steps`` and their requests (rule in the module doc).

    ``curves``: the energy curve of the device the steps ran on, or of every device of one
    engine (summed). ``window``: ``(t0, t1)``, default the first step's start to the last
    step's end; every step must lie inside it. ``total_energy_j``: scale the attribution so
    that it sums to this figure (the backend's window energy).
    """
    curve_list = [curves] if isinstance(curves, EnergyCurve) else list(curves)
    if not curve_list:
        raise ValueError("attribution needs at least one energy curve")
    ordered = sorted(steps, key=lambda s: (s.start_s, s.end_s))
    working = [s for s in ordered if s.tokens > 0]
    if not working:
        raise ValueError("no step processed any token: nothing to attribute energy to")
    for k, s in enumerate(ordered):
        if s.end_s < s.start_s:
            raise ValueError(f"step {k} ends ({s.end_s}) before it starts ({s.start_s})")
        if any(w.tokens < 0 for w in s.work):
            raise ValueError(f"step {k} has a negative token count")
        if k and s.start_s < ordered[k - 1].end_s:
            raise ValueError(
                f"step {k} starts at {s.start_s} before step {k - 1} ends at "
                f"{ordered[k - 1].end_s}: steps of one engine must not overlap"
            )
    t0, t1 = window if window is not None else (ordered[0].start_s, ordered[-1].end_s)
    if t1 < t0:
        raise ValueError(f"window end {t1} is before its start {t0}")
    if ordered[0].start_s < t0 or ordered[-1].end_s > t1:
        raise ValueError(
            f"steps span [{ordered[0].start_s}, {ordered[-1].end_s}], outside the window "
            f"[{t0}, {t1}]"
        )

    def energy_at(t: float) -> float:
        return sum(c.energy_at(t) for c in curve_list)

    cuts = [t0] + [s.end_s for s in working[:-1]] + [t1]
    e_cuts = [energy_at(t) for t in cuts]
    interval_j = [e_cuts[j + 1] - e_cuts[j] for j in range(len(working))]
    curve_energy = e_cuts[-1] - e_cuts[0]

    scale = 1.0
    if total_energy_j is not None:
        if curve_energy <= 0:
            raise ValueError(
                f"the samples give {curve_energy} J over the window: cannot scale the "
                f"attribution to {total_energy_j} J"
            )
        scale = total_energy_j / curve_energy
        interval_j = [e * scale for e in interval_j]

    between = 0.0
    for j, s in enumerate(working):
        gap_start = cuts[j]
        if s.start_s > gap_start:
            between += (energy_at(s.start_s) - e_cuts[j]) * scale
    tail_start = working[-1].end_s
    if t1 > tail_start:
        between += (e_cuts[-1] - energy_at(tail_start)) * scale

    acc: dict[int, list[float]] = {}  # request -> [prefill J, decode J, prefill tok, decode tok]
    for s, energy in zip(working, interval_j, strict=True):
        total_tokens = s.tokens
        for w in s.work:
            row = acc.setdefault(w.request, [0.0, 0.0, 0, 0])
            part = energy * w.tokens / total_tokens
            if w.phase == "prefill":
                row[0] += part
                row[2] += w.tokens
            else:
                row[1] += part
                row[3] += w.tokens
    requests = [
        RequestEnergy(
            request=r,
            energy_j=row[0] + row[1],
            prefill_energy_j=row[0],
            decode_energy_j=row[1],
            prefill_tokens=int(row[2]),
            decode_tokens=int(row[3]),
        )
        for r, row in sorted(acc.items())
    ]
    sampling = _largest(c.sampling_interval_s(t0, t1) for c in curve_list)
    update = _largest(c.update_interval_s(t0, t1) for c in curve_list)
    durations = [s.end_s - s.start_s for s in working]
    median_step = statistics.median(durations) if durations else None
    if median_step is not None and len(working) > 1 and median_step < MIN_STEP_S:
        raise ValueError(
            f"the token times do not line up into engine steps: the median step lasts "
            f"{median_step * 1e6:.1f} us, shorter than any forward pass "
            f"({MIN_STEP_S * 1e6:.0f} us), so the requests' tokens of one step carry different "
            "times (stamped per request, not per step) and a time-resolved split would "
            "hand each step's energy to whichever token came first"
        )
    inside = min(c.samples_within(t0, t1) for c in curve_list)
    sources = {c.source for c in curve_list}
    reading = (
        _READING_NAMES.get(next(iter(sources)), "sensor reading")
        if len(sources) == 1
        else "sensor reading"
    )
    confidence, reason = attribution_confidence(
        sampling,
        median_step,
        inside,
        update_interval_s=update,
        reading=reading,
        longest_gap_s=max(c.longest_gap_s(t0, t1) for c in curve_list),
        window_s=t1 - t0,
    )
    return EnergyAttribution(
        source=sources.pop() if len(sources) == 1 else "mixed",
        window_start_s=t0,
        window_end_s=t1,
        energy_j=math.fsum(interval_j),
        curve_energy_j=curve_energy,
        scale_factor=scale,
        energy_prefill_j=math.fsum(r.prefill_energy_j for r in requests),
        energy_decode_j=math.fsum(r.decode_energy_j for r in requests),
        between_steps_energy_j=between,
        n_steps=len(working),
        sampling_interval_s=sampling,
        sensor_update_interval_s=update,
        median_step_s=median_step,
        confidence=confidence,
        confidence_reason=reason,
        requests=requests,
    )


def attribute_run(
    records: Sequence[TokenTimedRecord],
    batch_start_s: Mapping[int, float],
    samples: Sequence[Sample],
    window: tuple[float, float],
    *,
    total_energy_j: float | None = None,
    devices: Sequence[int] | None = None,
) -> EnergyAttribution:
    """Attribution of one measurement window from what a run records (the orchestrator's call).

    ``records``: the engine's request records; ``batch_start_s``: each batch's start on the
    sampler's clock; ``samples``: the sampler's samples (every phase: the curve is clipped
    to ``window`` by interpolation); ``devices``: the devices the engine ran on (default: all
    sampled); ``total_energy_j``: the backend's window energy, to which the attribution is
    scaled. Raises ``ValueError`` when the timeline cannot be rebuilt (no token times, beam
    search) or no device has a usable curve.
    """
    curves = curves_from_samples(samples)
    chosen = [
        curves[d] for d in (devices if devices is not None else sorted(curves)) if d in curves
    ]
    if not chosen:
        raise ValueError("no sampled device has an energy counter or power readings")
    steps = steps_from_token_times(batches_from_records(records, batch_start_s))
    return attribute_energy(steps, chosen, window=window, total_energy_j=total_energy_j)
