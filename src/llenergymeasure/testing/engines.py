"""A fake ``InferenceBackend`` for tests of the harness and study runner (no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.base import (
    MEASUREMENT_PHASE,
    BatchProgress,
    InferenceBackend,
    LoadInfo,
    PreparedRun,
    RawRun,
    RequestRecord,
    prompt_limits,
)


class FakeTokenizer:
    """Whitespace tokenizer: enough for synthetic prompts of exact length.

    ``calls`` counts every ``encode``/``__call__`` (tests check that none happens inside an
    energy window); ``on_call`` is called with the method's name on each.
    """

    vocab_size = 1000

    def __init__(self) -> None:
        self.calls = 0
        self.on_call: Callable[[str], None] | None = None

    def _count(self, what: str) -> None:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(what)

    def encode(self, text: str, **_: Any) -> list[int]:
        self._count("encode")
        return [sum(map(ord, w)) % 1000 for w in text.split()]

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return " ".join(f"w{i}" for i in ids)

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [self.encode(t) for t in text]}
        return {"input_ids": self.encode(text)}


@dataclass
class _FakeRequest:
    """What the fake engine's ``execute`` kept of one prompt (read by ``records``)."""

    start_s: float
    latency_s: float
    output_tokens: int


class FakeEngine(InferenceBackend):
    """Scripted engine: each prompt takes ``seconds_per_token`` x output tokens of wall time.

    Each prompt is its own batch; its records carry ``start_s`` (``time.monotonic``) and
    token times ``seconds_per_token`` apart, like an engine with per-token timing. ``prepare``
    tokenises (with ``FakeTokenizer``), ``execute`` sleeps, ``records`` builds the records.

    ``on_generate(phase)`` is called at the start of each ``execute`` and ``on_generate_end``
    at its end (tests use them to change the fake sensor's power draw); ``problems`` are
    returned by ``preflight``; ``on_event(name)`` is called on each contract call (tests check
    the order of calls). ``timer``/``sleep`` (``time.perf_counter``/``time.sleep``) measure and
    spend each request's time; a ``FakeClock``'s ``clock``/``clock.sleep`` make latencies exact.
    """

    name = "fake"

    def __init__(
        self,
        *,
        output_tokens: int = 8,
        seconds_per_token: float = 0.001,
        parameter_count: int = 1_000_000,
        problems: Sequence[str] = (),
        on_generate: Callable[[str], None] | None = None,
        on_generate_end: Callable[[str], None] | None = None,
        fail_in_generate: BaseException | None = None,
        on_event: Callable[[str], None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.output_tokens = output_tokens
        self.timer = timer
        self.sleep = sleep
        self.seconds_per_token = seconds_per_token
        self.parameter_count = parameter_count
        self.problems = list(problems)
        self.on_generate = on_generate
        self.on_generate_end = on_generate_end
        self.fail_in_generate = fail_in_generate
        self.on_event = on_event
        self.calls: list[tuple[str, int]] = []
        self.loaded = False
        self.unloaded = False
        self.loads = 0
        self.clears = 0  # clear_run_state calls (also run_state_clears)
        self.records_built = 0  # RequestRecords built by records()
        self._tokenizer = FakeTokenizer()

    def _event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)

    def version(self) -> str:
        return "0.0-fake"

    def preflight(self, config: ExperimentConfig) -> list[str]:
        return list(self.problems)

    def load(self, config: ExperimentConfig) -> LoadInfo:
        self.loaded = True
        self.loads += 1
        return LoadInfo(
            load_time_s=0.0,
            parameter_count=self.parameter_count,
            model_dtype="fake",
            device="cpu",
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def prepare(
        self, prompts: Sequence[Any], config: ExperimentConfig, *, phase: str = MEASUREMENT_PHASE
    ) -> PreparedRun:
        self._event("prepare")
        input_tokens = [len(self._tokenizer.encode(p.text)) for p in prompts]
        return PreparedRun(
            list(prompts), config, phase, prompt_limits(prompts, config), payload=input_tokens
        )

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        phase = prepared.phase
        self._event("execute")
        self.calls.append((phase, len(prepared.prompts)))
        if self.on_generate:
            self.on_generate(phase)
        if self.fail_in_generate is not None and phase == MEASUREMENT_PHASE:
            raise self.fail_in_generate
        done: list[_FakeRequest] = []
        for limit in prepared.limits:
            out = min(self.output_tokens, limit)
            start_s = time.monotonic()  # the sampler's clock, like the real engines
            start = self.timer()
            self.sleep(self.seconds_per_token * out)
            done.append(_FakeRequest(start_s, self.timer() - start, out))
            if on_batch is not None:
                on_batch(len(done))
        if self.on_generate_end:
            self.on_generate_end(phase)
        return RawRun(prepared, done)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        self._event("records")
        step = self.seconds_per_token
        records = []
        for i, (p, n_in, req) in enumerate(
            zip(raw.prepared.prompts, raw.prepared.payload, raw.payload, strict=True)
        ):
            self.records_built += 1
            records.append(
                RequestRecord(
                    index=p.index,
                    input_tokens=n_in,
                    output_tokens=req.output_tokens,
                    latency_s=req.latency_s,
                    ttft_s=step,
                    itl_s=[step] * (req.output_tokens - 1),
                    batch_index=i,
                    start_s=req.start_s,
                )
            )
        return records

    def synchronize(self) -> None:
        self._event("synchronize")

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"batch_size": 1, "engine": "fake"}

    def reset_peak_memory(self) -> None:
        self._event("reset_peak_memory")

    def clear_run_state(self) -> list[str]:
        self.clears += 1
        self.calls.append(("clear_run_state", 0))
        return ["fake: run state cleared"]

    def unload(self) -> None:
        self.unloaded = True
