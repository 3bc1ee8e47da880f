"""Where a run's joules go (issue 16), from what the run recorded: the time-resolved
prefill/decode split with per-request energy, and the host's share.

Everything here runs after the measurement window has closed; the only thing the engines add
inside the window is one ``time.monotonic()`` per batch (PyTorch) or per submitted request
(vLLM step loop): ``RequestRecord.start_s``.

- ``time_resolved_attribution``: each record's token times (``start_s + ttft_s`` then the
  ``itl_s`` gaps) mark the engine steps on the sampler's clock; ``energy.attribution`` splits
  the window's energy over them by the rule written there (each step's energy shared among
  its requests in proportion to the tokens each processed in it: prompt tokens in the step of
  its first token, one per decode token), scaled so that the requests sum to the backend's
  window energy. ``(None, reason)`` when it cannot be done (no per-token times, no samples,
  data-parallel processes).
- ``host_energy_components``: ``energy.components`` from the GPU measurement, the RAPL reading
  (when the machine exposes RAPL) and what Zeus / CodeCarbon reported for CPU and RAM.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from llenergymeasure.energy.attribution import (
    BatchTokenTimes,
    EnergyAttribution,
    RequestTokenTimes,
    attribute_energy,
    curves_from_samples,
    steps_from_token_times,
)
from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.components import (
    EnergyComponents,
    energy_components,
    host_readings_from_codecarbon,
    host_readings_from_rapl,
    host_readings_from_zeus,
)
from llenergymeasure.energy.rapl import HostEnergyMeasurement, HostEnergyReading
from llenergymeasure.energy.sampler import Sample
from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.results.models import RequestResult

__all__ = [
    "host_energy_components",
    "time_resolved_attribution",
    "token_timed_batches",
    "with_request_energy",
]


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


def with_request_energy(
    requests: Sequence[RequestResult], attribution: EnergyAttribution
) -> list[RequestResult]:
    """``requests`` with ``energy_j`` (and its prefill/decode parts) from ``attribution``."""
    by_index = {e.request: e for e in attribution.requests}
    out = []
    for r in requests:
        e = by_index.get(r.index)
        if e is None:
            out.append(r)
            continue
        out.append(
            r.model_copy(
                update={
                    "energy_j": e.energy_j,
                    "prefill_energy_j": e.prefill_energy_j,
                    "decode_energy_j": e.decode_energy_j,
                }
            )
        )
    return out


def host_energy_components(
    gpu: EnergyMeasurement,
    rapl: HostEnergyMeasurement | None,
    energy_backend: Any = None,
) -> EnergyComponents:
    """``energy.components``: the GPU figure, then cpu/dram from RAPL, Zeus, CodeCarbon.

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
