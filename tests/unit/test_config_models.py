"""ExperimentConfig schema: validators, the catalogue's capabilities, defaults, extra="forbid"."""

from __future__ import annotations

import inspect
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from llenergymeasure.config import models
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.models import (
    BaselineConfig,
    DecoderConfig,
    ExperimentConfig,
    LoRAConfig,
    PyTorchConfig,
    SyntheticDatasetConfig,
    TensorRTConfig,
    VLLMConfig,
    WarmupConfig,
)
from llenergymeasure.config.study import deep_merge, dotted_to_nested

BACKENDS = ("pytorch", "vllm", "tensorrt")
PRECISION_SUPPORT = {name: list(ENGINES[name].precisions) for name in BACKENDS}
DECODING_SUPPORT = {name: list(ENGINES[name].decoding_strategies) for name in BACKENDS}

ALL_PRECISIONS = get_args(models.Precision)
ALL_STRATEGIES = get_args(DecoderConfig.model_fields["decoding_strategy"].annotation)


def valid_base(backend: str = "pytorch", **extra: Any) -> dict[str, Any]:
    """The smallest valid config for ``backend`` (tensorrt needs a non-default precision)."""
    return {
        "model": "org/model",
        "backend": backend,
        "precision": PRECISION_SUPPORT[backend][0],
        **extra,
    }


