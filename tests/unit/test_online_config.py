"""OnlineConfig and ExperimentConfig's online mode: what is accepted, what is refused, and why."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.online import OnlineConfig, ServerConfig
from llenergymeasure.config.study import expand_study


def online(**section: Any) -> ExperimentConfig:
    return ExperimentConfig(model="org/m", backend="vllm", mode="online", online=section)


def error_text(**section: Any) -> str:
    with pytest.raises(ValidationError) as info:
        online(**section)
    return str(info.value)


def test_defaults_start_the_engine_server_and_send_everything_at_once():
    cfg = online().online
    assert cfg is not None
    assert cfg.starts_server
    assert cfg.effective_server == ServerConfig()
    assert cfg.request_rate == "inf" and cfg.rate_per_s == math.inf
    assert cfg.max_concurrency is None
    assert cfg.api == "completions" and cfg.arrival == "poisson"


def test_endpoint_means_llem_does_not_start_a_server():
    cfg = OnlineConfig(endpoint="http://10.0.0.5:8000/v1/")
    assert not cfg.starts_server
    assert cfg.endpoint == "http://10.0.0.5:8000/v1"


@pytest.mark.parametrize("rate", ["inf", "INF", float("inf"), "Infinity"])
def test_infinite_rate_is_spelt_inf(rate: Any):
    assert OnlineConfig(request_rate=rate).request_rate == "inf"


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), float("-inf"), "fast", True])
def test_rate_must_be_positive_and_finite_or_inf(rate: Any):
    text = error_text(request_rate=rate)
    assert "request_rate" in text


def test_numeric_rate_is_kept():
    assert OnlineConfig(request_rate=4).rate_per_s == 4.0


@pytest.mark.parametrize(
    "endpoint", ["ftp://host:1", "localhost:8000", "http://", "http://h:99999", "http://h?x=1"]
)
def test_endpoint_must_be_an_http_url(endpoint: str):
    assert "endpoint" in error_text(endpoint=endpoint)


def test_endpoint_and_server_are_exclusive():
    assert "not both" in error_text(endpoint="http://h:1", server={"port": 8000})


def test_burstiness_only_with_gamma_arrivals():
    assert "gamma" in error_text(arrival="poisson", burstiness=0.5)
    cfg = OnlineConfig(arrival="gamma", burstiness=0.5)
    assert cfg.effective_burstiness == 0.5
    assert OnlineConfig(arrival="gamma").effective_burstiness == 1.0


@pytest.mark.parametrize(
    ("backend", "section", "sent"),
    [
        # vllm serve and trtllm-serve take stream_options.continuous_usage_stats (TensorRT-LLM's
        # serve/postprocess_handlers.py puts the running count on every chunk of both APIs)
        ("vllm", {}, True),
        ("tensorrt", {}, True),
        # transformers serve refuses unknown fields (HTTP 422)
        ("pytorch", {}, False),
        ("pytorch", {"continuous_usage": True}, True),  # an endpoint known to take it
        ("vllm", {"continuous_usage": False}, False),
        ("tensorrt", {"continuous_usage": False}, False),
        ("vllm", {"include_usage": False}, False),  # without usage there is nothing to ask
        ("tensorrt", {"include_usage": False}, False),
    ],
)
def test_continuous_usage_is_on_for_vllm_and_tensorrt_unless_set(
    backend: str, section: dict[str, Any], sent: bool
):
    assert OnlineConfig(**section).continuous_usage_for(backend) is sent


def test_continuous_usage_needs_include_usage():
    text = error_text(continuous_usage=True, include_usage=False)
    assert "continuous_usage needs include_usage" in text


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"burstiness": 0, "arrival": "gamma"}, "burstiness"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"n_warmup_requests": -1}, "n_warmup_requests"),
        ({"request_timeout_s": float("inf")}, "request_timeout_s"),
        ({"slo": {"ttft_ms": float("nan")}}, "ttft_ms"),
        ({"slo": {"e2e_ms": 0}}, "e2e_ms"),
        ({"server": {"startup_timeout_s": 0}}, "startup_timeout_s"),
        ({"server": {"port": 70000}}, "port"),
        ({"gpus": []}, "gpus"),
        ({"gpus": [0, 0]}, "gpus"),
        ({"gpus": [-1]}, "gpus"),
        ({"api": "responses"}, "api"),
        ({"arrival": "uniform"}, "arrival"),
        ({"rate": 3}, "rate"),
    ],
)
def test_bad_values_name_their_field(section: dict[str, Any], field: str):
    assert field in error_text(**section)


def test_gpus_take_indices_and_uuids():
    assert OnlineConfig(gpus=[0, "GPU-1234"]).gpus == [0, "GPU-1234"]


def test_online_mode_requires_its_section():
    with pytest.raises(ValidationError, match="requires an online: section"):
        ExperimentConfig(model="m", backend="vllm", mode="online")


def test_offline_mode_refuses_an_online_section():
    with pytest.raises(ValidationError, match="mode is 'offline'"):
        ExperimentConfig(model="m", backend="vllm", online={})


def test_offline_is_the_default_mode():
    cfg = ExperimentConfig(model="m", backend="pytorch")
    assert cfg.mode == "offline" and cfg.online is None


def test_a_study_sweeps_the_request_rate():
    study = expand_study(
        {
            "model": "m",
            "backend": "vllm",
            "mode": "online",
            "online": {"max_concurrency": 8},
            "sweep": {"online.request_rate": [1, 4, "inf"]},
        }
    )
    rates = [e.online.request_rate for e in study.experiments if e.online is not None]
    assert rates == [1.0, 4.0, "inf"]
    assert all(e.online is not None and e.online.max_concurrency == 8 for e in study.experiments)


def test_the_online_example_loads():
    from pathlib import Path

    from llenergymeasure.config.loading import load_experiment_config

    path = Path(__file__).resolve().parents[2] / "examples" / "online-experiment.yaml"
    cfg = load_experiment_config(path)
    assert cfg.mode == "online" and cfg.online is not None
    assert cfg.online.request_rate == 1.0 and cfg.online.max_concurrency == 4
    assert cfg.online.starts_server and cfg.backend == "pytorch"
    assert cfg.online.slo is not None and cfg.online.slo.tpot_ms == 200


def test_unknown_online_keys_are_refused_with_the_field_named(write_yaml):
    from llenergymeasure.config.loading import load_experiment_config
    from llenergymeasure.exceptions import ConfigError

    path = write_yaml("model: m\nbackend: vllm\nmode: online\nonline:\n  reqest_rate: 4\n")
    with pytest.raises(ConfigError) as info:
        load_experiment_config(path)
    assert "reqest_rate" in str(info.value)
