"""The time-resolved prefill/decode split of a run, from what the run recorded (issue 16).

Everything here runs after the measurement window has closed; the only thing the engines add
inside the window is one ``time.monotonic()`` per batch (PyTorch) or per submitted request
(vLLM step loop): ``RequestRecord.start_s``.

``time_resolved_attribution``: each record's token times (``start_s + ttft_s`` then the
``itl_s`` gaps) mark the engine steps on the sampler's clock; ``phase_split.attribution``
splits the window's energy over them by the rule written there (each step's energy shared
among its requests in proportion to the tokens each processed in it: prompt tokens in the step
of its first token, one per decode token), scaled so that the requests sum to the backend's
window energy. ``(None, reason)`` when it cannot be done (no per-token times, no samples,
data-parallel processes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from llenergymeasure.energy.sampler import Sample
from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.phase_split.attribution import EnergyAttribution, attribute_energy
from llenergymeasure.phase_split.curves import curves_from_samples
from llenergymeasure.phase_split.timeline import (
    BatchTokenTimes,
    RequestTokenTimes,
    steps_from_token_times,
)

__all__ = ["time_resolved_attribution", "token_timed_batches"]


def token_timed_batches(records: Sequence[RequestRecord]) -> list[BatchTokenTimes]:
    """Records grouped by ``batch_index``, each request's token times on the sampler's clock.

    A batch starts at the earliest ``start_s`` of its records (a static batch: all equal; the
    vLLM step loop: the first submission). A record's token times are its ``token_times_s``
    where the engine stamped them per step, else ``start_s + ttft_s`` then each ``itl_s`` gap;
    none for a record that generated nothing. Raises ``ValueError`` naming the first record
    that lacks ``start_s``, or a first-token time although it generated tokens.
    """
    grouped: dict[int, list[RequestTokenTimes]] = {}
    starts: dict[int, float] = {}
    for r in records:
        if r.start_s is None:
            raise ValueError(
                f"request {r.index} has no start time on the sampler's clock (this engine "
                "does not record RequestRecord.start_s)"
            )
        if r.token_times_s is not None:
            times = list(r.token_times_s)
        elif r.ttft_s is None and r.output_tokens == 0:
            times = []  # generated nothing: charged its prompt in its batch's first step
        elif r.ttft_s is None:
            raise ValueError(
                f"request {r.index} has no per-token times (beam search, or an engine path "
                "without per-token timing)"
            )
        else:
            times = list(itertools.accumulate([r.start_s + r.ttft_s, *r.itl_s]))
        grouped.setdefault(r.batch_index, []).append(
            RequestTokenTimes(r.index, r.input_tokens, times)
        )
        starts[r.batch_index] = min(starts.get(r.batch_index, r.start_s), r.start_s)
    return [BatchTokenTimes(starts[b], grouped[b]) for b in sorted(grouped, key=starts.__getitem__)]


def time_resolved_attribution(
    records: Sequence[RequestRecord],
    samples: Sequence[Sample],
    window: tuple[float, float],
    *,
    total_energy_j: float | None,
    record_processes: Sequence[int] | None = None,
) -> tuple[EnergyAttribution | None, str | None]:
    """The window's energy split over engine steps, requests and phases, or why not.

    ``samples``: the sampler's samples (every phase; the curves are clipped to ``window`` by
    interpolation); ``window``: the measurement window on the sampler's clock;
    ``total_energy_j``: the backend's window energy, to which the attribution is scaled so
    that the requests sum to it exactly.
    """
    if total_energy_j is None:
        return None, "the measurement window has no energy figure"
    if not records:
        return None, "no requests"
    if record_processes is not None and len(set(record_processes)) > 1:
        return None, (
            "data-parallel run: its processes run concurrently on different GPUs, and "
            "attribution per process is not implemented"
        )
    if not samples:
        return None, "no power/energy samples (no GPU sensor)"
    try:
        steps = steps_from_token_times(token_timed_batches(records))
        curves = curves_from_samples(samples)
        if not curves:
            return None, "no sampled device has an energy counter or power readings"
        attribution = attribute_energy(
            steps, list(curves.values()), window=window, total_energy_j=total_energy_j
        )
    except ValueError as exc:
        return None, str(exc)
    return attribution, None
