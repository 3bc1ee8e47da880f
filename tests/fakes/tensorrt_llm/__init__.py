"""Fake ``tensorrt_llm`` (TensorRT-LLM 1.0 LLM API) for llem's tests.

``tensorrt_llm.LLM`` is the PyTorch backend in 1.0 (it refuses ``build_config``); the
TensorRT-engine flow is ``tensorrt_llm._tensorrt_engine.LLM``. ``SamplingParams`` follows
``tensorrt_llm/sampling_params.py`` (kw-only dataclass; greedy = top_k None/1 and top_p None/0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

__version__ = "1.0.0"
__all__ = ["LLM", "BuildConfig", "QuantAlgo", "QuantConfig", "SamplingParams"]


@dataclass(kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    return_perf_metrics: bool = False
    ignore_eos: bool = False


class LLM:
    """The 1.0 PyTorch-backend LLM: builds no TensorRT engine."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        if "build_config" in kwargs:
            raise ValueError("build_config is not supported by the PyTorch backend")
        self.model = model
