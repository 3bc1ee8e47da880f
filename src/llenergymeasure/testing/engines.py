"""A fake ``InferenceBackend`` for tests of the harness and study runner (no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.base import LoadInfo, RequestRecord


class FakeTokenizer:
    """Whitespace tokenizer: enough for synthetic prompts of exact length."""

    vocab_size = 1000

    def encode(self, text: str, **_: Any) -> list[int]:
        return [sum(map(ord, w)) % 1000 for w in text.split()]

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return " ".join(f"w{i}" for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


class FakeEngine:
    """Scripted engine: each prompt takes ``seconds_per_token`` x output tokens of wall time.

    Each prompt is its own batch; its records carry ``start_s`` (``time.monotonic``) and
    token times ``seconds_per_token`` apart, like an engine with per-token timing.

    ``on_generate(phase)`` is called before each generate (tests use it to change the fake
    sensor's power draw); ``problems`` are returned by ``preflight``.
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
    ) -> None:
        self.output_tokens = output_tokens
        self.seconds_per_token = seconds_per_token
        self.parameter_count = parameter_count
        self.problems = list(problems)
        self.on_generate = on_generate
        self.on_generate_end = on_generate_end
        self.fail_in_generate = fail_in_generate
        self.calls: list[tuple[str, int]] = []
        self.loaded = False
        self.unloaded = False
        self.loads = 0
        self.clears = 0  # clear_run_state calls (also run_state_clears)
        self._tokenizer = FakeTokenizer()

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

    def generate(
        self, prompts: Sequence[Any], config: ExperimentConfig, *, phase: str = "measurement"
    ) -> list[RequestRecord]:
        self.calls.append((phase, len(prompts)))
        if self.on_generate:
            self.on_generate(phase)
        if self.fail_in_generate is not None and phase == "measurement":
            raise self.fail_in_generate
        records = []
        for i, p in enumerate(prompts):
            limit = p.max_new_tokens or config.effective_max_new_tokens
            out = min(self.output_tokens, limit)
            start_s = time.monotonic()  # the sampler's clock, like the real engines
            start = time.perf_counter()
            step = self.seconds_per_token
            time.sleep(step * out)
            latency = time.perf_counter() - start
            records.append(
                RequestRecord(
                    index=p.index,
                    input_tokens=len(p.text.split()),
                    output_tokens=out,
                    latency_s=latency,
                    ttft_s=step,
                    itl_s=[step] * (out - 1),
                    batch_index=i,
                    start_s=start_s,
                )
            )
        if self.on_generate_end:
            self.on_generate_end(phase)
        return records

    def synchronize(self) -> None:
        pass

    def effective_parameters(self) -> dict[str, Any]:
        return {"batch_size": 1, "engine": "fake"}

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory_bytes(self) -> int | None:
        return None

    def clear_run_state(self) -> list[str]:
        self.clears += 1
        self.calls.append(("clear_run_state", 0))
        return ["fake: run state cleared"]

    def unload(self) -> None:
        self.unloaded = True
