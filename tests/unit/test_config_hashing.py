"""measurement_config_hash and study_design_hash: format, determinism, sensitivity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from llenergymeasure.config.hashing import measurement_config_hash, study_design_hash
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import deep_merge, dotted_to_nested

BASE: dict[str, Any] = {
    "model": "org/model",
    "backend": "pytorch",
    "precision": "fp16",
    "dataset": "aienergyscore",
    "n": 50,
    "max_new_tokens": 64,
    "random_seed": 7,
    "decoder": {"temperature": 0.7, "top_p": 0.9, "decoding_strategy": "sampling"},
    "warmup": {"n_warmup": 2, "thermal_floor_seconds": 30},
    "baseline": {"enabled": True, "duration_seconds": 10},
    "pytorch": {"batch_size": 4, "attn_implementation": "sdpa"},
    "lora": {"adapter_id": "org/adapter", "merge_weights": False},
    "passthrough_kwargs": {"b": 2, "a": 1},
}


def config_hash(data: dict[str, Any]) -> str:
    return measurement_config_hash(ExperimentConfig.model_validate(data))


def reverse_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: reverse_keys(obj[k]) for k in reversed(list(obj))}
    return obj


def test_hash_is_16_lowercase_hex_chars():
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(BASE))


def test_hash_is_independent_of_key_order():
    reordered = reverse_keys(BASE)
    assert list(reordered) != list(BASE)
    assert list(reordered["passthrough_kwargs"]) == ["a", "b"]
    assert config_hash(reordered) == config_hash(BASE)


def test_hash_is_equal_for_explicit_defaults_and_omitted_defaults():
    explicit = {**BASE, "decoder": {**BASE["decoder"], "repetition_penalty": 1.0}}
    assert config_hash(explicit) == config_hash(BASE)


def test_hash_is_equal_for_synthetic_shorthand_and_its_expansion():
    shorthand = {**BASE, "dataset": "synthetic"}
    expanded = {
        **BASE,
        "dataset": {"n": BASE["n"], "input_len": 512, "output_len": BASE["max_new_tokens"]},
    }
    assert config_hash(shorthand) == config_hash(expanded)


def test_hash_is_stable_across_processes_and_hash_seeds():
    here = config_hash(BASE)
    code = (
        "import json, sys\n"
        "from llenergymeasure.config.hashing import measurement_config_hash\n"
        "from llenergymeasure.config.models import ExperimentConfig\n"
        "print(measurement_config_hash(ExperimentConfig.model_validate(json.loads(sys.argv[1]))))"
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(reverse_keys(BASE))],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        assert out.stdout.strip() == here


def test_hash_is_the_same_when_computed_twice():
    config = ExperimentConfig.model_validate(BASE)
    assert measurement_config_hash(config) == measurement_config_hash(config.model_copy())


# Each case changes one measured field (or, for engine sections, the engine) relative to BASE.
CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("model", {"model": "org/other"}),
    ("backend", {"backend": "vllm", "pytorch": None, "vllm": {"enable_lora": True}}),
    ("precision", {"precision": "bf16"}),
    ("dataset", {"dataset": "prompts.jsonl"}),
    ("n", {"n": 51}),
    ("max_new_tokens", {"max_new_tokens": 65}),
    ("random_seed", {"random_seed": 8}),
    ("decoder", {"decoder": {"temperature": 0.8}}),
    ("decoder", {"decoder": {"ignore_eos": True}}),
    ("warmup", {"warmup": {"n_warmup": 3}}),
    ("baseline", {"baseline": {"enabled": False}}),
    ("pytorch", {"pytorch": {"batch_size": 8}}),
    ("pytorch", {"pytorch": {"attn_implementation": "eager"}}),
    ("vllm", {"backend": "vllm", "pytorch": None, "vllm": {"enable_lora": True}}),
    ("tensorrt", {"backend": "tensorrt", "pytorch": None, "lora": None}),
    ("lora", {"lora": {"adapter_id": "org/other-adapter"}}),
    ("lora", {"lora": {"merge_weights": True}}),
    ("lora", {"lora": {"adapter_id": None, "adapter_path": "org/adapter"}}),
    ("lora", {"lora": None}),
    ("passthrough_kwargs", {"passthrough_kwargs": {"a": 1, "b": 3}}),
    ("passthrough_kwargs", {"passthrough_kwargs": None}),
    ("mode", {"mode": "online", "online": {}}),
    ("online", {"mode": "online", "online": {"request_rate": 4}}),
    ("measurement", {"measurement": {"phase_split": True}}),
    ("chat_template", {"chat_template": True}),
    ("dataset", {"dataset": {"hf": "org/prompts", "split": "test"}}),
]


@pytest.mark.parametrize(
    ("field", "change"), CHANGES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CHANGES)]
)
def test_hash_changes_when_a_measured_field_changes(field, change):
    assert config_hash(deep_merge(BASE, change)) != config_hash(BASE)


def test_online_configs_differ_by_their_load_settings():
    online = deep_merge(BASE, {"mode": "online", "online": {"request_rate": 4}})
    faster = deep_merge(BASE, {"mode": "online", "online": {"request_rate": 16}})
    assert config_hash(online) != config_hash(faster)


def test_offline_hash_leaves_out_the_default_mode_fields():
    # Hashes of offline configs are what they were before online mode existed.
    config = ExperimentConfig.model_validate(BASE)
    data = config.model_dump(mode="json")
    del data["mode"], data["online"], data["measurement"], data["chat_template"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert measurement_config_hash(config) == expected


def test_default_measurement_section_leaves_the_hash_as_before_it_existed():
    explicit = deep_merge(BASE, {"measurement": {"phase_split": False}})
    assert config_hash(explicit) == config_hash(BASE)


def test_prompts_as_written_leave_the_hash_as_before_chat_template_existed():
    explicit = deep_merge(BASE, {"chat_template": False})
    assert config_hash(explicit) == config_hash(BASE)


def test_unset_continuous_usage_leaves_online_hashes_as_before_it_existed():
    online = deep_merge(BASE, {"mode": "online", "online": {"request_rate": 4}})
    config = ExperimentConfig.model_validate(online)
    data = config.model_dump(mode="json")
    del data["measurement"], data["online"]["continuous_usage"], data["chat_template"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    assert measurement_config_hash(config) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    set_on = deep_merge(online, {"online": {"continuous_usage": True}})
    assert config_hash(set_on) != config_hash(online)


def test_unknown_measurement_field_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="phase_splitt"):
        ExperimentConfig.model_validate(deep_merge(BASE, {"measurement": {"phase_splitt": True}}))


def test_every_experiment_field_has_a_hash_sensitivity_case():
    # A new field in ExperimentConfig must get a case in CHANGES (and so enter the hash).
    assert set(ExperimentConfig.model_fields) == {field for field, _ in CHANGES}


@pytest.mark.parametrize(
    ("backend", "precision", "path", "a", "b"),
    [
        ("vllm", "fp16", "vllm.max_num_seqs", 64, 128),
        ("vllm", "fp16", "vllm.enable_prefix_caching", True, False),
        ("tensorrt", "fp16", "tensorrt.max_batch_size", 4, 8),
        ("tensorrt", "fp16", "tensorrt.enable_block_reuse", True, False),
        ("tensorrt", "fp16", "tensorrt.kv_cache_free_gpu_memory_fraction", 0.5, 0.9),
    ],
)
def test_hash_changes_with_engine_section_fields(backend, precision, path, a, b):
    base = {"model": "m", "backend": backend, "precision": precision}
    assert config_hash(deep_merge(base, dotted_to_nested(path, a))) != config_hash(
        deep_merge(base, dotted_to_nested(path, b))
    )


def test_machine_facts_from_the_environment_do_not_enter_the_hash(monkeypatch):
    before = config_hash(BASE)
    monkeypatch.setenv("LLEM_CARBON_INTENSITY", "386")
    monkeypatch.setenv("LLEM_DATACENTER_PUE", "1.5")
    assert config_hash(BASE) == before


# --- study design hash ------------------------------------------------------------------------


def test_study_design_hash_is_16_hex_and_order_sensitive():
    a = ExperimentConfig.model_validate(BASE)
    b = ExperimentConfig.model_validate({**BASE, "n": 10})
    h = study_design_hash([a, b])
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert study_design_hash([a, b]) == h
    assert study_design_hash([b, a]) != h
    assert study_design_hash([a]) != h
