"""Experiment configuration: one ``ExperimentConfig`` type with optional engine sections.

Engine-section fields default to ``None`` meaning "the engine's own default"; the engine
resolves them at run time and the result records the effective value.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from llenergymeasure.config.catalogue import engine_names, engine_spec
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.config.secrets import drop_redacted, redact_secrets
from llenergymeasure.config.strict import STRICT_CONFIG

#: Validation context for configs a user wrote (YAML, CLI, study grid): enables the checks
#: that only make sense on user input, e.g. max_new_tokens vs a synthetic output_len.
USER_INPUT: dict[str, Any] = {"user_input": True}

#: Dataset names that need no file.
BUILTIN_DATASETS: tuple[str, ...] = ("aienergyscore", "synthetic")

#: An engine name from the catalogue (``config.catalogue.engine_names()``).
Backend = str
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8", "int4"]

_FORBID = STRICT_CONFIG


class DecoderConfig(BaseModel):
    """How tokens are chosen. ``ignore_eos`` forces full-length generation."""

    model_config = _FORBID

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    decoding_strategy: Literal["greedy", "sampling", "beam"] = "greedy"
    num_beams: int | None = Field(None, ge=1)  # beam search only
    speculative_decoding: bool = False
    draft_model: str | None = None
    ignore_eos: bool = False

    @model_validator(mode="after")
    def validate_decoder(self) -> DecoderConfig:
        if self.num_beams is not None and self.decoding_strategy != "beam":
            raise ValueError("num_beams requires decoding_strategy='beam'")
        if self.speculative_decoding and not self.draft_model:
            raise ValueError("speculative_decoding=True requires draft_model to be set")
        if self.decoding_strategy == "sampling" and self.temperature == 0:
            raise ValueError(
                "temperature=0 with decoding_strategy='sampling' is not a distribution to sample "
                "from: use decoding_strategy: greedy, or a temperature > 0"
            )
        return self


class WarmupConfig(BaseModel):
    """Warmup before the measurement window (excluded from every metric)."""

    model_config = _FORBID

    n_warmup: int = Field(3, ge=0)  # fixed count of full-length prompts
    thermal_floor_seconds: float = Field(60.0, ge=0.0)  # < 30 s adds a warning to the result
    convergence_detection: bool = False
    cv_target: float = Field(0.05, gt=0.0)
    max_prompts: int = Field(20, ge=1)


class BaselineConfig(BaseModel):
    """Idle-power baseline measured before the model is loaded."""

    model_config = _FORBID

    enabled: bool = True
    duration_seconds: float = Field(30.0, gt=0.0)


class SyntheticDatasetConfig(BaseModel):
    """``n`` generated prompts of exactly ``input_len`` tokens; ``output_len`` = max_new_tokens.

    Unset, ``output_len`` takes the experiment's ``max_new_tokens`` when that is given; both set
    to different values is a config error.
    """

    model_config = _FORBID

    n: int = Field(ge=1)
    input_len: int = Field(512, ge=1)
    output_len: int = Field(128, ge=1)
    seed: int = 42


class LoRAConfig(BaseModel):
    """A LoRA adapter applied to the base model (``adapter_id`` or ``adapter_path``)."""

    model_config = _FORBID

    adapter_id: str | None = None
    adapter_path: str | None = None
    merge_weights: bool = False  # False measures adapter overhead, True the deployed cost

    @model_validator(mode="after")
    def validate_adapter_source(self) -> LoRAConfig:
        if self.adapter_id is None and self.adapter_path is None:
            raise ValueError("LoRAConfig requires either adapter_id or adapter_path")
        if self.adapter_id is not None and self.adapter_path is not None:
            raise ValueError("Specify adapter_id OR adapter_path, not both")
        return self


class PyTorchConfig(BaseModel):
    """transformers engine settings; ``None`` = engine default (see docstrings)."""

    model_config = _FORBID

    batch_size: int | None = Field(None, ge=1)  # None -> 1
    batching_strategy: Literal["static", "dynamic"] | None = None  # None -> static
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] | None = None
    torch_compile: bool | None = None  # None -> False
    load_in_4bit: bool | None = None
    load_in_8bit: bool | None = None
    num_processes: int | None = Field(None, ge=1)  # data-parallel processes; None -> 1

    @model_validator(mode="after")
    def validate_quantization(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are mutually exclusive")
        return self


class VLLMConfig(BaseModel):
    """vLLM engine settings; ``None`` = vLLM's default."""

    model_config = _FORBID

    max_num_seqs: int | None = Field(None, ge=1)  # None -> 256
    tensor_parallel_size: int | None = Field(None, ge=1)  # None -> 1
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)  # None -> 0.9
    enable_prefix_caching: bool | None = None
    block_size: int | None = Field(None, ge=1)
    quantization: Literal["awq", "gptq", "fp8"] | None = None
    enable_lora: bool | None = None
    max_lora_rank: int | None = Field(None, ge=1)


