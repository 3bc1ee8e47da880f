"""Fake ``tensorrt_llm.llmapi`` (TensorRT-LLM 1.2): ``BuildConfig``, ``QuantConfig``,
``QuantAlgo`` and ``KvCacheConfig`` with the fields and defaults llem relies on.

``BuildConfig`` (``builder.py``): ``max_batch_size`` 2048, ``max_seq_len`` None,
``max_num_tokens`` 8192, ``kv_cache_type`` None (-> paged); it has no builder optimisation
level. ``KvCacheConfig`` (``llmapi/llm_args.py``, extra fields forbidden): ``enable_block_reuse``
True, ``free_gpu_memory_fraction`` 0.9.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class QuantAlgo(str, enum.Enum):
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A8_AWQ = "W4A8_AWQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    FP8 = "FP8"
    NVFP4 = "NVFP4"


@dataclass(kw_only=True)
class QuantConfig:
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None


@dataclass(kw_only=True)
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int | None = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    kv_cache_type: Any = None


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    enable_partial_reuse: bool = True
    tokens_per_block: int = 32
