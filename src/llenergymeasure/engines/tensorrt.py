"""TensorRT-LLM inference engine: the TensorRT-engine flavour of TensorRT-LLM 1.2's LLM API.

Importing this module imports neither tensorrt_llm nor torch: both are imported inside methods.

Targets TensorRT-LLM 1.2.x (the ``[tensorrt]`` extra pins ``tensorrt-llm==1.2.*``); pre-flight
refuses any other release. Not verified on hardware: the tests run against a fake
``tensorrt_llm`` package (``tests/fakes/tensorrt_llm``) that follows the 1.2 API below.

Which ``LLM``: since 1.0 ``tensorrt_llm.LLM`` is the PyTorch backend (it builds no engine and
refuses TensorRT-only arguments such as ``build_config``); the engine-building class is
``tensorrt_llm._tensorrt_engine.LLM`` (``tensorrt_llm.llmapi.llm._TrtLLM``), whose arguments are
checked against ``TrtLlmArgs``: an unknown keyword is a ``ValueError``. The calls used:

- ``LLM(model, tokenizer=None, ..., tensor_parallel_size=1, dtype="auto", **kwargs)`` with
  ``pipeline_parallel_size``, ``build_config`` (``BuildConfig(max_batch_size=..,
  max_seq_len=..)``), ``quant_config`` (``QuantConfig(quant_algo=QuantAlgo.X)``) and
  ``kv_cache_config`` (``KvCacheConfig(enable_block_reuse=.., free_gpu_memory_fraction=..)``);
  ``BuildConfig``, ``QuantConfig``, ``QuantAlgo`` and ``KvCacheConfig`` come from
  ``tensorrt_llm.llmapi``. A folder holding a built engine is loaded with
  ``LLM(model=engine_dir, tokenizer=hf_model)`` (its build config comes from the engine).
- ``LLM.save(engine_dir)`` copies the engine it built; ``LLM.tokenizer``; ``LLM.shutdown()``.
- ``tensorrt_llm.SamplingParams`` (keyword-only): ``max_tokens``, ``top_k`` (None = all
  logits, so greedy is ``top_k=1``), ``top_p``, ``temperature``, ``seed``, ``min_tokens``,
  ``repetition_penalty``, ``ignore_eos``.
- ``LLM.generate_async(inputs, sampling_params=.., streaming=True)``: a ``RequestOutput`` that
  is an async iterator; each item is the request so far (``outputs[0].token_ids`` grows by the
  tokens of that response, ``prompt_token_ids``, ``finished``).

Per-token timing: every prompt is submitted with ``generate_async(..., streaming=True)`` from
one asyncio loop (the pattern of TensorRT-LLM's own streaming example); each streamed response
is stamped with ``perf_counter()`` when it reaches llem (with the request's token count so far;
nothing else happens per response inside the window), and, when the records are built after
the window, tokens that arrive together share the interval since the previous stamp evenly.
This gives true TTFT (from submission) and every inter-token gap; ``LLM.generate`` itself is
the same ``generate_async`` per prompt without streaming, so the engine schedules the same
requests either way.

Build or load:

- ``tensorrt.engine_path`` set -> that engine is loaded; no build.
- else the engine is looked up in ``<llem cache>/trt-engines/<key>``, where ``key`` hashes the
  compile-time fields (``COMPILE_TIME_FIELDS``), the TensorRT-LLM version and the GPU name; a
  hit is loaded; a miss is built from the HF model and saved there with ``LLM.save`` (atomic:
  saved into a temp folder, then renamed). The build time is part of the load time.

KV block reuse (TensorRT-LLM's prefix caching, on by default in ``KvCacheConfig``) cannot be
emptied through the LLM API, so llem turns it off unless ``tensorrt.enable_block_reuse: true``;
``clear_run_state`` says which of the two holds.

Precision / quantization: fp16 -> dtype float16, no quantization. int8 -> SmoothQuant
(``int8_sq`` = ``QuantAlgo.W8A8_SQ_PER_CHANNEL``), int4 -> AWQ (``int4_awq`` =
``QuantAlgo.W4A16_AWQ``), fp8 -> ``QuantAlgo.FP8``; ``tensorrt.quantization`` may name the
method explicitly but must agree with ``precision``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from llenergymeasure.config.catalogue import engine_spec
from llenergymeasure.config.models import TENSORRT_PRECISION_QUANT
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
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "COMPILE_TIME_FIELDS",
    "INSTALL_HINT",
    "QUANT_ALGOS",
    "SUPPORTED_SERIES",
    "TRTLLM_SERVE_FLAGS",
    "TRT_DEFAULTS",
    "TensorRTBackend",
    "engine_cache_dir",
    "engine_cache_key",
    "resolve_quantization",
    "version_problem",
]

INSTALL_HINT = extra_install_hint("tensorrt")
MARKER_FILE = ".llem-engine-complete"
#: The TensorRT-LLM release series this engine is written and tested (against a fake) for.
SUPPORTED_SERIES = (1, 2)

#: Config fields baked into a built engine: changing any of them needs a rebuild.
COMPILE_TIME_FIELDS: dict[str, str] = {
    "model": "weights compiled into the engine",
    "precision": "engine dtype (float16) and the quantization it implies",
    "tensorrt.quantization": "QuantConfig.quant_algo applied at build time",
    "tensorrt.max_batch_size": "BuildConfig.max_batch_size (largest in-flight batch)",
    "tensorrt.max_seq_len": "BuildConfig.max_seq_len (prompt + generated tokens)",
    "tensorrt.tp_size": "tensor-parallel mapping (one engine per rank)",
    "tensorrt.pp_size": "pipeline-parallel mapping (one engine per rank)",
    "tensorrt.kv_cache_type": "BuildConfig.kv_cache_type (paged)",
}

#: What a None in the tensorrt: section resolves to (TensorRT-LLM 1.2 defaults, except
#: enable_block_reuse, which llem turns off).
TRT_DEFAULTS: dict[str, Any] = {
    "max_batch_size": engine_spec("tensorrt").default_concurrency,  # BuildConfig's 2048
    "max_seq_len": None,  # None: derived from the model's max_position_embeddings at build
    "tp_size": 1,
    "pp_size": 1,
    "kv_cache_type": "paged",  # BuildConfig.kv_cache_type None -> PAGED
    "enable_block_reuse": False,  # llem's choice; KvCacheConfig's own default is True
    "kv_cache_free_gpu_memory_fraction": 0.9,  # KvCacheConfig.free_gpu_memory_fraction
}

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

#: llem quantization name -> ``QuantAlgo`` member name.
QUANT_ALGOS: dict[str, str] = {
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "fp8": "FP8",
}


def resolve_quantization(config: ExperimentConfig) -> str | None:
    """The llem quantization name for ``config`` (explicit field, else implied by precision)."""
    t = config.tensorrt
    if t is not None and t.quantization is not None:
        return t.quantization
    return TENSORRT_PRECISION_QUANT.get(config.precision)


def version_problem(version: str) -> str | None:
    """Why ``version`` of TensorRT-LLM cannot run this engine, or None when it is a 1.2.x."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is not None and (int(match[1]), int(match[2])) == SUPPORTED_SERIES:
        return None
    major, minor = SUPPORTED_SERIES
    return (
        f"tensorrt engine targets TensorRT-LLM {major}.{minor}.x, found {version!r}: "
        f"install the pinned release with {INSTALL_HINT}"
    )


