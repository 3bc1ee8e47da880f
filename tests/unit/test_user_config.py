"""User config file and environment overrides: env > file > default."""

from __future__ import annotations

import re

import pytest

from llenergymeasure.config.user_config import (
    UserConfig,
    effective_settings,
    load_user_config,
    setting,
    user_config_path,
)
from llenergymeasure.exceptions import ConfigError


@pytest.fixture
def user_file(write_yaml, monkeypatch):
    """Write a user config and point LLEM_CONFIG at it."""

    def _write(text: str):
        path = write_yaml(text, name="user/config.yaml")
        monkeypatch.setenv("LLEM_CONFIG", str(path))
        return path

    return _write


def test_default_path_is_under_the_platform_config_dir(isolated_user_env):
    path = user_config_path()
    assert path == isolated_user_env / "config" / "llenergymeasure" / "config.yaml"


def test_missing_file_means_defaults():
    assert not user_config_path().exists()
    assert load_user_config() == UserConfig()
    settings = effective_settings()
    assert {s.source for s in settings.values()} == {"default"}
    assert settings["measurement.carbon_intensity_gco2_kwh"].value is None
    assert settings["measurement.datacenter_pue"].value == 1.0
    assert settings["output.results_dir"].value == "./results"
    assert settings["runners.pytorch"].value == "local"
    assert settings["no_prompt"].value is False


def test_user_config_defaults():
    config = UserConfig()
    assert config.measurement.energy_backend == "auto"
    assert config.measurement.sampling_interval_ms == 100
    assert (config.execution.config_gap_seconds, config.execution.cycle_gap_seconds) == (60, 300)
    assert config.runners == {}


def test_empty_file_means_defaults(user_file):
    user_file("")
    assert load_user_config() == UserConfig()


def test_file_in_the_platform_dir_is_read(isolated_user_env):
    path = isolated_user_env / "config" / "llenergymeasure" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("measurement:\n  datacenter_pue: 1.4\n")
    assert setting("measurement.datacenter_pue") == 1.4


def test_llem_config_points_to_another_file(user_file):
    path = user_file("output:\n  results_dir: /data/results\n")
    assert user_config_path() == path
    settings = effective_settings()
    assert settings["output.results_dir"].value == "/data/results"
    assert settings["output.results_dir"].source == f"user config ({path})"
    assert settings["measurement.datacenter_pue"].source == "default"


