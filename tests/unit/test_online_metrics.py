"""Online metrics on hand-made records: percentiles, goodput, energy per request and token."""

from __future__ import annotations

import math

import pytest

from llenergymeasure.config.online import SLOConfig
from llenergymeasure.online.metrics import (
    OnlineMetrics,
    compute_online_metrics,
    meets_slo,
    percentile,
)
from llenergymeasure.online.records import RequestRecord


def record(
    index: int,
    send: float,
    ttft: float,
    itl: float,
    tokens: int,
    *,
    usage: int | None = None,
    prompt: int | None = None,
) -> RequestRecord:
    """A successful request: first token ``ttft`` after ``send``, then ``tokens - 1`` gaps."""
    chunks = [send + ttft + i * itl for i in range(tokens)]
    return RequestRecord(
        index=index,
        ok=True,
        http_status=200,
        send_time_s=send,
        first_token_time_s=chunks[0],
        chunk_times_s=chunks,
        end_time_s=chunks[-1],
        output_tokens_stream=tokens,
        output_tokens_usage=usage,
        prompt_tokens_usage=prompt,
    )


def failed(index: int, error: str, status: int | None = None) -> RequestRecord:
    return RequestRecord(
        index=index, ok=False, error=error, http_status=status, send_time_s=0.0, end_time_s=0.5
    )


# Request A: TTFT 100 ms, 4 tokens 20 ms apart (TPOT 20 ms, e2e 160 ms).
# Request B: TTFT 300 ms, 3 tokens 50 ms apart (TPOT 50 ms, e2e 400 ms).
A = record(0, 0.0, 0.100, 0.020, 4, prompt=10)
B = record(1, 0.5, 0.300, 0.050, 3, prompt=20)


def test_percentile_interpolates_linearly():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile([0, 10], 90) == 9
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([], 50)


def test_record_latency_properties():
    assert A.ttft_s == pytest.approx(0.1)
    assert A.tpot_s == pytest.approx(0.02)
    assert A.itls_s == pytest.approx([0.02, 0.02, 0.02])
    assert A.e2e_s == pytest.approx(0.16)
    assert B.output_tokens == 3


def test_latency_distributions_and_throughput():
    m = compute_online_metrics([A, B], window_s=2.0)
    assert m.n_requests == 2 and m.n_ok == 2 and m.n_failed == 0
    assert m.ttft is not None and m.ttft.count == 2
    assert m.ttft.mean_ms == pytest.approx(200) and m.ttft.p50_ms == pytest.approx(200)
    assert m.ttft.p99_ms == pytest.approx(100 + 200 * 0.99)
    assert m.tpot is not None and m.tpot.mean_ms == pytest.approx(35)
    # ITL pools every gap: three of 20 ms and two of 50 ms.
    assert m.itl is not None and m.itl.count == 5
    assert m.itl.mean_ms == pytest.approx((3 * 20 + 2 * 50) / 5)
    assert m.itl.p50_ms == pytest.approx(20)
    assert m.e2e is not None and m.e2e.max_ms == pytest.approx(400)
    assert m.output_tokens == 7 and m.prompt_tokens == 30
    assert m.request_throughput_per_s == pytest.approx(1.0)
    assert m.output_throughput_tok_per_s == pytest.approx(3.5)


def test_usage_counts_override_stream_counts_in_token_totals():
    m = compute_online_metrics([record(0, 0, 0.1, 0.01, 2, usage=8)], window_s=1.0)
    assert m.output_tokens == 8


def test_a_chunk_of_several_tokens_is_one_itl_gap_and_tpot_divides_by_tokens():
    # a server merging tokens under load: 1, then 3, then 1 tokens, 50 ms apart
    merged = RequestRecord(
        index=0,
        ok=True,
        send_time_s=0.0,
        first_token_time_s=0.1,
        chunk_times_s=[0.1, 0.15, 0.2],
        chunk_tokens=[1, 3, 1],
        end_time_s=0.2,
        output_tokens_stream=5,
        output_tokens_usage=5,
    )
    m = compute_online_metrics([merged], window_s=1.0)
    assert m.itl is not None and m.itl.count == 2 and m.itl.mean_ms == pytest.approx(50)
    assert m.tpot is not None and m.tpot.mean_ms == pytest.approx(100 / 4)
    assert m.mean_tokens_per_chunk == pytest.approx(5 / 3)
    assert m.n_multi_token_chunks == 1


def test_records_without_chunk_counts_carry_one_token_a_chunk():
    m = compute_online_metrics([A, B], window_s=1.0)
    assert m.mean_tokens_per_chunk == 1.0 and m.n_multi_token_chunks == 0
    assert m.n_ok_without_token_chunks == 0


def test_requests_whose_stream_showed_no_token_are_counted_and_have_no_ttft():
    # usage says 6 tokens, but no chunk was seen to carry one (tokens decoding to "")
    silent = RequestRecord(index=2, ok=True, send_time_s=0.0, end_time_s=0.5, output_tokens_usage=6)
    m = compute_online_metrics([A, silent], window_s=1.0)
    assert m.n_ok == 2 and m.output_tokens == 4 + 6
    assert m.n_ok_without_token_chunks == 1
    assert m.ttft is not None and m.ttft.count == 1  # A only
    assert m.e2e is not None and m.e2e.count == 2


def test_metrics_from_before_chunk_counts_still_load():
    data = compute_online_metrics([A], window_s=1.0).model_dump()
    for key in ("mean_tokens_per_chunk", "n_multi_token_chunks", "n_ok_without_token_chunks"):
        del data[key]
    old = OnlineMetrics.model_validate(data)
    assert old.n_multi_token_chunks is None and old.n_ok_without_token_chunks is None


