"""The inference-engine contract: every hook the harness calls, with defaults, and its results.

``InferenceBackend`` is an abstract base class: an engine subclasses it, implements the abstract
methods and overrides the defaults it needs. The harness calls nothing else on an engine, and
never probes one for optional methods (``tests/unit/test_engine_contract.py`` checks it).

A run of prompts is three calls, so that nothing runs inside an energy window that the
methodology does not name (``docs/methodology.md``, section 1, step 8)::

    prepared = engine.prepare(prompts, config, phase=...)   # before the window: tokenise,
                                                            # pad, move to the device, build
                                                            # sampling parameters
    with window:                                            # energy window open
        raw = engine.execute(prepared)                      # the engine's own loop, timestamps
    records = engine.records(raw)                           # after the window: one record per
                                                            # prompt, from the raw outputs

``generate`` chains the three for callers outside a window (warmup, tests).

Importing this module imports no engine library.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "MEASUREMENT_PHASE",
    "WARMUP_PHASE",
    "BatchProgress",
    "InferenceBackend",
    "LoadInfo",
    "PassthroughKeys",
    "PreparedRun",
    "RawRun",
    "RequestRecord",
    "ServeCommand",
    "prompt_limits",
]

#: Phase of the measurement window's run; a warmup run's phase.
MEASUREMENT_PHASE = "measurement"
WARMUP_PHASE = "warmup"

#: Called by ``execute`` between batches with the number of prompts done (progress only).
BatchProgress = Callable[[int], None]


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


def prompt_limits(prompts: Sequence[Prompt], config: ExperimentConfig) -> list[int]:
    """Each prompt's new-token limit (``ExperimentConfig.max_new_tokens_for``), in order."""
    return [config.max_new_tokens_for(p.max_new_tokens) for p in prompts]


@dataclass
class PreparedRun:
    """Prompts made ready for one engine run, before any energy window opens.

    ``limits``: each prompt's new-token limit (``prompt_limits``). ``payload``: what the
    engine built for ``execute`` (PyTorch: padded batches on the device and their generate
    arguments; vLLM and TensorRT-LLM: sampling parameters and request ids); engine-specific.
    """

    prompts: list[Prompt]
    config: ExperimentConfig
    phase: str
    limits: list[int]
    payload: Any = None


@dataclass
class RawRun:
    """What ``execute`` kept from inside the window, read by ``records`` after it closes.

    ``payload``: the engine's raw outputs and clock readings (engine-specific).
    """

    prepared: PreparedRun
    payload: Any = None


@dataclass(frozen=True)
class ServeCommand:
    """How to start an engine's own OpenAI-compatible server (``mode: online``).

    ``argv``: the command line, model, host and port included (``online.server.extra_args``
    are appended by the caller); ``supports_ignore_eos``: whether the server takes vLLM's
    ``ignore_eos`` extension; ``notes``: experiment settings the server decides itself.
    """

    argv: list[str]
    supports_ignore_eos: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PassthroughKeys:
    """Which ``passthrough_kwargs`` keys an engine accepts, and where each one goes.

    ``own``: keys the engine interprets itself, with what it does with each; ``routes``:
    (destination, keys) for keys forwarded to a named call; ``open_route``: where any other
    key goes (None: other keys are refused); ``open_keys``: where the installed library can
    list them, a function giving (library and version, the keys); ``refused``: key -> why it
    is refused (the config field that sets it, or what it would break). The engine validates
    with the same sets, and the list in ``docs/guides/engines.md`` is generated from this.
    """

    engine: str
    own: Mapping[str, str] = field(default_factory=dict)
    routes: tuple[tuple[str, frozenset[str]], ...] = ()
    open_route: str | None = None
    open_keys: Callable[[], tuple[str, frozenset[str]]] | None = None
    refused: Mapping[str, str] = field(default_factory=dict)


