"""The measurement protocol (SPEC 4) driven end to end with a fake engine and fake sensors."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import pytest

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.baseline import BaselineCache
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.exceptions import PreFlightError
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import FakeEnergyBackend, SwitchingSensor
from llenergymeasure.testing.engines import FakeEngine


def _config(**overrides: object) -> ExperimentConfig:
    data: dict[str, object] = {
        "model": "fake-model",
        "backend": "pytorch",
        "dataset": {"n": 6, "input_len": 16, "output_len": 20},
        "n": 6,
        "warmup": {"n_warmup": 2, "thermal_floor_seconds": 0},
        "baseline": {"duration_seconds": 0.3},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def _orchestrator(
    sensor: SwitchingSensor, engine: FakeEngine, **kwargs: object
) -> ExperimentOrchestrator:
    sampler = EnergySampler(sensor, interval_ms=10)
    return ExperimentOrchestrator(
        engine=engine,
        energy_backend=NvmlEnergyBackend(sensor=sensor, sampler=sampler),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=10),
        baseline_cache=kwargs.pop("baseline_cache", BaselineCache()),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _switching_engine(sensor: SwitchingSensor, **kwargs: object) -> FakeEngine:
    return FakeEngine(
        on_generate=lambda phase: sensor.load(),
        on_generate_end=lambda phase: sensor.idle(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_energy_is_the_counter_delta_and_adjusted_energy_subtracts_the_idle_baseline() -> None:
    sensor = SwitchingSensor(n_devices=2, idle_w=50.0, busy_w=250.0)
    engine = _switching_engine(sensor, output_tokens=20, seconds_per_token=0.003)
    result = _orchestrator(sensor, engine).run(_config()).result

    assert result.energy.method == "nvml_counter"
    assert result.energy.available
    assert len(result.energy.per_device) == 2
    assert result.energy_total_j == pytest.approx(
        sum(d.energy_j for d in result.energy.per_device if d.energy_j is not None)
    )
    # two devices at 250 W for the whole window (the fake engine sleeps, the sensor integrates)
    assert result.energy_total_j == pytest.approx(2 * 250.0 * result.duration_s, rel=0.05)
    assert result.energy.baseline_power_w == pytest.approx(100.0)
    assert result.energy_adjusted_j == pytest.approx(
        result.energy_total_j - 100.0 * result.duration_s
    )
    assert result.energy_per_output_token_j == pytest.approx(
        result.energy_total_j / result.output_tokens
    )
    assert result.output_tokens == 6 * 20
    assert result.energy.counter_vs_poll_diff_pct is not None
    assert abs(result.energy.counter_vs_poll_diff_pct) < 10


def test_result_hash_equals_the_config_hash_and_records_engine_parameters() -> None:
    sensor = SwitchingSensor()
    config = _config()
    result = _orchestrator(sensor, _switching_engine(sensor)).run(config).result
    assert result.measurement_config_hash == measurement_config_hash(config)
    assert result.config == config
    assert result.effective_parameters == {"batch_size": 1, "engine": "fake"}
    assert result.environment.gpus[0]["uuid"] == "GPU-switch-0"


def test_warmup_runs_before_the_window_and_is_excluded_from_the_metrics() -> None:
    sensor = SwitchingSensor()
    engine = _switching_engine(sensor)
    result = _orchestrator(sensor, engine).run(_config()).result
    assert [phase for phase, _ in engine.calls] == ["warmup", "warmup", "measurement"]
    assert result.warmup.runs == 2
    assert result.n_requests == 6
    assert [r.index for r in result.requests] == list(range(6))


def test_short_runs_and_a_short_thermal_floor_carry_warnings() -> None:
    sensor = SwitchingSensor()
    result = _orchestrator(sensor, _switching_engine(sensor)).run(_config()).result
    assert "short_measurement_duration" in result.measurement_warnings
    assert "thermal_floor_below_recommended" in result.measurement_warnings
    assert "nvml_low_sample_count" in result.measurement_warnings


def test_thermal_floor_waits_the_configured_time_with_the_injected_sleep() -> None:
    sensor = SwitchingSensor()
    slept: list[float] = []
    orch = _orchestrator(sensor, _switching_engine(sensor), sleep=slept.append)
    result = orch.run(_config(warmup={"n_warmup": 1, "thermal_floor_seconds": 45})).result
    assert slept == [45]
    assert "thermal_floor_below_recommended" not in result.measurement_warnings


def test_preflight_reports_every_problem_at_once_before_loading_anything() -> None:
    sensor = SwitchingSensor()
    engine = FakeEngine(problems=["engine problem one", "engine problem two"])
    orch = _orchestrator(sensor, engine)
    with pytest.raises(PreFlightError) as info:
        orch.run(_config(dataset="missing/prompts.jsonl"))
    assert len(info.value.problems) == 3
    assert any("missing/prompts.jsonl" in p for p in info.value.problems)
    assert not engine.loaded


def test_the_idle_baseline_is_cached_within_a_process_and_the_provenance_recorded() -> None:
    sensor = SwitchingSensor()
    cache = BaselineCache()
    first = _orchestrator(sensor, _switching_engine(sensor), baseline_cache=cache).run(_config())
    second = _orchestrator(sensor, _switching_engine(sensor), baseline_cache=cache).run(_config())
    assert first.result.energy.baseline is not None and second.result.energy.baseline is not None
    assert not first.result.energy.baseline.from_cache
    assert second.result.energy.baseline.from_cache
    assert second.result.timing.baseline_s < first.result.timing.baseline_s


def test_convergence_detection_stops_warmup_once_latency_is_stable() -> None:
    sensor = SwitchingSensor()
    engine = _switching_engine(sensor, seconds_per_token=0.002)
    config = _config(
        warmup={
            "n_warmup": 3,
            "thermal_floor_seconds": 0,
            "convergence_detection": True,
            "cv_target": 0.5,
            "max_prompts": 10,
        }
    )
    result = _orchestrator(sensor, engine).run(config).result
    assert result.warmup.convergence_detection
    assert result.warmup.converged is True
    assert 3 <= result.warmup.runs < 10


def test_timeseries_has_rows_per_device_labelled_by_phase(tmp_path) -> None:
    sensor = SwitchingSensor(n_devices=2)
    measured = _orchestrator(sensor, _switching_engine(sensor, seconds_per_token=0.005)).run(
        _config()
    )
    path = measured.save(tmp_path / "run")
    table = pq.read_table(tmp_path / "run" / "timeseries.parquet").to_pydict()
    assert set(table["device_index"]) == {0, 1}
    assert {"baseline", "warmup", "measurement"} <= set(table["phase"])
    assert measured.result.timeseries_samples == len(table["phase"])
    assert measured.result.warmup_excluded_samples == table["phase"].count("warmup")
    assert json.loads(path.read_text())["output_dir"] == str(tmp_path / "run")


def test_result_json_round_trips_exactly(tmp_path) -> None:
    sensor = SwitchingSensor()
    result = _orchestrator(sensor, _switching_engine(sensor)).run(_config()).result
    again = ExperimentResult.from_json(result.to_json())
    assert again == result
    result.to_json(tmp_path / "r.json")
    assert ExperimentResult.from_json(tmp_path / "r.json") == result


def test_cpu_run_without_sensor_labels_energy_unavailable() -> None:
    from llenergymeasure.energy.null_backend import NullEnergyBackend

    orch = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=NullEnergyBackend())
    measured = orch.run(_config(warmup={"n_warmup": 1, "thermal_floor_seconds": 60}))
    r = measured.result
    assert not r.energy.available
    assert r.energy_total_j is None and r.energy_per_output_token_j is None
    assert r.energy.method == "unavailable"
    assert r.carbon.co2_g is None
    assert r.tokens_per_second > 0
    assert measured.timeseries is None
    assert r.timing.thermal_floor_s == 0.0  # nothing to protect when energy is not measured


def test_carbon_uses_intensity_and_pue_with_their_sources() -> None:
    settings = MeasurementSettings(
        carbon_intensity_gco2_kwh=400.0,
        carbon_intensity_source="env LLEM_CARBON_INTENSITY",
        datacenter_pue=1.5,
        datacenter_pue_source="user config",
    )
    orch = ExperimentOrchestrator(
        engine=FakeEngine(), energy_backend=FakeEnergyBackend(3.6e6), settings=settings
    )
    carbon = orch.run(_config()).result.carbon
    assert carbon.energy_kwh == pytest.approx(1.0)
    assert carbon.co2_g == pytest.approx(600.0)
    assert carbon.carbon_intensity_source == "env LLEM_CARBON_INTENSITY"


def test_engine_is_unloaded_even_when_generation_fails() -> None:
    engine = FakeEngine(fail_in_generate=RuntimeError("CUDA out of memory"))
    orch = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    with pytest.raises(RuntimeError, match="out of memory"):
        orch.run(_config())
    assert engine.unloaded


def test_preflight_refuses_a_model_whose_estimated_memory_exceeds_the_free_gpu_memory(
    tmp_path,
) -> None:
    big = tmp_path / "big-model"
    big.mkdir()
    (big / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 16384,
                "intermediate_size": 53248,
                "num_hidden_layers": 126,
                "num_attention_heads": 128,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
            }
        )
    )
    sensor = SwitchingSensor()  # 80 GiB cards
    engine = FakeEngine()
    orch = _orchestrator(sensor, engine)
    with pytest.raises(PreFlightError, match="exceeds the"):
        orch.run(_config(model=str(big)))
    assert not engine.loaded


def test_preflight_memory_check_uses_the_engines_concurrency_like_the_dry_run(tmp_path) -> None:
    """vLLM runs max_num_seqs requests at once: pre-flight sizes the KV cache for that many,
    as the --dry-run preview does (both call estimate_config_vram)."""
    from llenergymeasure.harness.vram import estimate_config_vram

    model = tmp_path / "mid-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
            }
        )
    )
    one = _config(model=str(model), backend="vllm", vllm={"max_num_seqs": 1})
    many = _config(model=str(model), backend="vllm", vllm={"max_num_seqs": 16384})
    estimate_one, estimate_many = estimate_config_vram(one), estimate_config_vram(many)
    assert estimate_one is not None and estimate_many is not None
    assert estimate_one.total_gib < 80 < estimate_many.total_gib  # 80 GiB cards below
    sensor = SwitchingSensor()
    engine = FakeEngine()
    with pytest.raises(PreFlightError, match="exceeds the"):
        _orchestrator(sensor, engine).run(many)
    assert not engine.loaded


def test_load_parts_the_engine_reports_are_recorded_in_timing() -> None:
    from llenergymeasure.engines.base import LoadInfo

    class StartTimedEngine(FakeEngine):
        def load(self, config: ExperimentConfig) -> LoadInfo:
            info = super().load(config)
            info.timing_parts = {"engine_start_s": 0.25}
            return info

    sensor = SwitchingSensor()
    result = _orchestrator(sensor, StartTimedEngine()).run(_config()).result
    assert result.timing.load_parts == {"engine_start_s": 0.25}


class _ShortContextEngine(FakeEngine):
    """A fake engine whose model attends to at most ``limit`` tokens."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def max_sequence_length(self) -> int | None:
        return self.limit


