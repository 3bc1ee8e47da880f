"""YAML loading of one experiment: safe_load only, and errors a new user can act on."""

from __future__ import annotations

import pytest

from llenergymeasure.config import installed as registry
from llenergymeasure.config.loading import load_experiment_config, read_yaml_mapping
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.exceptions import ConfigError, LLEMError


def load_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment_config(path)
    return str(info.value)


def test_valid_yaml_loads_into_an_experiment_config(write_yaml):
    path = write_yaml(
        "model: org/m\nbackend: pytorch\nprecision: fp16\npytorch:\n  batch_size: 2\n"
    )
    config = load_experiment_config(path)
    assert isinstance(config, ExperimentConfig)
    assert (config.precision, config.pytorch.batch_size) == ("fp16", 2)


def test_config_error_is_an_llem_error_with_exit_code_2():
    assert issubclass(ConfigError, LLEMError)
    assert ConfigError.exit_code == 2


# --- safe_load only ---------------------------------------------------------------------------


def test_python_object_tags_are_rejected_and_never_executed(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    path = write_yaml(f"model: !!python/object/apply:os.mkdir ['{marker}']\nbackend: pytorch\n")
    message = load_error(path)
    assert str(path) in message
    assert "python/object" in message
    assert not marker.exists()


def test_python_object_tag_at_top_level_is_a_config_error(write_yaml):
    path = write_yaml("!!python/object:collections.OrderedDict {}\n")
    with pytest.raises(ConfigError):
        read_yaml_mapping(path)


# --- file-level problems ----------------------------------------------------------------------


def test_yaml_parse_error_names_the_file_and_line(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\n  n: [1\n", name="broken.yaml")
    message = load_error(path)
    assert f"invalid YAML in {path}:3:" in message
    assert "hint:" in message


def test_empty_file_is_an_error_naming_the_file(write_yaml):
    path = write_yaml("", name="empty.yaml")
    message = load_error(path)
    assert "empty" in message and str(path) in message


def test_comment_only_file_counts_as_empty(write_yaml):
    assert "empty" in load_error(write_yaml("# nothing here\n"))


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")]
)
def test_non_mapping_top_level_is_an_error(write_yaml, text, kind):
    path = write_yaml(text)
    message = load_error(path)
    assert "top level must be a mapping" in message
    assert kind in message and str(path) in message


def test_missing_file_is_an_error_naming_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    message = load_error(path)
    assert "not found" in message and str(path) in message


def test_directory_instead_of_file_is_an_error(tmp_path):
    message = load_error(tmp_path)
    assert "directory" in message and str(tmp_path) in message


def test_study_file_is_not_loaded_as_an_experiment(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\n")
    assert "is a study" in load_error(path)


def test_backend_list_marks_a_study(write_yaml):
    assert "is a study" in load_error(write_yaml("model: m\nbackend: [pytorch, vllm]\n"))


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_top_level_key_names_key_line_and_suggestion(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\npresicion: fp16\n")
    message = load_error(path)
    assert str(path) in message
    assert "unknown key 'presicion' at the top level (line 3)" in message
    assert "did you mean 'precision'?" in message


def test_unknown_nested_key_names_its_section_and_line(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\ndecoder:\n  ignore_eos: true\n  temprature: 1\n")
    message = load_error(path)
    assert "unknown key 'temprature' in decoder (line 5)" in message
    assert "did you mean 'temperature'?" in message


def test_unknown_key_in_engine_section_suggests_the_engine_field(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\npytorch:\n  batchsize: 4\n"))
    assert "unknown key 'batchsize' in pytorch (line 4)" in message
    assert "did you mean 'batch_size'?" in message


def test_unknown_key_in_synthetic_dataset_is_reported_under_dataset(write_yaml):
    text = "model: m\nbackend: pytorch\nn: 5\ndataset:\n  n: 5\n  input_lenn: 3\n"
    message = load_error(write_yaml(text))
    assert "unknown key 'input_lenn' in dataset (line 6)" in message
    assert "did you mean 'input_len'?" in message


@pytest.mark.parametrize(
    ("key", "value", "home"),
    [
        ("batch_size", 8, "pytorch.batch_size"),
        ("temperature", 0.5, "decoder.temperature"),
        ("n_warmup", 2, "warmup.n_warmup"),
        ("max_num_seqs", 64, "vllm.max_num_seqs"),
    ],
)
def test_top_level_key_that_belongs_in_a_section_says_where(write_yaml, key, value, home):
    message = load_error(write_yaml(f"model: m\nbackend: pytorch\n{key}: {value}\n"))
    assert f"unknown key '{key}' at the top level (line 3)" in message
    assert f"belongs under {home}" in message


def test_unknown_key_without_close_match_lists_valid_keys(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\ndecoder:\n  zzzzzz: 1\n"))
    assert "unknown key 'zzzzzz' in decoder" in message
    assert "Valid keys:" in message and "temperature" in message


# --- values -----------------------------------------------------------------------------------


def test_wrong_type_names_the_field_line_and_value(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\nn: lots\n"))
    assert "n (line 3)" in message
    assert "valid integer" in message and "'lots'" in message


def test_negative_value_names_the_field_and_bound(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\npytorch:\n  batch_size: -2\n"))
    assert "pytorch.batch_size (line 4)" in message
    assert "greater than or equal to 1" in message


def test_misspelt_backend_value_gets_a_suggestion(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorhc\n"))
    assert "backend (line 2)" in message
    assert "did you mean 'pytorch'?" in message


def test_unsupported_precision_lists_the_valid_values(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: vllm\nprecision: fp32\n"))
    assert "vllm does not support precision='fp32'" in message
    assert "'fp16', 'bf16', 'int8', 'int4'" in message


def test_engine_section_for_another_backend_is_an_error(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\nvllm:\n  max_num_seqs: 4\n"))
    assert "vllm: config section provided but backend='pytorch'" in message


def test_several_problems_are_reported_together(write_yaml):
    message = load_error(write_yaml("model: m\nbackend: pytorch\nn: 0\nbogus: 1\n"))
    assert "2 problems" in message
    assert "n (line 3)" in message and "unknown key 'bogus'" in message


def test_missing_model_is_reported_as_required(write_yaml):
    message = load_error(write_yaml("backend: pytorch\n"))
    assert "model" in message and "required" in message


# --- default backend (SPEC 2) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        (["vllm"], "vllm"),
        (["tensorrt"], "tensorrt"),
        (["pytorch", "vllm"], "pytorch"),
        ([], "pytorch"),
    ],
)
def test_omitted_backend_is_the_only_installed_engine_else_pytorch(
    write_yaml, monkeypatch, installed, expected
):
    monkeypatch.setattr(registry, "installed_engines", lambda: installed)
    precision = "fp16"  # valid on every engine
    config = load_experiment_config(write_yaml(f"model: m\nprecision: {precision}\n"))
    assert config.backend == expected


# --- one builder for YAML + overrides (library, CLI and from_yaml) ----------------------------


def test_overrides_win_over_the_yaml_and_switching_backend_drops_the_other_engines_section(
    write_yaml,
):
    from llenergymeasure.config.loading import build_experiment_config

    path = write_yaml("model: org/m\nbackend: pytorch\npytorch:\n  batch_size: 4\nn: 10\n")
    config = build_experiment_config(path, {"n": 3, "backend": "vllm"})
    assert (config.backend, config.n, config.pytorch) == ("vllm", 3, None)


def test_the_library_and_the_command_line_build_the_same_config(write_yaml):
    from llenergymeasure.api import _build_config
    from llenergymeasure.cli.run_cmd import RunOptions, resolve

    path = write_yaml("model: org/m\nbackend: pytorch\npytorch:\n  batch_size: 4\n")
    from_cli = resolve(RunOptions(config=path, n=5, precision="fp16")).experiment
    from_api = _build_config(path, {"n": 5, "precision": "fp16"})
    assert from_cli == from_api


def test_an_error_in_an_override_is_not_reported_at_the_yaml_line_it_replaced(write_yaml):
    from llenergymeasure.config.loading import build_experiment_config

    path = write_yaml("model: org/m\nbackend: pytorch\nn: 10\n")
    with pytest.raises(ConfigError) as info:
        build_experiment_config(path, {"n": 0})
    assert "line 3" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_experiment_config(write_yaml("model: org/m\nbackend: pytorch\nn: 0\n"))
    assert "line 3" in str(info.value)


def test_a_study_yaml_is_not_built_as_one_experiment(write_yaml):
    from llenergymeasure.config.loading import build_experiment_config

    path = write_yaml("model: org/m\nsweep:\n  n: [1, 2]\n")
    with pytest.raises(ConfigError, match="is a study"):
        build_experiment_config(path, {"n": 3})
