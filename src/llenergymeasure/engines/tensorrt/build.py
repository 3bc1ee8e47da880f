"""The TensorRT-LLM engine's built engine: the compile-time fields and defaults, the
quantization a config implies, the supported release, the ``LLM(...)`` arguments of a load and
of a build, and the engine cache (``<llem cache>/trt-engines/<key>``, saved atomically)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import engine_spec
from llenergymeasure.config.engine_sections import TENSORRT_PRECISION_QUANT
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = [
    "COMPILE_TIME_FIELDS",
    "INSTALL_HINT",
    "MARKER_FILE",
    "QUANT_ALGOS",
    "SUPPORTED_SERIES",
    "TRT_DEFAULTS",
    "build_kwargs",
    "engine_cache_dir",
    "engine_cache_key",
    "gpu_name",
    "resolve_quantization",
    "runtime_kwargs",
    "save_to_cache",
    "trt_setting",
    "version_problem",
]

INSTALL_HINT = extra_install_hint("tensorrt")
MARKER_FILE = ".llem-engine-complete"
#: The TensorRT-LLM release series this engine is written and tested (against a fake) for.
SUPPORTED_SERIES = (1, 2)

#: Config fields baked into a built engine: changing any of them needs a rebuild.
COMPILE_TIME_FIELDS: dict[str, str] = {
    "model": "weights compiled into the engine",
    "precision": "engine dtype (float16) and the quantization it implies",
    "tensorrt.quantization": "QuantConfig.quant_algo applied at build time",
    "tensorrt.max_batch_size": "BuildConfig.max_batch_size (largest in-flight batch)",
    "tensorrt.max_seq_len": "BuildConfig.max_seq_len (prompt + generated tokens)",
    "tensorrt.tp_size": "tensor-parallel mapping (one engine per rank)",
    "tensorrt.pp_size": "pipeline-parallel mapping (one engine per rank)",
    "tensorrt.kv_cache_type": "BuildConfig.kv_cache_type (paged)",
}

#: What a None in the tensorrt: section resolves to (TensorRT-LLM 1.2 defaults, except
#: enable_block_reuse, which llem turns off).
TRT_DEFAULTS: dict[str, Any] = {
    "max_batch_size": engine_spec("tensorrt").default_concurrency,  # BuildConfig's 2048
    "max_seq_len": None,  # None: derived from the model's max_position_embeddings at build
    "tp_size": 1,
    "pp_size": 1,
    "kv_cache_type": "paged",  # BuildConfig.kv_cache_type None -> PAGED
    "enable_block_reuse": False,  # llem's choice; KvCacheConfig's own default is True
    "kv_cache_free_gpu_memory_fraction": 0.9,  # KvCacheConfig.free_gpu_memory_fraction
}

#: llem quantization name -> ``QuantAlgo`` member name.
QUANT_ALGOS: dict[str, str] = {
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "fp8": "FP8",
}


def resolve_quantization(config: ExperimentConfig) -> str | None:
    """The llem quantization name for ``config`` (explicit field, else implied by precision)."""
    t = config.tensorrt
    if t is not None and t.quantization is not None:
        return t.quantization
    return TENSORRT_PRECISION_QUANT.get(config.precision)


def version_problem(version: str) -> str | None:
    """Why ``version`` of TensorRT-LLM cannot run this engine, or None when it is a 1.2.x."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is not None and (int(match[1]), int(match[2])) == SUPPORTED_SERIES:
        return None
    major, minor = SUPPORTED_SERIES
    return (
        f"tensorrt engine targets TensorRT-LLM {major}.{minor}.x, found {version!r}: "
        f"install the pinned release with {INSTALL_HINT}"
    )


def trt_setting(config: ExperimentConfig, name: str) -> Any:
    """The ``tensorrt:`` field ``name`` of ``config``; None: ``TRT_DEFAULTS``."""
    t = config.tensorrt
    value = getattr(t, name) if t is not None else None
    return TRT_DEFAULTS.get(name) if value is None else value


def gpu_name() -> str:
    """Name of GPU 0 (engines are GPU-architecture specific), "unknown" if unreadable."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:
        pass
    return "unknown"


def engine_cache_key(config: ExperimentConfig, trt_version: str, gpu: str) -> str:
    """16-hex SHA-256 of the compile-time fields, the TensorRT-LLM version and the GPU name."""
    payload = {
        "model": config.model,
        "precision": config.precision,
        "quantization": resolve_quantization(config),
        "max_batch_size": trt_setting(config, "max_batch_size"),
        "max_seq_len": trt_setting(config, "max_seq_len"),
        "tp_size": trt_setting(config, "tp_size"),
        "pp_size": trt_setting(config, "pp_size"),
        "kv_cache_type": trt_setting(config, "kv_cache_type"),
        "tensorrt_llm_version": trt_version,
        "gpu": gpu,
    }
    canonical = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def engine_cache_dir(key: str) -> Path:
    """``<llem cache root>/trt-engines/<key>``."""
    from llenergymeasure.engines.builtin import llem_cache_root

    return llem_cache_root() / "trt-engines" / key


def runtime_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``LLM(...)`` kwargs every load passes: parallel mapping and the KV-cache config."""
    from tensorrt_llm.llmapi import KvCacheConfig

    kv: dict[str, Any] = {"enable_block_reuse": bool(trt_setting(config, "enable_block_reuse"))}
    t = config.tensorrt
    if t is not None and t.kv_cache_free_gpu_memory_fraction is not None:
        kv["free_gpu_memory_fraction"] = t.kv_cache_free_gpu_memory_fraction
    return {
        "tensor_parallel_size": trt_setting(config, "tp_size"),
        "pipeline_parallel_size": trt_setting(config, "pp_size"),
        "kv_cache_config": KvCacheConfig(**kv),
    }


def build_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """``LLM(...)`` kwargs a build adds: dtype, BuildConfig, QuantConfig."""
    from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

    t = config.tensorrt
    build_kw: dict[str, Any] = {}
    for name in ("max_batch_size", "max_seq_len"):
        value = getattr(t, name) if t is not None else None
        if value is not None:
            build_kw[name] = value
    # kv_cache_type: "paged" is the only value and BuildConfig's default (None -> PAGED).
    kwargs: dict[str, Any] = {"dtype": "float16", "build_config": BuildConfig(**build_kw)}
    quant = resolve_quantization(config)
    if quant is not None:
        kwargs["quant_config"] = QuantConfig(quant_algo=getattr(QuantAlgo, QUANT_ALGOS[quant]))
    return kwargs


def save_to_cache(
    llm: Any, target: Path, config: ExperimentConfig, version: str, cache_key: str | None
) -> None:
    """``llm.save`` (``LLM.save``) into a temp folder beside ``target``, with the build's
    facts and the completion marker, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from llenergymeasure.files import write_json, write_text

        llm.save(str(tmp))
        write_json(
            tmp / "llem-build.json",
            {
                "cache_key": cache_key,
                "tensorrt_llm_version": version,
                "compile_time": {
                    "model": config.model,
                    "precision": config.precision,
                    "quantization": resolve_quantization(config),
                    **{
                        k: trt_setting(config, k)
                        for k in (
                            "max_batch_size",
                            "max_seq_len",
                            "tp_size",
                            "pp_size",
                            "kv_cache_type",
                        )
                    },
                },
            },
            base=tmp,
        )
        write_text(tmp / MARKER_FILE, "ok\n", base=tmp)
        if target.exists():  # a concurrent build won: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        os.replace(tmp, target)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