def test_llem_config_to_a_missing_file_is_an_error(monkeypatch, tmp_path):
    missing = tmp_path / "absent.yaml"
    monkeypatch.setenv("LLEM_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="LLEM_CONFIG points to a file that does not exist"):
        load_user_config()
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        effective_settings()


def test_invalid_value_is_an_error_naming_the_file_and_key(user_file):
    path = user_file("measurement:\n  datacenter_pue: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_user_config()
    assert str(path) in str(info.value)
    assert "measurement.datacenter_pue (line 2)" in str(info.value)


def test_unknown_key_is_an_error_naming_the_file_key_and_suggestion(user_file):
    path = user_file("measurement:\n  carbon_intensity: 300\n")
    with pytest.raises(ConfigError) as info:
        load_user_config()
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'carbon_intensity' in measurement (line 2)" in message
    assert "did you mean 'carbon_intensity_gco2_kwh'" in message


def test_invalid_yaml_is_an_error_naming_the_file(user_file):
    path = user_file("measurement: [\n")
    with pytest.raises(ConfigError, match=re.escape(f"invalid YAML in {path}")):
        load_user_config()


def test_unknown_energy_backend_is_an_error(user_file):
    user_file("measurement:\n  energy_backend: rapl\n")
    with pytest.raises(ConfigError, match=r"measurement\.energy_backend"):
        load_user_config()


# --- precedence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "env", "file_value", "env_value"),
    [
        ("measurement.carbon_intensity_gco2_kwh", "LLEM_CARBON_INTENSITY", 350.0, 386.0),
        ("measurement.datacenter_pue", "LLEM_DATACENTER_PUE", 1.2, 1.5),
    ],
)
def test_env_beats_file_beats_default_for_measurement_facts(
    user_file, monkeypatch, key, env, file_value, env_value
):
    section, field = key.split(".")
    assert effective_settings()[key].source == "default"  # no file yet (isolated)
    path = user_file(f"{section}:\n  {field}: {file_value}\n")
    s = effective_settings()[key]
    assert (s.value, s.source) == (file_value, f"user config ({path})")
    monkeypatch.setenv(env, str(env_value))
    s = effective_settings()[key]
    assert (s.value, s.source) == (env_value, f"env {env}")


def test_env_beats_file_beats_default_for_runners(user_file, monkeypatch):
    assert effective_settings()["runners.vllm"].source == "default"
    path = user_file("runners:\n  vllm: docker:vllm/vllm-openai:v0.6.3\n")
    s = effective_settings()["runners.vllm"]
    assert (s.value, s.source) == ("docker:vllm/vllm-openai:v0.6.3", f"user config ({path})")
    monkeypatch.setenv("LLEM_RUNNER_VLLM", "local")
    s = effective_settings()["runners.vllm"]
    assert (s.value, s.source) == ("local", "env LLEM_RUNNER_VLLM")
    assert effective_settings()["runners.pytorch"].source == "default"


def test_energy_backend_env_beats_file_and_is_what_a_measurement_uses(user_file, monkeypatch):
    from llenergymeasure.harness.settings import MeasurementSettings

    path = user_file("measurement:\n  energy_backend: nvml\n")
    s = effective_settings()["measurement.energy_backend"]
    assert (s.value, s.source) == ("nvml", f"user config ({path})")
    assert MeasurementSettings.from_user_config().energy_backend == "nvml"
    monkeypatch.setenv("LLEM_ENERGY_BACKEND", "none")
    s = effective_settings()["measurement.energy_backend"]
    assert (s.value, s.source) == ("none", "env LLEM_ENERGY_BACKEND")
    assert MeasurementSettings.from_user_config().energy_backend == "none"


def test_no_prompt_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLEM_NO_PROMPT", "1")
    s = effective_settings()["no_prompt"]
    assert (s.value, s.source) == (True, "env LLEM_NO_PROMPT")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("LLEM_CARBON_INTENSITY", "lots"),
        ("LLEM_CARBON_INTENSITY", "-1"),
        ("LLEM_CARBON_INTENSITY", "nan"),
        ("LLEM_DATACENTER_PUE", "0.9"),
        ("LLEM_DATACENTER_PUE", "inf"),
        ("LLEM_ENERGY_BACKEND", "rapl"),
        ("LLEM_RUNNER_VLLM", "docker"),
        ("LLEM_RUNNER_PYTORCH", "podman:img"),
        ("LLEM_RUNNER_TENSORRT", "docker: spaced"),
    ],
)
def test_bad_environment_values_are_errors_naming_the_variable(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        effective_settings()
    assert env in str(info.value) and repr(value) in str(info.value)


# --- runner format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runner",
    [
        "local",
        "docker:vllm/vllm-openai:latest",
        "docker:localhost:5000/team/llem-trt:v0.3",
        "docker:img@sha256:" + "a" * 64,
        "slurm",
    ],
)
def test_valid_runner_formats_are_accepted(runner):
    assert UserConfig.model_validate({"runners": {"vllm": runner}}).runners == {"vllm": runner}


@pytest.mark.parametrize(
    "runner",
    [
        "docker",
        "docker:",
        "Local",
        "remote:host",
        "",
        "docker:--privileged",
        "docker:-v",
        "docker:img --privileged",
        "docker:img\ttag",
    ],
)
def test_invalid_runner_formats_are_rejected(user_file, runner):
    path = user_file(f"runners:\n  vllm: '{runner}'\n")
    with pytest.raises(ConfigError) as info:
        load_user_config()
    assert str(path) in str(info.value) and "runners" in str(info.value)


def test_runner_for_unknown_backend_is_rejected(user_file):
    user_file("runners:\n  onnx: local\n")
    with pytest.raises(ConfigError, match="unknown backend 'onnx'"):
        load_user_config()


@pytest.mark.parametrize(
    "runner", ["docker:--privileged", "docker:img\n", "docker:img\x07", "local\n"]
)
def test_runner_values_with_option_like_or_control_characters_are_not_runners(runner):
    from llenergymeasure.config.user_config import valid_runner

    assert not valid_runner(runner)


def test_the_docker_runner_refuses_an_option_as_its_image():
    from llenergymeasure.runners.docker import DockerRunner

    with pytest.raises(ValueError, match="image reference"):
        DockerRunner("--privileged")
