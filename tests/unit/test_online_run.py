"""run_online end to end against fake servers: the order of steps, energy, failures, cleanup."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from fake_openai_server import FakeOpenAIServer

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.baseline import BaselineMeasurement
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.online.run import run_online
from llenergymeasure.online.run_result import OnlineRunFailed
from llenergymeasure.online.server import ManagedServer
from llenergymeasure.testing.energy import FakeEnergyBackend, idle_baseline

FAKE = Path(__file__).with_name("fake_openai_server.py")
PROMPTS = [f"prompt {i}" for i in range(20)]


def server_notes(result) -> list[str]:
    """The run's warnings less those about this machine's load on the client (a busy CI
    machine may delay the client's event loop; that is reported, and not what is tested)."""
    return [w for w in result.warnings if "load client" not in w]


def config(online: dict[str, Any], backend: str = "vllm", **kw: Any) -> ExperimentConfig:
    kw.setdefault("n", 6)
    kw.setdefault("max_new_tokens", 4)
    return ExperimentConfig(model="org/m", backend=backend, mode="online", online=online, **kw)


class Recorder:
    """Notes the order in which run_online reaches its steps."""

    def __init__(self, server: FakeOpenAIServer | None = None) -> None:
        self.events: list[str] = []
        self.server = server

    def baseline(self) -> BaselineMeasurement:
        sent = len(self.server.bodies) if self.server is not None else 0
        self.events.append(f"baseline after {sent} requests")
        return idle_baseline(100.0)


def test_endpoint_run_measures_energy_around_the_load(tmp_path):
    energy = FakeEnergyBackend(700.0, duration_s=2.0)
    with FakeOpenAIServer(token_delay_s=0.002) as server:
        rec = Recorder(server)
        result = run_online(
            config(
                {
                    "endpoint": server.url,
                    "request_rate": 100,
                    "arrival": "constant",
                    "n_warmup_requests": 2,
                    "slo": {"e2e_ms": 10_000},
                }
            ),
            PROMPTS,
            output_dir=tmp_path,
            energy=energy,
            measure_baseline=rec.baseline,
        )
        bodies = list(server.bodies)
    assert rec.events == ["baseline after 0 requests"]
    assert energy.begin_calls == 1 and energy.end_calls == 1
    # two warmups first, never with a measured prompt, then the six measured prompts
    assert [b["prompt"] for b in bodies[:2]] == [
        "Warmup request 0: describe the weather in one sentence.",
        "Warmup request 1: describe the weather in one sentence.",
    ]
    assert sorted(b["prompt"] for b in bodies[2:]) == PROMPTS[:6]
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 4 for b in bodies)
    m = result.metrics
    assert m.n_requests == 6 and m.n_ok == 6 and m.output_tokens == 24
    assert m.energy_j == 700.0 and m.baseline_power_w == 100.0
    assert m.adjusted_energy_j == pytest.approx(700.0 - 100.0 * 2.0)  # backend's window
    assert m.energy_per_request_j == pytest.approx(700.0 / 6)
    assert m.energy_per_output_token_j == pytest.approx(700.0 / 24)
    assert m.n_slo_met == 6 and m.energy_per_slo_request_j == pytest.approx(700.0 / 6)
    assert result.load.achieved_rate_per_s == pytest.approx(100.0, rel=0.25)
    assert result.server_command is None and server_notes(result) == []
    assert result.request_model == "org/m" and result.endpoint == server.url


def test_ignore_eos_is_sent_where_the_server_takes_it(tmp_path):
    with FakeOpenAIServer() as server:
        run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}, decoder={"ignore_eos": True}),
            PROMPTS,
            output_dir=tmp_path,
        )
        assert all(b.get("ignore_eos") is True for b in server.bodies)


def no_text(position: int) -> str:
    return ""  # a token that decodes to no text (as most did on the H200 run of vLLM 0.26)


def test_a_vllm_run_times_tokens_that_decode_to_no_text(tmp_path):
    with FakeOpenAIServer(vllm=True, decode=no_text) as server:
        result = run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}), PROMPTS, output_dir=tmp_path
        )
        bodies = list(server.bodies)
    assert all(b["stream_options"]["continuous_usage_stats"] is True for b in bodies)
    assert result.continuous_usage_sent and result.summary().continuous_usage_sent
    m = result.metrics
    assert m.ttft is not None and m.ttft.count == 6
    assert m.itl is not None and m.itl.count == 6 * 3
    assert m.n_ok_without_token_chunks == 0 and server_notes(result) == []


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_tensorrt_run_asks_for_the_running_count_and_times_tokens_without_text(tmp_path, api):
    # trtllm-serve takes continuous_usage_stats and puts the running completion_tokens on every
    # chunk of both APIs (0 on the chat role chunk), as the fake does in vLLM's shapes
    with FakeOpenAIServer(vllm=True, decode=no_text) as server:
        result = run_online(
            config(
                {"endpoint": server.url, "n_warmup_requests": 0, "api": api},
                "tensorrt",
                precision="fp16",
            ),
            PROMPTS,
            output_dir=tmp_path,
        )
        bodies = list(server.bodies)
    assert all(b["stream_options"]["continuous_usage_stats"] is True for b in bodies)
    assert result.continuous_usage_sent
    m = result.metrics
    assert m.ttft is not None and m.ttft.count == 6
    assert m.itl is not None and m.itl.count == 6 * 3
    assert m.n_ok_without_token_chunks == 0 and server_notes(result) == []


