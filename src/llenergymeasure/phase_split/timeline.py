"""The step timeline of a run: which request processed how many tokens in which engine step.

Rebuilt after the run from per-token timestamps (``steps_from_token_times``); the energy of
each step is then shared among its requests by ``phase_split.attribution`` (rules 2, 3 and 6
there).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "BatchTokenTimes",
    "EngineStep",
    "RequestTokenTimes",
    "RequestWork",
    "StepPhase",
    "TokenTimedRecord",
    "batches_from_records",
    "steps_from_token_times",
]

StepPhase = Literal["prefill", "decode"]


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
