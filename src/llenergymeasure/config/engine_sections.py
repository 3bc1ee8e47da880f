"""Engine config sections: each engine's own settings (``pytorch:``, ``vllm:``, ``tensorrt:``)
and its rules across the whole experiment (``check_experiment``), so that ``ExperimentConfig``
itself names no engine. ``None`` in a field means "the engine's own default"."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, model_validator

from llenergymeasure.config import bounds as B
from llenergymeasure.config.experiment_parts import DecoderConfig, LoRAConfig
from llenergymeasure.config.strict import STRICT_CONFIG
from llenergymeasure.gguf_files import names_gguf

__all__ = [
    "TENSORRT_PRECISION_QUANT",
    "VLLM_QUANT_FOR_PRECISION",
    "EngineSection",
    "ExperimentView",
    "PyTorchConfig",
    "TensorRTConfig",
    "VLLMConfig",
]

_FORBID = STRICT_CONFIG


class ExperimentView(Protocol):
    """What an engine section's experiment-wide rules read of an ``ExperimentConfig`` (typed
    here so that this module does not import ``config.models``, which imports it)."""

    @property
    def model(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def decoder(self) -> DecoderConfig: ...
    @property
    def lora(self) -> LoRAConfig | None: ...
    @property
    def passthrough_kwargs(self) -> dict[str, Any] | None: ...
    @property
    def pytorch(self) -> PyTorchConfig | None: ...
    @property
    def vllm(self) -> VLLMConfig | None: ...
    @property
    def tensorrt(self) -> TensorRTConfig | None: ...


class EngineSection(BaseModel):
    """Base of an engine's config section (an ``ExperimentConfig`` field named by the
    catalogue's ``config_section``): the engine's settings, and its rules across the whole
    experiment, so that ``ExperimentConfig`` itself names no engine."""

    model_config = _FORBID

    @classmethod
    def check_experiment(cls, config: ExperimentView) -> None:
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
    def check_experiment(cls, config: ExperimentView) -> None:
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
    def check_experiment(cls, config: ExperimentView) -> None:
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
    def check_experiment(cls, config: ExperimentView) -> None:
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
