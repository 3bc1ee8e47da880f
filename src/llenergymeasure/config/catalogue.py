"""Which config fields shape a loaded engine, and how many requests a run keeps in flight.

Minimal version for engine reuse (issue 14); the full engine catalogue (issue 17) replaces it.

- ``engine_load_key(config)``: 16-hex hash of the fields that are fixed when the engine loads.
  Two runs with equal keys can share one loaded engine; everything else (batch size, batching
  strategy, decoder, n, max_new_tokens, dataset, warmup, seed, baseline) is per-run.
  PyTorch: model, precision, ``attn_implementation``, ``load_in_4bit``/``load_in_8bit``,
  ``torch_compile``, ``num_processes``, the LoRA section (adapter and merge), the draft model,
  and every passthrough key (the engine routes some of them to ``from_pretrained``; which ones
  depends on the installed transformers, so all of them count: that can only split a group,
  never merge two that differ). vLLM and TensorRT-LLM: model, precision, the whole engine
  section and the LoRA section (an adapter is enabled when the engine starts).
- ``run_concurrency(config)``: requests in flight at once (PyTorch ``batch_size``, None -> 1;
  vLLM ``max_num_seqs``, None -> 256; TensorRT-LLM ``max_batch_size``, None -> 1).
"""

from __future__ import annotations

from typing import Any

from llenergymeasure.config.hashing import _canonical_json
from llenergymeasure.config.models import ExperimentConfig

__all__ = ["engine_load_fields", "engine_load_key", "run_concurrency"]

VLLM_DEFAULT_MAX_NUM_SEQS = 256


def engine_load_fields(config: ExperimentConfig) -> dict[str, Any]:
    """The load-time fields of ``config`` (JSON-ready), keyed by dotted name."""
    fields: dict[str, Any] = {
        "backend": config.backend,
        "model": config.model,
        "precision": config.precision,
        "lora": config.lora.model_dump(mode="json") if config.lora is not None else None,
    }
    if config.backend == "pytorch":
        pt = config.pytorch
        dec = config.decoder
        fields.update(
            {
                "pytorch.attn_implementation": pt.attn_implementation if pt else None,
                "pytorch.load_in_4bit": bool(pt.load_in_4bit) if pt else False,
                "pytorch.load_in_8bit": bool(pt.load_in_8bit) if pt else False,
                "pytorch.torch_compile": bool(pt.torch_compile) if pt else False,
                "pytorch.num_processes": (pt.num_processes or 1) if pt else 1,
                "decoder.draft_model": dec.draft_model if dec.speculative_decoding else None,
                "passthrough_kwargs": dict(config.passthrough_kwargs or {}),
            }
        )
    else:
        section = getattr(config, config.backend, None)
        fields[config.backend] = section.model_dump(mode="json") if section is not None else None
        fields["passthrough_kwargs"] = dict(config.passthrough_kwargs or {})
    return fields


def engine_load_key(config: ExperimentConfig) -> str:
    """16-hex hash of ``config``'s engine-load fields: equal keys = one loaded engine serves."""
    import hashlib

    canonical = _canonical_json(engine_load_fields(config))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_concurrency(config: ExperimentConfig) -> int:
    """How many requests ``config``'s engine keeps in flight at once."""
    if config.backend == "pytorch":
        return (config.pytorch.batch_size if config.pytorch else None) or 1
    if config.backend == "vllm":
        return (config.vllm.max_num_seqs if config.vllm else None) or VLLM_DEFAULT_MAX_NUM_SEQS
    if config.backend == "tensorrt":
        return (config.tensorrt.max_batch_size if config.tensorrt else None) or 1
    return 1
