"""The vLLM engine's arguments: config -> ``vllm.LLM(...)`` keyword arguments, the documented
defaults recorded where the engine config cannot be read back, and the ``vllm serve`` command.

Every ``vllm:`` field is passed under its own name when set; ``None`` is not passed, so vLLM's
own default applies. ``precision`` -> ``dtype`` (fp16 -> float16, bf16 -> bfloat16; int4 / int8
run their activations in float16). Speculative decoding: ``speculative_config={"model":
draft_model, "num_speculative_tokens": 5}`` (``passthrough_kwargs.num_speculative_tokens``
overrides 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import engine_spec

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = [
    "CONFLICTING_KEYS",
    "DEFAULT_NUM_SPECULATIVE_TOKENS",
    "ENGINE_CONFIG_PATHS",
    "ENGINE_PASSTHROUGH_KEYS",
    "PRECISION_TO_DTYPE",
    "VLLM_DEFAULTS",
    "VLLM_SERVE_FLAGS",
    "build_engine_args",
    "conflicting_key_problems",
    "effective_value",
    "serve_argv",
]

DEFAULT_NUM_SPECULATIVE_TOKENS = 5

#: vLLM's documented defaults for the ``vllm:`` fields (recorded only when the engine config
#: cannot be read back). V1 may raise max_num_seqs on large GPUs; the engine config then wins.
VLLM_DEFAULTS: dict[str, Any] = {
    "max_num_seqs": engine_spec("vllm").default_concurrency,  # 256
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "enable_prefix_caching": True,  # V1 default
    "block_size": 16,
    "quantization": None,
    "enable_lora": False,
    "max_lora_rank": 16,
}

#: vllm: field -> (engine config section, attribute) for reading the effective value back.
ENGINE_CONFIG_PATHS: dict[str, tuple[str, str]] = {
    "max_num_seqs": ("scheduler_config", "max_num_seqs"),
    "tensor_parallel_size": ("parallel_config", "tensor_parallel_size"),
    "gpu_memory_utilization": ("cache_config", "gpu_memory_utilization"),
    "enable_prefix_caching": ("cache_config", "enable_prefix_caching"),
    "block_size": ("cache_config", "block_size"),
    "quantization": ("model_config", "quantization"),
    "max_lora_rank": ("lora_config", "max_lora_rank"),
}

PRECISION_TO_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "int8": "float16", "int4": "float16"}

#: ``VLLMConfig`` field -> ``vllm serve`` flag (booleans: ``--flag`` / ``--no-flag``).
VLLM_SERVE_FLAGS: dict[str, str] = {
    "max_num_seqs": "--max-num-seqs",
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "enable_prefix_caching": "--enable-prefix-caching",
    "block_size": "--block-size",
    "quantization": "--quantization",
    "enable_lora": "--enable-lora",
    "max_lora_rank": "--max-lora-rank",
}

#: passthrough_kwargs keys that have a config field of their own.
CONFLICTING_KEYS = {
    "model": "model",
    "dtype": "precision",
    "seed": "random_seed",
    "quantization": "vllm.quantization",
    "max_num_seqs": "vllm.max_num_seqs",
    "tensor_parallel_size": "vllm.tensor_parallel_size",
    "gpu_memory_utilization": "vllm.gpu_memory_utilization",
    "enable_prefix_caching": "vllm.enable_prefix_caching",
    "block_size": "vllm.block_size",
    "enable_lora": "vllm.enable_lora",
    "max_lora_rank": "vllm.max_lora_rank",
    "speculative_config": "decoder.draft_model",
}
#: passthrough_kwargs keys this engine interprets itself (not engine arguments):
#: ``num_speculative_tokens`` (the draft length of ``speculative_config``) and ``gguf_file``
#: (a GGUF file of the folder or hub repository ``model:``, given to vLLM as its path).
ENGINE_PASSTHROUGH_KEYS = frozenset({"num_speculative_tokens", "gguf_file"})


def build_engine_args(config: ExperimentConfig, model_source: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM(...)`` for ``config`` (None-sentinels omitted)."""
    v = config.vllm
    args: dict[str, Any] = {
        "model": model_source if model_source is not None else config.model,
        "dtype": PRECISION_TO_DTYPE.get(config.precision, config.precision),
        "seed": config.random_seed,
        "disable_log_stats": False,  # V1 collects per-request metrics only with stats on
    }
    if v is not None:
        for name in (
            "max_num_seqs",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "enable_prefix_caching",
            "block_size",
            "quantization",
            "enable_lora",
            "max_lora_rank",
        ):
            value = getattr(v, name)
            if value is not None:
                args[name] = value
    passthrough = dict(config.passthrough_kwargs or {})
    dec = config.decoder
    if dec.speculative_decoding and dec.draft_model:
        args["speculative_config"] = {
            "model": dec.draft_model,
            "num_speculative_tokens": int(
                passthrough.get("num_speculative_tokens", DEFAULT_NUM_SPECULATIVE_TOKENS)
            ),
        }
    for key, value in passthrough.items():
        if key not in ENGINE_PASSTHROUGH_KEYS and key not in CONFLICTING_KEYS:
            args[key] = value
    return args


def effective_value(vllm_config: Any, name: str, requested: Any) -> tuple[Any, str]:
    """(value, source) of one engine setting: the engine config (``llm.llm_engine.vllm_config``,
    None where unreadable) > config > documented default."""
    vc = vllm_config
    if vc is not None:
        if name == "dtype":
            value = getattr(getattr(vc, "model_config", None), "dtype", None)
            if value is not None:
                return str(value), "engine config"
        elif name == "enable_lora":
            if hasattr(vc, "lora_config"):
                return vc.lora_config is not None, "engine config"
        elif name in ENGINE_CONFIG_PATHS:
            section, attr = ENGINE_CONFIG_PATHS[name]
            obj = getattr(vc, section, None)
            if obj is not None and hasattr(obj, attr):
                return getattr(obj, attr), "engine config"
    if requested is not None:
        return requested, "config"
    return VLLM_DEFAULTS.get(name), "documented default"


def conflicting_key_problems(passthrough: dict[str, Any]) -> list[str]:
    """One problem per ``passthrough_kwargs`` key that a config field sets."""
    return [
        f"passthrough_kwargs.{key} is controlled by the config field "
        f"'{CONFLICTING_KEYS[key]}'; set it there instead"
        for key in passthrough
        if key in CONFLICTING_KEYS
    ]


def serve_argv(config: ExperimentConfig, *, model: str, host: str, port: int) -> list[str]:
    """``vllm serve MODEL``: each set ``vllm:`` field as its flag (``VLLM_SERVE_FLAGS``),
    ``--dtype`` from ``precision``, ``--seed`` from ``random_seed``, and
    ``--served-model-name`` from ``online.served_model_name``."""
    argv = ["vllm", "serve", model, "--host", host, "--port", str(port)]
    argv += ["--dtype", PRECISION_TO_DTYPE.get(config.precision, "auto")]
    argv += ["--seed", str(config.random_seed)]
    section = config.vllm.model_dump(exclude_none=True) if config.vllm is not None else {}
    for name, value in section.items():
        flag = VLLM_SERVE_FLAGS[name]
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif flag == "--enable-prefix-caching":
                argv.append("--no-enable-prefix-caching")
        else:
            argv += [flag, str(value)]
    served = config.online.served_model_name if config.online is not None else None
    if served:
        argv += ["--served-model-name", served]
    return argv
