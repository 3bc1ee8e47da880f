"""``OfflineLLMEngine``: the shared skeleton of engines driven through an offline ``LLM`` object.

vLLM and TensorRT-LLM (and an SGLang engine could) expose the same shape: an ``LLM`` handle
started from engine arguments, its tokenizer, one ``generate(texts, params)`` call that returns
one output per prompt with per-request timings, and worker processes that own the GPU memory.
This base holds what they share: the handle and tokenizer, the notes, the pre-flight opening
(is the library installed?), the generate-and-records loop, the memory methods (no-ops: the
workers allocate, not this process), ``clear_run_state`` and shutdown. A subclass supplies the
engine-specific parts through the ``_``-prefixed hooks below.

Importing this module imports no engine library.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
from collections.abc import Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import engine_spec
from llenergymeasure.engines.base import LoadInfo, RequestRecord
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = ["OfflineLLMEngine", "RequestTiming"]

#: (ttft_s, latency_s, itl_s) of one request, as an engine's output metrics give them.
RequestTiming = tuple[float | None, float | None, list[float]]


class OfflineLLMEngine:
    """Base of engines on an offline ``LLM`` API; ``name`` must be a catalogue engine name.

    Subclasses implement ``_machine_problems``, ``_start`` (build the handle, return LoadInfo),
    ``_sampling_params``, ``_run_generate`` (the engine call), ``_request_timing`` and
    ``_shutdown_handle``; they may override ``_generate`` (e.g. for beam search) and
    ``clear_run_state``.
    """

    name: str = ""
    #: Noun used in messages ("vllm", "TensorRT-LLM").
    display_name: str = ""

    def __init__(self) -> None:
        self._llm: Any = None
        self._tokenizer: Any = None
        self._config: ExperimentConfig | None = None
        self._notes: list[str] = []
        self.last_phase: str | None = None

    # ─── Introspection ──────────────────────────────────────────────────────
    def version(self) -> str:
        """Installed version of the engine library ("not installed" when missing)."""
        from llenergymeasure.engines.registry import module_version

        spec = engine_spec(self.name)
        return module_version(spec.distribution, spec.import_module)

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer; None before ``load``."""
        return self._tokenizer

    @property
    def handle(self) -> Any:
        """The loaded engine object (``vllm.LLM``, ``tensorrt_llm.LLM``); None before ``load``."""
        return self._llm

    def max_sequence_length(self) -> int | None:
        """Prompt + generated tokens the loaded engine accepts (vLLM's ``max_model_len``);
        None where the engine does not say or nothing is loaded."""
        engine = getattr(self._llm, "llm_engine", None)
        value = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        return value if isinstance(value, int) and value > 0 else None

    @property
    def install_hint(self) -> str:
        """The pip command that installs this engine."""
        return engine_spec(self.name).install_hint

    def effective_parameters(self) -> dict[str, Any]:
        """Every parameter used, None-sentinels resolved (each engine says its own)."""
        raise NotImplementedError

    # ─── Pre-flight and load ────────────────────────────────────────────────
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """What on this machine would stop ``config`` from running (library, files, ...).

        Static config rules belong to the config model; this imports and loads nothing.
        """
        if importlib.util.find_spec(engine_spec(self.name).import_module) is None:
            return [f"{self.name} engine is not installed: {self.install_hint}"]
        self._config = config
        return self._machine_problems(config)

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Pre-flight, then start the engine for ``config`` (``_start``)."""
        problems = self.preflight(config)
        if problems:
            raise BackendError(f"{self.name} engine cannot run this config: " + "; ".join(problems))
        self._config = config
        self._notes = []
        return self._start(config)

    # ─── Generation ─────────────────────────────────────────────────────────
    def generate(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = "measurement",
    ) -> list[RequestRecord]:
        """Run every prompt; one record per prompt, in prompt order."""
        if self._llm is None:
            raise BackendError(f"{self.name} engine: generate() called before load()")
        self.last_phase = phase
        if not prompts:
            return []
        default_max = int(config.effective_max_new_tokens)
        limits = [default_max if p.max_new_tokens is None else p.max_new_tokens for p in prompts]
        records = self._generate(prompts, config, limits)
        if phase == "warmup":
            self._after_warmup()
        return records

    def _generate(
        self, prompts: Sequence[Prompt], config: ExperimentConfig, limits: list[int]
    ) -> list[RequestRecord]:
        """One engine call for all prompts, then one record per output."""
        params = [self._sampling_params(config, n) for n in limits]
        t0 = perf_counter()
        with self._generation_errors():
            outputs = self._run_generate(prompts, params)
        return self._records(prompts, outputs, perf_counter() - t0)

    @contextlib.contextmanager
    def _generation_errors(self) -> Iterator[None]:
        """An engine call's failure as a ``BackendError`` naming the engine (kept as it is
        when it already is one)."""
        try:
            yield
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(
                f"{self.display_name} generation failed: {type(e).__name__}: {e}"
            ) from e

    def _records(
        self, prompts: Sequence[Prompt], outputs: Sequence[Any], wall: float
    ) -> list[RequestRecord]:
        """Records from the engine's outputs; requests without timings get the call's wall time."""
        records: list[RequestRecord] = []
        missing = 0
        ttft: float | None
        latency: float | None
        itl: list[float]
        for p, out in zip(prompts, outputs, strict=True):
            n_out = len(out.outputs[0].token_ids)
            timing = self._request_timing(out, n_out)
            if timing is None:
                missing += 1
                ttft, latency, itl = None, wall, []
            else:
                ttft, latency, itl = timing
            records.append(
                RequestRecord(
                    index=p.index,
                    input_tokens=len(out.prompt_token_ids or []),
                    output_tokens=n_out,
                    latency_s=latency if latency is not None else wall,
                    ttft_s=ttft,
                    itl_s=itl,
                )
            )
        self._add_note(self._timing_note(missing))
        return records

    def _add_note(self, note: str | None) -> None:
        if note and note not in self._notes:
            self._notes.append(note)

    # ─── Device housekeeping ────────────────────────────────────────────────
    def synchronize(self) -> None:
        """No-op: ``generate`` returns only when every request has finished."""

    def reset_peak_memory(self) -> None:
        """No-op: the engine's workers allocate in their own processes."""

    def peak_memory_bytes(self) -> int | None:
        """None: the engine preallocates GPU memory in worker processes, so this process's
        allocator sees nothing; the sampler's memory readings apply."""
        return None

    def clear_run_state(self) -> list[str]:
        """Drop state that would carry work from one run into the next on a reused engine.

        The default: nothing to clear, said in a note. Engines with a cache override this.
        """
        return [f"{self.name} engine keeps no cross-run cache that llem can clear"]

    def unload(self) -> None:
        """Shut the engine down and drop it."""
        llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is not None:
            with contextlib.suppress(Exception):  # best effort: the process may be exiting
                self._shutdown_handle(llm)
        del llm
        gc.collect()

    # ─── Hooks ──────────────────────────────────────────────────────────────
    def _after_warmup(self) -> None:
        """Runs after every warmup ``generate``, outside any window (default: nothing)."""

    def _machine_problems(self, config: ExperimentConfig) -> list[str]:
        """Engine-specific machine checks (files, passthrough keys); the library is present."""
        return []

    def _start(self, config: ExperimentConfig) -> LoadInfo:
        """Create ``self._llm`` and ``self._tokenizer``; return what loading cost."""
        raise NotImplementedError

    def _sampling_params(self, config: ExperimentConfig, max_tokens: int) -> Any:
        """The engine's sampling parameters of one request."""
        raise NotImplementedError

    def _run_generate(self, prompts: Sequence[Prompt], params: list[Any]) -> Sequence[Any]:
        """The engine's generate call: one output (``.outputs[0].token_ids``,
        ``.prompt_token_ids``) per prompt, in order."""
        raise NotImplementedError

    def _request_timing(self, output: Any, n_out: int) -> RequestTiming | None:
        """(ttft, latency, itl) of one output, or None where the engine gave no timings."""
        return None

    def _timing_note(self, missing: int) -> str | None:
        """The note recorded after a generate call with ``missing`` untimed requests."""
        return None

    def _shutdown_handle(self, llm: Any) -> None:
        """Stop the engine's workers (called by ``unload``; errors are ignored)."""