class InferenceBackend(abc.ABC):
    """An inference engine the harness can drive: every hook, with defaults where one fits.

    Call order: ``preflight`` -> ``load`` -> [warmup: ``generate``, ``after_warmup_run``] ->
    ``prepare`` -> window(``execute``) -> ``records`` -> ``unload``. A reused engine (a
    study's engine group) repeats, per run after one ``load``: ``preflight`` ->
    ``begin_reused_run`` -> warmup -> ``clear_run_state`` -> ``prepare`` -> window(``execute``)
    -> ``records``. ``preflight`` must be cheap and must not load the model; it keeps no state
    that later calls read: ``effective_parameters`` is computed from the config passed to it.
    """

    #: Catalogue name of the engine ("pytorch", "vllm", ...).
    name: str = ""

    #: Fields of the engine's config section (dotted, ``"section.field"``) that its server has
    #: no flag for, with the reason shown when one is set in online mode (a silently ignored
    #: setting would mislabel the measurement).
    fields_without_server_flag: ClassVar[Mapping[str, str]] = {}

    # ─── Lifecycle ──────────────────────────────────────────────────────────
    def version(self) -> str:
        """Version of the underlying engine library."""
        return "unknown"

    @abc.abstractmethod
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """Problems on this machine that would stop ``config`` from running (empty = ok)."""

    @abc.abstractmethod
    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Load model and tokenizer (and adapters, draft model, ...) for ``config``."""

    @property
    def tokenizer(self) -> Any:
        """The loaded Hugging Face tokenizer (``encode``, ``decode``); None before ``load``
        or where the engine has none (must not raise)."""
        return None

    def max_sequence_length(self) -> int | None:
        """Prompt + generated tokens the loaded model accepts; None where unknown."""
        return None

    def unload(self) -> None:  # noqa: B027 (a default: nothing to do)
        """Release the model and free device memory (default: nothing to release)."""

    # ─── A run of prompts ───────────────────────────────────────────────────
    @abc.abstractmethod
    def prepare(
        self, prompts: Sequence[Prompt], config: ExperimentConfig, *, phase: str = MEASUREMENT_PHASE
    ) -> PreparedRun:
        """Everything that can be done before the window: tokenise, pad, move to the device,
        build sampling parameters. Runs outside any energy window."""

    @abc.abstractmethod
    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """Run the prepared prompts: the only engine call inside an energy window.

        The engine's own generation loop, with one clock read per step (per-token timing) and
        per batch or request (the attribution's start times); no tokenising, no records.
        ``on_batch(prompts_done)`` may be called between batches (progress).
        """

    @abc.abstractmethod
    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per prompt of ``raw``, in prompt order. Runs after the window closed."""

    def generate(
        self, prompts: Sequence[Prompt], config: ExperimentConfig, *, phase: str = MEASUREMENT_PHASE
    ) -> list[RequestRecord]:
        """``prepare``, ``execute`` and ``records`` in one call, for use outside a window.

        After a ``warmup`` run, ``after_warmup_run`` follows.
        """
        records = self.records(self.execute(self.prepare(prompts, config, phase=phase)))
        if phase == WARMUP_PHASE:
            self.after_warmup_run()
        return records

    def after_warmup_run(self) -> None:  # noqa: B027 (a default: nothing to do)
        """Runs after every warmup run, outside any window (default: nothing).

        vLLM empties its prefix cache here, so no window reuses what a warmup computed.
        """

    def compiles_on_first_run(self, config: ExperimentConfig) -> bool:
        """Whether the first run of ``config`` compiles (PyTorch ``torch_compile``): the
        harness then forces one warmup run so that compilation never lands in a window."""
        return False

    def synchronize(self) -> None:  # noqa: B027 (a default: nothing to do)
        """Wait for queued device work (``cuda.synchronize`` on GPU); default: no-op, for
        engines whose ``execute`` returns only when every request has finished."""

    @classmethod
    def passthrough_keys(cls) -> PassthroughKeys | None:
        """Which ``passthrough_kwargs`` keys this engine accepts (the docs list them); None
        (default): the engine does not describe them."""
        return None

    @abc.abstractmethod
    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        """Every parameter ``config`` runs with on the loaded engine, None-sentinels resolved
        to the engine's default. Computed from ``config``, never from state left by an
        earlier call (``preflight``, another run of a reused engine)."""

    # ─── Device memory ──────────────────────────────────────────────────────
    def reset_peak_memory(self) -> None:  # noqa: B027 (a default: nothing to do)
        """Reset the device's peak-memory counter (default: no counter in this process)."""

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since the last reset; None where not measurable (default)."""
        return None

    # ─── Engine reuse (a study's engine group) ──────────────────────────────
    def begin_reused_run(self, config: ExperimentConfig) -> list[str]:
        """Before a reused engine's next run (before its warmup): drop state that would make
        the run differ from one in a fresh process; returns notes (default: nothing to drop)."""
        return []

    def clear_run_state(self) -> list[str]:
        """Drop state that would carry work from one run into the next on a reused engine
        (prompt/prefix caches), empty allocator caches and reset the peak-memory counter.

        Called before every measurement window of a study that reuses its engine; returns
        notes (what was cleared, or that the engine keeps no such state) for the result.
        """
        return [f"{self.name} engine keeps no cross-run cache that llem can clear"]

    # ─── Online mode ────────────────────────────────────────────────────────
    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand | None:
        """The command line of this engine's own server for an online ``config``, serving
        ``model`` (a hub id or local folder) on ``host:port``; ``ConfigError`` naming a field
        the server has no flag for. None (default): the engine has no server llem can start.
        Must not import the engine library (the server runs in its own process)."""
        return None

    # ─── Several processes (data parallel) ──────────────────────────────────
    def process_results(self) -> list[dict[str, Any]]:
        """One summary per process of the last measured run (default: one process, none)."""
        return []

    def record_process_indices(self) -> list[int] | None:
        """Process index of each record of the last measured run (None: one process)."""
        return None

    def metered_nvml_indices(self, config: ExperimentConfig) -> list[int] | None:
        """NVML indices of the GPUs a run of ``config`` uses, so that only those are metered
        (not idle GPUs that happen to be visible); None (default): every visible GPU."""
        return None