def build(backend: str = "pytorch", **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(valid_base(backend, **extra))


def with_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    return deep_merge(data, dotted_to_nested(dotted, value))


# --- Catalogue: precision and decoding support ---------------------------------------------------


def test_catalogue_names_valid_precisions_and_strategies_for_every_builtin_engine():
    assert set(BACKENDS) <= set(ENGINES)
    for backend in BACKENDS:
        assert set(PRECISION_SUPPORT[backend]) <= set(ALL_PRECISIONS)
        assert set(DECODING_SUPPORT[backend]) <= set(ALL_STRATEGIES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ALL_PRECISIONS)
def test_precision_is_accepted_iff_the_backend_supports_it(backend, precision):
    data = {**valid_base(backend), "precision": precision}
    if backend == "vllm" and precision in ("int8", "int4"):
        data["vllm"] = {"quantization": "gptq"}  # vLLM runs int8/int4 from GPTQ checkpoints
    if precision in PRECISION_SUPPORT[backend]:
        assert ExperimentConfig.model_validate(data).precision == precision
    else:
        with pytest.raises(ValidationError) as info:
            ExperimentConfig.model_validate(data)
        message = str(info.value)
        assert f"{backend} does not support precision={precision!r}" in message
        assert str(PRECISION_SUPPORT[backend]) in message  # names the valid values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_decoding_strategy_is_accepted_iff_the_backend_supports_it(backend, strategy):
    data = valid_base(backend, decoder={"decoding_strategy": strategy})
    if strategy in DECODING_SUPPORT[backend]:
        assert ExperimentConfig.model_validate(data).decoder.decoding_strategy == strategy
    else:
        with pytest.raises(ValidationError) as info:
            ExperimentConfig.model_validate(data)
        message = str(info.value)
        assert f"{backend} does not support decoding_strategy={strategy!r}" in message
        assert str(DECODING_SUPPORT[backend]) in message


def test_tensorrt_with_the_default_precision_is_invalid_because_bf16_is_unsupported():
    # Consequence of the seed (default bf16, TRT has no bf16): TRT configs must set precision.
    with pytest.raises(ValidationError, match="tensorrt does not support precision='bf16'"):
        ExperimentConfig(model="m", backend="tensorrt")


# --- engine sections ------------------------------------------------------------------------

SECTIONS = {
    "pytorch": {"batch_size": 2},
    "vllm": {"max_num_seqs": 8},
    "tensorrt": {"max_batch_size": 4},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("section", BACKENDS)
def test_engine_section_must_match_the_backend(backend, section):
    data = valid_base(backend, **{section: SECTIONS[section]})
    if section == backend:
        config = ExperimentConfig.model_validate(data)
        assert getattr(config, section) is not None
        return
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(data)
    message = str(info.value)
    assert f"{section}: config section provided but backend={backend!r}" in message
    assert f"Remove the {section}: section or set backend: {section}" in message


@pytest.mark.parametrize(
    ("section_model", "section"),
    [(PyTorchConfig, "pytorch"), (VLLMConfig, "vllm"), (TensorRTConfig, "tensorrt")],
)
def test_engine_section_fields_default_to_none_meaning_engine_default(section_model, section):
    assert all(value is None for value in section_model().model_dump().values())
    assert getattr(build(section), section) is None  # no section at all unless given


def test_load_in_4bit_and_8bit_are_mutually_exclusive():
    with pytest.raises(ValidationError, match="mutually exclusive"):
        build(pytorch={"load_in_4bit": True, "load_in_8bit": True})
    assert build(pytorch={"load_in_4bit": True, "load_in_8bit": False}).pytorch.load_in_4bit
    assert build(pytorch={"load_in_8bit": True}).pytorch.load_in_8bit


# --- decoder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["greedy", "sampling"])
def test_num_beams_without_beam_search_is_an_error(strategy):
    with pytest.raises(ValidationError, match="num_beams requires decoding_strategy='beam'"):
        DecoderConfig(decoding_strategy=strategy, num_beams=4)


def test_num_beams_with_beam_search_is_accepted():
    assert DecoderConfig(decoding_strategy="beam", num_beams=4).num_beams == 4


def test_speculative_decoding_without_draft_model_is_an_error():
    with pytest.raises(ValidationError, match="requires draft_model"):
        DecoderConfig(speculative_decoding=True)
    with pytest.raises(ValidationError, match="requires draft_model"):
        DecoderConfig(speculative_decoding=True, draft_model="")


def test_speculative_decoding_with_draft_model_is_accepted():
    assert DecoderConfig(speculative_decoding=True, draft_model="org/draft").draft_model


def test_decoder_errors_surface_through_experiment_config():
    with pytest.raises(ValidationError, match="num_beams requires"):
        build(decoder={"num_beams": 2})


# --- LoRA -------------------------------------------------------------------------------------


def test_lora_needs_an_adapter_id_or_path():
    with pytest.raises(ValidationError, match="requires either adapter_id or adapter_path"):
        LoRAConfig()


def test_lora_rejects_both_adapter_id_and_path():
    with pytest.raises(ValidationError, match="adapter_id OR adapter_path, not both"):
        LoRAConfig(adapter_id="org/adapter", adapter_path="./adapter")


@pytest.mark.parametrize("source", [{"adapter_id": "org/adapter"}, {"adapter_path": "./ad"}])
def test_lora_with_pytorch_is_accepted(source):
    assert build(lora=source).lora is not None


def test_lora_with_tensorrt_is_an_error_that_says_how_to_pre_merge():
    with pytest.raises(ValidationError) as info:
        build("tensorrt", lora={"adapter_id": "org/adapter"})
    message = str(info.value)
    assert "not supported with backend tensorrt" in message
    assert "pre-merged" in message
    assert "merge_and_unload()" in message
    assert "set model: ./merged" in message


@pytest.mark.parametrize("vllm_section", [None, {}, {"enable_lora": False}])
def test_lora_with_vllm_requires_enable_lora(vllm_section):
    extra: dict[str, Any] = {"lora": {"adapter_id": "org/adapter"}}
    if vllm_section is not None:
        extra["vllm"] = vllm_section
    with pytest.raises(ValidationError, match=r"requires vllm\.enable_lora: true"):
        build("vllm", **extra)


def test_lora_with_vllm_and_enable_lora_is_accepted():
    config = build("vllm", lora={"adapter_id": "org/a"}, vllm={"enable_lora": True})
    assert config.vllm.enable_lora is True


# --- ranges -----------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("n", 0),
    ("n", -5),
    ("max_new_tokens", 0),
    ("dataset.n", 0),
    ("dataset.input_len", 0),
    ("dataset.output_len", -1),
    ("decoder.temperature", -0.1),
    ("decoder.top_p", 0.0),
    ("decoder.top_p", 1.5),
    ("decoder.top_k", -1),
    ("decoder.repetition_penalty", 0.0),
    ("warmup.n_warmup", -1),
    ("warmup.thermal_floor_seconds", -1.0),
    ("warmup.cv_target", 0.0),
    ("warmup.max_prompts", 0),
    ("baseline.duration_seconds", 0.0),
    ("pytorch.batch_size", 0),
    ("pytorch.batch_size", -1),
    ("pytorch.num_processes", 0),
]


@pytest.mark.parametrize(("path", "value"), OUT_OF_RANGE)
def test_out_of_range_values_are_rejected_naming_the_field(path, value):
    data = valid_base()
    if path.startswith("dataset."):
        data = with_path(data, "dataset", {"n": 200})
    data = with_path(data, path, value)
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(data)
    field = path.rsplit(".", 1)[-1]
    assert any(str(err["loc"][-1]) == field for err in info.value.errors())


@pytest.mark.parametrize(
    ("backend", "path", "value"),
    [
        ("vllm", "vllm.max_num_seqs", 0),
        ("vllm", "vllm.tensor_parallel_size", 0),
        ("vllm", "vllm.gpu_memory_utilization", 0.0),
        ("vllm", "vllm.gpu_memory_utilization", 1.5),
        ("vllm", "vllm.max_lora_rank", 0),
        ("tensorrt", "tensorrt.max_batch_size", 0),
        ("tensorrt", "tensorrt.kv_cache_free_gpu_memory_fraction", 0.0),
        ("tensorrt", "tensorrt.kv_cache_free_gpu_memory_fraction", 1.5),
        ("tensorrt", "tensorrt.tp_size", 0),
    ],
)
def test_out_of_range_engine_values_are_rejected(backend, path, value):
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate(with_path(valid_base(backend), path, value))


def test_decoding_with_num_beams_zero_is_rejected():
    with pytest.raises(ValidationError):
        DecoderConfig(decoding_strategy="beam", num_beams=0)


# --- datasets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["aienergyscore", "prompts.jsonl", "./data/my prompts.jsonl"])
def test_known_dataset_names_and_jsonl_paths_are_accepted(dataset):
    assert build(dataset=dataset).dataset == dataset


@pytest.mark.parametrize("dataset", ["", "imdb", "prompts.csv", "AIEnergyScore"])
def test_unknown_dataset_strings_are_rejected_listing_the_options(dataset):
    with pytest.raises(ValidationError) as info:
        build(dataset=dataset)
    message = str(info.value)
    assert "dataset" in message
    if dataset:
        assert "aienergyscore" in message and ".jsonl" in message


def test_dataset_synthetic_shorthand_generates_n_prompts_with_defaults():
    config = build(dataset="synthetic", n=7)
    assert config.dataset == SyntheticDatasetConfig(n=7)
    assert (config.dataset.input_len, config.dataset.output_len, config.dataset.seed) == (
        512,
        128,
        42,
    )


def test_dataset_synthetic_shorthand_without_n_uses_the_default_n():
    config = build(dataset="synthetic")
    assert isinstance(config.dataset, SyntheticDatasetConfig)
    assert config.dataset.n == config.n == 100


def test_dataset_synthetic_shorthand_with_invalid_n_reports_n_not_the_dataset():
    with pytest.raises(ValidationError) as info:
        build(dataset="synthetic", n=0)
    assert [err["loc"] for err in info.value.errors()] == [("n",)]


def test_synthetic_mapping_is_parsed_as_synthetic_dataset():
    config = build(dataset={"n": 10, "input_len": 64, "output_len": 16, "seed": 1}, n=10)
    assert config.dataset == SyntheticDatasetConfig(n=10, input_len=64, output_len=16, seed=1)


def test_synthetic_dataset_smaller_than_n_is_an_error():
    with pytest.raises(ValidationError, match=r"n=50 prompts requested .* dataset.n=10"):
        build(dataset={"n": 10}, n=50)


def test_synthetic_dataset_larger_than_n_is_accepted():
    assert build(dataset={"n": 50}, n=10).n == 10


def test_synthetic_dataset_without_any_n_generates_the_default_n():
    config = build(dataset={"input_len": 8})
    assert isinstance(config.dataset, SyntheticDatasetConfig)
    assert config.n == config.dataset.n == 100


def test_synthetic_output_len_sets_effective_max_new_tokens():
    config = build(dataset={"n": 100, "output_len": 17})
    assert config.effective_max_new_tokens == 17


def test_explicit_max_new_tokens_fills_an_unset_synthetic_output_len():
    config = build(dataset={"n": 10}, n=10, max_new_tokens=33)
    assert config.effective_max_new_tokens == 33
    shorthand = build(dataset="synthetic", n=5, max_new_tokens=21)
    assert shorthand.effective_max_new_tokens == 21


def test_user_input_with_disagreeing_max_new_tokens_and_output_len_is_an_error():
    data = valid_base(dataset={"n": 10, "output_len": 17}, n=10, max_new_tokens=99)
    with pytest.raises(ValidationError, match=r"max_new_tokens=99 and dataset\.output_len=17"):
        ExperimentConfig.model_validate(data, context=models.USER_INPUT)
    agreeing = valid_base(dataset={"n": 10, "output_len": 17}, n=10, max_new_tokens=17)
    assert ExperimentConfig.model_validate(agreeing, context=models.USER_INPUT)


def test_a_synthetic_output_len_is_recorded_as_the_configs_max_new_tokens():
    # the config says what runs: 17 new tokens, not max_new_tokens's default of 128
    config = build(dataset={"n": 10, "output_len": 17}, n=10)
    assert config.max_new_tokens == 17 == config.effective_max_new_tokens
    dumped = config.model_dump(mode="json")
    assert dumped["max_new_tokens"] == dumped["dataset"]["output_len"] == 17
    instance = build(dataset=SyntheticDatasetConfig(n=10, output_len=17), n=10)
    assert instance.max_new_tokens == 17
    from_top = build(dataset=SyntheticDatasetConfig(n=10), n=10, max_new_tokens=33)
    assert from_top.dataset.output_len == 33 and from_top.effective_max_new_tokens == 33


def test_stored_config_dump_with_both_lengths_stays_readable():
    # A result stored by an earlier version carries max_new_tokens's default next to output_len.
    stored = build(dataset={"n": 10, "output_len": 17}, n=10).model_dump(mode="json")
    stored["max_new_tokens"] = 128
    assert ExperimentConfig.model_validate(stored).effective_max_new_tokens == 17


def test_a_prompts_own_limit_overrides_the_runs():
    config = build(max_new_tokens=64)
    assert config.max_new_tokens_for(None) == 64
    assert config.max_new_tokens_for(7) == 7
    synthetic = build(dataset={"n": 10, "output_len": 5}, n=10)
    assert synthetic.max_new_tokens_for(None) == 5


def test_sampling_at_temperature_zero_is_a_config_error():
    with pytest.raises(ValidationError, match="temperature=0 with decoding_strategy='sampling'"):
        DecoderConfig(temperature=0, decoding_strategy="sampling")
    assert DecoderConfig(temperature=0, decoding_strategy="greedy").temperature == 0


def test_named_dataset_uses_top_level_max_new_tokens():
    assert build(max_new_tokens=99).effective_max_new_tokens == 99
    assert build().effective_max_new_tokens == 128


# --- extra="forbid" everywhere --------------------------------------------------------------


def _config_models() -> list[type[BaseModel]]:
    return [
        obj
        for _, obj in inspect.getmembers(models, inspect.isclass)
        if issubclass(obj, BaseModel)
        and obj is not BaseModel
        and obj.__module__.startswith("llenergymeasure.config.")
    ]


def test_every_config_model_forbids_unknown_keys():
    found = _config_models()
    assert {m.__name__ for m in found} >= {
        "ExperimentConfig",
        "DecoderConfig",
        "WarmupConfig",
        "BaselineConfig",
        "SyntheticDatasetConfig",
        "LoRAConfig",
        "PyTorchConfig",
        "VLLMConfig",
        "TensorRTConfig",
    }
    for model in found:
        assert model.model_config.get("extra") == "forbid", model.__name__


@pytest.mark.parametrize(
    ("backend", "data"),
    [
        ("pytorch", {"bogus": 1}),
        ("pytorch", {"decoder": {"bogus": 1}}),
        ("pytorch", {"warmup": {"bogus": 1}}),
        ("pytorch", {"baseline": {"bogus": 1}}),
        ("pytorch", {"dataset": {"n": 100, "bogus": 1}}),
        ("pytorch", {"lora": {"adapter_id": "a", "bogus": 1}}),
        ("pytorch", {"pytorch": {"bogus": 1}}),
        ("vllm", {"vllm": {"bogus": 1}}),
        ("tensorrt", {"tensorrt": {"bogus": 1}}),
    ],
)
def test_unknown_key_is_rejected_at_every_level(backend, data):
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(deep_merge(valid_base(backend), data))
    assert [err["type"] for err in info.value.errors()] == ["extra_forbidden"]
    assert info.value.errors()[0]["loc"][-1] == "bogus"


def test_passthrough_kwargs_accepts_arbitrary_keys():
    config = build(passthrough_kwargs={"torch_compile_mode": "max-autotune", "x": [1, 2]})
    assert config.passthrough_kwargs == {"torch_compile_mode": "max-autotune", "x": [1, 2]}


def test_model_is_required_and_non_empty():
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate({"backend": "pytorch"})
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate({"model": "", "backend": "pytorch"})


def test_backend_must_be_a_known_engine():
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate({"model": "m", "backend": "onnx"})


# --- defaults (seed + SPEC 3.2) ---------------------------------------------------------------


def test_defaults_equal_the_seed_and_spec_resolved_points():
    config = ExperimentConfig(model="m", backend="pytorch")
    assert config.precision == "bf16"
    assert config.dataset == "aienergyscore"
    assert config.n == 100
    assert config.max_new_tokens == 128
    assert config.random_seed == 42
    assert config.pytorch is config.vllm is config.tensorrt is None
    assert config.lora is None and config.passthrough_kwargs is None
    assert config.decoder.model_dump() == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": None,
        "repetition_penalty": 1.0,
        "decoding_strategy": "greedy",
        "num_beams": None,
        "speculative_decoding": False,
        "draft_model": None,
        "ignore_eos": False,
    }
    assert config.warmup.model_dump() == {
        "n_warmup": 3,
        "thermal_floor_seconds": 60.0,
        "convergence_detection": False,
        "cv_target": 0.05,
        "max_prompts": 20,
    }
    assert config.baseline.model_dump() == {"enabled": True, "duration_seconds": 30.0}
    assert SyntheticDatasetConfig(n=1).model_dump() == {
        "n": 1,
        "input_len": 512,
        "output_len": 128,
        "seed": 42,
    }
    assert LoRAConfig(adapter_id="a").merge_weights is False
    assert VLLMConfig().enable_lora is None and VLLMConfig().max_lora_rank is None