def test_streams_without_visible_tokens_are_warned_about(tmp_path):
    # a server not known to take continuous usage (the field is not sent), tokens without text
    with FakeOpenAIServer(vllm=True, decode=no_text) as server:
        result = run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}, backend="pytorch"),
            PROMPTS,
            output_dir=tmp_path,
        )
        bodies = list(server.bodies)
    assert all("continuous_usage_stats" not in b["stream_options"] for b in bodies)
    assert not result.continuous_usage_sent
    m = result.metrics
    assert m.n_ok == 6 and m.output_tokens == 24  # usage still counts them
    assert m.ttft is None and m.n_ok_without_token_chunks == 6
    (warning,) = server_notes(result)
    assert warning.startswith("6 of 6 requests streamed no chunk with tokens")
    assert "TTFT and ITL cover only the other 0" in warning
    assert "online.continuous_usage: true" in warning


def test_a_server_ignoring_continuous_usage_is_warned_about_too(tmp_path):
    with FakeOpenAIServer(vllm=False, decode=no_text) as server:
        result = run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}), PROMPTS, output_dir=tmp_path
        )
    assert result.continuous_usage_sent
    (warning,) = server_notes(result)
    assert "sent no running token count" in warning


def test_sampling_settings_travel_with_each_request(tmp_path):
    with FakeOpenAIServer() as server:
        run_online(
            config(
                {"endpoint": server.url, "n_warmup_requests": 0, "api": "chat"},
                decoder={"decoding_strategy": "sampling", "temperature": 0.7, "top_p": 0.9},
            ),
            PROMPTS,
            output_dir=tmp_path,
        )
        assert {(b["temperature"], b["top_p"]) for b in server.bodies} == {(0.7, 0.9)}
        assert server.paths == ["/v1/chat/completions"] * 6


def test_without_energy_the_run_still_reports_latency_and_throughput(tmp_path):
    with FakeOpenAIServer() as server:
        result = run_online(
            config({"endpoint": server.url, "max_concurrency": 2}), PROMPTS, output_dir=tmp_path
        )
    assert result.energy is None and result.metrics.energy_j is None
    assert result.metrics.ttft is not None and result.metrics.request_throughput_per_s > 0


def test_some_failures_are_recorded_and_the_run_completes(tmp_path):
    prompts = ["ok 1", "FAIL:503", "ok 2", "HANG"]
    with FakeOpenAIServer() as server:
        result = run_online(
            config({"endpoint": server.url, "request_timeout_s": 0.5}, n=4),
            prompts,
            output_dir=tmp_path,
        )
    assert result.metrics.n_ok == 2
    assert result.metrics.errors == {"HTTP 503": 1, "timeout": 1}
    assert any("2 of 4 requests failed" in w for w in result.warnings)


def test_all_requests_failing_raises_with_the_result_attached(tmp_path):
    with FakeOpenAIServer() as server, pytest.raises(OnlineRunFailed) as info:
        run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}, n=3),
            ["FAIL:500"] * 3,
            output_dir=tmp_path,
        )
    assert info.value.result.metrics.n_failed == 3
    assert "HTTP 500" in str(info.value)


def test_an_unreachable_endpoint_is_a_clear_error_before_any_measurement(tmp_path):
    from llenergymeasure.online.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    rec = Recorder()
    with pytest.raises(BackendError, match="unreachable") as info:
        run_online(
            config({"endpoint": url}), PROMPTS, output_dir=tmp_path, measure_baseline=rec.baseline
        )
    assert url in str(info.value) and "online.endpoint" in str(info.value)
    assert rec.events == []  # failed before the baseline


def test_an_endpoint_serving_another_model_is_a_config_error(tmp_path):
    with FakeOpenAIServer(models=["llama-8b"]) as server, pytest.raises(ConfigError) as info:
        run_online(config({"endpoint": server.url}), PROMPTS, output_dir=tmp_path)
    assert "['llama-8b']" in str(info.value) and "served_model_name" in str(info.value)
    with FakeOpenAIServer(models=["llama-8b"]) as server:
        result = run_online(
            config({"endpoint": server.url, "served_model_name": "llama-8b"}),
            PROMPTS,
            output_dir=tmp_path,
        )
        assert {b["model"] for b in server.bodies} == {"llama-8b"}
    assert result.metrics.n_ok == 6


