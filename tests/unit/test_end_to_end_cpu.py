"""End to end on CPU: the real PyTorch engine through the harness, the API and ``llem run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import FakeEnergyBackend, FakeGpuSensor

SMALL = {
    "dataset": {"n": 6, "input_len": 24, "output_len": 8},
    "n": 6,
    "precision": "fp32",
    "decoder": {"ignore_eos": True},
    "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
    "baseline": {"duration_seconds": 0.2},
    "pytorch": {"batch_size": 4},
}


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama the test builds itself (other shapes than builtin:tiny)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llenergymeasure.engines.builtin import BOS_ID, EOS_ID, PAD_ID, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("own-model")
    torch.manual_seed(7)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=259,
            max_position_embeddings=512,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
    )
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def test_the_result_records_the_new_token_limit_that_ran() -> None:
    # a synthetic output_len of 5 without max_new_tokens: the run generates 5 per prompt, and
    # result.config.max_new_tokens and the effective parameters say 5 (not the default 128)
    config = ExperimentConfig.model_validate(
        {
            **SMALL,
            "model": "builtin:tiny",
            "backend": "pytorch",
            "dataset": {"n": 3, "input_len": 8, "output_len": 5},
            "n": 3,
            "baseline": {"enabled": False},
        }
    )
    result = (
        ExperimentOrchestrator(engine=PyTorchBackend(), energy_backend=FakeEnergyBackend())
        .run(config)
        .result
    )
    assert [r.output_tokens for r in result.requests] == [5, 5, 5]
    assert result.config.max_new_tokens == 5
    assert result.effective_parameters["max_new_tokens"] == 5
    stored = ExperimentResult.model_validate_json(result.model_dump_json())
    assert stored.config.max_new_tokens == stored.config.effective_max_new_tokens == 5


def test_measured_run_of_builtin_tiny_with_fake_gpu_sensors(tmp_path: Path) -> None:
    sensor = FakeGpuSensor(n_devices=1, power_w=120.0)
    sampler = EnergySampler(sensor, interval_ms=10)
    config = ExperimentConfig.model_validate(
        {"model": "builtin:tiny", "backend": "pytorch", **SMALL}
    )
    orch = ExperimentOrchestrator(
        engine=PyTorchBackend(),
        energy_backend=NvmlEnergyBackend(sensor=sensor, sampler=sampler),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=10),
    )
    measured = orch.run(config)
    result = measured.result

    assert result.measurement_config_hash == measurement_config_hash(config)
    assert result.n_requests == 6 and result.output_tokens == 6 * 8
    assert result.input_tokens == 6 * 24 + 6  # the byte tokenizer adds <s> to every prompt
    assert result.energy.method == "nvml_counter"
    assert result.energy_total_j == pytest.approx(120.0 * result.duration_s, rel=0.25)
    assert result.effective_parameters["batch_size"] == 4
    assert result.effective_parameters["device"] == "cpu"
    assert result.ttft.n == 6 and result.itl.n == 6 * 7
    assert "short_measurement_duration" in result.measurement_warnings
    assert result.flops is not None and result.flops.total_flops > 0

    measured.save(tmp_path / "run", export_csv=True)
    rows = pq.read_table(tmp_path / "run" / "timeseries.parquet").num_rows
    assert rows == result.timeseries_samples > 0
    assert (tmp_path / "run" / "result.csv").read_text().count("\n") == 2
    again = ExperimentResult.from_json(tmp_path / "run" / "result.json")
    assert again == measured.result


def test_run_experiment_on_a_model_the_test_built_writes_nothing(
    own_model: Path, tmp_path, monkeypatch
) -> None:
    import llenergymeasure as llem

    monkeypatch.chdir(tmp_path)
    result = llem.run_experiment(model=str(own_model), backend="pytorch", **SMALL)
    assert result.config.model == str(own_model)
    assert result.output_tokens == 48
    assert not result.energy.available and result.energy_per_output_token_j is None
    assert result.tokens_per_second > 0
    assert list(tmp_path.iterdir()) == []  # the library writes nothing unless asked


def _llem(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llenergymeasure", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_llem_run_writes_a_result_directory_and_never_overwrites_one(tmp_path: Path) -> None:
    args = [
        "run",
        "--model",
        "builtin:tiny",
        "--dataset",
        "synthetic",
        "-n",
        "3",
        "--precision",
        "fp32",
        "-o",
        str(tmp_path / "results"),
    ]
    first = _llem(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "J/" in first.stdout or "energy" in first.stdout
    assert "[llem] measuring 3 prompts" in first.stderr  # progress goes to stderr
    assert "[llem]" not in first.stdout

    quiet = _llem(*args, "--quiet", "--export-csv", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "[llem]" not in quiet.stderr
    dirs = sorted(p for p in (tmp_path / "results").iterdir())
    assert len(dirs) == 2 and all(d.name.startswith("tiny_pytorch_") for d in dirs)
    for d in dirs:
        data = json.loads((d / "result.json").read_text())
        assert data["config"]["model"] == "builtin:tiny"
        assert data["output_dir"] == str(d)
    assert any((d / "result.csv").exists() for d in dirs)


def test_a_missing_dataset_file_is_a_preflight_error_with_exit_code_2(tmp_path: Path) -> None:
    proc = _llem(
        "run", "--model", "builtin:tiny", "--dataset", "nope.jsonl", "-n", "2", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "dataset file not found: nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
