"""Single source of truth for what each engine supports.

Anything absent is invalid. Update here when an engine gains a capability.
"""

from __future__ import annotations

from typing import Final

BACKENDS: Final[tuple[str, ...]] = ("pytorch", "vllm", "tensorrt")

PRECISION_SUPPORT: Final[dict[str, list[str]]] = {
    "pytorch": ["fp32", "fp16", "bf16"],
    "vllm": ["fp16", "bf16", "int8", "int4"],
    "tensorrt": ["fp16", "int8", "fp8", "int4"],  # fp32/bf16 not supported
}

DECODING_SUPPORT: Final[dict[str, list[str]]] = {
    "pytorch": ["greedy", "sampling", "beam"],
    "vllm": ["greedy", "sampling", "beam"],
    "tensorrt": ["greedy", "sampling"],  # no beam search
}

# The Python module whose presence means an engine is installed, and how to install it.
ENGINE_MODULES: Final[dict[str, str]] = {
    "pytorch": "transformers",
    "vllm": "vllm",
    "tensorrt": "tensorrt_llm",
}

ENGINE_EXTRAS: Final[dict[str, str]] = {
    "pytorch": 'pip install "llenergymeasure[pytorch]"',
    "vllm": 'pip install "llenergymeasure[vllm]"',
    "tensorrt": 'pip install "llenergymeasure[tensorrt]"',
}

BUILTIN_DATASETS: Final[tuple[str, ...]] = ("aienergyscore", "synthetic")
