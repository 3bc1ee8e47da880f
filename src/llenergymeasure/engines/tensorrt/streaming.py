"""Per-token timing on TensorRT-LLM: every prompt submitted with ``generate_async(...,
streaming=True)`` from one asyncio loop, each streamed response stamped with ``perf_counter()``
as it reaches llem (with the request's token count so far; nothing else happens per response
inside the window), and, when the records are built after the window, the tokens that arrive
together spread evenly over the interval since the previous stamp."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.base import RequestRecord

if TYPE_CHECKING:
    from llenergymeasure.datasets import Prompt

__all__ = ["Stream", "stream_all", "stream_record"]


@dataclass
class Stream:
    """One streamed request as ``execute`` saw it: submission (``time.monotonic`` and
    ``perf_counter``), each response's arrival (``perf_counter``, tokens so far), the end of
    the stream and the final output."""

    submitted_at: float
    t_in: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    t_done: float = 0.0
    final: Any = None


def stream_all(llm: Any, prompts: Sequence[Prompt], params: list[Any]) -> list[Stream]:
    """All requests in flight together, as ``LLM.generate`` submits them; prompt order kept."""
    return asyncio.run(_stream_all(llm, prompts, params))


async def _stream_all(llm: Any, prompts: Sequence[Prompt], params: list[Any]) -> list[Stream]:
    return list(
        await asyncio.gather(
            *(_stream_one(llm, p, sp) for p, sp in zip(prompts, params, strict=True))
        )
    )


async def _stream_one(llm: Any, prompt: Prompt, sampling_params: Any) -> Stream:
    """One request: submit, then stamp every streamed response as it arrives (its time and
    the request's token count so far; the per-token times are spread after the window)."""
    stream = Stream(submitted_at=monotonic(), t_in=perf_counter())  # monotonic: the sampler's
    responses = llm.generate_async(prompt.text, sampling_params=sampling_params, streaming=True)
    output: Any = None
    async for output in responses:
        stream.arrivals.append((perf_counter(), len(output.outputs[0].token_ids)))
    stream.t_done = perf_counter()
    stream.final = output
    return stream


def stream_record(prompt: Prompt, stream: Stream) -> RequestRecord:
    """The record of one streamed request: tokens that arrive together share the interval
    since the previous response evenly; the final output's count is authoritative (e.g.
    trimmed stop words)."""
    times: list[float] = []
    for now, total in stream.arrivals:
        new = total - len(times)
        if new > 0:
            start = times[-1] if times else now
            times.extend(start + (now - start) * (k + 1) / new for k in range(new))
    if stream.final is not None:
        del times[len(stream.final.outputs[0].token_ids) :]
    prompt_ids = getattr(stream.final, "prompt_token_ids", None) if stream.final else None
    t_in = stream.t_in
    return RequestRecord(
        index=prompt.index,
        input_tokens=len(prompt_ids or []),
        output_tokens=len(times),
        latency_s=(times[-1] - t_in) if times else stream.t_done - t_in,
        ttft_s=(times[0] - t_in) if times else None,
        itl_s=[b - a for a, b in itertools.pairwise(times)],
        start_s=stream.submitted_at,
    )
