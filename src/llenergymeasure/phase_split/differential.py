"""Prefill/decode energy split by the differential method.

A run measures two windows over the same prompts and batching: the full window, and a
prefill-only window with ``max_new_tokens`` 1 (each request runs its prefill and emits its
first token, nothing else). Then:

- ``energy_prefill_j`` = energy of the prefill-only window. The first generated token belongs
  to prefill: it comes out of the prefill forward pass.
- ``energy_decode_j`` = full - prefill; the decode tokens are ``output_tokens - requests``
  (every request's tokens after its first).
- J per input token (prefill) = ``energy_prefill_j / input_tokens``; J per decode token =
  ``energy_decode_j / decode_tokens``.
- Baseline-adjusted: the idle baseline power times each window's duration is subtracted
  first (prefill: ``E_p - P0 * d_p``; total: ``E - P0 * d``; decode = the difference, i.e.
  ``E_d - P0 * (d - d_p)``). Not clipped: a negative figure means the baseline exceeded the
  draw and is reported as such.

The split is refused (``None`` and the reason) when the prefill window used more energy or
time than the full one, or when no decode token was generated. It assumes the prefill window
repeats the prefill of the full run: same prompts, batching, warmup and thermal rules.

``predict_energy_j`` uses the split to predict another output length over the same prompts:
``prefill + J_per_decode_token x (output_tokens - requests)``. The issue's GPU check: a run
with twice the output length vs that prediction.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["PhaseSplit", "differential_phase_split", "predict_energy_j"]


class PhaseSplit(BaseModel):
    """Prefill/decode energy of one configuration (``method`` says how it was obtained).

    Raw figures include the idle draw; ``*_adjusted_*`` subtract the idle baseline (``None``
    without a baseline). Shares are fractions of the total (raw / adjusted).
    """

    model_config = {"extra": "forbid"}

    method: Literal["differential"] = Field(
        "differential", description="How the split was obtained."
    )
    requests: int = Field(description="Requests in each window.")
    input_tokens: int = Field(description="Prompt tokens.")
    output_tokens: int = Field(description="Output tokens of the full window.")
    decode_tokens: int = Field(
        description=(
            "Every request's tokens after its first (output_tokens - requests when each "
            "generated one); the first token belongs to prefill."
        )
    )
    energy_total_j: float = Field(description="Energy of the full window, J.")
    energy_prefill_j: float = Field(description="Energy of the prefill-only window, J.")
    energy_decode_j: float = Field(description="energy_total_j - energy_prefill_j, J.")
    duration_total_s: float = Field(description="Full window, seconds.")
    duration_prefill_s: float = Field(description="Prefill-only window, seconds.")
    duration_decode_s: float = Field(description="Difference of the two, seconds.")
    j_per_input_token_prefill: float = Field(
        description="energy_prefill_j / input_tokens, J per token."
    )
    j_per_decode_token: float = Field(description="energy_decode_j / decode_tokens, J per token.")
    share_prefill: float = Field(description="Prefill's fraction of the total energy.")
    share_decode: float = Field(description="Decode's fraction of the total energy.")
    baseline_power_w: float | None = Field(
        None, description="Idle power subtracted in the adjusted figures, W."
    )
    energy_total_adjusted_j: float | None = Field(
        None, description="Total minus idle power x duration, J."
    )
    energy_prefill_adjusted_j: float | None = Field(
        None, description="Prefill minus idle power x its duration, J."
    )
    energy_decode_adjusted_j: float | None = Field(
        None, description="Adjusted total - adjusted prefill, J."
    )
    j_per_input_token_prefill_adjusted: float | None = Field(
        None, description="Adjusted prefill energy per input token, J."
    )
    j_per_decode_token_adjusted: float | None = Field(
        None, description="Adjusted decode energy per decode token, J."
    )
    share_prefill_adjusted: float | None = Field(
        None, description="Prefill's fraction of the adjusted total."
    )
    share_decode_adjusted: float | None = Field(
        None, description="Decode's fraction of the adjusted total."
    )
    notes: list[str] = Field(default_factory=list, description="Caveats of the split.")


def _finite(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"{name} is not a finite number ({value})"
    return None


def differential_phase_split(
    *,
    total_energy_j: float,
    total_duration_s: float,
    input_tokens: int,
    output_tokens: int,
    requests: int,
    prefill_energy_j: float,
    prefill_duration_s: float,
    baseline_power_w: float | None = None,
    decode_tokens: int | None = None,
) -> tuple[PhaseSplit | None, str | None]:
    """The differential split of a full window and its prefill-only twin.

    ``decode_tokens``: every request's tokens after its first (default ``output_tokens -
    requests``, right when every request generated at least one token).
    Returns ``(split, None)``, or ``(None, reason)`` when the numbers cannot give a split.
    """
    refused = _windows_refusal(
        total_energy_j,
        total_duration_s,
        prefill_energy_j,
        prefill_duration_s,
        requests,
        input_tokens,
    )
    if refused:
        return None, refused
    if decode_tokens is None:
        decode_tokens = output_tokens - requests
    if decode_tokens <= 0:
        return None, (
            f"no decode token: {output_tokens} output tokens for {requests} requests "
            "(the first token of each belongs to prefill)"
        )
    decode_j = total_energy_j - prefill_energy_j
    adjusted, notes = _baseline_adjusted(
        baseline_power_w,
        total_energy_j,
        total_duration_s,
        prefill_energy_j,
        prefill_duration_s,
        input_tokens,
        decode_tokens,
    )
    return (
        PhaseSplit(
            requests=requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            decode_tokens=decode_tokens,
            energy_total_j=total_energy_j,
            energy_prefill_j=prefill_energy_j,
            energy_decode_j=decode_j,
            duration_total_s=total_duration_s,
            duration_prefill_s=prefill_duration_s,
            duration_decode_s=total_duration_s - prefill_duration_s,
            j_per_input_token_prefill=prefill_energy_j / input_tokens,
            j_per_decode_token=decode_j / decode_tokens,
            share_prefill=prefill_energy_j / total_energy_j if total_energy_j else 0.0,
            share_decode=decode_j / total_energy_j if total_energy_j else 0.0,
            baseline_power_w=baseline_power_w,
            notes=notes,
            **adjusted,
        ),
        None,
    )


def _windows_refusal(
    total_energy_j: float,
    total_duration_s: float,
    prefill_energy_j: float,
    prefill_duration_s: float,
    requests: int,
    input_tokens: int,
) -> str | None:
    """Why the two windows cannot give a split (``None`` when they can)."""
    for name, value in (
        ("total_energy_j", total_energy_j),
        ("total_duration_s", total_duration_s),
        ("prefill_energy_j", prefill_energy_j),
        ("prefill_duration_s", prefill_duration_s),
    ):
        problem = _finite(name, value)
        if problem:
            return problem
    if requests <= 0:
        return f"no request was run (requests = {requests})"
    if input_tokens <= 0:
        return f"the prompts have no input tokens (input_tokens = {input_tokens})"
    if prefill_energy_j < 0 or total_energy_j < 0:
        return "a window has negative energy"
    if prefill_energy_j > total_energy_j:
        return (
            f"the prefill-only window used more energy ({prefill_energy_j:.3f} J) than the "
            f"full run ({total_energy_j:.3f} J): the two windows are not comparable "
            "(noise larger than the decode energy, or a different workload)"
        )
    if prefill_duration_s > total_duration_s:
        return (
            f"the prefill-only window lasted longer ({prefill_duration_s:.3f} s) than the "
            f"full run ({total_duration_s:.3f} s)"
        )
    return None


def _baseline_adjusted(
    baseline_power_w: float | None,
    total_energy_j: float,
    total_duration_s: float,
    prefill_energy_j: float,
    prefill_duration_s: float,
    input_tokens: int,
    decode_tokens: int,
) -> tuple[dict[str, float | None], list[str]]:
    """The ``*_adjusted_*`` fields (``None`` without a baseline) and their notes."""
    notes: list[str] = []
    adjusted: dict[str, float | None] = {
        "energy_total_adjusted_j": None,
        "energy_prefill_adjusted_j": None,
        "energy_decode_adjusted_j": None,
        "j_per_input_token_prefill_adjusted": None,
        "j_per_decode_token_adjusted": None,
        "share_prefill_adjusted": None,
        "share_decode_adjusted": None,
    }
    if baseline_power_w is None:
        return adjusted, notes
    total_adj = total_energy_j - baseline_power_w * total_duration_s
    prefill_adj = prefill_energy_j - baseline_power_w * prefill_duration_s
    decode_adj = total_adj - prefill_adj
    adjusted.update(
        energy_total_adjusted_j=total_adj,
        energy_prefill_adjusted_j=prefill_adj,
        energy_decode_adjusted_j=decode_adj,
        j_per_input_token_prefill_adjusted=prefill_adj / input_tokens,
        j_per_decode_token_adjusted=decode_adj / decode_tokens,
        share_prefill_adjusted=prefill_adj / total_adj if total_adj else None,
        share_decode_adjusted=decode_adj / total_adj if total_adj else None,
    )
    if min(prefill_adj, decode_adj) < 0:
        notes.append(
            "a baseline-adjusted phase energy is negative: the idle baseline "
            f"({baseline_power_w:.1f} W) exceeds that phase's mean draw"
        )
    return adjusted, notes


def predict_energy_j(
    split: PhaseSplit, output_tokens: int, *, adjusted: bool = False
) -> float | None:
    """Predicted energy of a run of the same prompts producing ``output_tokens`` in all.

    ``prefill + J_per_decode_token x (output_tokens - requests)``; baseline-adjusted with
    ``adjusted`` (``None`` when the split has no baseline).
    """
    decode_tokens = output_tokens - split.requests
    if decode_tokens < 0:
        raise ValueError(
            f"{output_tokens} output tokens is fewer than one per request ({split.requests})"
        )
    if adjusted:
        if split.energy_prefill_adjusted_j is None or split.j_per_decode_token_adjusted is None:
            return None
        return split.energy_prefill_adjusted_j + split.j_per_decode_token_adjusted * decode_tokens
    return split.energy_prefill_j + split.j_per_decode_token * decode_tokens