def test_failures_are_counted_by_kind_and_left_out_of_latencies():
    records = [
        A,
        failed(1, "HTTP 500: boom", 500),
        failed(2, "HTTP 500: boom again", 500),
        failed(3, "timeout: no complete response within 1 s"),
    ]
    m = compute_online_metrics(records, window_s=1.0)
    assert m.n_ok == 1 and m.n_failed == 3
    assert m.errors == {"HTTP 500": 2, "timeout": 1}
    assert m.ttft is not None and m.ttft.count == 1
    assert m.prompt_tokens == 10


def test_all_failed_leaves_latencies_and_per_request_energy_empty():
    m = compute_online_metrics([failed(0, "connection failed: refused")], window_s=1.0, energy_j=50)
    assert m.ttft is None and m.e2e is None and m.itl is None and m.tpot is None
    assert m.energy_per_request_j is None and m.energy_per_output_token_j is None
    assert m.prompt_tokens is None


@pytest.mark.parametrize(
    ("slo", "met"),
    [
        (SLOConfig(ttft_ms=200), [True, False]),
        (SLOConfig(tpot_ms=30), [True, False]),
        (SLOConfig(e2e_ms=500), [True, True]),
        (SLOConfig(ttft_ms=400, tpot_ms=60, e2e_ms=150), [False, False]),
        (SLOConfig(ttft_ms=400, tpot_ms=60, e2e_ms=170), [True, False]),
    ],
)
def test_slo_needs_every_given_target(slo, met):
    assert [meets_slo(A, slo), meets_slo(B, slo)] == met


def test_a_single_token_request_has_no_tpot_and_meets_a_tpot_target():
    one = record(0, 0.0, 0.1, 0.0, 1)
    assert one.tpot_s is None
    assert meets_slo(one, SLOConfig(tpot_ms=1))


def test_a_request_whose_tokens_were_never_seen_arriving_misses_a_tpot_target():
    # usage counts 5 tokens but no streamed chunk carried one: TPOT cannot be timed
    unseen = RequestRecord(
        index=0, ok=True, http_status=200, send_time_s=0.0, end_time_s=0.2, output_tokens_usage=5
    )
    assert unseen.tpot_s is None
    assert not meets_slo(unseen, SLOConfig(tpot_ms=86_400_000))
    assert meets_slo(unseen, SLOConfig(e2e_ms=86_400_000))


def test_a_failed_request_never_meets_the_slo():
    assert not meets_slo(failed(0, "HTTP 500: x"), SLOConfig(e2e_ms=86_400_000))


def test_goodput_counts_slo_meeting_requests_per_second():
    m = compute_online_metrics([A, B], window_s=4.0, slo=SLOConfig(ttft_ms=200))
    assert m.n_slo_met == 1
    assert m.goodput_per_s == pytest.approx(0.25)


def test_no_targets_no_goodput():
    m = compute_online_metrics([A, B], window_s=4.0, slo=SLOConfig())
    assert m.goodput_per_s is None and m.n_slo_met is None


def test_energy_per_request_and_token_raw_and_adjusted():
    m = compute_online_metrics(
        [A, B, failed(2, "HTTP 503: busy")],
        window_s=2.0,
        slo=SLOConfig(ttft_ms=200),
        energy_j=700.0,
        baseline_power_w=100.0,
    )
    assert m.adjusted_energy_j == pytest.approx(500.0)  # 700 - 100 W x 2 s
    assert m.mean_power_w == pytest.approx(350.0)
    assert m.energy_per_request_j == pytest.approx(350.0)  # two successful requests
    assert m.adjusted_energy_per_request_j == pytest.approx(250.0)
    assert m.energy_per_output_token_j == pytest.approx(100.0)  # 7 output tokens
    assert m.adjusted_energy_per_output_token_j == pytest.approx(500 / 7)
    assert m.energy_per_slo_request_j == pytest.approx(700.0)  # only A met the SLO
    assert m.adjusted_energy_per_slo_request_j == pytest.approx(500.0)


def test_the_energy_window_sets_the_idle_share_and_mean_power():
    m = compute_online_metrics(
        [A], window_s=2.0, energy_j=300.0, baseline_power_w=100.0, energy_window_s=2.5
    )
    assert m.adjusted_energy_j == pytest.approx(50.0)  # 300 - 100 W x 2.5 s
    assert m.mean_power_w == pytest.approx(120.0)
    assert m.request_throughput_per_s == pytest.approx(0.5)  # throughput keeps the load window


def test_energy_without_baseline_has_no_adjusted_figures():
    m = compute_online_metrics([A], window_s=1.0, energy_j=10.0)
    assert m.energy_per_request_j == 10.0
    assert m.adjusted_energy_j is None and m.adjusted_energy_per_request_j is None
    assert m.energy_per_slo_request_j is None


def test_no_energy_leaves_energy_fields_empty():
    m = compute_online_metrics([A], window_s=1.0, baseline_power_w=50.0)
    assert m.energy_j is None and m.mean_power_w is None and m.adjusted_energy_j is None


@pytest.mark.parametrize("window", [0.0, -1.0, math.inf, math.nan])
def test_window_must_be_a_positive_finite_duration(window):
    with pytest.raises(ValueError, match="window_s"):
        compute_online_metrics([A], window_s=window)


def test_metrics_serialise_to_json():
    m = compute_online_metrics([A, B], window_s=2.0, slo=SLOConfig(e2e_ms=300), energy_j=5.0)
    again = type(m).model_validate_json(m.model_dump_json())
    assert again == m
