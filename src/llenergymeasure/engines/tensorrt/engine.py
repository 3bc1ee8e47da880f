"""``TensorRTBackend``: the TensorRT-LLM engine (see the package docstring for the
TensorRT-LLM calls it uses and how an engine is built or loaded).

Importing this module imports neither tensorrt_llm nor torch: both are imported inside methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from llenergymeasure.engines.base import (
    BatchProgress,
    LoadInfo,
    PassthroughKeys,
    PreparedRun,
    RawRun,
    RequestRecord,
    ServeCommand,
)
from llenergymeasure.engines.offline import OfflineLLMEngine
from llenergymeasure.engines.tensorrt.build import (
    COMPILE_TIME_FIELDS,
    MARKER_FILE,
    QUANT_ALGOS,
    TRT_DEFAULTS,
    build_kwargs,
    engine_cache_dir,
    engine_cache_key,
    gpu_name,
    resolve_quantization,
    runtime_kwargs,
    save_to_cache,
    trt_setting,
    version_problem,
)
from llenergymeasure.engines.tensorrt.streaming import Stream, stream_all, stream_record
from llenergymeasure.exceptions import BackendError, ConfigError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = ["TRTLLM_SERVE_FLAGS", "TensorRTBackend"]

#: ``TensorRTConfig`` field -> ``trtllm-serve`` flag; ``engine_path`` replaces the model.
TRTLLM_SERVE_FLAGS: dict[str, str] = {
    "tp_size": "--tp_size",
    "pp_size": "--pp_size",
    "max_batch_size": "--max_batch_size",
    "max_seq_len": "--max_seq_len",
    "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
}

#: passthrough_kwargs keys that would replace an ``LLM(...)`` argument llem builds from a
#: config field (the result would then record a value that did not run).
_CONFLICTING_KEYS: dict[str, str] = {
    "model": "model",
    "dtype": "precision",
    "tensor_parallel_size": "tensorrt.tp_size",
    "pipeline_parallel_size": "tensorrt.pp_size",
    "quant_config": "tensorrt.quantization",
    "build_config": "tensorrt.max_batch_size / tensorrt.max_seq_len",
}


class TensorRTBackend(OfflineLLMEngine):
    """Inference through a TensorRT-LLM engine (built and cached, or loaded)."""

    name = "tensorrt"
    display_name = "TensorRT-LLM"
    fields_without_server_flag: ClassVar[Mapping[str, str]] = {
        "tensorrt.quantization": "quantization is fixed when the engine is built; build it "
        "first and set tensorrt.engine_path",
        "tensorrt.enable_block_reuse": "trtllm-serve takes it only in an "
        "--extra_llm_api_options YAML file (kv_cache_config.enable_block_reuse); pass that "
        "file in online.server.extra_args",
    }

    def __init__(self) -> None:
        super().__init__()
        self._llm_kwargs: dict[str, Any] = {}
        self._engine_dir: str | None = None
        self._engine_origin: str | None = None  # "engine_path" | "cache" | "built"
        self._cache_key: str | None = None

    @classmethod
    def passthrough_keys(cls) -> PassthroughKeys:
        """Any ``TrtLlmArgs`` field except those llem builds from a config field."""
        return PassthroughKeys(
            engine=cls.name,
            open_route=(
                "`tensorrt_llm._tensorrt_engine.LLM(...)` as a `TrtLlmArgs` field of "
                "TensorRT-LLM 1.2 (e.g. `kv_cache_config`, which then replaces llem's and is "
                "what gets recorded); TensorRT-LLM refuses an unknown one when the engine loads"
            ),
            refused={k: f"set by `{field}`" for k, field in _CONFLICTING_KEYS.items()},
        )

    # ─── Online mode ────────────────────────────────────────────────────────
    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand:
        """``trtllm-serve MODEL_OR_ENGINE --backend tensorrt``: a built engine
        (``tensorrt.engine_path``) replaces the model; ``--tp_size``, ``--pp_size``,
        ``--max_batch_size``, ``--max_seq_len``, ``--kv_cache_free_gpu_memory_fraction`` from
        the set ``tensorrt:`` fields. 1.x serves on its PyTorch backend unless told otherwise;
        llem's TensorRT-LLM engine is the TensorRT-engine path."""
        online = config.online
        if online is not None and online.served_model_name:
            raise ConfigError(
                "online.served_model_name is not supported with trtllm-serve",
                hint="remove online.served_model_name",
            )
        t = config.tensorrt
        target = t.engine_path if t is not None and t.engine_path else model
        argv = ["trtllm-serve", target, "--backend", "tensorrt"]
        argv += ["--host", host, "--port", str(port)]
        section = t.model_dump(exclude_none=True) if t is not None else {}
        for name, value in section.items():
            if name in TRTLLM_SERVE_FLAGS:
                argv += [TRTLLM_SERVE_FLAGS[name], str(value)]
        note = (
            f"precision={config.precision} is not a trtllm-serve flag: the server runs at the "
            "dtype of its checkpoint or built engine"
        )
        return ServeCommand(argv=argv, notes=[note])

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def _machine_problems(self, config: ExperimentConfig) -> list[str]:
        """The installed TensorRT-LLM must be a 1.2.x; a given ``engine_path`` must be an
        engine folder; the model (built from, or the tokenizer of a given engine) must be a
        local folder, or a hub id in the HF cache or on a hub that answers one bounded probe.
        Static config rules (precision, quantization, beam, LoRA, draft models, GGUF) are the
        config model's."""
        problems: list[str] = []
        version_issue = version_problem(self.version())
        if version_issue is not None:
            problems.append(version_issue)
        extra = config.passthrough_kwargs or {}
        for key in extra:
            if key in _CONFLICTING_KEYS:
                problems.append(
                    f"passthrough_kwargs.{key} is controlled by the config field "
                    f"'{_CONFLICTING_KEYS[key]}'; set it there instead"
                )
        problems.extend(self._check_hf_model(config.model, "model", extra.get("revision")))
        t = config.tensorrt
        if t is not None and t.engine_path is not None:
            path = Path(t.engine_path).expanduser()
            if not (path / "config.json").is_file():
                problems.append(
                    f"tensorrt.engine_path {t.engine_path!r} is not a TensorRT-LLM engine folder "
                    "(no config.json)"
                )
        return problems

    # ─── Load ───────────────────────────────────────────────────────────────
    def _start(self, config: ExperimentConfig) -> LoadInfo:
        """Load ``engine_path``, or a cached engine, or build one and cache it."""
        from tensorrt_llm._tensorrt_engine import LLM

        from llenergymeasure.engines import builtin

        model = (
            str(builtin.resolve_builtin_model(config.model))
            if builtin.is_builtin_model(config.model)
            else config.model
        )
        passthrough = dict(config.passthrough_kwargs or {})
        t0 = perf_counter()
        t = config.tensorrt
        try:
            runtime = runtime_kwargs(config)
            if t is not None and t.engine_path is not None:
                self._engine_dir = str(Path(t.engine_path).expanduser())
                self._engine_origin = "engine_path"
                self._llm_kwargs = {**runtime, **passthrough}
                self._llm = LLM(model=self._engine_dir, tokenizer=model, **self._llm_kwargs)
            else:
                version = self.version()
                self._cache_key = engine_cache_key(config, version, gpu_name())
                target = engine_cache_dir(self._cache_key)
                if (target / MARKER_FILE).is_file():
                    self._engine_origin = "cache"
                    self._engine_dir = str(target)
                    self._llm_kwargs = {**runtime, **passthrough}
                    self._llm = LLM(model=str(target), tokenizer=model, **self._llm_kwargs)
                    self._notes.append(f"loaded cached TensorRT engine {self._cache_key}")
                else:
                    self._llm_kwargs = {**runtime, **build_kwargs(config), **passthrough}
                    self._llm = LLM(model=model, **self._llm_kwargs)
                    save_to_cache(self._llm, target, config, version, self._cache_key)
                    self._engine_origin = "built"
                    self._engine_dir = str(target)
                    self._notes.append(
                        f"built TensorRT engine {self._cache_key} (build time is in load time), "
                        f"cached at {target}"
                    )
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(
                f"TensorRT-LLM failed to build/load {config.model}: {type(e).__name__}: {e}",
                hint="lower tensorrt.max_batch_size / max_seq_len if the build ran out of memory",
            ) from e
        self._tokenizer = getattr(self._llm, "tokenizer", None)
        return LoadInfo(
            load_time_s=perf_counter() - t0,
            parameter_count=0,
            model_dtype="float16",
            device="cuda",
            notes=list(self._notes),
        )

    # ─── Effective values ───────────────────────────────────────────────────
    def _block_reuse(self) -> bool | None:
        """``enable_block_reuse`` of the KvCacheConfig actually passed (passthrough may set its
        own); None before load."""
        kv = self._llm_kwargs.get("kv_cache_config")
        value = getattr(kv, "enable_block_reuse", None)
        return bool(value) if value is not None else None

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        """Every parameter ``config`` runs with, None-sentinels resolved."""
        if self._llm is None:
            raise BackendError("tensorrt engine: effective_parameters() requested before load()")
        dec = config.decoder
        sampling = dec.decoding_strategy == "sampling"
        quant = resolve_quantization(config)
        kv = self._llm_kwargs.get("kv_cache_config")
        return {
            "engine": self.name,
            "engine_version": self.version(),
            "llm_class": "tensorrt_llm._tensorrt_engine.LLM",
            "model": config.model,
            "precision": config.precision,
            "dtype": "float16",
            "quantization": quant,
            "quant_algo": QUANT_ALGOS.get(quant) if quant else None,
            **{k: trt_setting(config, k) for k in TRT_DEFAULTS},
            "enable_block_reuse": self._block_reuse(),
            "kv_cache_free_gpu_memory_fraction": getattr(
                kv,
                "free_gpu_memory_fraction",
                trt_setting(config, "kv_cache_free_gpu_memory_fraction"),
            ),
            "engine_path": self._engine_dir,
            "engine_origin": self._engine_origin,
            "engine_cache_key": self._cache_key,
            "compile_time_fields": sorted(COMPILE_TIME_FIELDS),
            "decoding_strategy": dec.decoding_strategy,
            "temperature": dec.temperature if sampling else None,
            "top_p": dec.top_p if sampling else None,
            "top_k": dec.top_k if sampling else 1,
            "repetition_penalty": dec.repetition_penalty,
            "random_seed": config.random_seed if sampling else None,
            "max_new_tokens": config.max_new_tokens_for(None),
            "ignore_eos": dec.ignore_eos,
            "timing_source": "streaming generate_async, one perf_counter stamp per response",
            "passthrough_kwargs": dict(config.passthrough_kwargs or {}),
            "notes": list(self._notes),
        }

    # ─── Generation ─────────────────────────────────────────────────────────
    def _sampling_params(self, config: ExperimentConfig, max_tokens: int) -> Any:
        from tensorrt_llm import SamplingParams

        dec = config.decoder
        kw: dict[str, Any] = {
            "max_tokens": max_tokens,
            "repetition_penalty": dec.repetition_penalty,
        }
        if dec.decoding_strategy == "sampling":
            kw.update(
                temperature=dec.temperature,
                top_p=dec.top_p,
                top_k=dec.top_k,  # None = all logits
                seed=config.random_seed,
            )
        else:
            kw["top_k"] = 1  # greedy: top_k None would sample from all logits
        if dec.ignore_eos:
            kw.update(ignore_eos=True, min_tokens=max_tokens)
        return SamplingParams(**kw)

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """Stream every prompt at once through ``generate_async`` and stamp each response."""
        if not prepared.prompts:
            return RawRun(prepared, [])
        with self._generation_errors():
            streams = stream_all(self._llm, prepared.prompts, prepared.payload)
        return RawRun(prepared, streams)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per streamed request: tokens of one response share its interval."""
        streams: list[Stream] = raw.payload
        prompts = raw.prepared.prompts
        records = [stream_record(p, st) for p, st in zip(prompts, streams, strict=True)]
        if records:
            self._add_note(
                "tensorrt: per-token timing from streaming generate_async, one perf_counter "
                "stamp per streamed response: ttft_s and every itl_s gap are measured (tokens "
                "of one response share its interval evenly)"
            )
        return records

    # ─── Device housekeeping ────────────────────────────────────────────────
    def clear_run_state(self) -> list[str]:
        """Say whether KV blocks can carry over: the LLM API has no call that empties them.

        With block reuse off (llem's default) no request reuses another's KV blocks, so there
        is nothing to clear; with ``tensorrt.enable_block_reuse: true`` a window on a reused
        engine may skip prefill for prefixes an earlier run computed.
        """
        if self._block_reuse():
            return [
                "tensorrt: KV block reuse is on (KvCacheConfig.enable_block_reuse=True) and "
                "TensorRT-LLM's LLM API has no call that empties it: this window may reuse KV "
                "blocks an earlier run computed"
            ]
        return [
            "tensorrt: KV block reuse is off (KvCacheConfig.enable_block_reuse=False): no KV "
            "blocks carry over between runs, nothing to clear"
        ]

    def _shutdown_handle(self, llm: Any) -> None:
        llm.shutdown()
