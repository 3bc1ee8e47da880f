"""The tiny experiment the tests share: ``builtin:tiny`` on CPU, 2 short prompts, no waiting."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["tiny_experiment"]

_TINY: dict[str, Any] = {
    "model": "builtin:tiny",
    "backend": "pytorch",
    "dataset": {"n": 2, "input_len": 8, "output_len": 4},
    "n": 2,
    "warmup": {"n_warmup": 0, "thermal_floor_seconds": 0},
    "baseline": {"enabled": False},
}


def tiny_experiment(**overrides: Any) -> dict[str, Any]:
    """A fresh mapping of the tiny experiment with top-level ``overrides`` applied.

    Two prompts of 8 tokens in, 4 out, no warmup, no thermal floor and no idle baseline: a run
    takes well under a second on CPU.
    """
    return {**copy.deepcopy(_TINY), **overrides}