def test_sub_config_defaults_are_not_shared_between_instances():
    a, b = build(), build()
    assert a.decoder is not b.decoder
    assert isinstance(a.warmup, WarmupConfig) and isinstance(a.baseline, BaselineConfig)


def test_thermal_floor_below_30_seconds_is_allowed():
    assert build(warmup={"thermal_floor_seconds": 0}).warmup.thermal_floor_seconds == 0


def test_from_yaml_loads_the_example_experiment():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "experiment.yaml"
    config = ExperimentConfig.from_yaml(path)
    assert config.model == "builtin:tiny"
    assert config.backend == "pytorch"
    assert config.pytorch is not None and config.pytorch.batch_size == 4


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_vllm_integer_precision_needs_a_quantized_checkpoint_method(precision):
    with pytest.raises(ValidationError) as excinfo:
        build("vllm", precision=precision)
    assert "vllm.quantization" in str(excinfo.value)


def test_tensorrt_quantization_must_agree_with_precision():
    with pytest.raises(ValidationError) as excinfo:
        build("tensorrt", precision="fp16", tensorrt={"quantization": "int4_awq"})
    assert "needs precision: int4" in str(excinfo.value)


def test_vllm_lora_cannot_be_merged():
    with pytest.raises(ValidationError) as excinfo:
        build(
            "vllm",
            vllm={"enable_lora": True},
            lora={"adapter_id": "org/adapter", "merge_weights": True},
        )
    assert "merge_weights" in str(excinfo.value)


def test_pytorch_speculative_decoding_needs_batch_size_one():
    with pytest.raises(ValidationError) as excinfo:
        build(
            "pytorch",
            pytorch={"batch_size": 4},
            decoder={"speculative_decoding": True, "draft_model": "org/draft"},
        )
    assert "batch_size=1" in str(excinfo.value)
