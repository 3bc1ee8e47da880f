"""TensorRT-LLM inference engine on the LLM API, building (and caching) or loading an engine.

Importing this module imports neither tensorrt_llm nor torch: both are imported inside methods.

Targets TensorRT-LLM 1.2 (the ``[tensorrt]`` extra pins ``tensorrt-llm==1.2.*``); written against
the 1.0 LLM API, whose calls used here are unchanged in the current upstream source of
``tensorrt_llm/_tensorrt_engine/llm.py`` (``LLM.__init__`` and ``LLM.save`` were checked there):
the TensorRT-engine
``LLM(model, tokenizer, ..., tensor_parallel_size, dtype, **TrtLlmArgs)`` with
``pipeline_parallel_size``, ``build_config``, ``quant_config``, and ``LLM.save(engine_dir)``;
``tensorrt_llm/builder.py`` ``BuildConfig(max_batch_size, max_seq_len, kv_cache_type, ...)``;
``tensorrt_llm.llmapi`` ``QuantConfig(quant_algo=QuantAlgo.*)``; ``tensorrt_llm.SamplingParams``
(``max_tokens, top_k, top_p, temperature, seed, min_tokens, repetition_penalty, ignore_eos,
return_perf_metrics``)). From 1.0 on ``tensorrt_llm.LLM`` is the PyTorch backend, which builds
no engine, so the TensorRT ``LLM`` is taken from ``tensorrt_llm._tensorrt_engine`` when that
module exists (older releases: ``tensorrt_llm.LLM`` is the TensorRT flow).
Not verified on hardware: the tests run against a fake ``tensorrt_llm`` package.

Build or load:

- ``tensorrt.engine_path`` set -> that engine is loaded (``LLM(model=engine_path,
  tokenizer=model)``); no build.
- else the engine is looked up in ``<llem cache>/trt-engines/<key>``, where ``key`` hashes the
  compile-time fields (``COMPILE_TIME_FIELDS``), the TensorRT-LLM version and the GPU name; a
  hit is loaded; a miss is built from the HF model and saved there with ``LLM.save`` (atomic:
  saved into a temp folder, then renamed). The build time is part of the load time.

Precision / quantization: fp16 -> dtype float16, no quantization. int8 -> SmoothQuant
(``int8_sq`` = ``QuantAlgo.W8A8_SQ_PER_CHANNEL``), int4 -> AWQ (``int4_awq`` =
``QuantAlgo.W4A16_AWQ``), fp8 -> ``QuantAlgo.FP8``; ``tensorrt.quantization`` may name the
method explicitly but must agree with ``precision``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.models import TENSORRT_PRECISION_QUANT
from llenergymeasure.engines.base import LoadInfo
from llenergymeasure.engines.offline import OfflineLLMEngine, RequestTiming
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "COMPILE_TIME_FIELDS",
    "INSTALL_HINT",
    "QUANT_ALGOS",
    "TRT_DEFAULTS",
    "TensorRTBackend",
    "engine_cache_dir",
    "engine_cache_key",
    "resolve_quantization",
]

INSTALL_HINT = 'pip install "llenergymeasure[tensorrt]"'
MARKER_FILE = ".llem-engine-complete"

#: Config fields baked into a built engine: changing any of them needs a rebuild.
COMPILE_TIME_FIELDS: dict[str, str] = {
    "model": "weights compiled into the engine",
    "precision": "engine dtype (float16) and the quantization it implies",
    "tensorrt.quantization": "QuantConfig.quant_algo applied at build time",
    "tensorrt.max_batch_size": "BuildConfig.max_batch_size (largest in-flight batch)",
    "tensorrt.max_seq_len": "BuildConfig.max_seq_len (prompt + generated tokens)",
    "tensorrt.tp_size": "tensor-parallel mapping (one engine per rank)",
    "tensorrt.pp_size": "pipeline-parallel mapping (one engine per rank)",
    "tensorrt.builder_opt_level": "TensorRT builder optimisation level (0-5)",
    "tensorrt.kv_cache_type": "BuildConfig.kv_cache_type (paged)",
}

#: What a None in the tensorrt: section resolves to (TensorRT-LLM 1.0 BuildConfig defaults).
TRT_DEFAULTS: dict[str, Any] = {
    "max_batch_size": 2048,
    "max_seq_len": None,  # None: derived from the model's max_position_embeddings at build
    "tp_size": 1,
    "pp_size": 1,
    "kv_cache_type": "paged",
    "builder_opt_level": None,  # None: TensorRT's default (3)
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
        "builder_opt_level": _trt_setting(config, "builder_opt_level"),
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


def _trt_llm_class() -> Any:
    """The TensorRT-engine ``LLM`` class (``_tensorrt_engine.LLM`` from 1.0 on)."""
    if importlib.util.find_spec("tensorrt_llm._tensorrt_engine") is not None:
        from tensorrt_llm._tensorrt_engine import LLM

        return LLM
    from tensorrt_llm import LLM as LegacyLLM

    return LegacyLLM


class TensorRTBackend(OfflineLLMEngine):
    """Inference through a TensorRT-LLM engine (built and cached, or loaded)."""

    name = "tensorrt"
    display_name = "TensorRT-LLM"

    def __init__(self) -> None:
        super().__init__()
        self._llm_kwargs: dict[str, Any] = {}
        self._engine_dir: str | None = None
        self._engine_origin: str | None = None  # "engine_path" | "cache" | "built"
        self._cache_key: str | None = None

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def _machine_problems(self, config: ExperimentConfig) -> list[str]:
        """A given ``engine_path`` must be an engine folder. Static config rules (precision,
        quantization, beam, LoRA, draft models) are the config model's."""
        problems: list[str] = []
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
    def _build_kwargs(self, config: ExperimentConfig) -> dict[str, Any]:
        """``LLM(...)`` kwargs for a build: dtype, parallelism, BuildConfig, QuantConfig."""
        from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

        t = config.tensorrt
        build_kw: dict[str, Any] = {}
        for name in ("max_batch_size", "max_seq_len"):
            value = getattr(t, name) if t is not None else None
            if value is not None:
                build_kw[name] = value
        # kv_cache_type: "paged" is the only value and BuildConfig's default (None -> PAGED).
        build_config = BuildConfig(**build_kw)
        if t is not None and t.builder_opt_level is not None:
            if not hasattr(build_config, "builder_opt"):
                raise BackendError(
                    "tensorrt.builder_opt_level is set but this TensorRT-LLM's BuildConfig has "
                    "no builder optimisation level (builder_opt)",
                    hint="leave tensorrt.builder_opt_level unset",
                )
            build_config.builder_opt = t.builder_opt_level
        kwargs: dict[str, Any] = {
            "dtype": "float16",
            "tensor_parallel_size": _trt_setting(config, "tp_size"),
            "pipeline_parallel_size": _trt_setting(config, "pp_size"),
            "build_config": build_config,
        }
        quant = resolve_quantization(config)
        if quant is not None:
            kwargs["quant_config"] = QuantConfig(quant_algo=getattr(QuantAlgo, QUANT_ALGOS[quant]))
        return kwargs

    def _start(self, config: ExperimentConfig) -> LoadInfo:
        """Load ``engine_path``, or a cached engine, or build one and cache it."""
        LLM = _trt_llm_class()
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
            if t is not None and t.engine_path is not None:
                self._engine_dir = str(Path(t.engine_path).expanduser())
                self._engine_origin = "engine_path"
                self._llm_kwargs = {
                    "tensor_parallel_size": _trt_setting(config, "tp_size"),
                    "pipeline_parallel_size": _trt_setting(config, "pp_size"),
                    **passthrough,
                }
                self._llm = LLM(model=self._engine_dir, tokenizer=model, **self._llm_kwargs)
            else:
                version = self.version()
                self._cache_key = engine_cache_key(config, version, _gpu_name())
                target = engine_cache_dir(self._cache_key)
                if (target / MARKER_FILE).is_file():
                    self._engine_origin = "cache"
                    self._engine_dir = str(target)
                    self._llm_kwargs = {
                        "tensor_parallel_size": _trt_setting(config, "tp_size"),
                        "pipeline_parallel_size": _trt_setting(config, "pp_size"),
                        **passthrough,
                    }
                    self._llm = LLM(model=str(target), tokenizer=model, **self._llm_kwargs)
                    self._notes.append(f"loaded cached TensorRT engine {self._cache_key}")
                else:
                    self._llm_kwargs = {**self._build_kwargs(config), **passthrough}
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
            self._llm.save(str(tmp))
            (tmp / "llem-build.json").write_text(
                json.dumps(
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
                                    "builder_opt_level",
                                    "kv_cache_type",
                                )
                            },
                        },
                    },
                    indent=2,
                ),
                encoding="utf-8",
            )
            (tmp / MARKER_FILE).write_text("ok\n", encoding="utf-8")
            if target.exists():  # a concurrent build won: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            os.replace(tmp, target)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ─── Effective values ───────────────────────────────────────────────────
    def effective_parameters(self) -> dict[str, Any]:
        """Every parameter used, None-sentinels resolved."""
        if self._llm is None or self._config is None:
            raise BackendError("tensorrt engine: effective_parameters() requested before load()")
        config = self._config
        dec = config.decoder
        sampling = dec.decoding_strategy == "sampling"
        quant = resolve_quantization(config)
        return {
            "engine": self.name,
            "engine_version": self.version(),
            "model": config.model,
            "precision": config.precision,
            "dtype": "float16",
            "quantization": quant,
            "quant_algo": QUANT_ALGOS.get(quant) if quant else None,
            **{k: _trt_setting(config, k) for k in TRT_DEFAULTS},
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
            "max_new_tokens": int(config.effective_max_new_tokens),
            "ignore_eos": dec.ignore_eos,
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
            "return_perf_metrics": True,
        }
        if dec.decoding_strategy == "sampling":
            kw.update(
                temperature=dec.temperature,
                top_p=dec.top_p,
                top_k=dec.top_k,  # None = all logits
                seed=config.random_seed,
            )
        else:
            kw["top_k"] = 1  # greedy in TensorRT-LLM
        if dec.ignore_eos:
            kw.update(ignore_eos=True, min_tokens=max_tokens)
        return SamplingParams(**kw)

    def _run_generate(self, prompts: Sequence[Prompt], params: list[Any]) -> Sequence[Any]:
        outputs: Sequence[Any] = self._llm.generate(
            [p.text for p in prompts], params, use_tqdm=False
        )
        return outputs

    def _request_timing(self, output: Any, n_out: int) -> RequestTiming | None:
        return _perf_timings(output.outputs[0], n_out)

    def _timing_note(self, missing: int) -> str:
        if missing:
            return (
                "TensorRT-LLM returned no request_perf_metrics for some requests: their "
                "ttft/itl are not recorded and latency is the wall time of the whole "
                "generate() call"
            )
        return (
            "TensorRT-LLM reports first/last token times per request: itl_s holds each "
            "request's mean inter-token interval"
        )

    # ─── Device housekeeping ────────────────────────────────────────────────
    def clear_run_state(self) -> list[str]:
        """Nothing llem can clear: the LLM API offers no call that empties the KV cache.

        TensorRT-LLM reuses KV blocks across requests by default
        (``KvCacheConfig.enable_block_reuse=True``); a run that repeats an earlier run's
        prompts on a reused engine may skip their prefill. Peak memory lives in the workers.
        """
        return [
            "tensorrt: the LLM API has no KV-cache reset; KV block reuse "
            "(KvCacheConfig.enable_block_reuse, on by default) may serve prefixes an earlier "
            "run on this engine computed"
        ]

    def _shutdown_handle(self, llm: Any) -> None:
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()


def _perf_timings(
    completion: Any, n_out: int
) -> tuple[float | None, float | None, list[float]] | None:
    """(ttft, latency, itl) from ``CompletionOutput.request_perf_metrics.timing_metrics``.

    Fields ``arrival_time``, ``first_token_time``, ``last_token_time`` (floats or timedeltas);
    None when the metrics are absent.
    """
    perf = getattr(completion, "request_perf_metrics", None)
    timing = getattr(perf, "timing_metrics", None)
    if timing is None:
        return None

    def seconds(name: str) -> float | None:
        value = getattr(timing, name, None)
        if value is None:
            return None
        if hasattr(value, "total_seconds"):
            value = value.total_seconds()
        return float(value) if float(value) > 0 else None

    arrival, first, last = (
        seconds("arrival_time"),
        seconds("first_token_time"),
        seconds("last_token_time"),
    )
    if arrival is None or first is None:
        return None
    ttft = first - arrival
    latency = last - arrival if last is not None else None
    itl: list[float] = []
    if last is not None and n_out > 1:
        itl = [(last - first) / (n_out - 1)] * (n_out - 1)
    return ttft, latency, itl
