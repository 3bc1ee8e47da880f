"""Fake ``tensorrt_llm.llmapi``: ``BuildConfig`` (``tensorrt_llm/builder.py``, 1.0 defaults; no
``builder_opt`` field in 1.0), ``QuantConfig(quant_algo=...)`` and ``QuantAlgo`` members."""

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


@dataclass
class QuantConfig:
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int | None = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    kv_cache_type: Any = None
