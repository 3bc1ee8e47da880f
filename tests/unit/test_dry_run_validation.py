"""``llem run --dry-run`` rejects every out-of-range number, and validates the user config and
the ``LLEM_*`` variables exactly as a run does.

The experiment fields are found by walking ``ExperimentConfig`` and its sections; each is
written past its ceiling into a YAML file and dry-run must exit 2 naming the file, the line,
the field and the allowed range. The parity tests run the same broken machine setup through
``--dry-run`` and through a real run (whose measurement is replaced by a failure, so nothing
could ever load) and require the same exit code and message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.bounds import Bound, bound_of
from llenergymeasure.config.loading import _submodel
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import ExecutionConfig
from llenergymeasure.config.user_config import UserConfig

runner = CliRunner()

#: What each section of an experiment needs around it to be valid.
SECTION_CONTEXT: dict[str, dict[str, Any]] = {
    "": {},
    "dataset": {"n": 1, "dataset": {"n": 1}},
    "vllm": {"backend": "vllm"},
    "tensorrt": {"backend": "tensorrt", "precision": "fp16"},
    "online": {"mode": "online"},
    "online.server": {"mode": "online"},
    "online.slo": {"mode": "online"},
}
#: Fields that need a sibling set (num_beams only with beam search, ...).
FIELD_CONTEXT: dict[str, dict[str, Any]] = {
    "decoder.num_beams": {"decoder": {"decoding_strategy": "beam"}},
    "online.burstiness": {"online": {"arrival": "gamma"}},
}


def _walk(model: type[BaseModel], prefix: str) -> list[tuple[str, str, Bound, bool]]:
    """(section, dotted field, bound, is_int) of every numeric field under ``model``."""
    out = []
    for name, info in model.model_fields.items():
        bound = bound_of(info.annotation, info.metadata)
        if bound is not None:
            is_int = "int" in str(info.annotation) and "float" not in str(info.annotation)
            out.append((prefix.rstrip("."), f"{prefix}{name}", bound, is_int))
        sub = _submodel(info.annotation)
        if sub is not None and sub is not model:
            out += _walk(sub, f"{prefix}{name}.")
    return out


EXPERIMENT_FIELDS = _walk(ExperimentConfig, "")


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _too_big(bound: Bound, is_int: bool) -> Any:
    value = math.floor(bound.upper) + 1 if is_int else bound.upper * 2
    return value


def _experiment_yaml(section: str, dotted: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": "m", "backend": "pytorch"}
    for part in (section.split(".")[0], section):
        data = _merge(data, SECTION_CONTEXT.get(part, {}))
    if section.startswith("online"):
        data = _merge(data, {"online": {}})
    data = _merge(data, FIELD_CONTEXT.get(dotted, {}))
    if dotted == "online.gpus":
        value = [value]
    return _merge(data, _nest(dotted, value))


def test_the_walk_reaches_every_section_of_the_experiment() -> None:
    sections = {section for section, *_ in EXPERIMENT_FIELDS}
    assert sections == {
        "",
        "dataset",
        "decoder",
        "warmup",
        "baseline",
        "pytorch",
        "vllm",
        "tensorrt",
        "online",
        "online.server",
        "online.slo",
    }


@pytest.mark.parametrize(
    ("section", "dotted", "bound", "is_int"),
    EXPERIMENT_FIELDS,
    ids=[f[1] for f in EXPERIMENT_FIELDS],
)
def test_dry_run_rejects_each_experiment_number_past_its_ceiling(
    tmp_path: Path, section: str, dotted: str, bound: Bound, is_int: bool
) -> None:
    valid = tmp_path / "valid.yaml"
    at_ceiling = int(bound.upper) if is_int else bound.upper
    valid.write_text(yaml.safe_dump(_experiment_yaml(section, dotted, at_ceiling)))
    ok = runner.invoke(app, ["run", str(valid), "--dry-run"])
    assert ok.exit_code == 0, ok.output

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment_yaml(section, dotted, _too_big(bound, is_int))))
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert dotted in result.output
    assert "(line " in result.output
    assert f"allowed {bound.interval()}" in result.output or bound.interval() in result.output


@pytest.mark.parametrize(
    "name",
    [n for n, i in ExecutionConfig.model_fields.items() if bound_of(i.annotation, i.metadata)],
)
def test_dry_run_rejects_each_study_execution_number_past_its_ceiling(
    tmp_path: Path, name: str
) -> None:
    info = ExecutionConfig.model_fields[name]
    bound = bound_of(info.annotation, info.metadata)
    assert bound is not None
    study = {
        "model": "m",
        "backend": "pytorch",
        "sweep": {"n": [1, 2]},
        "execution": {name: math.floor(bound.upper) + 1},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"execution.{name}" in result.output and bound.interval() in result.output


def _user_config_fields() -> list[tuple[str, str, Bound]]:
    out = []
    for section, info in UserConfig.model_fields.items():
        sub = _submodel(info.annotation)
        if sub is None:
            continue
        for name, field in sub.model_fields.items():
            bound = bound_of(field.annotation, field.metadata)
            if bound is not None:
                out.append((section, name, bound))
    return out


@pytest.mark.parametrize(
    ("section", "name", "bound"),
    _user_config_fields(),
    ids=lambda v: str(v) if isinstance(v, str) else "",
)
def test_dry_run_rejects_each_user_config_number_past_its_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, name: str, bound: Bound
) -> None:
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({section: {name: math.floor(bound.upper) + 1}}))
    monkeypatch.setenv("LLEM_CONFIG", str(user))
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: m\nbackend: pytorch\n")
    result = runner.invoke(app, ["run", str(exp), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(user) in result.output and f"{section}.{name}" in result.output
    assert bound.interval() in result.output


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("-n", "1000001", "-n must be at most 1,000,000"),
        ("-n", "0", "-n must be at least 1"),
        ("--batch-size", "65537", "--batch-size must be at most 65,536"),
        ("--cycles", "100001", "--cycles must be at most 100,000"),
    ],
)
def test_numeric_flags_get_the_bounds_of_the_fields_they_set(
    tmp_path: Path, flag: str, value: str, fragment: str
) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\n")
    result = runner.invoke(app, ["run", str(study), flag, value, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "allowed [" in result.output


# --- dry-run and run validate the machine setup alike ---------------------------------------

#: (environment variables, user config text or None, what the error says)
BROKEN_SETUPS: list[tuple[dict[str, str], str | None, str]] = [
    ({"LLEM_CARBON_INTENSITY": "1e9"}, None, "LLEM_CARBON_INTENSITY='1e9' is out of range"),
    ({"LLEM_CARBON_INTENSITY": "-5"}, None, "LLEM_CARBON_INTENSITY='-5' is out of range"),
    ({"LLEM_CARBON_INTENSITY": "lots"}, None, "LLEM_CARBON_INTENSITY='lots' is not a number"),
    ({"LLEM_CARBON_INTENSITY": "nan"}, None, "LLEM_CARBON_INTENSITY='nan' is out of range"),
    ({"LLEM_DATACENTER_PUE": "0.5"}, None, "LLEM_DATACENTER_PUE='0.5' is out of range"),
    ({"LLEM_DATACENTER_PUE": "inf"}, None, "LLEM_DATACENTER_PUE='inf' is out of range"),
    ({"LLEM_DATACENTER_PUE": "50"}, None, "allowed [1, 5]"),
    ({"LLEM_ENERGY_BACKEND": "joules"}, None, "LLEM_ENERGY_BACKEND='joules'"),
    ({"LLEM_RUNNER_PYTORCH": "-v /:/host"}, None, "LLEM_RUNNER_PYTORCH"),
    ({}, "measurement:\n  sampling_interval_ms: 1\n", "measurement.sampling_interval_ms"),
    ({}, "execution:\n  cycle_gap_seconds: 1e9\n", "execution.cycle_gap_seconds"),
    ({}, "measurement:\n  datacenter_pue: 1.2\n  datacenter_pue: 1.5\n", "duplicate key"),
    ({}, "measurement: {energy_backend: none}\nmeasurment: {}\n", "unknown key 'measurment'"),
    ({}, "x: " + "y" * (1 << 20) + "\n", "larger than 1,024 KiB"),
]


def _machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], text: str | None
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if text is not None:
        user = tmp_path / "user-config.yaml"
        user.write_text(text)
        monkeypatch.setenv("LLEM_CONFIG", str(user))


def _never_measure(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the run went past validation to the measurement")


@pytest.mark.parametrize("kind", ["experiment", "study"])
@pytest.mark.parametrize(("env", "text", "fragment"), BROKEN_SETUPS)
def test_dry_run_and_run_reject_a_broken_machine_setup_alike(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    env: dict[str, str],
    text: str | None,
    fragment: str,
) -> None:
    import llenergymeasure.harness.measure as measure_module
    import llenergymeasure.study.runner as study_runner

    monkeypatch.setattr(measure_module, "measure", _never_measure)
    monkeypatch.setattr(study_runner.StudyRunner, "create", _never_measure)
    _machine(tmp_path, monkeypatch, env, text)
    config = tmp_path / f"{kind}.yaml"
    body = "model: builtin:tiny\nbackend: pytorch\ndataset: synthetic\nn: 1\n"
    config.write_text(body + ("sweep:\n  max_new_tokens: [1, 2]\n" if kind == "study" else ""))
    out = tmp_path / "results"

    dry = runner.invoke(app, ["run", str(config), "--dry-run"])
    real = runner.invoke(app, ["run", str(config), "-o", str(out)])

    assert dry.exit_code == real.exit_code == 2, (dry.output, real.output)
    assert fragment in dry.output
    assert dry.output == real.output
    assert not out.exists()


def test_a_good_machine_setup_passes_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(
        tmp_path,
        monkeypatch,
        {"LLEM_CARBON_INTENSITY": "386", "LLEM_DATACENTER_PUE": "1.5"},
        "measurement:\n  sampling_interval_ms: 50\n",
    )
    config = tmp_path / "exp.yaml"
    config.write_text("model: m\nbackend: pytorch\n")
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output


def test_the_config_command_reports_the_same_broken_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLEM_DATACENTER_PUE", "0.5")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "LLEM_DATACENTER_PUE='0.5' is out of range" in result.output
