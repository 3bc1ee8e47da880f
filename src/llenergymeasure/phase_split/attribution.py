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

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from llenergymeasure.energy.sampler import Sample
from llenergymeasure.phase_split.curves import EnergyCurve, curves_from_samples
from llenergymeasure.phase_split.timeline import (
    EngineStep,
    TokenTimedRecord,
    batches_from_records,
    steps_from_token_times,
)

__all__ = [
    "Confidence",
    "EnergyAttribution",
    "RequestEnergy",
    "attribute_energy",
    "attribute_run",
    "attribution_confidence",
]

Confidence = Literal["high", "medium", "low"]

HIGH_CONFIDENCE_RATIO = 0.1
LOW_CONFIDENCE_RATIO = 0.5
MIN_STEP_S = 50e-6
"""A median engine step shorter than this is no forward pass: the timeline is not per step."""


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
    working, (t0, t1) = _working_steps(steps, window)
    charged = _ChargedIntervals(working, curve_list, t0, t1, total_energy_j)
    requests = _request_energies(working, charged.interval_j)
    sampling = _largest(c.sampling_interval_s(t0, t1) for c in curve_list)
    update = _largest(c.update_interval_s(t0, t1) for c in curve_list)
    median_step = _median_step_s(working)
    sources = {c.source for c in curve_list}
    reading = (
        _READING_NAMES.get(next(iter(sources)), "sensor reading")
        if len(sources) == 1
        else "sensor reading"
    )
    confidence, reason = attribution_confidence(
        sampling,
        median_step,
        min(c.samples_within(t0, t1) for c in curve_list),
        update_interval_s=update,
        reading=reading,
        longest_gap_s=max(c.longest_gap_s(t0, t1) for c in curve_list),
        window_s=t1 - t0,
    )
    return EnergyAttribution(
        source=sources.pop() if len(sources) == 1 else "mixed",
        window_start_s=t0,
        window_end_s=t1,
        energy_j=math.fsum(charged.interval_j),
        curve_energy_j=charged.curve_energy_j,
        scale_factor=charged.scale,
        energy_prefill_j=math.fsum(r.prefill_energy_j for r in requests),
        energy_decode_j=math.fsum(r.decode_energy_j for r in requests),
        between_steps_energy_j=charged.between_steps_j(),
        n_steps=len(working),
        sampling_interval_s=sampling,
        sensor_update_interval_s=update,
        median_step_s=median_step,
        confidence=confidence,
        confidence_reason=reason,
        requests=requests,
    )


def _working_steps(
    steps: Sequence[EngineStep], window: tuple[float, float] | None
) -> tuple[list[EngineStep], tuple[float, float]]:
    """The steps that did work, in order, and the window; ``ValueError`` on a bad timeline."""
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
    return working, (t0, t1)


class _ChargedIntervals:
    """The window cut at the end of every working step (rule 2), each interval's energy
    scaled to ``total_energy_j`` when given (rule 4)."""

    def __init__(
        self,
        working: Sequence[EngineStep],
        curves: Sequence[EnergyCurve],
        t0: float,
        t1: float,
        total_energy_j: float | None,
    ) -> None:
        self.working, self.curves, self.t1 = working, curves, t1
        self.cuts = [t0] + [s.end_s for s in working[:-1]] + [t1]
        self.e_cuts = [self.energy_at(t) for t in self.cuts]
        interval_j = [self.e_cuts[j + 1] - self.e_cuts[j] for j in range(len(working))]
        self.curve_energy_j = self.e_cuts[-1] - self.e_cuts[0]
        self.scale = 1.0
        if total_energy_j is not None:
            if self.curve_energy_j <= 0:
                raise ValueError(
                    f"the samples give {self.curve_energy_j} J over the window: cannot scale "
                    f"the attribution to {total_energy_j} J"
                )
            self.scale = total_energy_j / self.curve_energy_j
            interval_j = [e * self.scale for e in interval_j]
        self.interval_j = interval_j

    def energy_at(self, t: float) -> float:
        return sum(c.energy_at(t) for c in self.curves)

    def between_steps_j(self) -> float:
        """The (scaled) energy of the gaps before each step and of the tail after the last."""
        between = 0.0
        for j, s in enumerate(self.working):
            if s.start_s > self.cuts[j]:
                between += (self.energy_at(s.start_s) - self.e_cuts[j]) * self.scale
        tail_start = self.working[-1].end_s
        if self.t1 > tail_start:
            between += (self.e_cuts[-1] - self.energy_at(tail_start)) * self.scale
        return between


def _request_energies(
    working: Sequence[EngineStep], interval_j: Sequence[float]
) -> list[RequestEnergy]:
    """Each step's energy shared among its requests by the tokens each processed (rule 3)."""
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
    return [
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


def _median_step_s(working: Sequence[EngineStep]) -> float | None:
    """The median step length; ``ValueError`` when it is too short to be a step (rule 6)."""
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
    return median_step


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