def test_prompts_over_the_model_length_are_a_preflight_error_before_any_generation() -> None:
    engine = _ShortContextEngine(limit=30)  # 16 prompt + 20 new tokens = 36 per prompt
    orch = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    with pytest.raises(PreFlightError) as raised:
        orch.run(_config(baseline={"enabled": False}))
    message = str(raised.value)
    assert "prompt 0: 16 prompt tokens + 20 new tokens = 36 exceeds" in message
    assert "maximum sequence length 30 of fake-model" in message
    assert "and 1 more prompts" in message  # 6 prompts: 5 named, the rest counted
    assert engine.calls == []  # neither warmup nor measurement ran


def test_prompts_within_the_model_length_run() -> None:
    engine = _ShortContextEngine(limit=36)
    orch = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    assert orch.run(_config(baseline={"enabled": False})).result.n_requests == 6


def test_trust_remote_code_is_a_logged_warning_and_in_the_result(caplog) -> None:
    orch = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=FakeEnergyBackend())
    config = _config(baseline={"enabled": False}, passthrough_kwargs={"trust_remote_code": True})
    result = orch.run(config).result
    assert "trust_remote_code" in result.measurement_warnings
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "trust_remote_code is set: code from the fake-model repository runs" in w
        for w in warnings
    )


def test_without_trust_remote_code_there_is_no_such_warning(caplog) -> None:
    orch = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=FakeEnergyBackend())
    result = orch.run(_config(baseline={"enabled": False})).result
    assert "trust_remote_code" not in result.measurement_warnings
    assert "trust_remote_code" not in caplog.text


