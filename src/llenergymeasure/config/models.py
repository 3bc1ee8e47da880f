"""Experiment configuration: one ``ExperimentConfig`` type with optional engine sections.

Engine-section fields default to ``None`` meaning "the engine's own default"; the engine
resolves them at run time and the result records the effective value.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

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

from llenergymeasure.config import bounds as B
from llenergymeasure.config.catalogue import engine_names, engine_spec
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.config.secrets import drop_redacted, redact_secrets
from llenergymeasure.config.strict import STRICT_CONFIG
from llenergymeasure.gguf_files import gguf_naming_problem, names_gguf

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

    temperature: Annotated[float, B.TEMPERATURE] = Field(
        1.0, description="Sampling temperature (0 = greedy). All engines."
    )
    top_p: Annotated[float, B.TOP_P] = Field(
        1.0,
        description="Nucleus-sampling probability mass, in (0, 1]. All engines.",
    )
    top_k: Annotated[int, B.TOP_K] | None = Field(
        None,
        description="Sample from the k most likely tokens (0 = off). None = no top-k limit.",
    )
    repetition_penalty: Annotated[float, B.PENALTY] = Field(
        1.0, description="Penalty on repeated tokens (1.0 = none). All engines."
    )
    decoding_strategy: Literal["greedy", "sampling", "beam"] = Field(
        "greedy",
        description=(
            "greedy, sampling or beam; engines that do not support a strategy reject it at "
            "validation."
        ),
    )
    num_beams: Annotated[int, B.BEAMS] | None = Field(
        None,
        description=(
            "Beams for beam search; only with decoding_strategy='beam'. None = the engine's "
            "default."
        ),
    )
    speculative_decoding: bool = Field(
        False,
        description=(
            "Speculative decoding with draft_model (PyTorch: assisted generation, batch_size 1; "
            "vLLM; not TensorRT-LLM)."
        ),
    )
    draft_model: str | None = Field(
        None, description="HF id or path of the draft model for speculative_decoding."
    )
    ignore_eos: bool = Field(
        False,
        description=(
            "Generate exactly max_new_tokens, ignoring end-of-sequence tokens (fixed output "
            "lengths for fair comparisons)."
        ),
    )

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

    n_warmup: Annotated[int, B.WARMUP_RUNS] = Field(
        3,
        description=(
            "Warmup runs before the window, each over as many prompts as the run keeps in flight; "
            "warmup prompts are never the measured prompts."
        ),
    )
    thermal_floor_seconds: Annotated[float, B.GAP_SECONDS] = Field(
        60.0,
        description=(
            "Seconds to wait after warmup before the window opens, so the GPU reaches a steady "
            "temperature; below 30 s the result gets a warning."
        ),
    )
    convergence_detection: bool = Field(
        False,
        description=(
            "Repeat warmup runs (up to max_prompts) until the CV of the last three run latencies "
            "is at most cv_target."
        ),
    )
    cv_target: Annotated[float, B.CV_TARGET] = Field(
        0.05,
        description=(
            "Coefficient of variation of the last three warmup latencies that ends warmup "
            "(convergence_detection only)."
        ),
    )
    max_prompts: Annotated[int, B.WARMUP_MAX_RUNS] = Field(
        20, description="Most warmup runs with convergence_detection."
    )


class BaselineConfig(BaseModel):
    """Idle-power baseline measured before the model is loaded."""

    model_config = _FORBID

    enabled: bool = Field(
        True,
        description=(
            "Measure idle GPU power before the model is loaded and report baseline-adjusted energy."
        ),
    )
    duration_seconds: Annotated[float, B.BASELINE_SECONDS] = Field(
        30.0, description="Seconds of idle power polling for the baseline."
    )


class SyntheticDatasetConfig(BaseModel):
    """``n`` generated prompts of exactly ``input_len`` tokens; ``output_len`` = max_new_tokens.

    ``n`` is given once: in an experiment, ``dataset.n`` and the top-level ``n`` each take the
    other's value when left out (both out: the default ``n``); both given, ``dataset.n`` must be
    at least ``n``. Unset, ``output_len`` takes the experiment's ``max_new_tokens`` when that is
    given; both set to different values is a config error.
    """

    model_config = _FORBID

    n: Annotated[int, B.PROMPTS] = Field(
        description=("Prompts generated (the first n are measured); unset, the experiment's n.")
    )
    input_len: Annotated[int, B.TOKENS] = Field(
        512, description="Tokens per prompt (exact, in the model's tokenizer)."
    )
    output_len: Annotated[int, B.TOKENS] = Field(
        128, description="Output tokens per prompt; replaces max_new_tokens."
    )
    seed: Annotated[int, B.SEED] = Field(
        42, description="Seed of the prompt generator (warmup prompts use another seed)."
    )


class HFDatasetConfig(BaseModel):
    """A dataset read with the ``datasets`` library: a hub name or a local folder.

    The folder may be one written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` or
    any folder ``datasets.load_dataset`` reads. The hub is used through the library's cache, so
    ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) reads a cached copy without network.
    """

    model_config = _FORBID

    hf: str = Field(
        min_length=1,
        description=(
            "Hub dataset name (e.g. org/name) or a local folder (save_to_disk output or data "
            "files)."
        ),
    )
    split: str | None = Field(
        None,
        description="Split to read. None = the only split, else 'train' (an error lists them).",
    )
    column: str | None = Field(
        None,
        description=(
            "Column holding the prompts (strings). None = 'text', then 'prompt', then the only "
            "string column."
        ),
    )
    config: str | None = Field(
        None, description="Dataset configuration (subset) name, for hub datasets that have several."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) to pin. None = the default branch.",
    )


class LoRAConfig(BaseModel):
    """A LoRA adapter applied to the base model (``adapter_id`` or ``adapter_path``)."""

    model_config = _FORBID

    adapter_id: str | None = Field(
        None, description="HF hub id of the adapter (or give adapter_path)."
    )
    adapter_path: str | None = Field(
        None, description="Local path of the adapter (or give adapter_id)."
    )
    merge_weights: bool = Field(
        False,
        description=(
            "True merges the adapter into the weights (the deployed cost); False keeps it separate"
            " (measures adapter overhead). PyTorch only; vLLM applies adapters unmerged."
        ),
    )

    @model_validator(mode="after")
    def validate_adapter_source(self) -> LoRAConfig:
        if self.adapter_id is None and self.adapter_path is None:
            raise ValueError("LoRAConfig requires either adapter_id or adapter_path")
        if self.adapter_id is not None and self.adapter_path is not None:
            raise ValueError("Specify adapter_id OR adapter_path, not both")
        return self


class EngineSection(BaseModel):
    """Base of an engine's config section (an ``ExperimentConfig`` field named by the
    catalogue's ``config_section``): the engine's settings, and its rules across the whole
    experiment, so that ``ExperimentConfig`` itself names no engine."""

    model_config = _FORBID

    @classmethod
    def check_experiment(cls, config: ExperimentConfig) -> None:
        """``ValueError`` for an experiment of this engine that it cannot run. Called for
        every experiment whose backend is this engine, whether the section is set or not."""

    def weight_precision(self) -> str | None:
        """The precision the weights are stored in when a field here overrides ``precision``
        (bitsandbytes loading); None: ``precision``."""
        return None


class PyTorchConfig(EngineSection):
    """transformers engine settings; ``None`` = engine default (see docstrings)."""

    model_config = _FORBID

    batch_size: Annotated[int, B.BATCH] | None = Field(
        None, description="Prompts per generate() call. None = 1."
    )
    batching_strategy: Literal["static", "dynamic"] | None = Field(
        None,
        description=(
            "static: fixed batches in dataset order; dynamic: batches of similar length. None = "
            "static."
        ),
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] | None = Field(
        None,
        description=(
            "transformers attention implementation. None = the model's default (usually sdpa)."
        ),
    )
    torch_compile: bool | None = Field(
        None,
        description=(
            "Compile the model with torch.compile; compilation happens in warmup, never in the "
            "window (timing.compile_s). None = False."
        ),
    )
    load_in_4bit: bool | None = Field(
        None, description="bitsandbytes 4-bit quantization of the weights. None = off."
    )
    load_in_8bit: bool | None = Field(
        None, description="bitsandbytes 8-bit quantization of the weights. None = off."
    )
    num_processes: Annotated[int, B.GPU_COUNT] | None = Field(
        None,
        description=(
            "Data-parallel processes, one per visible GPU, each with a full model copy. None = 1."
        ),
    )

    @model_validator(mode="after")
    def validate_quantization(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are mutually exclusive")
        return self

    def weight_precision(self) -> str | None:
        """bitsandbytes 4/8-bit loading stores the weights in int4/int8."""
        if self.load_in_4bit:
            return "int4"
        if self.load_in_8bit:
            return "int8"
        return None

    @classmethod
    def check_experiment(cls, config: ExperimentConfig) -> None:
        """Assisted generation runs one prompt at a time."""
        if config.decoder.speculative_decoding:
            batch = config.pytorch.batch_size if config.pytorch else None
            if batch is not None and batch != 1:
                raise ValueError(
                    "decoder.speculative_decoding (assisted generation) needs "
                    f"pytorch.batch_size=1, got {batch}"
                )


class VLLMConfig(EngineSection):
    """vLLM engine settings; ``None`` = vLLM's default."""

    model_config = _FORBID

    max_num_seqs: Annotated[int, B.BATCH] | None = Field(
        None,
        description=(
            "Most sequences vLLM schedules at once (its batch size). None = vLLM's default (256)."
        ),
    )
    tensor_parallel_size: Annotated[int, B.GPU_COUNT] | None = Field(
        None, description="GPUs the model is sharded over. None = 1."
    )
    gpu_memory_utilization: Annotated[float, B.MEMORY_FRACTION] | None = Field(
        None,
        description=(
            "Fraction of GPU memory vLLM may use (weights + KV cache), in (0, 1]. None = vLLM's "
            "default (0.9)."
        ),
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description=(
            "vLLM's automatic prefix caching; the cache is reset before each window. None = vLLM's"
            " default."
        ),
    )
    block_size: Annotated[int, B.KV_BLOCK_TOKENS] | None = Field(
        None, description="KV-cache block size in tokens. None = vLLM's default."
    )
    quantization: Literal["awq", "gptq", "fp8"] | None = Field(
        None,
        description=(
            "Quantization method of a pre-quantized checkpoint (int4/int8 precision need "
            "awq/gptq). None = none."
        ),
    )
    enable_lora: bool | None = Field(
        None, description="Allow LoRA adapters (required with lora:). None = vLLM's default (off)."
    )
    max_lora_rank: Annotated[int, B.LORA_RANK] | None = Field(
        None, description="Largest LoRA rank vLLM allocates for. None = vLLM's default."
    )

    @classmethod
    def check_experiment(cls, config: ExperimentConfig) -> None:
        """LoRA needs enable_lora and cannot be merged; a GGUF file brings its own
        quantization; int4/int8 need a pre-quantized checkpoint; no beam search with a
        draft model."""
        section = config.vllm
        quant = section.quantization if section else None
        if config.lora is not None:
            if not (section and section.enable_lora):
                raise ValueError("lora: with backend vllm requires vllm.enable_lora: true")
            if config.lora.merge_weights:
                raise ValueError(
                    "lora.merge_weights=true is not possible with vllm (adapters are applied "
                    "unmerged through LoRARequest); merge with peft and set model: to the merged "
                    "folder, or set merge_weights: false"
                )
        if names_gguf(config.model, config.passthrough_kwargs) and (
            quant or config.precision not in ("fp16", "bf16")
        ):
            raise ValueError(
                f"precision={config.precision}, vllm.quantization={quant} with a GGUF model: "
                "the file carries its own quantization (vLLM loads it as 'gguf'); use precision "
                "fp16 or bf16 (the activation dtype) and leave vllm.quantization unset"
            )
        allowed = VLLM_QUANT_FOR_PRECISION.get(config.precision)
        if allowed is not None and quant not in allowed:
            raise ValueError(
                f"precision={config.precision} with vllm needs a pre-quantized checkpoint and "
                f"vllm.quantization set to one of {list(allowed)} (got {quant!r})"
            )
        dec = config.decoder
        if dec.decoding_strategy == "beam" and dec.speculative_decoding:
            raise ValueError(
                "decoder.speculative_decoding cannot be combined with beam search in vllm"
            )


class TensorRTConfig(EngineSection):
    """TensorRT-LLM settings. Compile-time fields change the built engine."""

    model_config = _FORBID

    max_batch_size: Annotated[int, B.BATCH] | None = Field(
        None,
        description=(
            "Largest batch the built engine accepts (compile-time). None = TensorRT-LLM's default."
        ),
    )
    tp_size: Annotated[int, B.GPU_COUNT] | None = Field(
        None, description="Tensor-parallel GPUs. None = 1."
    )
    pp_size: Annotated[int, B.GPU_COUNT] | None = Field(
        None, description="Pipeline-parallel stages. None = 1."
    )
    max_seq_len: Annotated[int, B.TOKENS] | None = Field(
        None,
        description=(
            "Longest sequence (prompt + output) the built engine accepts (compile-time). None = "
            "TensorRT-LLM's default."
        ),
    )
    kv_cache_type: Literal["paged"] | None = Field(
        None, description="KV-cache layout. None = TensorRT-LLM's default (paged)."
    )
    quantization: Literal["int8_sq", "int4_awq", "fp8"] | None = Field(
        None,
        description=(
            "Quantization the engine is built with; must agree with precision (int8 -> int8_sq, "
            "int4 -> int4_awq, fp8 -> fp8). None = from precision."
        ),
    )
    enable_block_reuse: bool | None = Field(
        None,
        description=(
            "KV-cache block reuse across requests (KvCacheConfig.enable_block_reuse, "
            "TensorRT-LLM's prefix caching). TensorRT-LLM has no call that empties reused "
            "blocks, so a window could skip prefill that earlier work computed: None = off "
            "(llem's default; TensorRT-LLM's own default is on)."
        ),
    )
    kv_cache_free_gpu_memory_fraction: Annotated[float, B.MEMORY_FRACTION] | None = Field(
        None,
        description=(
            "Fraction of the GPU memory free after loading that the KV cache may take "
            "(KvCacheConfig.free_gpu_memory_fraction), in (0, 1]. None = TensorRT-LLM's default "
            "(0.9)."
        ),
    )
    engine_path: str | None = Field(
        None,
        description="Directory of a pre-built engine; skips the build. None = build from model.",
    )

    @classmethod
    def check_experiment(cls, config: ExperimentConfig) -> None:
        """Engines are built from a merged HF checkpoint (no LoRA, no GGUF); quantization
        follows precision; no draft model."""
        if config.lora is not None:
            raise ValueError(
                "lora: is not supported with backend tensorrt: TensorRT-LLM engines must be "
                "pre-merged. Merge with peft (PeftModel.from_pretrained(base, adapter)"
                ".merge_and_unload().save_pretrained('./merged')) and set model: ./merged"
            )
        if names_gguf(config.model, config.passthrough_kwargs):
            raise ValueError(
                "a GGUF model cannot be built into a TensorRT-LLM engine: use backend pytorch "
                "or vllm, or give the original HF checkpoint as model:"
            )
        trt_quant = config.tensorrt.quantization if config.tensorrt else None
        implied = TENSORRT_PRECISION_QUANT.get(config.precision)
        if trt_quant is not None and implied != trt_quant:
            want = next(p for p, q in TENSORRT_PRECISION_QUANT.items() if q == trt_quant)
            raise ValueError(
                f"tensorrt.quantization={trt_quant} needs precision: {want} "
                f"(got precision: {config.precision})"
            )
        if config.decoder.speculative_decoding:
            raise ValueError(
                "decoder.speculative_decoding (draft model) is not supported with the "
                "tensorrt engine in llem"
            )


#: Quantization methods that make precision int4 / int8 possible with vLLM.
VLLM_QUANT_FOR_PRECISION: dict[str, tuple[str, ...]] = {"int4": ("awq", "gptq"), "int8": ("gptq",)}
#: TensorRT-LLM: the quantization each precision implies (None: none).
TENSORRT_PRECISION_QUANT: dict[str, str | None] = {
    "fp16": None,
    "int8": "int8_sq",
    "int4": "int4_awq",
    "fp8": "fp8",
}


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
    if isinstance(value, HFDatasetConfig) or (isinstance(value, dict) and "hf" in value):
        return "hf"
    return "synthetic" if isinstance(value, (dict, SyntheticDatasetConfig)) else "name"


def _is_synthetic_mapping(value: Any) -> bool:
    return isinstance(value, dict) and "hf" not in value


def _default_n() -> int:
    return int(ExperimentConfig.model_fields["n"].default)


def _one_n(data: dict[str, Any], dataset: dict[str, Any]) -> None:
    """A synthetic dataset's ``n`` given once (the rule, in place): the top-level ``n`` and
    ``dataset.n`` each take the other's value when left out; both left out, the default ``n``.
    Both given, they stay as written (``dataset.n >= n`` is checked after validation)."""
    if "n" in data and "n" not in dataset:
        # an invalid n is reported once, against n, not again against dataset.n
        dataset["n"] = data["n"] if _valid_count(data["n"]) else 1
    elif "n" in dataset and "n" not in data:
        if _valid_count(dataset["n"]):
            data["n"] = dataset["n"]
    elif "n" not in data:
        dataset["n"] = _default_n()


def _valid_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and B.PROMPTS.contains(value)


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

    phase_split: bool = Field(
        False,
        description=(
            "After the window, measure a prefill-only window (max_new_tokens 1) and report the "
            "differential prefill/decode split; adds about one prefill pass of the workload to the"
            " run."
        ),
    )


DatasetSpec = Annotated[
    Annotated[str, Tag("name")]
    | Annotated[SyntheticDatasetConfig, Tag("synthetic")]
    | Annotated[HFDatasetConfig, Tag("hf")],
    Discriminator(_dataset_kind),
]


class ExperimentConfig(BaseModel):
    """One measurement: a model, an engine, a workload and how to measure it."""

    model_config = ConfigDict(**STRICT_CONFIG, protected_namespaces=())

    model: str = Field(
        min_length=1,
        description=(
            "HF hub id, local path, a .gguf file (PyTorch, vLLM), or builtin:tiny (a small "
            "random-weight model generated offline). A folder or hub repository holding "
            "several GGUF files takes passthrough_kwargs.gguf_file: NAME."
        ),
    )
    backend: Backend = Field(
        description="Inference engine: pytorch, vllm or tensorrt (the engine catalogue)."
    )
    precision: Precision = Field(
        "bf16",
        description=(
            "Weight/compute precision; each engine accepts a subset (validation says which)."
        ),
    )
    dataset: DatasetSpec = Field(
        "aienergyscore",
        description=(
            "aienergyscore, synthetic, a path to a .jsonl file, a synthetic mapping {n, "
            "input_len, output_len, seed}, or an HF dataset {hf, split, column, config, "
            "revision} (needs the datasets extra)."
        ),
    )
    n: Annotated[int, B.PROMPTS] = Field(
        100,
        description=(
            "Prompts measured (taken from the dataset in order); in online mode, requests sent. "
            "Unset with a synthetic mapping: its n."
        ),
    )
    max_new_tokens: Annotated[int, B.TOKENS] = Field(
        128,
        description=(
            "Most tokens generated per prompt (a synthetic dataset's output_len replaces it)."
        ),
    )
    random_seed: Annotated[int, B.SEED] = Field(
        42, description="Seed for sampling and any engine randomness."
    )
    chat_template: bool = Field(
        False,
        description=(
            "Wrap each prompt (any dataset) in the tokenizer's chat template as one user message "
            "with the generation prompt, before warmup and the window; a tokenizer without a "
            "template is a pre-flight error."
        ),
    )

    decoder: DecoderConfig = Field(
        default_factory=DecoderConfig, description="How tokens are chosen."
    )
    warmup: WarmupConfig = Field(
        default_factory=WarmupConfig, description="Warmup and thermal floor before the window."
    )
    baseline: BaselineConfig = Field(
        default_factory=BaselineConfig, description="Idle-power baseline."
    )
    measurement: MeasurementConfig = Field(
        default_factory=MeasurementConfig,
        description="Extra measurements beyond the headline window (the prefill/decode split).",
    )

    pytorch: PyTorchConfig | None = Field(
        None, description="transformers engine settings (backend: pytorch only)."
    )
    vllm: VLLMConfig | None = Field(None, description="vLLM engine settings (backend: vllm only).")
    tensorrt: TensorRTConfig | None = Field(
        None, description="TensorRT-LLM engine settings (backend: tensorrt only)."
    )

    lora: LoRAConfig | None = Field(
        None, description="A LoRA adapter on the base model (PyTorch, vLLM)."
    )
    passthrough_kwargs: dict[str, Any] | None = Field(
        None,
        description=(
            "Engine options without a config field of their own (PyTorch: from_pretrained and "
            "GenerationConfig keys; vLLM/TensorRT-LLM: engine arguments); a key that has a "
            "config field is an error. Part of the config hash."
        ),
    )

    # Online mode (issue 20): measure a server under load instead of an offline batch.
    mode: Literal["offline", "online"] = Field(
        "offline",
        description=(
            "offline: the engine generates a fixed batch of prompts; online: a server is measured "
            "under a request load."
        ),
    )
    online: OnlineConfig | None = Field(
        None, description="Server and load of an online run (required with mode: online)."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_synthetic_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # `dataset: synthetic` is shorthand for a synthetic set of `n` prompts with defaults.
        if data.get("dataset") == "synthetic":
            data = {**data, "dataset": {}}
        if isinstance(data.get("dataset"), SyntheticDatasetConfig):
            data = {**data, "dataset": data["dataset"].model_dump(exclude_unset=True)}
        dataset = data.get("dataset")
        if _is_synthetic_mapping(dataset):
            data = {**data, "dataset": dict(dataset)}
            _one_n(data, data["dataset"])
            # Synthetic output_len and max_new_tokens are one quantity: whichever is given fills
            # the other, so the config records what runs; both set and different is an error
            # for user input (_check_output_len_agrees).
            if "output_len" not in data["dataset"] and "max_new_tokens" in data:
                data["dataset"]["output_len"] = data["max_new_tokens"]
            elif "output_len" in data["dataset"] and "max_new_tokens" not in data:
                data["max_new_tokens"] = data["dataset"]["output_len"]
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
                    "a mapping {n, input_len, output_len, seed}, a path to a .jsonl file, or "
                    f"an HF dataset {{hf: {value}, split: ..., column: ...}}"
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
        for section in ENGINE_SECTION_MODELS:
            if getattr(self, section) is not None and spec.config_section != section:
                raise ValueError(
                    f"{section}: config section provided but backend={self.backend!r}. "
                    f"Remove the {section}: section or set backend: {section}."
                )
        problem = gguf_naming_problem(self.model, self.passthrough_kwargs)
        if problem is not None:
            raise ValueError(problem)
        section_model = ENGINE_SECTION_MODELS.get(spec.config_section or "")
        if section_model is not None:
            section_model.check_experiment(self)
        self._check_mode_section()
        if isinstance(self.dataset, SyntheticDatasetConfig) and self.dataset.n < self.n:
            raise ValueError(
                f"n={self.n} prompts requested but the synthetic dataset generates only "
                f"dataset.n={self.dataset.n} (give n once: either one alone sets both)"
            )
        return self

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
        if self.online is not None and self.online.request_rate != "inf":
            # the arrival schedule spans (n - 1) / rate seconds: a tiny rate must not make
            # the load last for years
            span = (self.n - 1) / float(self.online.request_rate)
            if span > B.MAX_LOAD_SECONDS:
                raise ValueError(
                    f"n={self.n} requests at online.request_rate={self.online.request_rate} "
                    f"req/s take {span / 86_400:,.1f} days to send, more than the limit of "
                    f"{B.MAX_LOAD_SECONDS / 86_400:g} days: raise request_rate or lower n"
                )

    @property
    def effective_max_new_tokens(self) -> int:
        """The run's new-token limit: a synthetic dataset's ``output_len``, else
        ``max_new_tokens``. The two agree in every config built by this version; a stored
        config of an older one may carry the default 128 beside its ``output_len``."""
        if isinstance(self.dataset, SyntheticDatasetConfig):
            return self.dataset.output_len
        return self.max_new_tokens

    def max_new_tokens_for(self, prompt_limit: int | None) -> int:
        """The new-token limit of one prompt: its own ``max_new_tokens`` (a JSONL row's),
        else the run's (``effective_max_new_tokens``). The one place this rule lives."""
        return self.effective_max_new_tokens if prompt_limit is None else int(prompt_limit)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """Load and validate an experiment YAML file; errors are ``ConfigError``."""
        from llenergymeasure.config.loading import load_experiment_config

        return load_experiment_config(path)


#: The ``ExperimentConfig`` fields that are engine sections, with their models (each belongs to
#: the one engine whose catalogue record names it as ``config_section``).
ENGINE_SECTION_MODELS: dict[str, type[EngineSection]] = {
    name: model
    for name, info in ExperimentConfig.model_fields.items()
    for model in get_args(info.annotation)
    if isinstance(model, type) and issubclass(model, EngineSection)
}