class TensorRTConfig(BaseModel):
    """TensorRT-LLM settings. Compile-time fields change the built engine."""

    model_config = _FORBID

    max_batch_size: int | None = Field(None, ge=1)  # compile-time
    tp_size: int | None = Field(None, ge=1)
    pp_size: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=1)  # compile-time
    kv_cache_type: Literal["paged"] | None = None
    quantization: Literal["int8_sq", "int4_awq", "fp8"] | None = None
    builder_opt_level: int | None = Field(None, ge=0, le=5)
    engine_path: str | None = None  # pre-compiled engine (skips the build)


#: Quantization methods that make precision int4 / int8 possible with vLLM.
VLLM_QUANT_FOR_PRECISION: dict[str, tuple[str, ...]] = {"int4": ("awq", "gptq"), "int8": ("gptq",)}
#: TensorRT-LLM: the quantization each precision implies (None: none).
TENSORRT_PRECISION_QUANT: dict[str, str | None] = {
    "fp16": None,
    "int8": "int8_sq",
    "int4": "int4_awq",
    "fp8": "fp8",
}

#: The ExperimentConfig attributes that are engine sections (each belongs to one engine).
_ENGINE_SECTIONS: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")


def _non_finite_path(value: Any, path: str) -> str | None:
    """The dotted path of the first inf/nan float inside ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _dataset_kind(value: Any) -> str:
    return "synthetic" if isinstance(value, (dict, SyntheticDatasetConfig)) else "name"


# A dataset is a name/path string or a synthetic mapping; the discriminator keeps validation
# errors about one branch from being reported against the other.
class MeasurementConfig(BaseModel):
    """Extra measurements of a run beyond the headline window.

    ``phase_split``: after the measurement window, run a prefill-only window over the same
    prompts and batching (``max_new_tokens`` 1, its own warmup, the same thermal floor) and
    report the differential prefill/decode energy split (``ExperimentResult.phase_split``).
    It roughly adds one prefill pass of the whole workload to the run's wall time.
    """

    model_config = _FORBID

    phase_split: bool = False


DatasetSpec = Annotated[
    Annotated[str, Tag("name")] | Annotated[SyntheticDatasetConfig, Tag("synthetic")],
    Discriminator(_dataset_kind),
]


class ExperimentConfig(BaseModel):
    """One measurement: a model, an engine, a workload and how to measure it."""

    model_config = ConfigDict(**STRICT_CONFIG, protected_namespaces=())

    model: str = Field(min_length=1)  # HF hub id, local path, or builtin:tiny
    backend: Backend
    precision: Precision = "bf16"
    dataset: DatasetSpec = "aienergyscore"
    n: int = Field(100, ge=1)  # prompts taken from the dataset, in order
    max_new_tokens: int = Field(128, ge=1)
    random_seed: int = 42

    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)

    pytorch: PyTorchConfig | None = None
    vllm: VLLMConfig | None = None
    tensorrt: TensorRTConfig | None = None

    lora: LoRAConfig | None = None
    passthrough_kwargs: dict[str, Any] | None = None

    # Online mode (issue 20): measure a server under load instead of an offline batch.
    mode: Literal["offline", "online"] = "offline"
    online: OnlineConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_synthetic_shorthand(cls, data: Any) -> Any:
        # `dataset: synthetic` is shorthand for a synthetic set of `n` prompts with defaults.
        if isinstance(data, dict) and data.get("dataset") == "synthetic":
            n = data.get("n", 100)
            data = {**data, "dataset": {"n": n} if isinstance(n, int) and n >= 1 else {"n": 1}}
        # Synthetic output_len and max_new_tokens are one quantity: an explicit max_new_tokens
        # fills an unset output_len; both set and different is an error (validate_backend_...).
        if (
            isinstance(data, dict)
            and isinstance(data.get("dataset"), dict)
            and "output_len" not in data["dataset"]
            and "max_new_tokens" in data
        ):
            data = {**data, "dataset": {**data["dataset"], "output_len": data["max_new_tokens"]}}
        return data

    @field_validator("passthrough_kwargs")
    @classmethod
    def _check_passthrough_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            bad = _non_finite_path(value, "passthrough_kwargs")
            if bad is not None:
                raise ValueError(f"{bad} is not a finite number (inf and nan are not allowed)")
            # A config read back from a written file carries placeholders, not credentials.
            value = drop_redacted(value)
        return value

    @field_serializer("passthrough_kwargs")
    def _redact_passthrough(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Every dump (result.json, manifest, report, tables) hides credentials.
        return None if value is None else redact_secrets(value)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        known = engine_names()
        if value not in known:
            guess = difflib.get_close_matches(value, known, n=1)
            hint = f": did you mean '{guess[0]}'?" if guess else ""
            raise ValueError(f"unknown backend {value!r}{hint} (known engines: {', '.join(known)})")
        return value

    @field_validator("dataset", mode="before")
    @classmethod
    def _check_dataset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("dataset must not be empty")
            if value not in BUILTIN_DATASETS and not value.endswith(".jsonl"):
                raise ValueError(
                    f"dataset {value!r} is not known: use 'aienergyscore', 'synthetic', "
                    "a mapping {n, input_len, output_len, seed}, or a path to a .jsonl file"
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _check_output_len_agrees(cls, data: Any, info: ValidationInfo) -> Any:
        # Only for what a user wrote (USER_INPUT context): a stored config's dump carries both
        # fields and must stay readable whatever its values.
        if not (info.context or {}).get("user_input") or not isinstance(data, dict):
            return data
        dataset = data.get("dataset")
        if (
            isinstance(dataset, dict)
            and "max_new_tokens" in data
            and "output_len" in dataset
            and dataset["output_len"] != data["max_new_tokens"]
        ):
            raise ValueError(
                f"max_new_tokens={data['max_new_tokens']!r} and dataset.output_len="
                f"{dataset['output_len']!r} disagree: a synthetic dataset's output_len is "
                "the number of new tokens; set only one of them, or both to the same value"
            )
        return data

    @model_validator(mode="after")
    def validate_backend_compatibility(self) -> ExperimentConfig:
        spec = engine_spec(self.backend)
        if self.precision not in spec.precisions:
            raise ValueError(
                f"{self.backend} does not support precision={self.precision!r}. "
                f"Valid: {list(spec.precisions)}"
            )
        if self.decoder.decoding_strategy not in spec.decoding_strategies:
            raise ValueError(
                f"{self.backend} does not support decoding_strategy="
                f"{self.decoder.decoding_strategy!r}. Valid: {list(spec.decoding_strategies)}"
            )
        for section in _ENGINE_SECTIONS:
            if getattr(self, section) is not None and spec.config_section != section:
                raise ValueError(
                    f"{section}: config section provided but backend={self.backend!r}. "
                    f"Remove the {section}: section or set backend: {section}."
                )
        if self.lora is not None:
            if self.backend == "tensorrt":
                raise ValueError(
                    "lora: is not supported with backend tensorrt: TensorRT-LLM engines must be "
                    "pre-merged. Merge with peft (PeftModel.from_pretrained(base, adapter)"
                    ".merge_and_unload().save_pretrained('./merged')) and set model: ./merged"
                )
            if self.backend == "vllm" and not (self.vllm and self.vllm.enable_lora):
                raise ValueError("lora: with backend vllm requires vllm.enable_lora: true")
            if self.backend == "vllm" and self.lora.merge_weights:
                raise ValueError(
                    "lora.merge_weights=true is not possible with vllm (adapters are applied "
                    "unmerged through LoRARequest); merge with peft and set model: to the merged "
                    "folder, or set merge_weights: false"
                )
        self._check_engine_specific_rules()
        self._check_mode_section()
        if isinstance(self.dataset, SyntheticDatasetConfig) and self.dataset.n < self.n:
            raise ValueError(
                f"n={self.n} prompts requested but the synthetic dataset generates only "
                f"dataset.n={self.dataset.n}"
            )
        return self

    def _check_engine_specific_rules(self) -> None:
        """Static rules of one engine that go beyond its precisions and decoding strategies."""
        dec = self.decoder
        if self.backend == "pytorch" and dec.speculative_decoding:
            batch = self.pytorch.batch_size if self.pytorch else None
            if batch is not None and batch != 1:
                raise ValueError(
                    "decoder.speculative_decoding (assisted generation) needs "
                    f"pytorch.batch_size=1, got {batch}"
                )
        if self.backend == "vllm":
            quant = self.vllm.quantization if self.vllm else None
            allowed = VLLM_QUANT_FOR_PRECISION.get(self.precision)
            if allowed is not None and quant not in allowed:
                raise ValueError(
                    f"precision={self.precision} with vllm needs a pre-quantized checkpoint and "
                    f"vllm.quantization set to one of {list(allowed)} (got {quant!r})"
                )
            if dec.decoding_strategy == "beam" and dec.speculative_decoding:
                raise ValueError(
                    "decoder.speculative_decoding cannot be combined with beam search in vllm"
                )
        if self.backend == "tensorrt":
            trt_quant = self.tensorrt.quantization if self.tensorrt else None
            implied = TENSORRT_PRECISION_QUANT.get(self.precision)
            if trt_quant is not None and implied != trt_quant:
                want = next(p for p, q in TENSORRT_PRECISION_QUANT.items() if q == trt_quant)
                raise ValueError(
                    f"tensorrt.quantization={trt_quant} needs precision: {want} "
                    f"(got precision: {self.precision})"
                )
            if dec.speculative_decoding:
                raise ValueError(
                    "decoder.speculative_decoding (draft model) is not supported with the "
                    "tensorrt engine in llem"
                )

    def _check_mode_section(self) -> None:
        # Online mode needs its section; offline mode must not carry one (it would be ignored).
        if self.mode == "online" and self.online is None:
            raise ValueError(
                "mode: online requires an online: section (at least `online: {}` to start the "
                "engine's server, or `online: {endpoint: http://host:port}`)"
            )
        if self.mode == "offline" and self.online is not None:
            raise ValueError(
                "online: section given but mode is 'offline'. Set mode: online or remove online:"
            )

    @property
    def effective_max_new_tokens(self) -> int:
        """Synthetic ``output_len`` sets max_new_tokens; otherwise the top-level value."""
        if isinstance(self.dataset, SyntheticDatasetConfig):
            return self.dataset.output_len
        return self.max_new_tokens

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load and validate an experiment YAML (``yaml.safe_load``); errors are ``ConfigError``."""
        from llenergymeasure.config.loading import load_experiment_config

        return load_experiment_config(path)
