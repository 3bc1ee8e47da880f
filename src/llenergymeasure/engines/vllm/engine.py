"""``VLLMBackend``: the vLLM engine on the offline ``vllm.LLM`` API (see the package docstring
for the vLLM calls it uses and how a run works).

Importing this module imports neither vllm nor torch: both are imported inside methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.engines.base import (
    MEASUREMENT_PHASE,
    BatchProgress,
    LoadInfo,
    PassthroughKeys,
    PreparedRun,
    RawRun,
    RequestRecord,
    ServeCommand,
    prompt_limits,
)
from llenergymeasure.engines.offline import OfflineLLMEngine, RequestTiming
from llenergymeasure.engines.vllm.beam_search import (
    BEAM_NOTE,
    DEFAULT_NUM_BEAMS,
    BeamOutputs,
    BeamPlan,
    beam_plan,
    beam_records,
    run_beam,
)
from llenergymeasure.engines.vllm.engine_args import (
    CONFLICTING_KEYS,
    DEFAULT_NUM_SPECULATIVE_TOKENS,
    VLLM_DEFAULTS,
    build_engine_args,
    conflicting_key_problems,
    effective_value,
    serve_argv,
)
from llenergymeasure.engines.vllm.metrics import (
    prefix_cache_counters,
    request_timings,
    window_prefix_cache,
)
from llenergymeasure.engines.vllm.model_files import (
    count_safetensors_params,
    gguf_header,
    gguf_problems,
    model_source,
)
from llenergymeasure.engines.vllm.step_loop import StepOutputs, StepPlan, run_steps, step_records
from llenergymeasure.exceptions import BackendError
from llenergymeasure.gguf_files import GGUFHeader, gguf_model
from llenergymeasure.hub import OFFLINE_HINT
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = ["INSTALL_HINT", "LORA_INT_ID", "LORA_NAME", "VLLMBackend"]

INSTALL_HINT = extra_install_hint("vllm")
LORA_NAME = "llem-adapter"
LORA_INT_ID = 1


class VLLMBackend(OfflineLLMEngine):
    """Inference through vLLM's offline ``LLM`` engine."""

    name = "vllm"
    display_name = "vllm"

    def __init__(self) -> None:
        super().__init__()
        self._engine_args: dict[str, Any] = {}
        self._model_source: str | None = None
        self._gguf_header: GGUFHeader | None = None
        self._lora_request: Any = None
        self._batch_seq = 0
        self._window_prefix_start: tuple[int, int] | None = None

    @classmethod
    def passthrough_keys(cls) -> PassthroughKeys:
        """llem's own keys, and any ``EngineArgs`` field of the installed vLLM except those a
        config field sets (``build_engine_args`` forwards the same way)."""
        return PassthroughKeys(
            engine=cls.name,
            own={
                "num_speculative_tokens": "draft tokens per step in `speculative_config` "
                f"(default {DEFAULT_NUM_SPECULATIVE_TOKENS}; with `decoder.draft_model`)",
                "gguf_file": "a GGUF file of the folder or hub repository `model:`; vLLM is "
                "given its path as `model`",
            },
            open_route=(
                "`vllm.LLM(...)` as an `EngineArgs` field of the installed vLLM (e.g. "
                "`max_model_len`, `enforce_eager`, `tokenizer`); vLLM refuses an unknown one "
                "when the engine starts"
            ),
            refused={k: f"set by `{field}`" for k, field in CONFLICTING_KEYS.items()},
        )

    # ─── Online mode ────────────────────────────────────────────────────────
    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand:
        """``vllm serve MODEL``: each set ``vllm:`` field as its flag (``VLLM_SERVE_FLAGS``),
        ``--dtype`` from ``precision``, ``--seed`` from ``random_seed``, and
        ``--served-model-name`` from ``online.served_model_name``."""
        return ServeCommand(argv=serve_argv(config, model=model, host=host, port=port))

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def _machine_problems(self, config: ExperimentConfig) -> list[str]:
        """Model and adapter files present (a hub model not in the HF cache: one bounded
        probe of the hub), a GGUF file complete and vLLM's GGUF plugin installed, passthrough
        keys that clash with config fields. Static config rules (precision, quantization,
        LoRA, beam) are the config model's."""
        extra = config.passthrough_kwargs or {}
        problems = conflicting_key_problems(extra)
        revision, download_dir = extra.get("revision"), extra.get("download_dir")
        gguf = gguf_model(config.model, extra, revision=revision, cache_dir=download_dir)
        if gguf is not None:
            problems.extend(gguf_problems(gguf, self.version(), revision, download_dir))
        else:
            problems.extend(self._check_hf_model(config.model, "model", revision, download_dir))
        dec = config.decoder
        if dec.speculative_decoding and dec.draft_model:
            problems.extend(self._check_hf_model(dec.draft_model, "decoder.draft_model"))
        if config.lora is not None:
            path = config.lora.adapter_path
            if path is not None and not Path(path).expanduser().is_dir():
                problems.append(f"lora.adapter_path {path!r} is not a directory")
            if config.lora.adapter_id is not None:
                from llenergymeasure.hub import hub_model_problem

                problem = hub_model_problem(
                    config.lora.adapter_id, "lora.adapter_id", filename="adapter_config.json"
                )
                problems.extend([problem] if problem else [])
        return problems

    # ─── Load ───────────────────────────────────────────────────────────────
    def _start(self, config: ExperimentConfig) -> LoadInfo:
        """Start ``vllm.LLM`` with the engine arguments of ``config``."""
        from vllm import LLM

        t0 = perf_counter()  # a hub GGUF file's download counts as load time, as in from_pretrained
        try:
            self._model_source = model_source(config)
        except Exception as e:
            raise BackendError(
                f"vllm: could not fetch the GGUF file of {config.model!r}: {type(e).__name__}: {e}",
                hint=OFFLINE_HINT,
            ) from e
        self._gguf_header = gguf_header(config, self._model_source)
        self._engine_args = build_engine_args(config, self._model_source)
        t_engine = perf_counter()
        try:
            self._llm = LLM(**self._engine_args)
        except TypeError as e:
            raise BackendError(
                f"vllm.LLM rejected the engine arguments: {e}",
                hint="check passthrough_kwargs against vLLM's EngineArgs",
            ) from e
        except Exception as e:
            raise BackendError(
                f"vllm failed to load {config.model}: {type(e).__name__}: {e}",
                hint="lower vllm.gpu_memory_utilization or max_num_seqs if it ran out of memory",
            ) from e
        started = perf_counter() - t_engine
        self._tokenizer = self._llm.get_tokenizer()
        if self._gguf_header is not None:
            types = ", ".join(f"{n} {t}" for t, n in self._gguf_header.tensor_types().items())
            self._notes.append(
                f"GGUF file {self._model_source} ({types}): vLLM runs the quantised blocks; "
                + (
                    f"tokenizer {self._engine_args['tokenizer']}"
                    if "tokenizer" in self._engine_args
                    else "tokenizer converted from the file by transformers"
                )
            )
        self._window_prefix_start = prefix_cache_counters(self._llm)
        if config.lora is not None:
            from vllm.lora.request import LoRARequest

            adapter = config.lora.adapter_path or config.lora.adapter_id
            self._lora_request = LoRARequest(LORA_NAME, LORA_INT_ID, str(adapter))
        params = self._parameter_count()
        if params == 0:
            self._notes.append(
                "parameter count unavailable (no local safetensors): FLOPs not estimated"
            )
        parts = self._start_parts(started)  # before the notes are copied: it may add one
        return LoadInfo(
            load_time_s=perf_counter() - t0,
            parameter_count=params,
            model_dtype=str(self._effective("dtype", self._engine_args["dtype"])[0]).removeprefix(
                "torch."
            ),
            device="cuda",
            notes=list(self._notes),
            timing_parts=parts,
        )

    def _start_parts(self, started: float) -> dict[str, float]:
        """The engine start and the parts vLLM reports outside its log.

        torch.compile's time is ``compilation_config.compilation_time`` where the model runs:
        in this process's config when the engine core runs in-process, else read from the
        workers (``LLM.collective_rpc``; the largest, as they compile in parallel). Weight
        loading and CUDA-graph capture times appear only in vLLM's log.
        """
        parts = {"engine_start_s": round(started, 6)}
        compilation = getattr(self._engine_config(), "compilation_config", None)
        compile_s = getattr(compilation, "compilation_time", None)
        if not (isinstance(compile_s, (int, float)) and compile_s > 0):
            compile_s = self._workers_compile_seconds()
        if isinstance(compile_s, (int, float)) and compile_s > 0:
            parts["compile_s"] = float(compile_s)
        return parts

    def _workers_compile_seconds(self) -> float | None:
        """The workers' torch.compile time (vLLM 0.26 ``LLM.collective_rpc`` with a callable
        that receives each worker); None where it cannot be asked."""
        rpc = getattr(self._llm, "collective_rpc", None)
        if not callable(rpc):
            return None

        def compilation_time(worker: Any) -> Any:  # runs in each worker: pickled by value
            return getattr(getattr(worker, "compilation_config", None), "compilation_time", None)

        try:
            values = rpc(compilation_time, timeout=30)
        except Exception as e:  # an RPC that fails only loses a figure; the engine is up
            self._notes.append(
                f"vllm: torch.compile time not recorded: collective_rpc failed: "
                f"{type(e).__name__}: {e}"
            )
            return None
        seconds = [float(v) for v in values or [] if isinstance(v, (int, float))]
        if not seconds:
            self._notes.append(
                f"vllm: torch.compile time not recorded: the workers answered {values!r}"
            )
            return None
        if max(seconds) <= 0:
            self._notes.append(
                "vllm: the workers report 0 s of torch.compile (compilation off, or every "
                "graph loaded from vLLM's compile cache)"
            )
        return max(seconds)

    def _parameter_count(self) -> int:
        """Parameters from the GGUF header (the sum of its tensors' elements) or the
        safetensors headers of the local (or HF-cached) model folder."""
        src = self._model_source or ""
        if self._gguf_header is not None:
            return self._gguf_header.parameter_count
        folder = Path(src).expanduser()
        try:
            if not folder.is_dir():
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(src, local_files_only=True))
            return count_safetensors_params(folder)
        except Exception:
            return 0

    # ─── Effective values ───────────────────────────────────────────────────
    def _engine_config(self) -> Any:
        engine = getattr(self._llm, "llm_engine", None)
        return getattr(engine, "vllm_config", None)

    def _effective(self, name: str, requested: Any) -> tuple[Any, str]:
        """(value, source) of one engine setting: engine config > config > documented default."""
        return effective_value(self._engine_config(), name, requested)

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        """Every parameter ``config`` runs with, None-sentinels resolved (engine config where
        readable)."""
        if self._llm is None:
            raise BackendError("vllm engine: effective_parameters() requested before load()")
        v = config.vllm
        dec = config.decoder
        sampling = dec.decoding_strategy == "sampling"
        engine: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in VLLM_DEFAULTS:
            requested = getattr(v, name) if v is not None else None
            engine[name], sources[name] = self._effective(name, requested)
        dtype, sources["dtype"] = self._effective("dtype", self._engine_args.get("dtype"))
        return {
            "engine": self.name,
            "engine_version": self.version(),
            "model": config.model,
            "model_source": self._model_source,
            "gguf": (
                {**self._gguf_header.summary(), "weights": "GGUF blocks (vLLM GGUF kernels)"}
                if self._gguf_header is not None
                else None
            ),
            "precision": config.precision,
            "dtype": str(dtype).removeprefix("torch."),
            **engine,
            "effective_value_sources": sources,
            "decoding_strategy": dec.decoding_strategy,
            "temperature": dec.temperature if sampling else 0.0,
            "top_p": dec.top_p if sampling else None,
            "top_k": (-1 if dec.top_k is None else dec.top_k) if sampling else None,
            "repetition_penalty": dec.repetition_penalty,
            "random_seed": config.random_seed,
            "num_beams": (dec.num_beams or DEFAULT_NUM_BEAMS)
            if dec.decoding_strategy == "beam"
            else 1,
            "max_new_tokens": config.max_new_tokens_for(None),
            "ignore_eos": dec.ignore_eos,
            "min_tokens": "max_tokens" if dec.ignore_eos else 0,
            "speculative_config": self._engine_args.get("speculative_config"),
            "lora": (
                {
                    "lora_name": LORA_NAME,
                    "lora_int_id": LORA_INT_ID,
                    "lora_path": config.lora.adapter_path or config.lora.adapter_id,
                }
                if config.lora is not None
                else None
            ),
            "engine_args": {k: v for k, v in self._engine_args.items() if k != "model"},
            "passthrough_kwargs": dict(config.passthrough_kwargs or {}),
            "prefix_cache": window_prefix_cache(self._llm, self._window_prefix_start),
            "notes": list(self._notes),
        }

    # ─── Generation ─────────────────────────────────────────────────────────
    def _sampling_params(self, config: ExperimentConfig, max_tokens: int) -> Any:
        from vllm.sampling_params import SamplingParams

        dec = config.decoder
        kw: dict[str, Any] = {
            "max_tokens": max_tokens,
            "repetition_penalty": dec.repetition_penalty,
        }
        if dec.decoding_strategy == "sampling":
            kw.update(
                temperature=dec.temperature,
                top_p=dec.top_p,
                top_k=-1 if dec.top_k is None else dec.top_k,
                seed=config.random_seed,
            )
        else:
            kw["temperature"] = 0.0  # greedy
        if dec.ignore_eos:
            kw.update(ignore_eos=True, min_tokens=max_tokens)
        return SamplingParams(**kw)

    def after_warmup_run(self) -> None:
        """Empty the prefix cache (``clear_run_state``) at the end of every warmup run.

        So the window after a warmup (the measurement window, or the prefill-only one of
        ``measurement.phase_split``) never reuses KV blocks the warmup computed, in a fresh
        process as on a reused engine (where the harness also clears before the window): a
        warmup prompt sharing a prefix with measured ones (a chat template, a system prompt)
        would otherwise skip part of their prefill.
        """
        for note in self.clear_run_state():
            self._add_note(f"{note}, after every warmup")

    def prepare(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = MEASUREMENT_PHASE,
    ) -> PreparedRun:
        """Sampling parameters and request ids (beam search: token ids), before the window.

        The step loop's prompts are rendered inside the window, one at a time as each is added,
        as ``LLM.generate`` does (see ``step_loop.run_steps``): that rendering is vLLM's own
        front end.
        """
        if self._llm is None:
            raise BackendError(f"{self.name} engine: generate() called before load()")
        self.last_phase = phase
        limits = prompt_limits(prompts, config)
        run = PreparedRun(list(prompts), config, phase, limits)
        if not prompts:
            return run
        if config.decoder.decoding_strategy == "beam":
            run.payload = beam_plan(self._tokenizer, prompts, config, limits)
            return run
        engine = getattr(self._llm, "llm_engine", None)
        if not all(
            callable(getattr(engine, m, None))
            for m in ("add_request", "step", "has_unfinished_requests")
        ):
            run.payload = [self._sampling_params(config, n) for n in limits]  # one LLM.generate
            return run
        # one SamplingParams per distinct limit, shared as LLM.generate shares its one object
        by_limit = {n: self._sampling_params(config, n) for n in set(limits)}
        self._batch_seq += 1
        run.payload = StepPlan(
            engine=engine,
            params=[by_limit[n] for n in limits],
            request_ids=[f"llem-{self._batch_seq}-{i}" for i in range(len(prompts))],
            preprocess=getattr(self._llm, "_preprocess_cmpl", None),
        )
        return run

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """The engine loop (``step_loop.run_steps``), the beam searches, or one
        ``LLM.generate``."""
        plan = prepared.payload
        if isinstance(plan, StepPlan):
            with self._generation_errors():
                return RawRun(prepared, run_steps(plan, prepared.prompts, self._lora_request))
        if isinstance(plan, BeamPlan):
            return RawRun(prepared, run_beam(self._llm, self._lora_request, plan))
        return super().execute(prepared, on_batch=on_batch)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """Records from the step loop's stamps, the beam outputs, or the call's metrics."""
        if isinstance(raw.payload, StepOutputs):
            records, note = step_records(raw.prepared.prompts, raw.payload)
            self._add_note(note)
            return records
        if isinstance(raw.payload, BeamOutputs):
            records = beam_records(raw.prepared.prompts, raw.payload)
            self._add_note(BEAM_NOTE)
            return records
        return super().records(raw)

    def _run_generate(self, prompts: Sequence[Prompt], params: list[Any]) -> Sequence[Any]:
        lora = [self._lora_request] * len(prompts) if self._lora_request is not None else None
        outputs: Sequence[Any] = self._llm.generate(
            [p.text for p in prompts], params, use_tqdm=False, lora_request=lora
        )
        return outputs

    def _request_timing(self, output: Any, n_out: int) -> RequestTiming | None:
        return request_timings(output, n_out)

    def _timing_note(self, missing: int) -> str:
        if missing:
            return (
                "vLLM returned no per-request metrics (RequestOutput.metrics is None) for "
                "some requests: their ttft/itl are not recorded and latency is the wall time "
                "of the whole generate() call"
            )
        return (
            "vLLM reports only first/last token times per request: itl_s holds each "
            "request's mean inter-token interval"
        )

    # ─── Device housekeeping ────────────────────────────────────────────────
    def reset_peak_memory(self) -> None:
        """Start the window's statistics: no peak-memory counter lives in this process (the
        workers allocate), so this marks where the prefix-cache counters start."""
        self._window_prefix_start = prefix_cache_counters(self._llm)

    def clear_run_state(self) -> list[str]:
        """Empty vLLM's prefix cache so that no run reuses KV blocks another run computed.

        vLLM 0.26 ``LLM.reset_prefix_cache(reset_running_requests=False,
        reset_connector=False) -> bool``: False when requests still hold KV cache (none do
        between ``generate`` calls). Peak memory lives in the workers (nothing to reset here).
        """
        if self._llm is None:
            return ["vllm: engine not loaded; no prefix cache to clear"]
        reset = getattr(self._llm, "reset_prefix_cache", None)
        if not callable(reset):
            return ["vllm: this vLLM has no LLM.reset_prefix_cache; prefix cache not cleared"]
        # A window measured on a warm prefix cache skips prefill: refuse it rather than report it.
        try:
            done = reset()
        except Exception as e:
            raise BackendError(f"vllm: reset_prefix_cache failed ({type(e).__name__}: {e})") from e
        if done is False:
            raise BackendError("vllm: reset_prefix_cache refused (requests still running)")
        self.reset_peak_memory()
        return ["vllm: prefix cache reset (LLM.reset_prefix_cache)"]

    def _shutdown_handle(self, llm: Any) -> None:
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
