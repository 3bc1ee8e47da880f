"""Synthetic prompts longer than the model can hold are refused at pre-flight, before loading."""

from __future__ import annotations

import json
from pathlib import Path

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.harness.vram import model_max_positions, synthetic_length_problems
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine


def model_folder(tmp_path: Path, positions: int) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": positions}))
    return folder


def config(model: Path, input_len: int, output_len: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": str(model),
            "backend": "pytorch",
            "n": 2,
            "dataset": {"n": 2, "input_len": input_len, "output_len": output_len},
        }
    )


def test_the_limit_is_read_from_the_local_config_json(tmp_path: Path) -> None:
    assert model_max_positions(str(model_folder(tmp_path, 128))) == 128
    assert model_max_positions(str(tmp_path / "absent")) is None


def test_prompt_plus_bos_plus_output_over_the_limit_is_a_preflight_problem(tmp_path: Path) -> None:
    model = model_folder(tmp_path, 128)
    assert synthetic_length_problems(config(model, 64, 63)) == []  # 64 + 1 + 63 = 128 fits
    (problem,) = synthetic_length_problems(config(model, 64, 64))
    assert "129" in problem and "128" in problem and "input_len=64" in problem

    orchestrator = ExperimentOrchestrator(engine=FakeEngine(), energy_backend=FakeEnergyBackend())
    assert any("exceed the maximum" in p for p in orchestrator.preflight(config(model, 64, 64)))
    assert orchestrator.engine.loads == 0  # nothing was loaded


def test_without_a_local_config_nothing_is_claimed(tmp_path: Path) -> None:
    assert synthetic_length_problems(config(tmp_path / "nowhere", 4096, 4096)) == []
