"""The vLLM engine's step loop: the loop ``LLM.generate`` runs, with each engine-core
iteration's stamp and new tokens kept inside the window and read into records after it.

``prepare`` builds a ``StepPlan`` (one ``SamplingParams`` and one request id per prompt)
before the window; ``run_steps`` adds every prompt to the engine, each rendered by vLLM's front
end as it is added, and steps the engine until all finish, keeping a reference to each
iteration's ``EngineCoreOutputs`` (``CoreIterationLog``); ``step_records`` gives each token the
engine core's time of the iteration that produced it: true per-request TTFT and every
inter-token gap (where the iterations cannot be read, ``DELTA`` outputs stamped as each step
returns).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.base import RequestRecord

if TYPE_CHECKING:
    from llenergymeasure.datasets import Prompt

__all__ = ["CoreIterationLog", "StepOutputs", "StepPlan", "run_steps", "spread", "step_records"]


@dataclass
class StepPlan:
    """The step loop's inputs, built before the window: one ``SamplingParams`` and one request
    id per prompt, the engine and its renderer (``LLM._preprocess_cmpl``, where present)."""

    engine: Any
    params: list[Any]
    request_ids: list[str]
    preprocess: Any = None


@dataclass
class StepOutputs:
    """What the step loop kept inside the window, read by ``step_records`` after it.

    ``submitted``: each request's submission (``time.monotonic``); ``position``: request id ->
    prompt position; ``stamps``: per request, each token's step stamp (``DELTA`` fallback);
    ``final_tokens`` / ``done_at``: each ``FINAL_ONLY`` answer's token count and arrival;
    ``log``: the engine core's iterations (None in the fallback).
    """

    log: CoreIterationLog | None
    position: dict[str, int]
    stamps: list[list[float]]
    prompt_tokens: list[int | None]
    final_tokens: list[int | None]
    done_at: list[float | None]
    submitted: list[float] = field(default_factory=list)


def run_steps(plan: StepPlan, prompts: Sequence[Prompt], lora_request: Any) -> StepOutputs:
    """Run the engine loop ``LLM.generate`` runs, stamping every engine-core iteration.

    Requests go to ``llm_engine.add_request`` and ``llm_engine.step()`` is called until
    none is left, exactly as ``LLM._run_engine`` does. Each ``step()`` takes one engine-core
    iteration's outputs (``engine_core.get_output()``); llem keeps a reference to that
    iteration's ``EngineCoreOutputs`` on its way (``CoreIterationLog``): its ``timestamp``
    (the engine core's ``time.monotonic()`` when the iteration's tokens were sampled) and
    each request's new tokens, read after the window (``step_records``). The requests keep
    ``LLM.generate``'s ``FINAL_ONLY`` outputs, so the front end does what it does for a
    bare ``LLM.generate``. Where the iteration outputs cannot be read (another vLLM), the
    requests ask for ``DELTA`` outputs instead and each ``step()``'s return is stamped.
    Every request's token of one iteration carries the same stamp (``token_times_s``), so
    the time-resolved attribution sees the engine's steps exactly; tokens that arrive
    together (speculative decoding) all carry that stamp there, and share the iteration's
    interval evenly in the ITL gaps (``spread``). TTFT counts from each request's
    submission (``start_s``), ITL between its tokens.
    """
    from vllm.sampling_params import RequestOutputKind

    engine, preprocess = plan.engine, plan.preprocess
    # rendered one at a time, each added as soon as it is rendered, as LLM.generate does:
    # the engine core starts on the first requests while the front end renders the rest
    # (rendering all 256 prompts first left the GPU idle inside the window)
    log = CoreIterationLog.attach(getattr(engine, "engine_core", None))
    kind = RequestOutputKind.DELTA if log is None else RequestOutputKind.FINAL_ONLY
    n = len(prompts)
    # one clock for submissions and token stamps: time.monotonic, the energy sampler's
    out = StepOutputs(
        log=log,
        position={rid: i for i, rid in enumerate(plan.request_ids)},
        stamps=[[] for _ in range(n)],
        prompt_tokens=[None] * n,
        final_tokens=[None] * n,
        done_at=[None] * n,
    )
    position, stamps, submitted = out.position, out.stamps, out.submitted
    prompt_tokens, final_tokens, done_at = out.prompt_tokens, out.final_tokens, out.done_at
    try:
        for i, (rid, prompt, sp) in enumerate(
            zip(plan.request_ids, prompts, plan.params, strict=True)
        ):
            engine_input = preprocess([prompt.text])[0] if callable(preprocess) else prompt.text
            sp.output_kind = kind
            submitted.append(monotonic())
            internal = engine.add_request(rid, engine_input, sp, lora_request=lora_request)
            if isinstance(internal, str):
                position[internal] = i  # the engine core's outputs carry the internal id
        while engine.has_unfinished_requests():
            step_outputs = engine.step()
            now = monotonic()
            for step_out in step_outputs:
                k = position.get(step_out.request_id)
                if k is None:
                    continue
                if prompt_tokens[k] is None and step_out.prompt_token_ids is not None:
                    prompt_tokens[k] = len(step_out.prompt_token_ids)
                new = len(step_out.outputs[0].token_ids) if step_out.outputs else 0
                if log is not None:
                    final_tokens[k], done_at[k] = new, now  # FINAL_ONLY: the answer, once
                elif new:
                    stamps[k].extend([now] * new)
    finally:
        if log is not None:
            log.detach()
    return out


def step_records(prompts: Sequence[Prompt], out: StepOutputs) -> tuple[list[RequestRecord], str]:
    """Records of the step loop, from its stamps or the engine core's iteration log, and the
    note that says where their timings come from."""
    stamps, final_tokens, done_at = out.stamps, out.final_tokens, out.done_at
    note = (
        "vllm: per-token timing from the engine step loop (llm_engine.step), one "
        "time.monotonic stamp per step shared by every request in it: ttft_s and every "
        "itl_s gap are measured"
    )
    if out.log is not None:
        stamps, why = out.log.token_times(out.position, final_tokens, out.submitted)
        note = (
            "vllm: per-token timing from the engine core's iterations (EngineCoreOutputs."
            "timestamp of each llm_engine.step, one stamp per iteration shared by every "
            "request in it; outputs FINAL_ONLY as in LLM.generate): ttft_s and every itl_s "
            "gap are measured"
        )
        if why is not None:
            note = f"vllm: no per-token timing: {why}"
    records: list[RequestRecord] = []
    for i, p in enumerate(prompts):
        times = stamps[i]  # each token: its step's stamp (the attribution's steps)
        t_in = out.submitted[i]
        n_out = len(times) if times or final_tokens[i] is None else final_tokens[i]
        done = times[-1] if times else done_at[i]
        records.append(
            RequestRecord(
                index=p.index,
                input_tokens=out.prompt_tokens[i] or 0,
                output_tokens=n_out or 0,
                latency_s=(done - t_in) if done is not None else 0.0,
                ttft_s=(times[0] - t_in) if times else None,
                itl_s=[b - a for a, b in itertools.pairwise(spread(times))],
                start_s=t_in,
                token_times_s=times or None,
            )
        )
    return records, note


def spread(stamps: Sequence[float]) -> Sequence[float]:
    """Per-token step stamps with the tokens of one step spread evenly since the previous step.

    Tokens delivered together (speculative decoding) share their step's stamp in
    ``token_times_s`` (the attribution's step timeline); for the ITL gaps they share the step's
    interval evenly instead: the ``k``-th of ``n`` tokens stamped ``now`` after a previous
    stamp ``start`` is at ``start + (now - start) * k / n`` (all at ``now`` in the first step).
    Stamps that are all distinct (one token per step) come back as they are (the common case,
    checked cheaply for every request when the records are built after the window).
    """
    if len(set(stamps)) == len(stamps):  # stamps never decrease: no two equal, no shared step
        return stamps
    out: list[float] = []
    k = 0
    while k < len(stamps):
        now, n = stamps[k], 1
        while k + n < len(stamps) and stamps[k + n] == now:
            n += 1
        start = out[-1] if out else now
        out.extend(start + (now - start) * (j + 1) / n for j in range(n))
        k += n
    return out


class CoreIterationLog:
    """Each engine-core iteration's stamp and new tokens per request, read as ``step()`` takes them.

    vLLM 0.26's ``LLMEngine.step()`` calls ``engine_core.get_output()`` once and gets one
    iteration's ``EngineCoreOutputs``: ``timestamp`` (the engine core's ``time.monotonic()``
    when the iteration's outputs were made; on Linux the same system-wide clock as llem's) and
    ``outputs``, one ``EngineCoreOutput(request_id, new_token_ids, ...)`` per request that got
    tokens. ``attach`` wraps that method on the client instance (``detach`` restores it); the
    wrapper only records and returns the object unchanged.
    """

    def __init__(self, core: Any, had_own: bool, original: Any) -> None:
        self._core, self._had_own, self._original = core, had_own, original
        self.iterations: list[tuple[float, Sequence[Any]]] = []  # (stamp, EngineCoreOutput list)
        self.unreadable: str | None = None

    @classmethod
    def attach(cls, core: Any) -> CoreIterationLog | None:
        original = getattr(core, "get_output", None)
        if core is None or not callable(original):
            return None
        try:
            had_own = "get_output" in vars(core)
        except TypeError:  # no instance dict (slots): cannot wrap
            return None
        log = cls(core, had_own, original)

        def get_output() -> Any:
            outputs = original()
            log.record(outputs)
            return outputs

        core.get_output = get_output
        return log

    def detach(self) -> None:
        if self._had_own:
            self._core.get_output = self._original
        else:
            del self._core.get_output

    def record(self, outputs: Any) -> None:
        """Keep the iteration's stamp and its output list; read them after the window."""
        stamp = getattr(outputs, "timestamp", None)
        items = getattr(outputs, "outputs", None)
        if isinstance(stamp, (int, float)) and items is not None:
            self.iterations.append((float(stamp), items))
        elif self.unreadable is None:
            self.unreadable = (
                f"engine_core.get_output() gave {type(outputs).__name__} without timestamp/outputs"
            )

    def token_times(
        self,
        position: dict[str, int],
        final_tokens: Sequence[int | None],
        submitted: Sequence[float],
    ) -> tuple[list[list[float]], str | None]:
        """Per request (by ``position`` of its internal id), its token times; or why none.

        Refused (every request without times) when an iteration could not be read, a
        request's token count disagrees with its final output, or a first token is stamped
        before its request was submitted (the engine core's clock is not llem's).
        """
        stamps: list[list[float]] = [[] for _ in final_tokens]
        empty: list[list[float]] = [[] for _ in final_tokens]
        if self.unreadable:
            return empty, self.unreadable
        if not self.iterations and any(final_tokens):
            return empty, "llm_engine.step() never called engine_core.get_output() (another vLLM)"
        for stamp, items in self.iterations:  # ~32k tokens in a 256-request window: keep it lean
            for item in items:
                i = position.get(getattr(item, "request_id", None))  # type: ignore[arg-type]
                tokens = getattr(item, "new_token_ids", None)
                if i is None or not tokens:
                    continue
                stamps[i].extend([stamp] * len(tokens))
        for i, times in enumerate(stamps):
            if final_tokens[i] is not None and len(times) != final_tokens[i]:
                return empty, (
                    f"the engine core's iterations gave request {i} {len(times)} tokens, its "
                    f"output {final_tokens[i]}"
                )
            if times and times[0] < submitted[i] - 1e-3:
                return empty, (
                    f"request {i}'s first token is stamped {submitted[i] - times[0]:.3f} s "
                    "before its submission: the engine core's clock is not time.monotonic"
                )
        return stamps, None