def test_an_endpoint_without_a_model_list_is_used_with_a_note(tmp_path):
    with FakeOpenAIServer(health=False) as server:
        result = run_online(config({"endpoint": server.url}), PROMPTS, output_dir=tmp_path)
    assert result.metrics.n_ok == 6
    assert any("lists no models" in w for w in result.warnings)


def fake_factory(seen: list[list[str]], *flags: str):
    """Builds a ManagedServer running the fake script instead of the engine's server."""

    def factory(argv: list[str], **kw: Any) -> ManagedServer:
        seen.append(list(argv))
        fake = [sys.executable, str(FAKE), "--port", str(kw["port"]), *flags]
        return ManagedServer(fake, **kw, grace_s=3.0, poll_s=0.05)

    return factory


def test_a_started_server_is_waited_for_measured_and_stopped(tmp_path):
    seen: list[list[str]] = []
    result = run_online(
        config({"server": {"startup_timeout_s": 30}, "n_warmup_requests": 1}),
        PROMPTS,
        output_dir=tmp_path / "result",
        server_factory=fake_factory(seen, "--startup-delay", "0.2"),
    )
    assert seen[0][:3] == ["vllm", "serve", "org/m"]
    assert result.server_command is not None and str(FAKE) in result.server_command
    assert result.server_log == str(tmp_path / "result" / "server.log")
    assert "fake server ready" in Path(result.server_log).read_text()
    assert result.server_ready_s is not None and result.server_ready_s >= 0.2
    assert result.metrics.n_ok == 6


def test_transformers_serve_gets_no_ignore_eos_and_the_result_says_so(tmp_path):
    seen: list[list[str]] = []
    result = run_online(
        config({"n_warmup_requests": 0}, backend="pytorch", decoder={"ignore_eos": True}),
        PROMPTS,
        output_dir=tmp_path,
        model_source="/models/tiny",
        server_factory=fake_factory(seen),
    )
    assert seen[0][:3] == ["transformers", "serve", "/models/tiny"]
    assert not result.ignore_eos_sent
    assert any("ignore_eos is not sent" in w for w in result.warnings)
    assert result.request_model == "/models/tiny"


def test_a_server_that_dies_mid_run_is_reported_and_stopped(tmp_path):
    seen: list[list[str]] = []
    with pytest.raises(OnlineRunFailed) as info:
        run_online(
            config({"n_warmup_requests": 0, "request_timeout_s": 10}, n=4, max_new_tokens=200),
            PROMPTS,
            output_dir=tmp_path,
            server_factory=fake_factory(seen, "--exit-after", "1.0", "--token-delay", "0.05"),
        )
    result = info.value.result
    assert any("exited with code 3 during the load" in w for w in result.warnings)
    assert result.metrics.n_failed == 4


def test_a_server_that_never_becomes_ready_is_an_error_and_is_stopped(tmp_path):
    seen: list[list[str]] = []
    with pytest.raises(BackendError, match="not ready"):
        run_online(
            config({"server": {"startup_timeout_s": 0.5}}),
            PROMPTS,
            output_dir=tmp_path,
            server_factory=fake_factory(seen, "--startup-delay", "30"),
        )
    assert (tmp_path / "server.log").exists()


@pytest.mark.parametrize(
    ("cfg", "prompts", "message"),
    [
        (config({"endpoint": "http://h:1"}, n=5), PROMPTS[:3], "only 3 prompts"),
        (
            config({"endpoint": "http://h:1"}, decoder={"decoding_strategy": "beam"}),
            PROMPTS,
            "beam",
        ),
        (ExperimentConfig(model="m", backend="vllm"), PROMPTS, "mode: online"),
    ],
)
def test_bad_setups_are_config_errors(tmp_path, cfg, prompts, message):
    with pytest.raises(ConfigError, match=message):
        run_online(cfg, prompts, output_dir=tmp_path)


def test_metered_gpus_are_resolved_to_nvml_indices():
    from llenergymeasure.config.online import OnlineConfig
    from llenergymeasure.online.gpus import metered_gpu_indices

    uuids = ["GPU-aaaa-0", "GPU-bbbb-1", "GPU-cccc-2"]
    assert metered_gpu_indices(OnlineConfig(), uuids) is None
    assert metered_gpu_indices(OnlineConfig(gpus=[2, "GPU-bbbb"]), uuids) == [2, 1]
    with pytest.raises(BackendError, match="GPU-dddd"):
        metered_gpu_indices(OnlineConfig(gpus=["GPU-dddd"]), uuids)


def test_a_prompts_own_new_token_limit_is_its_requests_max_tokens(tmp_path):
    from llenergymeasure.datasets import Prompt

    own = [Prompt("short one", max_new_tokens=2, index=0), Prompt("default", index=1)]
    with FakeOpenAIServer() as server:
        run_online(
            config({"endpoint": server.url, "n_warmup_requests": 0}, n=2, max_new_tokens=4),
            own,
            output_dir=tmp_path,
        )
        limits = {b["prompt"]: b["max_tokens"] for b in server.bodies}
    assert limits == {"short one": 2, "default": 4}
