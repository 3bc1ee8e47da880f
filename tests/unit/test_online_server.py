"""Engine server command lines, and the launcher run against a fake server script."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config.models import ExperimentConfig, VLLMConfig
from llenergymeasure.engines.vllm.engine_args import VLLM_SERVE_FLAGS
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.online.client import OpenAIStreamClient
from llenergymeasure.online.records import StreamRequest
from llenergymeasure.online.server import (
    ManagedServer,
    free_port,
    server_launch,
)

FAKE = Path(__file__).with_name("fake_openai_server.py")


def online_config(backend: str = "vllm", online: dict[str, Any] | None = None, **kw: Any):
    return ExperimentConfig(
        model="org/m", backend=backend, mode="online", online=online or {}, **kw
    )


def launch(config: ExperimentConfig, **kw: Any):
    return server_launch(config, host="127.0.0.1", port=8123, **kw)


# ─── command lines ──────────────────────────────────────────────────────────


def test_vllm_serve_command_carries_every_set_engine_field():
    config = online_config(
        precision="bf16",
        random_seed=7,
        vllm={
            "max_num_seqs": 64,
            "tensor_parallel_size": 2,
            "gpu_memory_utilization": 0.8,
            "enable_prefix_caching": False,
            "block_size": 32,
            "quantization": "fp8",
            "enable_lora": True,
            "max_lora_rank": 8,
        },
    )
    argv = launch(config).argv
    assert argv[:3] == ["vllm", "serve", "org/m"]
    joined = " ".join(argv)
    for expected in (
        "--host 127.0.0.1",
        "--port 8123",
        "--dtype bfloat16",
        "--seed 7",
        "--max-num-seqs 64",
        "--tensor-parallel-size 2",
        "--gpu-memory-utilization 0.8",
        "--no-enable-prefix-caching",
        "--block-size 32",
        "--quantization fp8",
        "--enable-lora",
        "--max-lora-rank 8",
    ):
        assert expected in joined


def test_every_vllm_config_field_has_a_serve_flag():
    # A new VLLMConfig field must get its `vllm serve` flag here, or online runs would drop it.
    assert set(VLLM_SERVE_FLAGS) == set(VLLMConfig.model_fields)


def test_vllm_defaults_are_left_to_vllm():
    argv = launch(online_config(precision="fp16")).argv
    assert not any(a.startswith("--max-num-seqs") or "prefix-caching" in a for a in argv)
    assert (
        "--enable-prefix-caching"
        in launch(online_config(vllm={"enable_prefix_caching": True})).argv
    )


def test_vllm_served_model_name_is_what_requests_carry():
    spec = launch(online_config(online={"served_model_name": "llama"}))
    assert spec.argv[-2:] == ["--served-model-name", "llama"]
    assert spec.request_model == "llama"
    assert launch(online_config()).request_model == "org/m"


def test_transformers_serve_command_and_its_limits():
    config = online_config(
        "pytorch",
        precision="fp32",
        pytorch={
            "attn_implementation": "sdpa",
            "torch_compile": True,
            "load_in_4bit": True,
            "batching_strategy": "dynamic",
        },
    )
    spec = launch(config, model_source="/models/tiny")
    assert spec.argv[:3] == ["transformers", "serve", "/models/tiny"]
    joined = " ".join(spec.argv)
    for expected in (
        "--dtype float32",
        "--default-seed 42",
        "--attn-implementation sdpa",
        "--compile",
        "--quantization bnb-4bit",
        "--continuous-batching",
    ):
        assert expected in joined
    assert not spec.supports_ignore_eos  # transformers serve answers 422 to unknown fields
    assert spec.request_model == "/models/tiny"


def test_trtllm_serve_command_prefers_a_built_engine():
    config = online_config(
        "tensorrt",
        precision="fp16",
        tensorrt={
            "tp_size": 2,
            "max_batch_size": 16,
            "engine_path": "/engines/e",
            "kv_cache_free_gpu_memory_fraction": 0.5,
        },
    )
    argv = launch(config).argv
    assert argv[:4] == ["trtllm-serve", "/engines/e", "--backend", "tensorrt"], (
        "1.x would serve on its PyTorch backend otherwise"
    )
    assert "--tp_size 2" in " ".join(argv) and "--max_batch_size 16" in " ".join(argv)
    assert "--kv_cache_free_gpu_memory_fraction 0.5" in " ".join(argv)
    assert any("precision=fp16 is not a trtllm-serve flag" in n for n in launch(config).notes)
    assert launch(online_config()).notes == []


@pytest.mark.parametrize(
    ("backend", "section", "field"),
    [
        ("pytorch", {"pytorch": {"batch_size": 8}}, "pytorch.batch_size"),
        ("pytorch", {"pytorch": {"num_processes": 2}}, "pytorch.num_processes"),
        (
            "tensorrt",
            {"tensorrt": {"enable_block_reuse": True}, "precision": "fp16"},
            "tensorrt.enable_block_reuse",
        ),
    ],
)
def test_engine_fields_without_a_server_flag_are_refused_by_name(backend, section, field):
    with pytest.raises(ConfigError, match=field):
        launch(online_config(backend, **section))


def test_extra_args_come_last_and_gpus_become_cuda_visible_devices():
    spec = launch(
        online_config(
            online={"server": {"extra_args": ["--max-model-len", "4096"]}, "gpus": [2, 3]}
        )
    )
    assert spec.argv[-2:] == ["--max-model-len", "4096"]
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "2,3"}


def test_no_server_for_an_endpoint_or_an_offline_experiment():
    with pytest.raises(ConfigError, match="endpoint"):
        launch(online_config(online={"endpoint": "http://h:1"}))
    with pytest.raises(ConfigError, match="mode: online"):
        launch(ExperimentConfig(model="m", backend="vllm"))


# ─── the launcher with a fake server script ─────────────────────────────────


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def fake_server(tmp_path: Path, *flags: str, timeout: float = 20.0, grace: float = 3.0):
    port = free_port()
    return ManagedServer(
        [sys.executable, str(FAKE), "--port", str(port), *flags],
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "run" / "server.log",
        startup_timeout_s=timeout,
        grace_s=grace,
        poll_s=0.05,
    )


def child_pid(log: Path) -> int:
    for _ in range(100):
        if m := re.search(r"child-pid (\d+)", log.read_text()):
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no child pid in the log")


def test_server_becomes_ready_serves_and_stops_with_its_log_kept(tmp_path):
    server = fake_server(tmp_path, "--child", "--startup-delay", "0.3", "--unknown-flag")
    with server:
        pid = server.process.pid
        child = child_pid(server.log_path)
        client = OpenAIStreamClient(server.base_url, "m")
        record = asyncio.run(client.send(StreamRequest("hi", 3)))
        assert record.ok and record.output_tokens == 3
        assert server.exit_code() is None
    assert not alive(pid) and not alive(child)
    log = server.log_path.read_text()
    assert "fake server ready" in log and "--unknown-flag" in log
    assert log.startswith("$ ")  # the command line heads the log


def test_no_orphan_when_the_block_raises(tmp_path):
    server = fake_server(tmp_path, "--child")
    with pytest.raises(RuntimeError, match="boom"), server:
        child = child_pid(server.log_path)
        pid = server.process.pid
        raise RuntimeError("boom")
    assert not alive(pid) and not alive(child)


def test_no_orphan_on_keyboard_interrupt(tmp_path):
    server = fake_server(tmp_path, "--child")
    with pytest.raises(KeyboardInterrupt), server:
        child = child_pid(server.log_path)
        raise KeyboardInterrupt
    assert not alive(child)


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    server = fake_server(tmp_path, "--ignore-sigterm", grace=0.5)
    with server:
        pid = server.process.pid
    assert not alive(pid)
    assert server.process.returncode == -9


def test_startup_timeout_is_a_clear_error_and_leaves_nothing_running(tmp_path):
    # 5 s: time for the server's first log line even on a loaded machine (at 0.5 s a busy one
    # had not started Python yet); it is never ready (a 600 s startup delay)
    server = fake_server(tmp_path, "--child", "--startup-delay", "600", timeout=5.0)
    with pytest.raises(BackendError, match=r"not ready after 5(\.0)? s") as info, server:
        pass
    assert "startup_timeout_s" in str(info.value)
    assert "fake server starting" in str(info.value)  # the log's tail is shown
    assert not alive(server.process.pid)
    assert not alive(child_pid(server.log_path))


def test_a_server_without_health_is_never_ready(tmp_path):
    server = fake_server(tmp_path, "--no-health", timeout=0.8)
    with pytest.raises(BackendError, match="/health"), server:
        pass


def test_a_server_that_exits_during_startup_is_reported_with_its_code(tmp_path):
    server = fake_server(tmp_path, "--startup-delay", "0.1", "--exit-after", "0", "--no-health")
    with pytest.raises(BackendError, match="exited with code 3"), server:
        pass


def test_a_server_that_dies_mid_run_shows_in_its_exit_code(tmp_path):
    server = fake_server(tmp_path, "--exit-after", "0.5")
    with server:
        assert server.exit_code() is None
        deadline = time.monotonic() + 60  # a hang guard: it exits 0.5 s after it is ready
        while server.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.exit_code() == 3


def test_a_missing_server_program_is_a_clear_error(tmp_path):
    server = ManagedServer(
        ["no-such-server-program-xyz"], host="127.0.0.1", port=1, log_path=tmp_path / "s.log"
    )
    with pytest.raises(BackendError, match="could not start the server"), server:
        pass


def test_a_script_whose_interpreter_is_missing_is_named_with_it(tmp_path, monkeypatch):
    # a console script written on another machine (pip --target): found on PATH, but exec would
    # fail with only "No such file or directory"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fake-serve-xyz"
    script.write_text("#!/nonexistent/python3.11\nprint('never')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    server = ManagedServer(
        ["fake-serve-xyz", "serve"], host="127.0.0.1", port=1, log_path=tmp_path / "s.log"
    )
    with pytest.raises(BackendError, match=r"'#!/nonexistent/python3.11'") as info, server:
        pass
    assert str(script) in str(info.value) and server.process is None


def test_a_script_with_an_env_interpreter_is_not_refused(tmp_path):
    from llenergymeasure.online.server import _missing_interpreter

    script = tmp_path / "ok"
    script.write_text("#!/usr/bin/env python3\n")
    assert _missing_interpreter(str(script)) is None
    assert _missing_interpreter(sys.executable) is None  # a binary, no #! line


def test_stop_is_idempotent_and_safe_before_start(tmp_path):
    server = fake_server(tmp_path)
    server.stop()
    with server:
        pass
    server.stop()
    assert os.path.exists(server.log_path)
