"""The tiny experiment the tests share: ``builtin:tiny`` on CPU, 2 short prompts, no waiting."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["tiny_batch_study_yaml", "tiny_experiment"]

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


def tiny_batch_study_yaml(name: str) -> str:
    """Study YAML of two tiny runs (``pytorch.batch_size`` 1 and 2, one cycle, fp32): the
    smallest study that still exercises one run per config, e.g. through SLURM or containers."""
    return f"""\
name: {name}
model: builtin:tiny
backend: pytorch
precision: fp32
n: 2
dataset: {{n: 2, input_len: 8, output_len: 3}}
warmup: {{n_warmup: 0, thermal_floor_seconds: 0}}
baseline: {{enabled: false}}
sweep: {{pytorch.batch_size: [1, 2]}}
execution: {{n_cycles: 1}}
"""
