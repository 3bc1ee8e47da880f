"""Study YAML grammar and grid expansion (SPEC 3.3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.config import installed as registry
from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import ExecutionConfig, StudyConfig, expand_study, load_study
from llenergymeasure.exceptions import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SEED_EXAMPLE: dict[str, Any] = {
    "model": "org/model",
    "backend": ["pytorch", "vllm"],
    "sweep": {
        "precision": ["fp16", "bf16"],
        "pytorch.batch_size": [1, 8, 16],
        "vllm.max_num_seqs": [64, 256],
    },
}


def expand(data: dict[str, Any], **kwargs: Any) -> StudyConfig:
    return expand_study(data, **kwargs)


def expand_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        expand_study(data)
    return info.value


def backends(study: StudyConfig) -> Counter[str]:
    return Counter(e.backend for e in study.experiments)


# --- the seed example and the grid ------------------------------------------------------------


def test_seed_example_expands_to_6_pytorch_and_4_vllm_experiments():
    study = expand(SEED_EXAMPLE)
    assert len(study.experiments) == 10
    assert backends(study) == {"pytorch": 6, "vllm": 4}
    assert study.skipped == []
    pytorch = {
        (e.precision, e.pytorch.batch_size) for e in study.experiments if e.backend == "pytorch"
    }
    assert pytorch == {(p, b) for p in ("fp16", "bf16") for b in (1, 8, 16)}
    vllm = {(e.precision, e.vllm.max_num_seqs) for e in study.experiments if e.backend == "vllm"}
    assert vllm == {(p, m) for p in ("fp16", "bf16") for m in (64, 256)}


def test_scoped_keys_touch_only_their_backends_experiments():
    study = expand(SEED_EXAMPLE)
    for e in study.experiments:
        if e.backend == "pytorch":
            assert e.vllm is None and e.pytorch is not None
        else:
            assert e.pytorch is None and e.vllm is not None


def test_universal_key_applies_to_every_backend():
    study = expand({"model": "m", "backend": ["pytorch", "vllm"], "sweep": {"n": [1, 2, 3]}})
    assert backends(study) == {"pytorch": 3, "vllm": 3}
    for b in ("pytorch", "vllm"):
        assert sorted(e.n for e in study.experiments if e.backend == b) == [1, 2, 3]


def test_nested_dotted_keys_address_sub_config_fields():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "sweep": {"decoder.temperature": [0.5, 1.0], "warmup.n_warmup": [0, 1, 2]},
        }
    )
    points = {(e.decoder.temperature, e.warmup.n_warmup) for e in study.experiments}
    assert points == {(t, w) for t in (0.5, 1.0) for w in (0, 1, 2)}
    assert len(study.experiments) == 6


def test_dotted_sweep_key_keeps_sibling_fields_of_the_fixed_section():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "decoder": {"ignore_eos": True},
            "sweep": {"decoder.temperature": [0.5, 0.9]},
        }
    )
    assert all(e.decoder.ignore_eos for e in study.experiments)


def test_scalar_sweep_value_is_one_value():
    study = expand({"model": "m", "backend": "pytorch", "sweep": {"precision": "fp16"}})
    assert [e.precision for e in study.experiments] == ["fp16"]


def test_single_value_list_gives_one_experiment():
    study = expand({"model": "m", "backend": "pytorch", "sweep": {"pytorch.batch_size": [4]}})
    assert [e.pytorch.batch_size for e in study.experiments] == [4]


def test_empty_list_in_sweep_is_an_error():
    error = expand_error({"model": "m", "backend": "pytorch", "sweep": {"precision": []}})
    assert "'precision' has an empty list" in str(error)


def test_empty_sweep_gives_the_base_experiment():
    study = expand({"model": "m", "backend": "pytorch", "precision": "fp16", "sweep": {}})
    assert len(study.experiments) == 1
    assert study.experiments[0] == ExperimentConfig(model="m", backend="pytorch", precision="fp16")


# --- backends ---------------------------------------------------------------------------------


def test_scoped_key_for_absent_backend_is_an_error():
    error = expand_error({"model": "m", "backend": "pytorch", "sweep": {"vllm.max_num_seqs": [64]}})
    assert "vllm.*" in str(error) and "not in backend" in str(error)
    assert error.hint and "vllm" in error.hint


def test_scoped_keys_for_two_backends_without_backend_is_ambiguous():
    error = expand_error(
        {"model": "m", "sweep": {"pytorch.batch_size": [1], "vllm.max_num_seqs": [64]}}
    )
    assert "ambiguous" in str(error)
    assert "backend: [pytorch, vllm]" in str(error)


def test_backend_is_inferred_from_the_only_scoped_backend(monkeypatch):
    monkeypatch.setattr(registry, "installed_engines", lambda: ["pytorch"])
    study = expand({"model": "m", "precision": "fp16", "sweep": {"vllm.max_num_seqs": [64, 128]}})
    assert backends(study) == {"vllm": 2}


def test_backend_defaults_to_the_installed_engine_without_scoped_keys(monkeypatch):
    monkeypatch.setattr(registry, "installed_engines", lambda: ["vllm"])
    study = expand({"model": "m", "precision": "fp16", "sweep": {"n": [1, 2]}})
    assert backends(study) == {"vllm": 2}


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        ("pytorhc", "unknown backend 'pytorhc'"),
        (["pytorch", "pytorch"], "twice"),
        ([], "empty list"),
        (["pytorch", "onnx"], "unknown backend 'onnx'"),
    ],
)
def test_bad_backend_values_are_errors(backend, needle):
    assert needle in str(expand_error({"model": "m", "backend": backend, "sweep": {"n": [1]}}))


def test_sweeping_backend_inside_sweep_is_an_error_pointing_to_the_list_form():
    error = expand_error({"model": "m", "sweep": {"backend": ["pytorch", "vllm"]}})
    assert "top-level list" in str(error)


def test_other_backends_sections_are_dropped_per_backend():
    study = expand(
        {
            "model": "m",
            "backend": ["pytorch", "vllm"],
            "precision": "fp16",
            "pytorch": {"batch_size": 4},
            "vllm": {"max_num_seqs": 32},
            "sweep": {"n": [1, 2]},
        }
    )
    assert study.skipped == []
    for e in study.experiments:
        if e.backend == "pytorch":
            assert (e.pytorch.batch_size, e.vllm) == (4, None)
        else:
            assert (e.vllm.max_num_seqs, e.pytorch) == (32, None)


# --- invalid points, duplicates, unknown keys -------------------------------------------------


def test_invalid_points_are_skipped_with_reasons():
    study = expand(
        {"model": "m", "backend": ["pytorch", "vllm"], "sweep": {"precision": ["fp32", "fp16"]}}
    )
    assert [(e.backend, e.precision) for e in study.experiments] == [
        ("pytorch", "fp32"),
        ("pytorch", "fp16"),
        ("vllm", "fp16"),
    ]
    assert len(study.skipped) == 1
    skipped = study.skipped[0]
    assert skipped.source == "sweep"
    assert skipped.overrides == {"backend": "vllm", "precision": "fp32"}
    assert "vllm does not support precision='fp32'" in skipped.reason


def test_invalid_experiments_entry_is_skipped_with_its_index():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "experiments": [{"precision": "fp16"}, {"precision": "int4"}],
        }
    )
    assert [s.source for s in study.skipped] == ["experiments[1]"]
    assert "pytorch does not support precision='int4'" in study.skipped[0].reason


def test_study_where_every_point_is_invalid_is_an_error():
    error = expand_error({"model": "m", "backend": "vllm", "sweep": {"precision": ["fp32"]}})
    assert "every experiment of the study is invalid (1 skipped)" in str(error)
    assert "vllm does not support precision='fp32'" in str(error)


def test_duplicate_points_are_removed_and_recorded():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "sweep": {"precision": ["fp16", "fp16", "bf16"]},
            "experiments": [{"precision": "bf16"}],
        }
    )
    assert [e.precision for e in study.experiments] == ["fp16", "bf16"]
    assert [s.source for s in study.skipped] == ["sweep", "experiments[0]"]
    assert all("duplicate of" in s.reason for s in study.skipped)
    hashes = [measurement_config_hash(e) for e in study.experiments]
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("precison", "precision"),
        ("pytorch.bach_size", "batch_size"),
        ("decoder.temprature", "temperature"),
    ],
)
def test_unknown_sweep_key_fails_fast_with_a_suggestion(key, suggestion):
    error = expand_error({"model": "m", "backend": "pytorch", "sweep": {key: [1]}})
    assert f"unknown key {key!r}" in str(error)
    assert error.hint == f"did you mean '{suggestion}'?"


def test_sweep_key_below_a_plain_field_is_an_error():
    assert "has no sub-fields" in str(
        expand_error({"model": "m", "backend": "pytorch", "sweep": {"n.x": [1]}})
    )


def test_unknown_top_level_study_key_is_an_error_with_suggestion():
    error = expand_error({"model": "m", "backend": "pytorch", "sweeps": {"n": [1]}})
    assert "unknown key 'sweeps'" in str(error)
    assert error.hint == "did you mean 'sweep'?"


@pytest.mark.parametrize(
    "bad", [{"sweep": [1, 2]}, {"experiments": {"n": 1}}, {"experiments": ["fp16"]}, {"name": 5}]
)
def test_malformed_study_sections_are_errors(bad):
    expand_error({"model": "m", "backend": "pytorch", **bad})


# --- experiments: list --------------------------------------------------------------------------


def test_experiments_only_study_uses_just_the_listed_entries():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "experiments": [{"precision": "fp16"}, {"precision": "bf16", "n": 5}],
        }
    )
    assert [(e.precision, e.n) for e in study.experiments] == [("fp16", 100), ("bf16", 5)]


def test_experiments_entries_may_each_name_their_backend():
    study = expand(
        {
            "model": "m",
            "precision": "fp16",
            "experiments": [{"backend": "vllm"}, {"backend": "pytorch"}],
        }
    )
    assert [e.backend for e in study.experiments] == ["vllm", "pytorch"]


def test_experiments_entry_without_backend_in_multi_backend_study_is_an_error():
    error = expand_error(
        {
            "model": "m",
            "backend": ["pytorch", "vllm"],
            "precision": "fp16",
            "experiments": [{"n": 5}],
        }
    )
    assert "experiments[0] does not set backend" in str(error)


def test_experiments_are_added_to_the_sweep():
    study = expand(
        {"model": "m", "backend": "pytorch", "sweep": {"n": [1, 2]}, "experiments": [{"n": 3}]}
    )
    assert [e.n for e in study.experiments] == [1, 2, 3]


# --- precedence: defaults < base < inline < sweep < experiments entry -------------------------


def test_precedence_defaults_base_inline_sweep_experiment_entry(write_yaml):
    write_yaml(
        "model: org/base-model\nbackend: pytorch\nrandom_seed: 1\nn: 1\nmax_new_tokens: 11\n"
        "decoder:\n  temperature: 0.1\n  top_k: 5\n",
        name="base.yaml",
    )
    study_path = write_yaml(
        "base: base.yaml\nrandom_seed: 2\nn: 2\ndecoder: {temperature: 0.2}\n"
        "sweep:\n  random_seed: [3]\n"
        "experiments:\n  - random_seed: 4\n",
        name="study.yaml",
    )
    study = load_study(study_path)
    sweep_point, entry_point = study.experiments
    assert sweep_point.random_seed == 3  # sweep beats inline and base
    assert entry_point.random_seed == 4  # experiments entry beats everything
    for e in (sweep_point, entry_point):
        assert e.model == "org/base-model"  # only in base
        assert e.max_new_tokens == 11  # only in base
        assert e.n == 2  # inline beats base
        assert e.decoder.temperature == 0.2  # inline beats base, nested
        assert e.decoder.top_k == 5  # base value kept beside an inline sibling
        assert e.decoder.top_p == 1.0  # built-in default


def test_inline_fields_beat_the_base_file(write_yaml):
    write_yaml("model: m\nbackend: pytorch\nprecision: fp32\n", name="base.yaml")
    study = load_study(
        write_yaml("base: base.yaml\nprecision: fp16\nsweep: {}\n", name="study.yaml")
    )
    assert [e.precision for e in study.experiments] == ["fp16"]


# --- base: ------------------------------------------------------------------------------------


def test_base_path_is_relative_to_the_study_file_not_the_cwd(write_yaml, tmp_path, monkeypatch):
    write_yaml("model: org/from-base\nbackend: pytorch\n", name="studies/base.yaml")
    study_path = write_yaml("base: base.yaml\nsweep:\n  n: [1, 2]\n", name="studies/s.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    study = load_study(study_path)
    assert {e.model for e in study.experiments} == {"org/from-base"}


def test_missing_base_file_is_an_error(write_yaml):
    path = write_yaml("base: nope.yaml\nsweep:\n  n: [1]\n")
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert "base: file not found" in str(info.value)
    assert "nope.yaml" in str(info.value)


def test_base_that_is_itself_a_study_is_an_error(write_yaml):
    write_yaml("model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\n", name="other-study.yaml")
    path = write_yaml("base: other-study.yaml\nsweep:\n  n: [1]\n")
    with pytest.raises(ConfigError, match="is itself a study"):
        load_study(path)


# --- execution and the design hash ------------------------------------------------------------


def test_execution_defaults():
    ex = ExecutionConfig()
    assert (ex.n_cycles, ex.cycle_order, ex.config_gap_seconds, ex.cycle_gap_seconds) == (
        1,
        "sequential",
        None,
        None,
    )
    assert ex.shuffle_seed == 42 and ex.experiment_timeout_seconds is None


def test_execution_block_is_parsed():
    study = expand(
        {
            "model": "m",
            "backend": "pytorch",
            "sweep": {"n": [1]},
            "execution": {
                "n_cycles": 5,
                "cycle_order": "shuffled",
                "shuffle_seed": 3,
                "config_gap_seconds": 0,
                "cycle_gap_seconds": 12.5,
            },
        }
    )
    ex = study.execution
    assert (ex.n_cycles, ex.cycle_order, ex.shuffle_seed) == (5, "shuffled", 3)
    assert (ex.config_gap_seconds, ex.cycle_gap_seconds) == (0, 12.5)


@pytest.mark.parametrize(
    ("execution", "needle"),
    [
        ({"n_cycles": 0}, "execution.n_cycles"),
        ({"cycle_order": "random"}, "execution.cycle_order"),
        ({"config_gap_seconds": -1}, "execution.config_gap_seconds"),
        ({"cycle_gap_seconds": -1}, "execution.cycle_gap_seconds"),
        ({"experiment_timeout_seconds": 0}, "execution.experiment_timeout_seconds"),
        ({"n_cycle": 2}, "did you mean 'n_cycles'"),
    ],
)
def test_execution_validation_errors_name_the_key(execution, needle):
    error = expand_error(
        {"model": "m", "backend": "pytorch", "sweep": {"n": [1]}, "execution": execution}
    )
    assert needle in str(error)


def test_execution_error_in_a_file_names_the_file_and_line(write_yaml):
    path = write_yaml("model: m\nbackend: pytorch\nsweep: {n: [1]}\nexecution:\n  n_cycles: 0\n")
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert str(path) in str(info.value)
    assert "execution.n_cycles (line 5)" in str(info.value)


def test_study_design_hash_excludes_execution():
    a = expand({**SEED_EXAMPLE, "name": "a", "execution": {"n_cycles": 1}})
    b = expand(
        {**SEED_EXAMPLE, "name": "a", "execution": {"n_cycles": 7, "cycle_order": "shuffled"}}
    )
    assert a.study_design_hash == b.study_design_hash


def test_study_design_hash_changes_with_the_design():
    a = expand(SEED_EXAMPLE)
    b = expand({**SEED_EXAMPLE, "sweep": {**SEED_EXAMPLE["sweep"], "precision": ["fp16"]}})
    c = expand({**SEED_EXAMPLE, "n": 10})
    assert len({a.study_design_hash, b.study_design_hash, c.study_design_hash}) == 3


# --- files and constructors -------------------------------------------------------------------


def test_example_study_yaml_expands_as_documented():
    study = StudyConfig.from_yaml(EXAMPLES / "study.yaml")
    assert study.name == "tiny-batch-precision"
    assert len(study.experiments) == 7  # 2 precisions x 3 batch sizes + 1 explicit entry
    assert study.skipped == []
    assert (study.execution.n_cycles, study.execution.cycle_order) == (3, "interleaved")
    assert study.source_path == str(EXAMPLES / "study.yaml")


def test_library_default_of_n_cycles_is_one_when_yaml_does_not_set_it(write_yaml):
    study = StudyConfig.from_yaml(write_yaml("model: m\nbackend: pytorch\nsweep: {n: [1]}\n"))
    assert study.execution.n_cycles == 1


def test_study_without_name_gets_a_timestamped_name():
    assert expand({"model": "m", "backend": "pytorch", "sweep": {"n": [1]}}).name.startswith(
        "study_"
    )


def test_from_dict_is_the_same_grammar_as_yaml():
    assert (
        StudyConfig.from_dict(SEED_EXAMPLE).study_design_hash
        == expand(SEED_EXAMPLE).study_design_hash
    )


def test_of_one_wraps_a_single_experiment():
    config = ExperimentConfig(model="m", backend="pytorch")
    study = StudyConfig.of_one(config, name="single")
    assert study.experiments == [config] and study.name == "single"
    assert study.execution.n_cycles == 1


def test_overrides_apply_last_to_every_point_of_their_backend():
    study = expand(
        {"model": "m", "backend": ["pytorch", "vllm"], "precision": "fp16", "sweep": {"n": [1, 2]}},
        overrides={"n": 9, "pytorch": {"batch_size": 3}},
    )
    assert {e.n for e in study.experiments} == {9}
    assert {e.pytorch.batch_size for e in study.experiments if e.backend == "pytorch"} == {3}
    assert all(e.pytorch is None for e in study.experiments if e.backend == "vllm")
