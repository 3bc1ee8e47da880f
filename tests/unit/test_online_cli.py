"""Online mode through ``llem run``, the study runner and ``llem report``, on fake servers.

No GPU and no engine: the server is ``fake_openai_server`` (in this process for an endpoint, or
started by llem as the ``vllm`` program found first on ``PATH``). Energy is not measured on a
machine without NVML, so these tests check the load, latency, goodput, files and curve.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_openai_server import FakeOpenAIServer
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.manifest import load_manifest

FAKE = Path(__file__).with_name("fake_openai_server.py")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online-experiment.yaml"

cli = CliRunner()


def prompts_file(tmp_path: Path, n: int = 12) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def experiment_yaml(tmp_path: Path, online: str, *, backend: str = "vllm", n: int = 6) -> Path:
    path = tmp_path / "online.yaml"
    path.write_text(
        f"model: org/served-model\nbackend: {backend}\ndataset: {prompts_file(tmp_path)}\n"
        f"n: {n}\nmax_new_tokens: 4\nmode: online\nonline:\n{online}"
    )
    return path


def online_config(
    tmp_path: Path, url: str, *, n: int, max_new_tokens: int, baseline: dict, **online: object
) -> ExperimentConfig:
    """An online experiment against ``url`` over ``prompts_file``, measured in this process."""
    return ExperimentConfig(
        model="org/served-model",
        backend="vllm",
        dataset=str(prompts_file(tmp_path)),
        n=n,
        max_new_tokens=max_new_tokens,
        baseline=baseline,
        mode="online",
        online={"endpoint": url, **online},
    )


def only_dir(root: Path) -> Path:
    (directory,) = [p for p in root.iterdir() if p.is_dir()]
    return directory


def test_an_online_experiment_against_an_endpoint_is_measured_and_summarised(tmp_path):
    with FakeOpenAIServer(token_delay_s=0.002) as server:
        config = experiment_yaml(
            tmp_path,
            f"  endpoint: {server.url}\n  request_rate: 40\n  n_warmup_requests: 1\n"
            "  slo: {ttft_ms: 5000, tpot_ms: 5000}\n",
        )
        out = tmp_path / "results"
        run = cli.invoke(app, ["run", str(config), "-o", str(out)])
        assert run.exit_code == 0, run.output
        assert len(server.bodies) == 1 + 6  # the warmup request, then the measured ones

    summary = run.stdout
    for label in ("J / request", "J / output token", "goodput", "TTFT p50 / p99", "TPOT p50"):
        assert label in summary
    assert "6/6 requests ok" in summary
    assert "baseline-adjusted" in summary

    directory = only_dir(out)
    result = ExperimentResult.from_json(directory / "result.json")
    assert result.online is not None
    assert result.online.endpoint == server.url
    assert result.online.metrics.n_ok == 6
    assert result.online.metrics.goodput_per_s is not None
    assert result.n_requests == 6 and result.output_tokens == 6 * 4
    assert result.ttft.n == 6 and result.latency.p50 is not None
    assert result.online.server_log is None  # nothing started: no server log
    records = json.loads((directory / "online_requests.json").read_text())
    assert len(records["load"]["records"]) == 6
    assert len(records["load"]["warmup_records"]) == 1


def test_llem_starts_the_server_runs_the_load_and_keeps_its_log(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_vllm = bin_dir / "vllm"  # `vllm serve MODEL --host H --port P ...` runs the fake server
    fake_vllm.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    fake_vllm.chmod(fake_vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = experiment_yaml(
        tmp_path,
        "  request_rate: inf\n  max_concurrency: 3\n  n_warmup_requests: 0\n"
        "  server: {startup_timeout_s: 60}\n",
    )
    out = tmp_path / "results"
    run = cli.invoke(app, ["run", str(config), "-o", str(out)])
    assert run.exit_code == 0, run.output

    directory = only_dir(out)
    result = ExperimentResult.from_json(directory / "result.json")
    assert result.online is not None and result.online.metrics.n_ok == 6
    command = result.online.server_command
    assert command is not None and command[1:3] == ["serve", "org/served-model"]
    assert result.online.server_log == "server.log"
    log = (directory / "server.log").read_text()
    assert "serve org/served-model" in log  # the command line heads the log
    assert result.timing.load_s > 0  # the server's start until it answered /health


def test_the_example_without_the_serving_extra_fails_pre_flight_with_the_install_hint(tmp_path):
    from llenergymeasure.config.catalogue import ENGINES
    from llenergymeasure.online.preflight import _module_found

    extra = ENGINES["pytorch"].server_extra
    assert extra is not None
    if all(_module_found(m) for m in extra.modules):
        pytest.skip("transformers' serving extra is installed here")
    out = tmp_path / "results"
    run = cli.invoke(app, ["run", str(EXAMPLE), "-o", str(out)])  # transformers serve, builtin:tiny
    assert run.exit_code == 2, run.output
    assert "pip install 'transformers[serving]'" in run.output
    assert not out.exists() or not any(out.iterdir())  # nothing started, nothing written


def test_an_unreachable_endpoint_is_a_clear_error_naming_it(tmp_path):
    with FakeOpenAIServer() as server:
        url = server.url  # a port that was just free and is closed again below
    config = experiment_yaml(tmp_path, f"  endpoint: {url}\n  n_warmup_requests: 0\n")
    run = cli.invoke(app, ["run", str(config), "-o", str(tmp_path / "results")])
    assert run.exit_code != 0
    assert f"endpoint {url} is unreachable" in run.output
    assert "online.endpoint" in run.output  # the hint says what to check
    assert "Traceback" not in run.output


def test_the_example_online_experiment_is_valid_and_previews(tmp_path):
    run = cli.invoke(app, ["run", str(EXAMPLE), "--dry-run"])
    assert run.exit_code == 0, run.output


STUDY = """\
name: online-rates
model: org/served-model
backend: vllm
dataset: {dataset}
n: 5
max_new_tokens: 3
mode: online
online:
  endpoint: {url}
  n_warmup_requests: 0
  slo: {{e2e_ms: 10000}}
