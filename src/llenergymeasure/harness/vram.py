"""Rough GPU-memory estimate from a model's ``config.json`` or GGUF header (no weights, no
torch).

Used by ``--dry-run`` and pre-flight. Weights: parameter count from the architecture
(decoder-only transformer shapes) x bytes per parameter; KV cache: 2 x layers x kv_heads x
head_dim x bytes x (batch x sequence length). Activations and allocator slack are not counted.

A GGUF model (``gguf_files``) is estimated from its header: the parameter count is the sum of
the tensors' element counts and the attention shape comes from its metadata. The weights count
as what the engine holds (the catalogue's ``gguf_as_stored``): PyTorch (transformers' GGUF
loader) dequantises every tensor to the run's torch dtype, so parameters x bytes of
``precision``; vLLM runs the quantised blocks, so the file's tensor data as stored.
(transformers 5.24 keeps the blocks packed instead for a few architectures when the ``kernels``
package and a published kernel are there; the dequantised figure is then an upper bound, the
safe side for a memory check.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llenergymeasure.config.catalogue import engine_section, engine_spec, run_concurrency
from llenergymeasure.config.models import ExperimentConfig, SyntheticDatasetConfig
from llenergymeasure.gguf_files import (
    GGUFError,
    GGUFHeader,
    gguf_model,
    is_gguf_path,
    names_gguf,
    read_gguf_header,
)

if TYPE_CHECKING:
    from llenergymeasure.energy.sensors import GpuSensor

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


class VramEstimate(BaseModel):
    """Estimated GPU memory for one experiment, in GiB."""

    parameters: int
    weights_gib: float
    kv_cache_gib: float
    total_gib: float
    source: str  # the config.json or .gguf file it came from
    basis: str | None = None  # how the weights were counted, where it is not config.json x dtype


def find_local_model_config(model: str) -> Path | None:
    """Path of a locally available ``config.json`` for ``model`` (no download), or None."""
    if model.startswith("builtin:"):
        from llenergymeasure.engines import builtin

        key = model.split(":", 1)[1]
        version = builtin._BUILTIN_MODELS.get(key)
        if version is None:
            return None
        folder = builtin.llem_cache_root() / "models" / version
        return folder / "config.json" if (folder / builtin.MARKER_FILE).exists() else None
    local = Path(model).expanduser()
    if (local / "config.json").exists():
        return local / "config.json"
    if "/" not in model or local.exists():
        return None
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub"
    )
    snapshots = Path(hub_cache) / f"models--{model.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir()):
            if (snap / "config.json").exists():
                return snap / "config.json"
    return None


def count_parameters(cfg: dict[str, Any]) -> int:
    """Parameter count of a decoder-only transformer from its HF config."""
    cfg = cfg.get("text_config", cfg)
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg.get("num_attention_heads", 1))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    vocab = int(cfg.get("vocab_size", 0))
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    gated = cfg.get("hidden_act", "silu") in ("silu", "swiglu", "gelu_pytorch_tanh") or cfg.get(
        "model_type"
    ) in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
    mlp = (3 if gated else 2) * hidden * inter
    norms = 2 * hidden
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * (attn + mlp + norms) + embed + hidden


def estimate_vram(
    model: str, precision: str, *, batch_size: int = 1, seq_len: int = 640
) -> VramEstimate | None:
    """Estimate GPU memory, or None when the model's config is not available locally."""
    path = find_local_model_config(model)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text())
        params = count_parameters(cfg)
        text = cfg.get("text_config", cfg)
        heads = int(text.get("num_attention_heads", 1))
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
        layers = int(text["num_hidden_layers"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        return None
    weight_bytes = BYTES_PER_PARAM.get(precision, 2.0)
    kv_bytes = 2 * layers * kv_heads * head_dim * min(weight_bytes, 2.0) * batch_size * seq_len
    gib = 1024.0**3
    weights = params * weight_bytes / gib
    kv = kv_bytes / gib
    return VramEstimate(
        parameters=params,
        weights_gib=round(weights, 3),
        kv_cache_gib=round(kv, 3),
        total_gib=round(weights + kv, 3),
        source=str(path),
    )


def estimate_gguf_vram(
    header: GGUFHeader, precision: str, *, backend: str, batch_size: int = 1, seq_len: int = 640
) -> VramEstimate:
    """``estimate_vram`` for a GGUF file, from its header (see the module docstring)."""
    params = header.parameter_count
    as_stored = engine_spec(backend).gguf_as_stored
    if as_stored:
        weight_bytes = float(header.tensor_data_bytes)
        basis = f"GGUF tensor data as stored ({backend} runs the quantised blocks)"
    else:
        weight_bytes = params * BYTES_PER_PARAM.get(precision, 2.0)
        basis = f"{params:,} GGUF parameters dequantised to {precision} ({backend})"
    kv_bytes = 0.0
    layers, kv_heads, head_dim = header.layers, header.kv_heads, header.head_dim
    if layers and kv_heads and head_dim:
        per_value = 4.0 if precision == "fp32" and not as_stored else 2.0
        kv_bytes = 2 * layers * kv_heads * head_dim * per_value * batch_size * seq_len
    else:
        basis += "; KV cache not estimated (no attention shape in the header)"
    gib = 1024.0**3
    return VramEstimate(
        parameters=params,
        weights_gib=round(weight_bytes / gib, 3),
        kv_cache_gib=round(kv_bytes / gib, 3),
        total_gib=round((weight_bytes + kv_bytes) / gib, 3),
        source=header.path,
        basis=basis,
    )


def config_gguf_header(config: ExperimentConfig) -> GGUFHeader | None:
    """The header of the GGUF file ``config`` names when it is on this machine and readable;
    None for other models (and for a file pre-flight reports as missing or damaged)."""
    revision, cache_dir = _hub_location(config)
    gguf = gguf_model(
        config.model, config.passthrough_kwargs, revision=revision, cache_dir=cache_dir
    )
    if gguf is None or gguf.local_path is None:
        return None
    try:
        return read_gguf_header(gguf.local_path)
    except GGUFError:
        return None


def _hub_location(config: ExperimentConfig) -> tuple[str | None, str | None]:
    """(revision, cache folder) of a hub model from ``passthrough_kwargs`` (PyTorch's
    ``cache_dir``, vLLM's ``download_dir``)."""
    extra = config.passthrough_kwargs or {}
    revision, cache = extra.get("revision"), extra.get("cache_dir") or extra.get("download_dir")
    return (
        revision if isinstance(revision, str) else None,
        cache if isinstance(cache, str) else None,
    )


def config_sequence_length(config: ExperimentConfig) -> int:
    """Tokens one request holds in the KV cache: synthetic input + output, else 512 + max_new."""
    if isinstance(config.dataset, SyntheticDatasetConfig):
        return config.dataset.input_len + config.dataset.output_len
    return 512 + config.effective_max_new_tokens


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_max_positions(model: str) -> int | None:
    """The model's maximum sequence length from a locally available ``config.json`` or GGUF
    header (no download, no torch), or None when neither the file nor a known key is there."""
    if is_gguf_path(model):
        try:
            return read_gguf_header(model).context_length
        except GGUFError:
            return None
    path = find_local_model_config(model)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    for key in _POSITION_KEYS:
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def synthetic_length_problems(config: ExperimentConfig) -> list[str]:
    """Pre-flight, before loading anything: synthetic prompts (``input_len`` + 1 BOS token) plus
    ``output_len`` new tokens against the model's ``config.json`` limit. Real prompts are checked
    after load, once the tokenizer can count them."""
    dataset = config.dataset
    if not isinstance(dataset, SyntheticDatasetConfig):
        return []
    header = config_gguf_header(config)
    limit = header.context_length if header is not None else model_max_positions(config.model)
    need = dataset.input_len + 1 + dataset.output_len
    if limit is None or need <= limit:
        return []
    return [
        f"synthetic prompts of dataset.input_len={dataset.input_len} (+1 BOS) + "
        f"output_len={dataset.output_len} new tokens = {need} exceed the maximum sequence length "
        f"{limit} of {config.model}"
    ]


def estimate_config_vram(config: ExperimentConfig) -> VramEstimate | None:
    """``estimate_vram`` for a config: its weight precision, the engine's concurrency
    (``run_concurrency``) and sequence length. The ``--dry-run`` preview and pre-flight both
    use this, so they agree."""
    if names_gguf(config.model, config.passthrough_kwargs):
        header = config_gguf_header(config)
        if header is None:
            return None
        return estimate_gguf_vram(
            header,
            weight_precision(config),
            backend=config.backend,
            batch_size=run_concurrency(config),
            seq_len=config_sequence_length(config),
        )
    return estimate_vram(
        config.model,
        weight_precision(config),
        batch_size=run_concurrency(config),
        seq_len=config_sequence_length(config),
    )


def weight_precision(config: ExperimentConfig) -> str:
    """Precision the weights are stored in: the engine section's override (bitsandbytes 4/8-bit
    loading), else ``precision``."""
    section = engine_section(config)
    override = section.weight_precision() if section is not None else None
    return override or config.precision


def vram_problems(sensor: GpuSensor | None, config: ExperimentConfig) -> list[str]:
    """Estimated weights + KV cache vs free memory of the first GPU (when both are known)."""
    if sensor is None or sensor.device_count() == 0:
        return []
    estimate = estimate_config_vram(config)
    info = sensor.device_info(0)
    used = sensor.read(0).memory_used_bytes
    if estimate is None or info.total_memory_bytes is None or used is None:
        return []
    free_gib = (info.total_memory_bytes - used) / 1024**3
    if estimate.total_gib > free_gib:
        return [
            f"estimated GPU memory {estimate.total_gib:.1f} GiB (weights "
            f"{estimate.weights_gib:.1f} + KV cache {estimate.kv_cache_gib:.1f}) exceeds the "
            f"{free_gib:.1f} GiB free on {info.name}"
        ]
    return []
