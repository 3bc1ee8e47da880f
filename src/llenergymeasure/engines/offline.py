"""``OfflineLLMEngine``: the shared skeleton of engines driven through an offline ``LLM`` object.

vLLM and TensorRT-LLM (and an SGLang engine could) expose the same shape: an ``LLM`` handle
started from engine arguments, its tokenizer, one ``generate(texts, params)`` call that returns
one output per prompt with per-request timings, and worker processes that own the GPU memory.
This base holds what they share: the handle and tokenizer, the notes, the pre-flight opening
(is the library installed?), the prepare / execute / records split of one ``generate`` call
(sampling parameters built before the window, the engine call inside it, records after it),
the memory methods (no-ops: the workers allocate, not this process), ``clear_run_state`` and
shutdown. A subclass supplies the engine-specific parts through the ``_``-prefixed hooks below,
and overrides ``prepare``/``execute``/``records`` where its engine call is not one ``generate``.

Importing this module imports no engine library.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import engine_spec
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
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = ["GenerateCall", "OfflineLLMEngine", "RequestTiming"]

#: (ttft_s, latency_s, itl_s) of one request, as an engine's output metrics give them.
RequestTiming = tuple[float | None, float | None, list[float]]


@dataclass
class GenerateCall:
    """The raw result of one ``LLM.generate`` call: its outputs and its wall time (s)."""

    outputs: Sequence[Any]
    wall_s: float


class OfflineLLMEngine(InferenceBackend):
    """Base of engines on an offline ``LLM`` API; ``name`` must be a catalogue engine name.

    Subclasses implement ``_machine_problems``, ``_start`` (build the handle, return LoadInfo),
    ``_sampling_params``, ``_run_generate`` (the engine call), ``_request_timing``,
    ``effective_parameters`` and ``_shutdown_handle``; they may override ``prepare``,
    ``execute`` and ``records`` together (another engine loop, beam search), and
    ``clear_run_state``.
    """

    name: str = ""
    #: Noun used in messages ("vllm", "TensorRT-LLM").
    display_name: str = ""

    def __init__(self) -> None:
        self._llm: Any = None
        self._tokenizer: Any = None
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

    # ─── Pre-flight and load ────────────────────────────────────────────────
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """What on this machine would stop ``config`` from running (library, files, ...).

        Static config rules belong to the config model; this imports and loads nothing.
        """
        if importlib.util.find_spec(engine_spec(self.name).import_module) is None:
            return [f"{self.name} engine is not installed: {self.install_hint}"]
        return self._machine_problems(config)

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Pre-flight, then start the engine for ``config`` (``_start``)."""
        problems = self.preflight(config)
        if problems:
            raise BackendError(f"{self.name} engine cannot run this config: " + "; ".join(problems))
        self._notes = []
        return self._start(config)

    # ─── Generation ─────────────────────────────────────────────────────────
    def prepare(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = MEASUREMENT_PHASE,
    ) -> PreparedRun:
        """Each prompt's sampling parameters (its own new-token limit), before the window."""
        if self._llm is None:
            raise BackendError(f"{self.name} engine: generate() called before load()")
        self.last_phase = phase
        limits = prompt_limits(prompts, config)
        params = [self._sampling_params(config, n) for n in limits] if prompts else []
        return PreparedRun(list(prompts), config, phase, limits, payload=params)

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """One engine call for every prompt, timed by its wall clock."""
        if not prepared.prompts:
            return RawRun(prepared, GenerateCall(outputs=[], wall_s=0.0))
        t0 = perf_counter()
        with self._generation_errors():
            outputs = self._run_generate(prepared.prompts, prepared.payload)
        return RawRun(prepared, GenerateCall(outputs=outputs, wall_s=perf_counter() - t0))

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per output of the engine call."""
        call: GenerateCall = raw.payload
        if not raw.prepared.prompts:
            return []
        return self._records(raw.prepared.prompts, call.outputs, call.wall_s)

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
    # synchronize(): the base's no-op: generate returns only when every request has finished.
    # reset_peak_memory(), peak_memory_bytes(): the base's no-op / None: the engine
    # preallocates GPU memory in worker processes, so this process's allocator sees nothing;
    # the sampler's memory readings apply. clear_run_state(): the base's note (nothing to
    # clear); engines with a cache override it.

    def unload(self) -> None:
        """Shut the engine down and drop it."""
        llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is not None:
            with contextlib.suppress(Exception):  # best effort: the process may be exiting
                self._shutdown_handle(llm)
        del llm
        gc.collect()

    @staticmethod
    def _check_hf_model(
        name: str, field_name: str, revision: Any = None, cache_dir: Any = None
    ) -> list[str]:
        """Cheap check of an HF model the engine loads itself: a built-in name is known, a
        local folder has a ``config.json``, a hub id is in the HF cache (``cache_dir``: the
        engine's download folder) or on a hub that answers one bounded probe (the engine's own
        download would retry for about a minute). Loads nothing."""
        from llenergymeasure.engines import builtin

        if builtin.is_builtin_model(name):
            if name not in builtin.BUILTIN_MODELS:
                return [
                    f"{field_name}: unknown built-in model {name!r}; valid: "
                    + ", ".join(builtin.BUILTIN_MODELS)
                ]
            return []
        if name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists():
            if not (Path(name).expanduser() / "config.json").is_file():
                return [f"{field_name}: {name!r} is not a HF model folder (no config.json)"]
            return []
        from llenergymeasure.hub import hub_model_problem

        problem = hub_model_problem(
            name,
            field_name,
            revision=revision if isinstance(revision, str) else None,
            cache_dir=cache_dir if isinstance(cache_dir, str) else None,
        )
        return [problem] if problem else []

    # ─── Hooks ──────────────────────────────────────────────────────────────
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