sweep:
  online.request_rate: [20, inf]
execution: {{n_cycles: 1, config_gap_seconds: 0, cycle_gap_seconds: 0}}
"""


def test_a_request_rate_study_gives_one_run_per_rate_and_a_curve_in_the_report(tmp_path):
    study = tmp_path / "study.yaml"
    out = tmp_path / "results"
    with FakeOpenAIServer(token_delay_s=0.001) as server:
        study.write_text(STUDY.format(dataset=prompts_file(tmp_path), url=server.url))
        run = cli.invoke(app, ["run", str(study), "-o", str(out), "--quiet"])
        assert run.exit_code == 0, run.output
        assert len(server.bodies) == 2 * 5

    study_dir = only_dir(out)
    manifest = load_manifest(study_dir)
    assert [r.status for r in manifest.runs] == ["completed", "completed"]
    assert all(r.engine_group is None for r in manifest.runs)  # no engine reuse online
    assert {c.online.request_rate for c in manifest.experiments if c.online} == {20.0, "inf"}

    table = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert sorted(row["online_request_rate"] for row in table) == [20.0, math.inf]
    assert all(row["online_n_ok"] == 5 for row in table)

    report = cli.invoke(app, ["report", str(study_dir)])
    assert report.exit_code == 0, report.output
    html = (study_dir / "report.html").read_text()
    assert "Energy against request rate" in html
    assert (study_dir / "report_online_curve.png").is_file()


def test_run_experiment_measures_an_online_config_and_writes_nothing(tmp_path, monkeypatch):
    import llenergymeasure as llem_api

    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer() as server:
        result = llem_api.run_experiment(
            model="org/served-model",
            backend="vllm",
            dataset=str(prompts_file(tmp_path)),
            n=4,
            max_new_tokens=2,
            mode="online",
            online={"endpoint": server.url, "request_rate": "inf", "n_warmup_requests": 0},
        )
    assert result.online is not None and result.online.metrics.n_ok == 4
    assert result.online.request_rate == "inf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


def test_online_runs_stay_out_of_engine_groups_and_keep_the_cycle_order():
    from llenergymeasure.config.study import ExecutionConfig
    from llenergymeasure.study.planning import grouped_order, reuse_key

    def online(rate: float) -> ExperimentConfig:
        return ExperimentConfig(
            model="org/m",
            backend="vllm",
            mode="online",
            online={"endpoint": "http://127.0.0.1:9", "request_rate": rate},
        )

    configs = [online(1), online(4)]
    assert [reuse_key(c) for c in configs] == [None, None]
    execution = ExecutionConfig(n_cycles=2, cycle_order="interleaved")
    # the same engine fields would make one engine group of offline configs; online runs are
    # each their own run, in cycle order: 1, 4, 1, 4
    assert grouped_order(configs, execution, reuse=True) == [(0, 1), (1, 1), (0, 2), (1, 2)]


def test_a_run_whose_requests_all_fail_is_an_error_that_keeps_the_request_records(tmp_path):
    path = tmp_path / "failing.jsonl"
    path.write_text("".join(json.dumps({"prompt": "FAIL:503"}) + "\n" for _ in range(3)))
    config = tmp_path / "online.yaml"
    with FakeOpenAIServer() as server:
        config.write_text(
            f"model: org/m\nbackend: vllm\ndataset: {path}\nn: 3\nmax_new_tokens: 2\n"
            f"mode: online\nonline: {{endpoint: {server.url}, n_warmup_requests: 0}}\n"
        )
        out = tmp_path / "results"
        run = cli.invoke(app, ["run", str(config), "-o", str(out)])
    assert run.exit_code == 1, run.output
    assert "all 3 requests failed" in run.output and "HTTP 503" in run.output
    records = json.loads((only_dir(out) / "online_requests.json").read_text())
    assert [r["http_status"] for r in records["load"]["records"]] == [503, 503, 503]


@pytest.mark.parametrize("continuous", ["", "  continuous_usage: false\n"])
def test_tokens_that_decode_to_no_text_are_timed_or_the_result_says_why_not(tmp_path, continuous):
    # vLLM 0.26 streams a chunk per step even when its tokens decode to "" (H200 run: TTFT
    # over 7 of 60 requests); with continuous usage (the vllm default) every token is timed
    with FakeOpenAIServer(vllm=True, decode=lambda position: "") as server:
        config = experiment_yaml(
            tmp_path, f"  endpoint: {server.url}\n  n_warmup_requests: 0\n{continuous}"
        )
        out = tmp_path / "results"
        run = cli.invoke(app, ["run", str(config), "-o", str(out)])
        assert run.exit_code == 0, run.output
    result = ExperimentResult.from_json(only_dir(out) / "result.json")
    assert result.online is not None and result.output_tokens == 6 * 4
    if not continuous:
        assert result.effective_parameters["continuous_usage_sent"] is True
        assert result.ttft.n == 6 and result.online.metrics.mean_tokens_per_chunk == 1.0
        assert "online_token_chunks_missing" not in result.measurement_warnings
    else:
        assert result.effective_parameters["continuous_usage_sent"] is False
        assert result.ttft.n == 0 and result.online.metrics.n_ok_without_token_chunks == 6
        assert "online_token_chunks_missing" in result.measurement_warnings
        assert any("6 of 6 requests streamed no chunk" in w for w in result.online.warnings)


def test_energy_per_request_comes_from_the_metered_gpus_over_the_load_window(tmp_path):
    from llenergymeasure.energy.baseline import BaselineCache
    from llenergymeasure.harness.online import measure_online
    from llenergymeasure.harness.settings import MeasurementSettings
    from llenergymeasure.testing.energy import FakeGpuSensor

    sensor = FakeGpuSensor(n_devices=1, power_w=150.0)
    settings = MeasurementSettings(sampling_interval_ms=10, energy_backend="nvml")
    with FakeOpenAIServer(token_delay_s=0.05) as server:
        config = online_config(
            tmp_path,
            server.url,
            n=5,
            max_new_tokens=5,
            baseline={"enabled": True, "duration_seconds": 0.2},
            request_rate=50,
            n_warmup_requests=1,
        )
        measured = measure_online(
            config,
            sensor=sensor,
            settings=settings,
            work_dir=tmp_path,
            baseline_cache=BaselineCache(),  # not one another test filled in this process
        )
    result = measured.result
    assert result.online is not None
    m = result.online.metrics
    assert result.energy.method == "nvml_counter"
    window_s = result.energy_total_j / 150.0  # type: ignore[operator]
    assert window_s == pytest.approx(m.duration_s, rel=0.25)  # first send to last token
    assert m.energy_j == pytest.approx(result.energy_total_j)
    assert m.energy_per_request_j == pytest.approx(result.energy_total_j / 5)  # type: ignore[operator]
    assert m.baseline_power_w == pytest.approx(150.0)  # idle share: all of it at constant power
    assert m.adjusted_energy_per_request_j == pytest.approx(0.0, abs=1.0)
    assert result.energy_adjusted_j is not None
    phases = set(measured.timeseries.column("phase").to_pylist())
    assert {"warmup", "measurement"} <= phases
    assert not sensor.closed  # a sensor passed in is the caller's to close


def test_zeus_meters_the_online_gpus_not_every_gpu_this_process_sees(tmp_path, monkeypatch):
    # online.gpus names the server's GPUs; llem's own process sees every GPU (its
    # CUDA_VISIBLE_DEVICES is the server's business), so Zeus must be told which to meter,
    # as the NVML sensor and the idle baseline are
    from types import SimpleNamespace

    from llenergymeasure.energy.baseline import BaselineCache
    from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
    from llenergymeasure.harness import online as harness_online
    from llenergymeasure.harness.settings import MeasurementSettings
    from llenergymeasure.online import gpus
    from llenergymeasure.testing.energy import FakeGpuSensor

    metered: list[list[int] | None] = []

    class Monitor:
        def __init__(self, gpu_indices: list[int] | None) -> None:
            metered.append(gpu_indices)
            self.indices = gpu_indices if gpu_indices is not None else [0, 1, 2, 3]

        def begin_window(self, key: str, sync_execution: bool = False) -> None:
            pass

        def end_window(self, key: str, sync_execution: bool = False) -> SimpleNamespace:
            return SimpleNamespace(time=0.5, gpu_energy={i: 100.0 for i in self.indices})

    zeus = ZeusEnergyBackend(monitor_factory=Monitor, available=lambda: True)
    monkeypatch.setattr(harness_online, "energy_backend_for", lambda settings, sensor: zeus)
    monkeypatch.setattr(gpus, "nvml_uuids", lambda: [f"GPU-{i}" for i in range(4)])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with FakeOpenAIServer() as server:
        config = online_config(
            tmp_path,
            server.url,
            n=3,
            max_new_tokens=2,
            baseline={"enabled": False},
            gpus=[2],
            n_warmup_requests=0,
        )
        measured = harness_online.measure_online(
            config,
            sensor=FakeGpuSensor(n_devices=1),
            settings=MeasurementSettings(sampling_interval_ms=10),
            baseline_cache=BaselineCache(),
        )
    assert metered == [[2]]
    assert measured.result.energy_total_j == pytest.approx(100.0)  # one GPU, not four


def test_zeus_gpu_indices_are_this_processs_cuda_ordinals_of_the_online_gpus():
    from llenergymeasure.config.online import OnlineConfig
    from llenergymeasure.exceptions import BackendError
    from llenergymeasure.online.gpus import zeus_gpu_indices

    uuids = ["GPU-a0", "GPU-b1", "GPU-c2", "GPU-d3"]
    online = OnlineConfig(endpoint="http://127.0.0.1:8000", gpus=[3, "GPU-b1"])
    assert zeus_gpu_indices(online, uuids, None) == [3, 1]
    assert zeus_gpu_indices(online, uuids, "3,1") == [0, 1]
    assert zeus_gpu_indices(OnlineConfig(endpoint="http://127.0.0.1:8000"), uuids, "2") is None
    with pytest.raises(BackendError, match="not visible"):
        zeus_gpu_indices(online, uuids, "0,1")


def test_an_online_run_does_not_reuse_an_idle_baseline_measured_without_its_server(tmp_path):
    # a study's baseline cache is shared by its runs: an offline run's baseline (taken before
    # its engine loads, no server up) is not the online run's idle state, the server up and idle
    from llenergymeasure.energy.baseline import BaselineCache, get_or_measure_baseline
    from llenergymeasure.harness.online import measure_online
    from llenergymeasure.harness.settings import MeasurementSettings
    from llenergymeasure.testing.energy import FakeGpuSensor

    cache = BaselineCache()
    offline_idle = get_or_measure_baseline(FakeGpuSensor(power_w=60.0), 0.2, 10, cache=cache)
    assert offline_idle.power_w == pytest.approx(60.0)
    settings = MeasurementSettings(sampling_interval_ms=10, energy_backend="nvml")
    with FakeOpenAIServer() as server:
        config = online_config(
            tmp_path,
            server.url,
            n=3,
            max_new_tokens=2,
            baseline={"enabled": True, "duration_seconds": 0.2},
            n_warmup_requests=0,
        )
        runs = [
            measure_online(
                config, sensor=FakeGpuSensor(power_w=90.0), settings=settings, baseline_cache=cache
            ).result
            for _ in range(2)
        ]
    first, second = (r.energy.baseline for r in runs)
    assert first is not None and not first.from_cache
    assert first.power_w == pytest.approx(90.0)  # measured with the server up
    assert second is not None and second.from_cache  # the same server's: reused
    # and the offline run's is still its own
    again = get_or_measure_baseline(FakeGpuSensor(power_w=60.0), 0.2, 10, cache=cache)
    assert again.from_cache and again.power_w == pytest.approx(60.0)