class _BatchingEngine(FakeEngine):
    """A fake engine that notes, per run, whether it was given a progress callback."""

    def __init__(self) -> None:
        super().__init__()
        self.callback_seen_in: list[str] = []

    def execute(self, prepared, *, on_batch=None):
        if on_batch is not None:
            self.callback_seen_in.append(prepared.phase)
        return super().execute(prepared, on_batch=on_batch)


def test_the_measurement_window_reports_progress_between_batches(caplog) -> None:
    caplog.set_level(logging.INFO, logger="llenergymeasure")
    engine = _BatchingEngine()
    orch = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    orch.run(_config(baseline={"enabled": False}))
    messages = [r.getMessage() for r in caplog.records]
    window = [m for m in messages if m.startswith("measuring: ")]
    assert window[-1].startswith("measuring: 6/6 prompts, ")  # the last batch always reports
    assert window[-1].endswith(" s")  # time in the window; tokens are counted after it
    assert len(window) <= 2  # throttled: the first batch and the last, within 2 s
    assert engine.callback_seen_in == ["measurement"]  # not during warmup


def test_no_progress_callback_is_installed_when_info_records_go_nowhere(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="llenergymeasure")
    engine = _BatchingEngine()
    ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend()).run(
        _config(baseline={"enabled": False})
    )
    assert engine.callback_seen_in == []
