"""The PyTorch engine's settings from a config: what a None in the ``pytorch:`` section
resolves to, the ``generate`` keyword arguments of a run, and the ``transformers serve``
command of online mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.exceptions import ConfigError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = [
    "DEFAULT_BATCHING_STRATEGY",
    "DEFAULT_NUM_BEAMS",
    "DEFAULT_NUM_PROCESSES",
    "DEFAULT_TORCH_COMPILE",
    "PRECISION_TO_DTYPE",
    "batch_size",
    "batching_strategy",
    "decoding_kwargs",
    "serve_argv",
    "torch_compile",
]

# batch_size: the catalogue's run_concurrency (the one place concurrency defaults live).
DEFAULT_BATCHING_STRATEGY = "static"
DEFAULT_TORCH_COMPILE = False
DEFAULT_NUM_BEAMS = 4
DEFAULT_NUM_PROCESSES = 1

#: ``precision`` -> torch dtype name.
PRECISION_TO_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def batch_size(config: ExperimentConfig) -> int:
    """Prompts per ``generate`` call (``pytorch.batch_size``, None: the catalogue's default)."""
    return run_concurrency(config)


def batching_strategy(config: ExperimentConfig) -> str:
    """``pytorch.batching_strategy`` (None: ``static``)."""
    s = config.pytorch.batching_strategy if config.pytorch is not None else None
    return DEFAULT_BATCHING_STRATEGY if s is None else str(s)


def torch_compile(config: ExperimentConfig) -> bool:
    """``pytorch.torch_compile`` (None: off)."""
    tc = config.pytorch.torch_compile if config.pytorch is not None else None
    return DEFAULT_TORCH_COMPILE if tc is None else bool(tc)


def decoding_kwargs(
    config: ExperimentConfig,
    *,
    tokenizer: Any,
    draft: Any,
    engine_kwargs: dict[str, Any],
    gen_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """generate() kwargs fixed for the whole run (everything except the length limits), for
    the loaded ``tokenizer`` and ``draft`` model and the passthrough engine and generate
    kwargs."""
    dec = config.decoder
    kw: dict[str, Any] = {
        "pad_token_id": tokenizer.pad_token_id,
        "repetition_penalty": dec.repetition_penalty,
    }
    if dec.decoding_strategy == "sampling":
        kw.update(
            do_sample=True,
            num_beams=1,
            temperature=dec.temperature,
            top_p=dec.top_p,
            top_k=0 if dec.top_k is None else dec.top_k,  # 0 = no top-k filtering
        )
    elif dec.decoding_strategy == "beam":
        kw.update(do_sample=False, num_beams=dec.num_beams or DEFAULT_NUM_BEAMS)
    else:
        kw.update(do_sample=False, num_beams=1)
    if draft is not None:
        kw["assistant_model"] = draft
    compile_on = torch_compile(config)
    kw["disable_compile"] = not compile_on
    if compile_on:
        # transformers' own compile path: compiled forward over a static KV cache
        kw["cache_implementation"] = "static"
        mode = engine_kwargs.get("torch_compile_mode")
        if mode is not None:
            from transformers import CompileConfig

            kw["compile_config"] = CompileConfig(mode=mode)
    kw.update(gen_kwargs)
    if "stop_strings" in kw:
        kw["tokenizer"] = tokenizer
    return kw


def serve_argv(config: ExperimentConfig, *, model: str, host: str, port: int) -> list[str]:
    """``transformers serve MODEL`` (the model is pinned): ``--dtype``, ``--default-seed``,
    ``--attn-implementation``, ``--compile``, ``--quantization bnb-4bit|bnb-8bit`` and
    ``--continuous-batching`` for ``batching_strategy: dynamic``; ``online.served_model_name``
    is a config error (transformers serve names the model itself)."""
    online = config.online
    if online is not None and online.served_model_name:
        raise ConfigError(
            "online.served_model_name is not supported with transformers serve "
            "(it serves the model under its own name)",
            hint="remove online.served_model_name",
        )
    argv = ["transformers", "serve", model, "--host", host, "--port", str(port)]
    argv += ["--dtype", PRECISION_TO_DTYPE.get(config.precision, "auto")]
    argv += ["--default-seed", str(config.random_seed)]
    p = config.pytorch
    if p is not None:
        if p.attn_implementation is not None:
            argv += ["--attn-implementation", p.attn_implementation]
        if p.torch_compile:
            argv.append("--compile")
        if p.load_in_4bit:
            argv += ["--quantization", "bnb-4bit"]
        elif p.load_in_8bit:
            argv += ["--quantization", "bnb-8bit"]
        if p.batching_strategy == "dynamic":
            argv.append("--continuous-batching")
    return argv
