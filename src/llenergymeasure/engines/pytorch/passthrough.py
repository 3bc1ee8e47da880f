"""How the PyTorch engine sorts ``passthrough_kwargs``: ``from_pretrained`` options (a fixed
set; a subset also to the tokenizer), ``generate`` options (any field of the installed
transformers' ``GenerationConfig``), keys the engine reads itself, and keys it refuses (a
config field sets them, or they would break one record per prompt)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONFLICTING_KEYS",
    "ENGINE_PASSTHROUGH_KEYS",
    "FORBIDDEN_GENERATE_KEYS",
    "LOAD_PASSTHROUGH_KEYS",
    "TOKENIZER_PASSTHROUGH_KEYS",
    "generation_passthrough_keys",
    "split_passthrough_kwargs",
]

#: ``passthrough_kwargs`` keys forwarded to ``from_pretrained`` (model; a subset to the tokenizer).
LOAD_PASSTHROUGH_KEYS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "low_cpu_mem_usage",
        "device_map",
        "max_memory",
        "offload_folder",
        "offload_state_dict",
        "offload_buffers",
        "quantization_config",
        "use_safetensors",
        "variant",
        "subfolder",
        "cache_dir",
        "local_files_only",
        "token",
        "code_revision",
        "use_kernels",
        "key_mapping",
        "force_download",
        "gguf_file",
    }
)
#: The subset of ``LOAD_PASSTHROUGH_KEYS`` also given to the tokenizer's ``from_pretrained``.
TOKENIZER_PASSTHROUGH_KEYS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "cache_dir",
        "local_files_only",
        "token",
        "force_download",
        "gguf_file",
    }
)

#: ``passthrough_kwargs`` keys this engine interprets itself.
#: ``torch_compile_mode``: ``torch.compile`` mode for transformers' generate compile path.
ENGINE_PASSTHROUGH_KEYS = frozenset({"torch_compile_mode"})

#: Keys that have a first-class config field: setting them in passthrough_kwargs is a conflict.
CONFLICTING_KEYS = {
    "dtype": "precision",
    "torch_dtype": "precision",
    "attn_implementation": "pytorch.attn_implementation",
    "load_in_4bit": "pytorch.load_in_4bit",
    "load_in_8bit": "pytorch.load_in_8bit",
    "max_new_tokens": "max_new_tokens",
    "min_new_tokens": "decoder.ignore_eos",
    "do_sample": "decoder.decoding_strategy",
    "num_beams": "decoder.num_beams",
    "temperature": "decoder.temperature",
    "top_p": "decoder.top_p",
    "top_k": "decoder.top_k",
    "repetition_penalty": "decoder.repetition_penalty",
    "assistant_model": "decoder.draft_model",
    "disable_compile": "pytorch.torch_compile",
}
#: generate() options that would break one-record-per-prompt accounting or are internal.
FORBIDDEN_GENERATE_KEYS = frozenset(
    {
        "num_return_sequences",
        "return_dict_in_generate",
        "streamer",
        "max_length",
        "is_assistant",
        "transformers_version",
        "_from_model_config",
    }
)


def _generation_config_keys() -> frozenset[str]:
    """Every option ``transformers.GenerationConfig`` knows (for the installed version)."""
    from transformers import GenerationConfig

    return frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_"))


def generation_passthrough_keys() -> tuple[str, frozenset[str]]:
    """("transformers <version>", the keys ``split_passthrough_kwargs`` sends to ``generate``):
    the installed ``GenerationConfig``'s fields less the keys it sorts elsewhere or refuses."""
    import transformers

    other = set(CONFLICTING_KEYS) | FORBIDDEN_GENERATE_KEYS
    other |= ENGINE_PASSTHROUGH_KEYS | LOAD_PASSTHROUGH_KEYS
    return f"transformers {transformers.__version__}", _generation_config_keys() - other


def split_passthrough_kwargs(
    kwargs: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """Split ``passthrough_kwargs`` into (load, generate, engine) kwargs and problems.

    Load keys are a fixed set of ``from_pretrained`` options; generate keys are whatever
    ``GenerationConfig`` accepts in the installed transformers. Unknown keys, and keys that
    have a config field of their own, are problems naming the key.
    """
    load: dict[str, Any] = {}
    gen: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    problems: list[str] = []
    if not kwargs:
        return load, gen, engine, problems
    gen_keys = _generation_config_keys()
    for key, value in kwargs.items():
        if key in CONFLICTING_KEYS:
            problems.append(
                f"passthrough_kwargs.{key} is controlled by the config field "
                f"'{CONFLICTING_KEYS[key]}'; set it there instead"
            )
        elif key in FORBIDDEN_GENERATE_KEYS:
            problems.append(
                f"passthrough_kwargs.{key} is not allowed with the pytorch engine "
                "(it would break per-request accounting)"
            )
        elif key in ENGINE_PASSTHROUGH_KEYS:
            engine[key] = value
        elif key in LOAD_PASSTHROUGH_KEYS:
            load[key] = value
        elif key in gen_keys:
            gen[key] = value
        else:
            problems.append(
                f"passthrough_kwargs.{key} is not a known option of the pytorch engine "
                "(neither a from_pretrained option nor a transformers GenerationConfig field)"
            )
    return load, gen, engine, problems
