"""``benchmarks/online_vllm_rates.py``: the configs it measures ``vllm serve`` with."""

from __future__ import annotations

from benchmark_scripts import load_benchmark_script


def test_every_rate_asks_vllm_for_the_running_token_count():
    script = load_benchmark_script("online_vllm_rates")
    base = script.experiment_fields("org/m", n=10, max_tokens=128, max_num_seqs=256)
    for rate in ("1", "4", "inf"):
        config = script.rate_config(
            base, "http://127.0.0.1:8000", rate, 60, n_warmup=8, ttft_ms=1000, tpot_ms=50
        )
        online = config.online
        assert online is not None and online.continuous_usage is None  # the default rule
        assert online.continuous_usage_for(config.backend)
        assert online.request_rate == (rate if rate == "inf" else float(rate))
        assert config.n == 60 and online.served_model_name == "org/m"
