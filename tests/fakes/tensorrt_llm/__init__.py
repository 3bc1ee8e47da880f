"""Fake ``tensorrt_llm`` (TensorRT-LLM 1.2 LLM API) for llem's tests.

Follows the 1.2 public names and signatures llem calls (keyword names, defaults, which class
accepts which argument); outputs are deterministic and no GPU work happens.

- ``tensorrt_llm.LLM`` is the PyTorch backend (``llmapi/llm.py``: ``class LLM(_TorchLLM)``):
  it builds no engine and refuses TensorRT-only arguments such as ``build_config``.
- The TensorRT-engine flow is ``tensorrt_llm._tensorrt_engine.LLM`` (``_TrtLLM``).
- ``SamplingParams`` (``sampling_params.py``): a keyword-only dataclass; ``top_k`` None means
  all logits (greedy needs ``top_k=1``); ``best_of`` defaults to ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__version__ = "1.2.1"
__all__ = ["LLM", "SamplingParams"]

#: ``TrtLlmArgs`` fields that ``TorchLlmArgs`` lacks: the PyTorch ``LLM`` refuses them.
TRT_ONLY_ARGS = frozenset({"build_config", "quant_config", "calib_config", "workspace"})


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
    detokenize: bool = True

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")


class LLM:
    """The 1.2 PyTorch-backend LLM: builds no TensorRT engine."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        trt_only = sorted(k for k in kwargs if k in TRT_ONLY_ARGS)
        if trt_only:
            raise ValueError(
                "The following arguments are specific to TensorRT backend and cannot be used "
                f"with PyTorch backend: {trt_only}."
            )
        self.model = model
