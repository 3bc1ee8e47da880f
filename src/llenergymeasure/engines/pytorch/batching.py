"""The PyTorch engine's batches: prompts tokenised once, grouped, left-padded and moved to the
device before the window; a per-batch step timer (a ``generate`` streamer) inside it; output
counts and one ``RequestRecord`` per prompt after it."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.base import RequestRecord
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.datasets import Prompt

__all__ = [
    "Batch",
    "BatchRun",
    "StepTimer",
    "batch_records",
    "build_batches",
    "encode_prompts",
    "make_streamer",
    "output_counts",
]


class StepTimer:
    """A generate() streamer that timestamps every decoding step and does nothing else.

    transformers calls ``put`` once with the prompt ids, then once per step with that step's new
    tokens (shape ``[batch]``; assisted generation passes ``[1, k]`` for ``k`` accepted tokens),
    then ``end``. The prompt call is skipped. ``put`` keeps the time and a reference to the
    step's tensor; how many tokens the step gave is read after the window (``token_times``).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[Any] = []
        self.end_time: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        now = perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(now)
        self.values.append(value)

    def end(self) -> None:
        self.end_time = perf_counter()

    def token_times(self) -> list[float]:
        """One timestamp per generated position (tokens of one step share its time)."""
        sizes = [int(v.shape[-1]) if v.dim() > 1 else 1 for v in self.values]
        if all(n == 1 for n in sizes):
            return self.times
        out: list[float] = []
        for t, n in zip(self.times, sizes, strict=True):
            out.extend([t] * n)
        return out


@functools.lru_cache(maxsize=1)
def _streamer_class() -> type:
    """``StepTimer`` mixed with transformers' ``BaseStreamer`` (built lazily, once)."""
    from transformers.generation.streamers import BaseStreamer

    return type("StepTimerStreamer", (StepTimer, BaseStreamer), {})


def make_streamer() -> StepTimer:
    """A fresh per-batch step timer usable as a generate() streamer."""
    timer: StepTimer = _streamer_class()()
    return timer


@dataclass
class Batch:
    """One prepared batch: prompt positions, input lengths, padded ids and mask on the device,
    its generate arguments (with its ``max_new_tokens``) and its step timer (None: beam search,
    which transformers cannot stream)."""

    positions: list[int]
    input_lengths: list[int]
    input_ids: Any
    attention_mask: Any
    kwargs: dict[str, Any]
    streamer: StepTimer | None


@dataclass
class BatchRun:
    """What ``execute`` kept of one batch: its start on the sampler's clock (``monotonic``),
    its start and end on ``perf_counter``, and its generated ids (on the host)."""

    batch: Batch
    start_s: float
    t0: float
    t_end: float
    generated: Any


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Every prompt's token ids, in one tokenizer call; a prompt of no tokens is an error."""
    encoded: list[list[int]] = tokenizer([p.text for p in prompts])["input_ids"]
    for p, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise BackendError(f"prompt {p.index} tokenises to zero tokens")
    return encoded


def build_batches(
    encoded: list[list[int]],
    limits: list[int],
    base_kw: dict[str, Any],
    *,
    pad_id: int,
    batch_size: int,
    dynamic: bool,
    ignore_eos: bool,
    device: Any,
) -> list[Batch]:
    """Batches of ``batch_size`` prompts (``dynamic``: sorted by token length first), each
    left-padded with its mask on ``device``; its ``max_new_tokens`` is the largest limit of
    its prompts (``ignore_eos``: also its ``min_new_tokens``)."""
    import torch

    stream = int(base_kw["num_beams"]) == 1  # transformers cannot stream beam search
    order = list(range(len(encoded)))
    if dynamic:
        order.sort(key=lambda i: len(encoded[i]))
    batches: list[Batch] = []
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in pos)
        input_ids = torch.full((len(pos), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(pos), width), dtype=torch.long)
        for row, i in enumerate(pos):
            n = len(encoded[i])
            input_ids[row, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
            mask[row, width - n :] = 1
        max_new = max(limits[i] for i in pos)
        kw = dict(base_kw, max_new_tokens=max_new)
        if ignore_eos:
            kw["min_new_tokens"] = max_new
        batches.append(
            Batch(
                positions=pos,
                input_lengths=[len(encoded[i]) for i in pos],
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                kwargs=kw,
                streamer=make_streamer() if stream else None,
            )
        )
    return batches


def batch_records(
    prompts: Sequence[Prompt], limits: list[int], runs: Sequence[BatchRun], eos_ids: list[int]
) -> tuple[list[RequestRecord], list[tuple[list[int], Any, list[int]]]]:
    """One record per prompt, in prompt order: counted output tokens (up to and including the
    first EOS, at most the prompt's own limit), latency, TTFT and ITL of its batch; and per
    batch its (positions, generated ids, counts), for ``last_output_token_ids``."""
    import torch

    eos = torch.tensor(eos_ids, dtype=torch.long) if eos_ids else None
    records: list[RequestRecord | None] = [None] * len(prompts)
    outputs: list[tuple[list[int], Any, list[int]]] = []
    for batch_index, run in enumerate(runs):
        batch: Batch = run.batch
        pos = batch.positions
        counts = [
            min(c, limits[i]) for c, i in zip(output_counts(run.generated, eos), pos, strict=True)
        ]
        outputs.append((pos, run.generated, counts))
        times = batch.streamer.token_times() if batch.streamer is not None else []
        for row, i in enumerate(pos):
            own = times[: counts[row]]
            records[i] = RequestRecord(
                index=prompts[i].index,
                input_tokens=batch.input_lengths[row],
                output_tokens=counts[row],
                latency_s=run.t_end - run.t0,
                ttft_s=(own[0] - run.t0) if own else None,
                itl_s=[b - a for a, b in itertools.pairwise(own)],
                batch_index=batch_index,
                start_s=run.start_s,
            )
    return [r for r in records if r is not None], outputs


def output_counts(gen: Any, eos: Any) -> list[int]:
    """Generated tokens per row up to and including the first EOS (all of them if none)."""
    import torch

    width = int(gen.shape[1])
    if eos is None or width == 0:
        return [width] * int(gen.shape[0])
    is_eos = torch.isin(gen, eos)
    first = is_eos.to(torch.int8).argmax(dim=1) + 1
    return torch.where(is_eos.any(dim=1), first, torch.full_like(first, width)).tolist()