def _trt_setting(config: ExperimentConfig, name: str) -> Any:
    t = config.tensorrt
    value = getattr(t, name) if t is not None else None
    return TRT_DEFAULTS.get(name) if value is None else value


def _gpu_name() -> str:
    """Name of GPU 0 (engines are GPU-architecture specific), "unknown" if unreadable."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:
        pass
    return "unknown"


def engine_cache_key(config: ExperimentConfig, trt_version: str, gpu: str) -> str:
    """16-hex SHA-256 of the compile-time fields, the TensorRT-LLM version and the GPU name."""
    payload = {
        "model": config.model,
        "precision": config.precision,
        "quantization": resolve_quantization(config),
        "max_batch_size": _trt_setting(config, "max_batch_size"),
        "max_seq_len": _trt_setting(config, "max_seq_len"),
        "tp_size": _trt_setting(config, "tp_size"),
        "pp_size": _trt_setting(config, "pp_size"),
        "kv_cache_type": _trt_setting(config, "kv_cache_type"),
        "tensorrt_llm_version": trt_version,
        "gpu": gpu,
    }
    canonical = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def engine_cache_dir(key: str) -> Path:
    """``<llem cache root>/trt-engines/<key>``."""
    from llenergymeasure.engines.builtin import llem_cache_root

    return llem_cache_root() / "trt-engines" / key


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
    def _runtime_kwargs(self, config: ExperimentConfig) -> dict[str, Any]:
        """``LLM(...)`` kwargs every load passes: parallel mapping and the KV-cache config."""
        from tensorrt_llm.llmapi import KvCacheConfig

        kv: dict[str, Any] = {
            "enable_block_reuse": bool(_trt_setting(config, "enable_block_reuse"))
        }
        t = config.tensorrt
        if t is not None and t.kv_cache_free_gpu_memory_fraction is not None:
            kv["free_gpu_memory_fraction"] = t.kv_cache_free_gpu_memory_fraction
        return {
            "tensor_parallel_size": _trt_setting(config, "tp_size"),
            "pipeline_parallel_size": _trt_setting(config, "pp_size"),
            "kv_cache_config": KvCacheConfig(**kv),
        }

    def _build_kwargs(self, config: ExperimentConfig) -> dict[str, Any]:
        """``LLM(...)`` kwargs a build adds: dtype, BuildConfig, QuantConfig."""
        from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

        t = config.tensorrt
        build_kw: dict[str, Any] = {}
        for name in ("max_batch_size", "max_seq_len"):
            value = getattr(t, name) if t is not None else None
            if value is not None:
                build_kw[name] = value
        # kv_cache_type: "paged" is the only value and BuildConfig's default (None -> PAGED).
        kwargs: dict[str, Any] = {"dtype": "float16", "build_config": BuildConfig(**build_kw)}
        quant = resolve_quantization(config)
        if quant is not None:
            kwargs["quant_config"] = QuantConfig(quant_algo=getattr(QuantAlgo, QUANT_ALGOS[quant]))
        return kwargs

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
            runtime = self._runtime_kwargs(config)
            if t is not None and t.engine_path is not None:
                self._engine_dir = str(Path(t.engine_path).expanduser())
                self._engine_origin = "engine_path"
                self._llm_kwargs = {**runtime, **passthrough}
                self._llm = LLM(model=self._engine_dir, tokenizer=model, **self._llm_kwargs)
            else:
                version = self.version()
                self._cache_key = engine_cache_key(config, version, _gpu_name())
                target = engine_cache_dir(self._cache_key)
                if (target / MARKER_FILE).is_file():
                    self._engine_origin = "cache"
                    self._engine_dir = str(target)
                    self._llm_kwargs = {**runtime, **passthrough}
                    self._llm = LLM(model=str(target), tokenizer=model, **self._llm_kwargs)
                    self._notes.append(f"loaded cached TensorRT engine {self._cache_key}")
                else:
                    self._llm_kwargs = {**runtime, **self._build_kwargs(config), **passthrough}
                    self._llm = LLM(model=model, **self._llm_kwargs)
                    self._save_to_cache(target, config, version)
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

    def _save_to_cache(self, target: Path, config: ExperimentConfig, version: str) -> None:
        """``LLM.save`` into a temp folder beside ``target``, then rename it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            from llenergymeasure.files import write_json, write_text

            self._llm.save(str(tmp))
            write_json(
                tmp / "llem-build.json",
                {
                    "cache_key": self._cache_key,
                    "tensorrt_llm_version": version,
                    "compile_time": {
                        "model": config.model,
                        "precision": config.precision,
                        "quantization": resolve_quantization(config),
                        **{
                            k: _trt_setting(config, k)
                            for k in (
                                "max_batch_size",
                                "max_seq_len",
                                "tp_size",
                                "pp_size",
                                "kv_cache_type",
                            )
                        },
                    },
                },
                base=tmp,
            )
            write_text(tmp / MARKER_FILE, "ok\n", base=tmp)
            if target.exists():  # a concurrent build won: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            os.replace(tmp, target)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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
            **{k: _trt_setting(config, k) for k in TRT_DEFAULTS},
            "enable_block_reuse": self._block_reuse(),
            "kv_cache_free_gpu_memory_fraction": getattr(
                kv,
                "free_gpu_memory_fraction",
                _trt_setting(config, "kv_cache_free_gpu_memory_fraction"),
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
            streams = asyncio.run(self._stream_all(prepared.prompts, prepared.payload))
        return RawRun(prepared, streams)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per streamed request: tokens of one response share its interval."""
        streams: list[_Stream] = raw.payload
        prompts = raw.prepared.prompts
        records = [_stream_record(p, st) for p, st in zip(prompts, streams, strict=True)]
        if records:
            self._add_note(
                "tensorrt: per-token timing from streaming generate_async, one perf_counter "
                "stamp per streamed response: ttft_s and every itl_s gap are measured (tokens "
                "of one response share its interval evenly)"
            )
        return records

    async def _stream_all(self, prompts: Sequence[Prompt], params: list[Any]) -> list[_Stream]:
        """All requests in flight together, as ``LLM.generate`` submits them; prompt order kept."""
        return list(
            await asyncio.gather(
                *(self._stream_one(p, sp) for p, sp in zip(prompts, params, strict=True))
            )
        )

    async def _stream_one(self, prompt: Prompt, sampling_params: Any) -> _Stream:
        """One request: submit, then stamp every streamed response as it arrives (its time and
        the request's token count so far; the per-token times are spread after the window)."""
        stream = _Stream(submitted_at=monotonic(), t_in=perf_counter())  # monotonic: the sampler's
        responses = self._llm.generate_async(
            prompt.text, sampling_params=sampling_params, streaming=True
        )
        output: Any = None
        async for output in responses:
            stream.arrivals.append((perf_counter(), len(output.outputs[0].token_ids)))
        stream.t_done = perf_counter()
        stream.final = output
        return stream

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


@dataclass
class _Stream:
    """One streamed request as ``execute`` saw it: submission (``time.monotonic`` and
    ``perf_counter``), each response's arrival (``perf_counter``, tokens so far), the end of
    the stream and the final output."""

    submitted_at: float
    t_in: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    t_done: float = 0.0
    final: Any = None


def _stream_record(prompt: Prompt, stream: _Stream) -> RequestRecord:
    """The record of one streamed request: tokens that arrive together share the interval
    since the previous response evenly; the final output's count is authoritative (e.g.
    trimmed stop words)."""
    times: list[float] = []
    for now, total in stream.arrivals:
        new = total - len(times)
        if new > 0:
            start = times[-1] if times else now
            times.extend(start + (now - start) * (k + 1) / new for k in range(new))
    if stream.final is not None:
        del times[len(stream.final.outputs[0].token_ids) :]
    prompt_ids = getattr(stream.final, "prompt_token_ids", None) if stream.final else None
    t_in = stream.t_in
    return RequestRecord(
        index=prompt.index,
        input_tokens=len(prompt_ids or []),
        output_tokens=len(times),
        latency_s=(times[-1] - t_in) if times else stream.t_done - t_in,
        ttft_s=(times[0] - t_in) if times else None,
        itl_s=[b - a for a, b in itertools.pairwise(times)],
        start_s=stream.submitted_at,
    )
