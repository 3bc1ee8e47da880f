"""The load driver: schedule kept, concurrency capped, warmup not measured, window bounds."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics

import pytest
from fake_openai_server import FakeOpenAIServer

from llenergymeasure.online.arrivals import arrival_offsets
from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.load import drive_load
from llenergymeasure.online.records import StreamRequest
from llenergymeasure.testing.energy import FakeClock


def requests(n: int, prompt: str = "p", max_tokens: int = 3) -> list[StreamRequest]:
    return [
        StreamRequest(f"{prompt}{i}" if prompt == "p" else prompt, max_tokens) for i in range(n)
    ]


class ClockedClient:
    """Stands in for ``OpenAIStreamClient`` on a ``FakeClock``: each request is sent at the
    clock's time and answered at once. With ``fake_sleep`` the driver's schedule is exact,
    however busy the machine."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def __aenter__(self) -> ClockedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, request: StreamRequest, *, index: int):
        from llenergymeasure.online.records import RequestRecord

        sent = self.clock()
        await asyncio.sleep(0)  # other tasks run, as while a real request streams
        return RequestRecord(index=index, ok=True, send_time_s=sent, end_time_s=self.clock())


def fake_sleep(clock: FakeClock):
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)  # requests already started read the clock before it moves on
        clock.advance(seconds)

    return sleep


def clocked_load(offsets, n: int | None = None, **kwargs):
    clock = FakeClock()
    reqs = requests(n if n is not None else len(offsets))
    run = drive_load(
        ClockedClient(clock), reqs, offsets, clock=clock, sleep=fake_sleep(clock), **kwargs
    )
    return run, clock


def test_constant_rate_is_kept_by_the_driver():
    offsets = arrival_offsets(30, 50.0, "constant")
    run, _ = clocked_load(offsets)
    sends = [r.send_time_s for r in run.records]
    assert sends == pytest.approx([1000.0 + o for o in offsets])
    assert run.n_ok == 30 and run.n_failed == 0
    assert run.achieved_rate_per_s == pytest.approx(50.0)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert statistics.median(gaps) == pytest.approx(0.02)
    assert run.max_schedule_lag_s == pytest.approx(0.0)


def test_poisson_achieved_rate_matches_its_schedule():
    n, rate = 120, 200.0
    offsets = arrival_offsets(n, rate, "poisson", seed=3)
    run, _ = clocked_load(offsets)
    scheduled = (n - 1) / offsets[-1]
    assert run.achieved_rate_per_s == pytest.approx(scheduled)
    assert run.scheduled_rate_per_s == pytest.approx(scheduled)
    assert run.client_cpu_s >= 0


def test_a_late_driver_records_its_lag_and_keeps_sending():
    clock = FakeClock()

    async def slow_sleep(seconds: float) -> None:  # every wait overshoots by 30 ms
        await asyncio.sleep(0)
        clock.advance(seconds + 0.03)

    run = drive_load(
        ClockedClient(clock), requests(3), [0.0, 0.1, 0.2], clock=clock, sleep=slow_sleep
    )
    assert run.max_schedule_lag_s == pytest.approx(0.03)
    assert [r.send_time_s for r in run.records] == pytest.approx([1000.0, 1000.13, 1000.23])


def peak_open_requests(records) -> int:
    """Most requests open at once at the client: each is open from its send to its last byte."""
    events = sorted(
        [(r.send_time_s, 1) for r in records] + [(r.end_time_s, -1) for r in records],
        key=lambda e: (e[0], e[1]),  # an end at the same instant as a send frees its slot first
    )
    return max(itertools.accumulate(step for _, step in events))


def test_concurrency_cap_bounds_requests_in_flight():
    with FakeOpenAIServer(ttft_s=0.05, token_delay_s=0.01) as server:
        offsets = arrival_offsets(12, math.inf)
        run = drive_load(
            OpenAIStreamClient(server.url, "m"), requests(12), offsets, max_concurrency=3
        )
    # Counted at the client: the fake server's own count lags, since its handler thread leaves
    # only after the client has read the final event and sent the next request.
    assert peak_open_requests(run.records) == 3
    assert run.n_ok == 12 and run.max_concurrency == 3


def test_infinite_rate_without_a_cap_sends_everything_at_once():
    # the server answers none before all ten are in flight: only sending all at once finishes
    with FakeOpenAIServer(hold_until_in_flight=10) as server:
        run = drive_load(OpenAIStreamClient(server.url, "m"), requests(10), [0.0] * 10)
        peak = server.max_in_flight
    assert peak == 10 and run.n_ok == 10
    # on the driver's own clock, every send is at the same instant
    clocked, _ = clocked_load([0.0] * 10)
    assert {r.send_time_s for r in clocked.records} == {1000.0}
    assert clocked.achieved_rate_per_s is None and clocked.max_schedule_lag_s == 0.0


def test_warmup_requests_go_first_and_are_not_measured():
    with FakeOpenAIServer() as server:
        run = drive_load(
            OpenAIStreamClient(server.url, "m"),
            requests(4),
            [0.0] * 4,
            warmup=[StreamRequest("warm", 2), StreamRequest("warm", 2)],
        )
        prompts = [b["prompt"] for b in server.bodies]
    assert prompts[:2] == ["warm", "warm"]
    assert sorted(prompts[2:]) == ["p0", "p1", "p2", "p3"]
    assert len(run.records) == 4 and len(run.warmup_records) == 2
    assert [r.index for r in run.records] == [0, 1, 2, 3]
    assert max(w.end_time_s for w in run.warmup_records) <= run.window_start_s


