"""Fake ``vllm.beam_search`` (``tokens`` include the prompt, as in vLLM 0.11.x)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BeamSearchSequence:
    tokens: list[int]
    logprobs: list[Any]
    lora_request: Any = None
    cum_logprob: float = 0.0
    text: str | None = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]
