"""The inference-engine contract: what the harness needs from an engine, and what it gets back.

Engines are structural: anything with these methods is an ``InferenceBackend`` (tests inject
fakes). Importing this module imports no engine library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = ["InferenceBackend", "LoadInfo", "RequestRecord"]


@dataclass
class RequestRecord:
    """Timing and token counts of one request (one prompt) of a run.

    ``output_tokens`` counts generated tokens up to and including EOS, never padding.
    ``ttft_s`` is None where the engine cannot time the first token (e.g. beam search);
    ``itl_s`` holds the gaps between successive tokens of this request
    (``output_tokens - 1`` entries when per-token timing is available, else empty).
    ``start_s`` is when the request's work began on ``time.monotonic`` (the energy sampler's
    clock): its batch's ``generate`` call (PyTorch) or its submission (vLLM step loop);
    ``ttft_s`` and ``itl_s`` count from it, so ``start_s + ttft_s + sum(itl_s[:k])`` is the
    time of token ``k`` on the sampler's clock. None where the engine does not record it.
    ``token_times_s``: where the engine stamps tokens once per engine step (the vLLM step
    loop), each token's time on the sampler's clock, the very same float for every request's
    token of one step, so the step timeline is exact (times rebuilt from ``start_s`` and the
    gaps differ between requests by rounding and by the instants each submission was read).
    None where the engine has no per-step stamp.
    """

    index: int
    input_tokens: int
    output_tokens: int
    latency_s: float
    ttft_s: float | None
    itl_s: list[float] = field(default_factory=list)
    batch_index: int = 0
    start_s: float | None = None
    token_times_s: list[float] | None = None


@dataclass
class LoadInfo:
    """What loading the model cost and produced.

    ``draft_parameter_count`` is the speculative-decoding draft model's size (0 without one);
    the FLOPs estimate counts it too. ``timing_parts``: parts of the load the engine itself
    reports, seconds (e.g. vLLM's ``engine_start_s`` and ``compile_s``); empty where none.
    """

    load_time_s: float
    parameter_count: int
    model_dtype: str
    device: str
    notes: list[str] = field(default_factory=list)
    draft_parameter_count: int = 0
    timing_parts: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class InferenceBackend(Protocol):
    """An inference engine the harness can drive.

    Call order: ``preflight`` -> ``load`` -> ``generate`` (warmup, then measurement) ->
    ``unload``. A reused engine (a study's engine group) repeats ``preflight`` -> ``generate``
    (warmup) -> ``clear_run_state`` -> ``generate`` (measurement) per run after one ``load``;
    an engine may also define ``begin_reused_run(config) -> list[str]``, called before a reused
    run's warmup to drop state that would make the run differ from one in a fresh process
    (the PyTorch engine resets ``torch.compile``'s graphs there).
    ``preflight`` must be cheap and must not load the model.
    """

    name: str

    def version(self) -> str:
        """Version of the underlying engine library."""
        ...

    def preflight(self, config: ExperimentConfig) -> list[str]:
        """Problems that would stop ``config`` from running (empty list = ok)."""
        ...

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Load model and tokenizer (and adapters, draft model, ...) for ``config``."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The loaded HuggingFace tokenizer; None before ``load`` (must not raise)."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = "measurement",
    ) -> list[RequestRecord]:
        """Run ``prompts`` and return one record per prompt, in prompt order."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (``cuda.synchronize`` on GPU; no-op on CPU)."""
        ...

    def effective_parameters(self) -> dict[str, Any]:
        """Every parameter actually used, with None-sentinels resolved to the engine default."""
        ...

    def reset_peak_memory(self) -> None:
        """Reset the device's peak-memory counter."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since the last reset, or None where not measurable (CPU)."""
        ...

    def clear_run_state(self) -> list[str]:
        """Drop state that would carry work from one run into the next on a reused engine
        (prompt/prefix caches), empty allocator caches and reset the peak-memory counter.

        Called before every measurement window of a study that reuses its engine; returns
        notes (what was cleared, or that the engine keeps no such state) for the result.
        """
        ...

    def unload(self) -> None:
        """Release the model and free device memory."""
        ...