def test_window_runs_from_first_send_to_last_response_and_hooks_bracket_it():
    marks: dict[str, float] = {}
    clock = FakeClock()

    def mark(name: str) -> None:
        marks[name] = clock()

    run = drive_load(
        ClockedClient(clock),
        requests(5),
        arrival_offsets(5, 40.0, "constant"),
        on_window_start=lambda: mark("start"),
        on_window_end=lambda: mark("end"),
        clock=clock,
        sleep=fake_sleep(clock),
    )
    assert run.window_start_s == min(r.send_time_s for r in run.records)
    assert run.window_end_s == max(r.end_time_s for r in run.records)
    assert marks["start"] <= run.window_start_s
    assert marks["end"] >= run.window_end_s
    assert run.duration_s == pytest.approx(run.window_end_s - run.window_start_s)
    assert run.duration_s == pytest.approx(4 / 40.0)  # to the last send, answered at once


def test_failed_requests_are_counted_and_the_run_goes_on():
    reqs = [StreamRequest("ok", 2), StreamRequest("FAIL:500", 2), StreamRequest("ok", 2)]
    with FakeOpenAIServer() as server:
        run = drive_load(OpenAIStreamClient(server.url, "m"), reqs, [0.0, 0.0, 0.0])
    assert run.n_ok == 2 and run.n_failed == 1
    assert run.records[1].http_status == 500


@pytest.mark.parametrize(
    ("reqs", "offsets", "cap", "message"),
    [
        (2, [0.0], None, "2 requests but 1"),
        (0, [], None, "no requests"),
        (1, [-1.0], None, "offsets"),
        (1, [math.nan], None, "offsets"),
        (1, [0.0], 0, "max_concurrency"),
    ],
)
def test_bad_arguments_are_refused(reqs, offsets, cap, message):
    client = OpenAIStreamClient("http://127.0.0.1:9", "m")
    with pytest.raises(ValueError, match=message):
        drive_load(client, requests(reqs), offsets, max_concurrency=cap)


def test_hundreds_of_requests_at_once_all_complete():
    with FakeOpenAIServer(ttft_s=0.05) as server:
        run = drive_load(
            OpenAIStreamClient(server.url, "m"), requests(200, max_tokens=2), [0.0] * 200
        )
    assert run.n_ok == 200
    assert [r.index for r in run.records] == list(range(200))


def load_run(sends: list[float], offsets: list[float], *, lag: float = 0.0, cap=None):
    from llenergymeasure.online.load import LoadRun
    from llenergymeasure.online.records import RequestRecord

    records = [
        RequestRecord(index=i, ok=True, send_time_s=t, end_time_s=t + 0.1)
        for i, t in enumerate(sends)
    ]
    achieved = (len(sends) - 1) / (sends[-1] - sends[0]) if sends[-1] > sends[0] else None
    return LoadRun(
        records=records,
        window_start_s=sends[0],
        window_end_s=sends[-1] + 0.1,
        scheduled_offsets_s=offsets,
        achieved_rate_per_s=achieved,
        max_concurrency=cap,
        client_cpu_s=1.0,
        max_schedule_lag_s=lag,
    )


def test_a_client_that_keeps_its_schedule_raises_no_warning():
    run = load_run([0.0, 0.1, 0.2, 0.3], [0.0, 0.1, 0.2, 0.3])
    assert run.scheduled_rate_per_s == pytest.approx(10.0)
    assert run.schedule_warnings() == []


def test_a_client_falling_behind_is_flagged():
    slow = load_run([0.0, 0.2, 0.4, 0.6], [0.0, 0.1, 0.2, 0.3], lag=0.3)
    notes = slow.schedule_warnings()
    assert any("behind its schedule" in n for n in notes)
    assert any("below the scheduled 10.00 req/s" in n for n in notes)


def test_a_concurrency_cap_slowing_sends_is_not_the_clients_fault():
    capped = load_run([0.0, 0.2, 0.4, 0.6], [0.0, 0.1, 0.2, 0.3], cap=1)
    assert capped.schedule_warnings() == []


def test_all_at_once_has_no_scheduled_rate():
    assert load_run([0.0, 0.0, 0.01], [0.0, 0.0, 0.0]).scheduled_rate_per_s is None


def test_a_late_event_loop_is_flagged_as_late_token_times():
    run = load_run([0.0, 0.1, 0.2, 0.3], [0.0, 0.1, 0.2, 0.3])
    late = run.model_copy(update={"loop_lag_p99_s": 0.02})
    (note,) = late.schedule_warnings()
    assert note.startswith("the load client's event loop ran up to 20.0 ms late (p99)")
    on_time = run.model_copy(update={"loop_lag_p99_s": 0.001})
    assert on_time.schedule_warnings() == []
    assert run.loop_lag_p99_s is None and run.schedule_warnings() == []  # older records


def test_the_driver_measures_its_event_loop_lateness_over_the_window():
    with FakeOpenAIServer(ttft_s=0.05) as server:
        run = drive_load(OpenAIStreamClient(server.url, "m"), requests(3), [0.0, 0.02, 0.04])
    assert run.loop_lag_p99_s is not None and run.loop_lag_p99_s >= 0.0
