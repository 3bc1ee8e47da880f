"""Beam search on the vLLM engine: ``LLM.beam_search``, one call per distinct ``max_tokens``.

vLLM drives beam search one step at a time from Python, so its records carry no TTFT/ITL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "BEAM_NOTE",
    "DEFAULT_NUM_BEAMS",
    "BeamOutputs",
    "BeamPlan",
    "beam_plan",
    "beam_records",
    "run_beam",
]

DEFAULT_NUM_BEAMS = 4
BEAM_NOTE = "beam search (LLM.beam_search) has no per-token timing: ttft/itl not recorded"


@dataclass
class BeamPlan:
    """Beam search's inputs: each prompt's token ids, and (prompt positions, params) per
    distinct max_tokens."""

    ids: list[list[int]]
    groups: list[tuple[list[int], Any]]


@dataclass
class BeamOutputs:
    """Each beam-search call's prompt positions, outputs and wall time (s)."""

    ids: list[list[int]]
    calls: list[tuple[list[int], Sequence[Any], float]]


def beam_plan(
    tokenizer: Any, prompts: Sequence[Prompt], config: ExperimentConfig, limits: list[int]
) -> BeamPlan:
    """Token ids and one ``BeamSearchParams`` per distinct max_tokens (groups of prompts)."""
    from vllm.sampling_params import BeamSearchParams

    width = config.decoder.num_beams or DEFAULT_NUM_BEAMS
    groups = []
    for max_tokens in sorted(set(limits)):
        pos = [i for i, n in enumerate(limits) if n == max_tokens]
        params = BeamSearchParams(
            beam_width=width, max_tokens=max_tokens, ignore_eos=config.decoder.ignore_eos
        )
        groups.append((pos, params))
    ids = [list(tokenizer.encode(p.text)) for p in prompts]
    return BeamPlan(ids=ids, groups=groups)


def run_beam(llm: Any, lora_request: Any, plan: BeamPlan) -> BeamOutputs:
    """``LLM.beam_search``, one call per distinct max_tokens."""
    results: list[tuple[list[int], Sequence[Any], float]] = []
    for pos, params in plan.groups:
        lora = [lora_request] * len(pos) if lora_request is not None else None
        t0 = perf_counter()
        try:
            outs = llm.beam_search(
                [{"prompt_token_ids": plan.ids[i]} for i in pos], params, lora_request=lora
            )
        except Exception as e:
            raise BackendError(f"vllm beam search failed: {type(e).__name__}: {e}") from e
        results.append((pos, outs, perf_counter() - t0))
    return BeamOutputs(ids=plan.ids, calls=results)


def beam_records(prompts: Sequence[Prompt], out: BeamOutputs) -> list[RequestRecord]:
    """One record per prompt from the beam searches' best sequences; no TTFT/ITL."""
    records: list[RequestRecord | None] = [None] * len(prompts)
    for batch_index, (pos, outs, wall) in enumerate(out.calls):
        for i, beam in zip(pos, outs, strict=True):
            best = beam.sequences[0]
            records[i] = RequestRecord(
                index=prompts[i].index,
                input_tokens=len(out.ids[i]),
                # the sequence's tokens include the prompt's
                output_tokens=max(0, len(best.tokens) - len(out.ids[i])),
                latency_s=wall,
                ttft_s=None,
                batch_index=batch_index,
            )
    return [r for r in records if r is not None]
