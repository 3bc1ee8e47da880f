"""The online load driver: warmup, then ``n`` requests on an arrival schedule, on one event loop.

``run_load`` first sends the warmup requests one at a time (not measured), then starts request
``i`` at ``offsets[i]`` seconds after the first. With ``max_concurrency`` a request whose time
has come waits for a free slot (arrivals stay on schedule; the queue grows). Every measured
request's record is returned in index order with the window: from the first request sent to the
last response received. ``on_window_start`` runs just before the first measured request is sent
and ``on_window_end`` just after the last one ends (the energy backend's ``begin``/``end``).
The requests share the client's connection pool (keep-alive connections are reused).

The driver records its own CPU time (``time.process_time`` over the measured phase), the
achieved send rate and how late its event loop ran (a probe task that sleeps ``LOOP_PROBE_S`` at
a time and records by how much each wake-up overshot): chunk arrival times are read when the
loop gets to them, so a late loop means late readings. A run can show with these that the
client was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from pydantic import BaseModel, Field

from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.records import RequestRecord, StreamRequest

__all__ = ["LOOP_PROBE_S", "LoadRun", "drive_load", "run_load"]

#: Sleep of the event-loop lag probe during the measured phase.
LOOP_PROBE_S = 0.01


class LoadRun(BaseModel):
    """What one load run sent and received.

    ``window_start_s``/``window_end_s`` are ``clock`` times (perf_counter) of the first measured
    send and the last measured response end. ``achieved_rate_per_s`` is
    ``(n - 1) / (last send - first send)`` (``None`` for fewer than two requests or when every
    request was sent at the same instant). ``max_schedule_lag_s`` is the largest delay of a
    request's start behind its scheduled time, before any wait for a concurrency slot (the
    driver's own lateness). Clock times share the client's origin (``time.perf_counter``).
    """

    model_config = {"extra": "forbid"}

    records: list[RequestRecord]
    warmup_records: list[RequestRecord] = Field(default_factory=list)
    window_start_s: float
    window_end_s: float
    scheduled_offsets_s: list[float]
    achieved_rate_per_s: float | None
    max_concurrency: int | None
    client_cpu_s: float
    max_schedule_lag_s: float
    loop_lag_p99_s: float | None = Field(
        None,
        description=(
            "99th percentile of the event loop's lateness during the measured phase (probe "
            "wake-ups past their time): how late chunk arrival times may be read. None: not "
            "measured (records written before it existed)."
        ),
    )

    @property
    def duration_s(self) -> float:
        """Length of the measurement window."""
        return self.window_end_s - self.window_start_s

    @property
    def scheduled_rate_per_s(self) -> float | None:
        """The send rate the schedule asked for, ``(n - 1) / last offset``; ``None`` if all at 0."""
        offsets = self.scheduled_offsets_s
        if len(offsets) < 2 or offsets[-1] <= 0:
            return None
        return (len(offsets) - 1) / offsets[-1]

    def schedule_warnings(
        self,
        *,
        max_lag_s: float = 0.1,
        min_rate_ratio: float = 0.9,
        max_loop_lag_s: float = 0.005,
    ) -> list[str]:
        """Signs that the client, not the server, limited the load or its timing (empty when
        none).

        A start more than ``max_lag_s`` behind schedule, (without a concurrency cap, which
        delays sends on purpose) an achieved send rate below ``min_rate_ratio`` of the
        scheduled one, or an event loop late by more than ``max_loop_lag_s`` at its 99th
        percentile (token times read that late).
        """
        notes: list[str] = []
        if self.loop_lag_p99_s is not None and self.loop_lag_p99_s > max_loop_lag_s:
            notes.append(
                f"the load client's event loop ran up to {self.loop_lag_p99_s * 1000:.1f} ms "
                "late (p99): token arrival times may be read that late (a busy CPU?)"
            )
        if self.max_schedule_lag_s > max_lag_s:
            notes.append(
                f"the load client fell {self.max_schedule_lag_s:.3f} s behind its schedule "
                f"(client CPU {self.client_cpu_s:.1f} s over a {self.duration_s:.1f} s window)"
            )
        scheduled = self.scheduled_rate_per_s
        achieved = self.achieved_rate_per_s
        if (
            self.max_concurrency is None
            and scheduled is not None
            and achieved is not None
            and achieved < min_rate_ratio * scheduled
        ):
            notes.append(
                f"requests went out at {achieved:.2f} req/s, below the scheduled "
                f"{scheduled:.2f} req/s: the client may be the bottleneck"
            )
        return notes

    @property
    def n_ok(self) -> int:
        return sum(1 for r in self.records if r.ok)

    @property
    def n_failed(self) -> int:
        return len(self.records) - self.n_ok


async def run_load(
    client: OpenAIStreamClient,
    requests: Sequence[StreamRequest],
    offsets: Sequence[float],
    *,
    max_concurrency: int | None = None,
    warmup: Sequence[StreamRequest] = (),
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> LoadRun:
    """Send ``warmup`` one by one, then ``requests`` at ``offsets``; see the module docstring.

    ``clock`` (the client's clock) and ``sleep`` keep the schedule; tests inject fakes.
    """
    if len(offsets) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(offsets)} send offsets")
    if not requests:
        raise ValueError("no requests to send")
    if any(not math.isfinite(o) or o < 0 for o in offsets):
        raise ValueError("send offsets must be finite and >= 0")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")

    async with client:  # one connection pool for the warmup and the load
        warmup_records = [await client.send(req, index=i) for i, req in enumerate(warmup)]

        slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        lags: list[float] = []

        async def one(index: int, request: StreamRequest) -> RequestRecord:
            if slots is None:
                return await client.send(request, index=index)
            async with slots:
                return await client.send(request, index=index)

        if on_window_start is not None:
            on_window_start()
        cpu0 = time.process_time()
        t0 = clock()
        loop_lags: list[float] = []
        probe = asyncio.create_task(_probe_loop(loop_lags))
        tasks: list[asyncio.Task[RequestRecord]] = []
        for index, (request, offset) in enumerate(zip(requests, offsets, strict=True)):
            delay = t0 + offset - clock()
            if delay > 0:
                await sleep(delay)
            lags.append(max(0.0, clock() - (t0 + offset)))
            tasks.append(asyncio.create_task(one(index, request)))
        try:
            records = list(await asyncio.gather(*tasks))
        finally:
            for task in [*tasks, probe]:
                task.cancel()
        if on_window_end is not None:
            on_window_end()
        cpu = time.process_time() - cpu0

    sends = sorted(r.send_time_s for r in records)
    span = sends[-1] - sends[0]
    achieved = (len(sends) - 1) / span if len(sends) > 1 and span > 0 else None
    return LoadRun(
        records=records,
        warmup_records=warmup_records,
        window_start_s=sends[0],
        window_end_s=max(r.end_time_s for r in records),
        scheduled_offsets_s=list(offsets),
        achieved_rate_per_s=achieved,
        max_concurrency=max_concurrency,
        client_cpu_s=cpu,
        max_schedule_lag_s=max(lags),
        loop_lag_p99_s=_p99(loop_lags),
    )


async def _probe_loop(lags: list[float]) -> None:
    """Record by how much each ``LOOP_PROBE_S`` sleep overshoots, until cancelled."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(LOOP_PROBE_S)
        lags.append(max(0.0, time.perf_counter() - start - LOOP_PROBE_S))


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _raise_open_file_limit(needed: int) -> None:
    """Lift the soft open-files limit towards the hard one: each request holds a socket."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def drive_load(
    client: OpenAIStreamClient,
    requests: Sequence[StreamRequest],
    offsets: Sequence[float],
    *,
    max_concurrency: int | None = None,
    warmup: Sequence[StreamRequest] = (),
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> LoadRun:
    """``run_load`` on a fresh event loop (blocking); for callers outside asyncio.

    Raises the process's soft open-files limit if it is below what the requests in flight
    need (up to the hard limit).
    """
    in_flight = max_concurrency if max_concurrency is not None else len(requests)
    _raise_open_file_limit(min(in_flight, len(requests)))
    return asyncio.run(
        run_load(
            client,
            requests,
            offsets,
            max_concurrency=max_concurrency,
            warmup=warmup,
            on_window_start=on_window_start,
            on_window_end=on_window_end,
            clock=clock,
            sleep=sleep,
        )
    )
