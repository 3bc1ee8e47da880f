"""vLLM inference engine on the offline ``vllm.LLM`` API.

Importing this module imports neither vllm nor torch: both are imported inside methods.

Targets vLLM 0.26 (the ``[vllm]`` extra pins ``vllm==0.26.*``; ``llem run`` with 0.26.0 ran on
an H200). Public API used (``vllm/entrypoints/llm.py``: ``LLM(model, *,
tensor_parallel_size, dtype, quantization, seed, gpu_memory_utilization, **EngineArgs)``,
``LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request)``,
``LLM.beam_search(prompts, BeamSearchParams, lora_request)``; ``vllm.sampling_params``
``SamplingParams`` / ``BeamSearchParams(beam_width, max_tokens, ignore_eos, temperature,
length_penalty)``; ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``;
``RequestOutput.metrics``: ``RequestStateStats`` in the V1 engine, ``RequestMetrics`` in V0;
``LLM.reset_prefix_cache()``; ``LLM.get_metrics()``), plus the V1 engine loop that
``LLM.generate`` itself runs (``llm_engine.add_request`` / ``step`` /
``has_unfinished_requests``, ``SamplingParams.output_kind``; ``llm_engine.engine_core.get_output``
returning ``EngineCoreOutputs(outputs, timestamp)``). The CPU tests run against a fake
``vllm`` package that follows these signatures.

How a run works (``prepare`` -> ``execute`` -> ``records``, see ``engines.base``):

- Config -> engine arguments (``build_engine_args``): every ``vllm:`` field is passed under its
  own name when set; ``None`` is not passed, so vLLM's own default applies, and the effective
  value is read back from the engine config after load (``llm.llm_engine.vllm_config``), else
  the documented default in ``VLLM_DEFAULTS`` is recorded (with its source).
- ``precision`` -> ``dtype`` (fp16 -> float16, bf16 -> bfloat16). int4 / int8 need a quantized
  checkpoint and a method: int4 -> ``vllm.quantization: awq | gptq``; int8 ->
  ``vllm.quantization: gptq`` (8-bit GPTQ checkpoint); activations then run in float16.
  ``vllm.quantization: fp8`` is allowed with fp16 / bf16 (fp8 weights, 16-bit activations).
- ``prepare`` (before the window) builds the sampling parameters and request ids. ``execute``
  (inside it) adds all prompts to the engine at once, each rendered by vLLM's front end as it
  is added (vLLM schedules them itself, up to ``max_num_seqs`` at a time), and steps the engine
  until they finish, the loop ``LLM.generate`` runs, with its ``FINAL_ONLY`` outputs; a
  reference to each step's engine-core iteration (``EngineCoreOutputs``: its ``timestamp`` and
  every request's new tokens) is kept on its way through ``engine_core.get_output``.
  ``records`` (after the window) gives each token the engine core's time of the iteration that
  produced it: true per-request TTFT and every inter-token gap (``_run_steps``,
  ``_CoreIterationLog``, ``_step_records``; where the iterations cannot be read, ``DELTA``
  outputs stamped as each step returns). Where the engine has no such loop, one
  ``LLM.generate`` call runs instead (timings from the request metrics).
  One ``SamplingParams`` per prompt: greedy = temperature 0;
  sampling = temperature/top_p/top_k (-1 = off)/repetition_penalty/seed; ``max_tokens`` is the
  prompt's own limit or the experiment's; ``ignore_eos`` sets ``ignore_eos=True`` and
  ``min_tokens=max_tokens``.
- Beam search goes through ``LLM.beam_search`` (one call per distinct ``max_tokens``); its
  records carry no TTFT/ITL (vLLM drives beam search one step at a time from Python).
- LoRA: one ``LoRARequest("llem-adapter", 1, <adapter path or hub id>)`` per request.
- Speculative decoding: ``speculative_config={"model": draft_model,
  "num_speculative_tokens": 5}`` (``passthrough_kwargs.num_speculative_tokens`` overrides 5).
- Fallback timings (one ``LLM.generate`` call) come from ``RequestOutput.metrics``: V1
  ``first_token_latency`` (TTFT) and
  ``last_token_ts - first_token_ts`` (decode time); V0 ``first_token_time - arrival_time`` and
  ``last_token_time - first_token_time``. vLLM records only the first and last token times, so
  each request's ``itl_s`` holds its mean inter-token interval, once per gap. Where metrics are
  missing, TTFT/ITL are None/empty, latency is the wall time of the whole call, and a note says so.
  ``disable_log_stats=False`` is passed so that the V1 engine collects them.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from llenergymeasure.config.catalogue import engine_spec
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
from llenergymeasure.exceptions import BackendError
from llenergymeasure.gguf_files import (
    GGUFError,
    GGUFHeader,
    GGUFModel,
    gguf_model,
    gguf_model_problem,
    names_gguf,
    read_gguf_header,
)
from llenergymeasure.hub import OFFLINE_HINT
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "DEFAULT_NUM_BEAMS",
    "DEFAULT_NUM_SPECULATIVE_TOKENS",
    "INSTALL_HINT",
    "LORA_NAME",
    "VLLM_DEFAULTS",
    "VLLM_SERVE_FLAGS",
    "VLLMBackend",
    "build_engine_args",
    "request_timings",
]

INSTALL_HINT = extra_install_hint("vllm")
DEFAULT_NUM_BEAMS = 4
DEFAULT_NUM_SPECULATIVE_TOKENS = 5
LORA_NAME = "llem-adapter"
LORA_INT_ID = 1

#: vLLM's documented defaults for the ``vllm:`` fields (recorded only when the engine config
#: cannot be read back). V1 may raise max_num_seqs on large GPUs; the engine config then wins.
VLLM_DEFAULTS: dict[str, Any] = {
    "max_num_seqs": engine_spec("vllm").default_concurrency,  # 256
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "enable_prefix_caching": True,  # V1 default
    "block_size": 16,
    "quantization": None,
    "enable_lora": False,
    "max_lora_rank": 16,
}

# vllm: field -> (engine config section, attribute) for reading the effective value back.
_ENGINE_CONFIG_PATHS: dict[str, tuple[str, str]] = {
    "max_num_seqs": ("scheduler_config", "max_num_seqs"),
    "tensor_parallel_size": ("parallel_config", "tensor_parallel_size"),
    "gpu_memory_utilization": ("cache_config", "gpu_memory_utilization"),
    "enable_prefix_caching": ("cache_config", "enable_prefix_caching"),
    "block_size": ("cache_config", "block_size"),
    "quantization": ("model_config", "quantization"),
    "max_lora_rank": ("lora_config", "max_lora_rank"),
}

_PRECISION_TO_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "int8": "float16", "int4": "float16"}

#: ``VLLMConfig`` field -> ``vllm serve`` flag (booleans: ``--flag`` / ``--no-flag``).
VLLM_SERVE_FLAGS: dict[str, str] = {
    "max_num_seqs": "--max-num-seqs",
    "tensor_parallel_size": "--tensor-parallel-size",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "enable_prefix_caching": "--enable-prefix-caching",
    "block_size": "--block-size",
    "quantization": "--quantization",
    "enable_lora": "--enable-lora",
    "max_lora_rank": "--max-lora-rank",
}

# passthrough_kwargs keys that have a config field of their own.
_CONFLICTING_KEYS = {
    "model": "model",
    "dtype": "precision",
    "seed": "random_seed",
    "quantization": "vllm.quantization",
    "max_num_seqs": "vllm.max_num_seqs",
    "tensor_parallel_size": "vllm.tensor_parallel_size",
    "gpu_memory_utilization": "vllm.gpu_memory_utilization",
    "enable_prefix_caching": "vllm.enable_prefix_caching",
    "block_size": "vllm.block_size",
    "enable_lora": "vllm.enable_lora",
    "max_lora_rank": "vllm.max_lora_rank",
    "speculative_config": "decoder.draft_model",
}
#: passthrough_kwargs keys this engine interprets itself (not engine arguments):
#: ``num_speculative_tokens`` (the draft length of ``speculative_config``) and ``gguf_file``
#: (a GGUF file of the folder or hub repository ``model:``, given to vLLM as its path).
ENGINE_PASSTHROUGH_KEYS = frozenset({"num_speculative_tokens", "gguf_file"})

#: vLLM releases from 0.24 load GGUF files only with this plugin installed (vLLM's GGUF page).
GGUF_PLUGIN_MODULE = "vllm_gguf_plugin"
GGUF_PLUGIN_HINT = "pip install vllm-gguf-plugin"


def _model_source(config: ExperimentConfig) -> str:
    """What ``LLM(model=...)`` gets: the local folder of a ``builtin:`` model; the path of a
    GGUF file (a hub repository's file downloaded into the HF cache first, outside any
    window); anything else unchanged."""
    from llenergymeasure.engines import builtin

    name = config.model
    if builtin.is_builtin_model(name):
        return str(builtin.resolve_builtin_model(name))
    extra = config.passthrough_kwargs or {}
    gguf = gguf_model(
        name, extra, revision=extra.get("revision"), cache_dir=extra.get("download_dir")
    )
    if gguf is None:
        return name
    if gguf.local_path is not None:
        return str(gguf.local_path)
    from huggingface_hub import hf_hub_download

    return str(
        hf_hub_download(
            gguf.source,
            gguf.filename,
            revision=extra.get("revision"),
            cache_dir=extra.get("download_dir"),
        )
    )


def build_engine_args(config: ExperimentConfig, model_source: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM(...)`` for ``config`` (None-sentinels omitted)."""
    v = config.vllm
    args: dict[str, Any] = {
        "model": model_source if model_source is not None else config.model,
        "dtype": _PRECISION_TO_DTYPE.get(config.precision, config.precision),
        "seed": config.random_seed,
        "disable_log_stats": False,  # V1 collects per-request metrics only with stats on
    }
    if v is not None:
        for name in (
            "max_num_seqs",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "enable_prefix_caching",
            "block_size",
            "quantization",
            "enable_lora",
            "max_lora_rank",
        ):
            value = getattr(v, name)
            if value is not None:
                args[name] = value
    passthrough = dict(config.passthrough_kwargs or {})
    dec = config.decoder
    if dec.speculative_decoding and dec.draft_model:
        args["speculative_config"] = {
            "model": dec.draft_model,
            "num_speculative_tokens": int(
                passthrough.get("num_speculative_tokens", DEFAULT_NUM_SPECULATIVE_TOKENS)
            ),
        }
    for key, value in passthrough.items():
        if key not in ENGINE_PASSTHROUGH_KEYS and key not in _CONFLICTING_KEYS:
            args[key] = value
    return args


def _gguf_header(config: ExperimentConfig, source: str) -> GGUFHeader | None:
    """The header of the GGUF file vLLM is given (``source``), None for other models."""
    if not names_gguf(config.model, config.passthrough_kwargs):
        return None
    try:
        return read_gguf_header(source)
    except GGUFError as e:
        raise BackendError(f"vllm: GGUF file {source!r} {e}") from e


def _needs_gguf_plugin(version: str) -> bool:
    """Whether this vLLM release loads GGUF only through vllm-gguf-plugin (0.24 and later;
    an unreadable version counts as the 0.26 this engine targets)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is None or (int(match[1]), int(match[2])) >= (0, 24)


def _seconds(value: Any) -> float | None:
    """A float (or timedelta) timestamp/duration; None for missing or zero."""
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def request_timings(
    output: Any, n_out: int
) -> tuple[float | None, float | None, list[float]] | None:
    """(ttft_s, latency_s, itl_s) of one ``RequestOutput`` from its metrics; None if absent.

    V1 ``RequestStateStats``: TTFT = ``first_token_latency``; decode = ``last_token_ts -
    first_token_ts`` (engine-core monotonic clock). V0 ``RequestMetrics``: TTFT =
    ``first_token_time - arrival_time``; decode = ``last_token_time - first_token_time``.
    ``itl_s`` is the mean interval (decode / (n_out - 1)) once per gap.
    """
    m = getattr(output, "metrics", None)
    if m is None:
        return None
    if hasattr(m, "first_token_latency"):  # V1 RequestStateStats
        ttft = _seconds(m.first_token_latency)
        first, last = (
            _seconds(getattr(m, "first_token_ts", None)),
            _seconds(getattr(m, "last_token_ts", None)),
        )
    elif hasattr(m, "first_token_time"):  # V0 RequestMetrics
        arrival = _seconds(getattr(m, "arrival_time", None))
        first = _seconds(m.first_token_time)
        last = _seconds(getattr(m, "last_token_time", None))
        ttft = first - arrival if first is not None and arrival is not None else None
    else:
        return None
    if ttft is None:
        return None
    decode = last - first if first is not None and last is not None and last >= first else None
    latency = ttft + decode if decode is not None else None
    itl: list[float] = []
    if decode is not None and n_out > 1:
        itl = [decode / (n_out - 1)] * (n_out - 1)
    return ttft, latency, itl


def _count_safetensors_params(folder: Path) -> int:
    """Parameters in a folder's ``*.safetensors`` files, from their headers (no tensor load)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            n = 1
            for dim in info.get("shape", []):
                n *= int(dim)
            total += n
    return total


@dataclass
class _StepPlan:
    """The step loop's inputs, built before the window: one ``SamplingParams`` and one request
    id per prompt, the engine and its renderer (``LLM._preprocess_cmpl``, where present)."""

    engine: Any
    params: list[Any]
    request_ids: list[str]
    preprocess: Any = None


@dataclass
class _StepOutputs:
    """What the step loop kept inside the window, read by ``_step_records`` after it.

    ``submitted``: each request's submission (``time.monotonic``); ``position``: request id ->
    prompt position; ``stamps``: per request, each token's step stamp (``DELTA`` fallback);
    ``final_tokens`` / ``done_at``: each ``FINAL_ONLY`` answer's token count and arrival;
    ``log``: the engine core's iterations (None in the fallback).
    """

    log: _CoreIterationLog | None
    position: dict[str, int]
    stamps: list[list[float]]
    prompt_tokens: list[int | None]
    final_tokens: list[int | None]
    done_at: list[float | None]
    submitted: list[float] = field(default_factory=list)


@dataclass
class _BeamPlan:
    """Beam search's inputs: each prompt's token ids, and (prompt positions, params) per
    distinct max_tokens."""

    ids: list[list[int]]
    groups: list[tuple[list[int], Any]]


@dataclass
class _BeamOutputs:
    """Each beam-search call's prompt positions, outputs and wall time (s)."""

    ids: list[list[int]]
    calls: list[tuple[list[int], Sequence[Any], float]]


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
            refused={k: f"set by `{field}`" for k, field in _CONFLICTING_KEYS.items()},
        )

    # ─── Online mode ────────────────────────────────────────────────────────
    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand:
        """``vllm serve MODEL``: each set ``vllm:`` field as its flag (``VLLM_SERVE_FLAGS``),
        ``--dtype`` from ``precision``, ``--seed`` from ``random_seed``, and
        ``--served-model-name`` from ``online.served_model_name``."""
        argv = ["vllm", "serve", model, "--host", host, "--port", str(port)]
        argv += ["--dtype", _PRECISION_TO_DTYPE.get(config.precision, "auto")]
        argv += ["--seed", str(config.random_seed)]
        section = config.vllm.model_dump(exclude_none=True) if config.vllm is not None else {}
        for name, value in section.items():
            flag = VLLM_SERVE_FLAGS[name]
            if isinstance(value, bool):
                if value:
                    argv.append(flag)
                elif flag == "--enable-prefix-caching":
                    argv.append("--no-enable-prefix-caching")
            else:
                argv += [flag, str(value)]
        served = config.online.served_model_name if config.online is not None else None
        if served:
            argv += ["--served-model-name", served]
        return ServeCommand(argv=argv)

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def _machine_problems(self, config: ExperimentConfig) -> list[str]:
        """Model and adapter files present (a hub model not in the HF cache: one bounded
        probe of the hub), a GGUF file complete and vLLM's GGUF plugin installed, passthrough
        keys that clash with config fields. Static config rules (precision, quantization,
        LoRA, beam) are the config model's."""
        problems: list[str] = []
        extra = config.passthrough_kwargs or {}
        for key in extra:
            if key in _CONFLICTING_KEYS:
                problems.append(
                    f"passthrough_kwargs.{key} is controlled by the config field "
                    f"'{_CONFLICTING_KEYS[key]}'; set it there instead"
                )
        revision, download_dir = extra.get("revision"), extra.get("download_dir")
        gguf = gguf_model(config.model, extra, revision=revision, cache_dir=download_dir)
        if gguf is not None:
            problems.extend(self._gguf_problems(gguf, revision, download_dir))
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

    def _gguf_problems(self, gguf: GGUFModel, revision: Any, download_dir: Any) -> list[str]:
        """A GGUF model: vLLM's GGUF plugin installed (vLLM >= 0.24), the file complete, or a
        hub file not downloaded yet on a hub that answers."""
        problems: list[str] = []
        if (
            _needs_gguf_plugin(self.version())
            and importlib.util.find_spec(GGUF_PLUGIN_MODULE) is None
        ):
            problems.append(
                f"{gguf.field}: vLLM {self.version()} loads GGUF files only with the "
                f"vllm-gguf-plugin package, which is not installed: {GGUF_PLUGIN_HINT}"
            )
        if gguf.on_hub and gguf.local_path is None:
            from llenergymeasure.hub import hub_model_problem

            problem = hub_model_problem(
                gguf.source,
                "model",
                revision=revision if isinstance(revision, str) else None,
                cache_dir=download_dir if isinstance(download_dir, str) else None,
                filename=gguf.filename,
            )
        else:
            problem = gguf_model_problem(gguf)
        return [*problems, problem] if problem else problems

    # ─── Load ───────────────────────────────────────────────────────────────
    def _start(self, config: ExperimentConfig) -> LoadInfo:
        """Start ``vllm.LLM`` with the engine arguments of ``config``."""
        from vllm import LLM

        t0 = perf_counter()  # a hub GGUF file's download counts as load time, as in from_pretrained
        try:
            self._model_source = _model_source(config)
        except Exception as e:
            raise BackendError(
                f"vllm: could not fetch the GGUF file of {config.model!r}: {type(e).__name__}: {e}",
                hint=OFFLINE_HINT,
            ) from e
        self._gguf_header = _gguf_header(config, self._model_source)
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
        self._window_prefix_start = self._prefix_cache_counters()
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

    # ─── Prefix-cache statistics ────────────────────────────────────────────
    def _prefix_cache_counters(self) -> tuple[int, int] | None:
        """(queries, hits) in tokens from ``LLM.get_metrics()``; None where not exposed."""
        get_metrics = getattr(self._llm, "get_metrics", None)
        if not callable(get_metrics):
            return None
        try:
            metrics = get_metrics()
        except Exception:
            return None
        totals = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
        found = False
        for metric in metrics:
            name = getattr(metric, "name", None)
            if name in totals:
                totals[name] += int(getattr(metric, "value", 0) or 0)
                found = True
        if not found:
            return None
        return totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"]

    def _window_prefix_cache(self) -> dict[str, Any] | None:
        """Prefix-cache queries, hits and hit rate since the window started (see
        ``reset_peak_memory``), from vLLM's counters; None where vLLM does not expose them."""
        now = self._prefix_cache_counters()
        if now is None:
            return None
        start = self._window_prefix_start or (0, 0)
        queries, hits = now[0] - start[0], now[1] - start[1]
        return {
            "queries_tokens": queries,
            "hits_tokens": hits,
            "hit_rate": round(hits / queries, 6) if queries > 0 else None,
            "source": "LLM.get_metrics(): vllm:prefix_cache_queries / vllm:prefix_cache_hits",
        }

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
            return _count_safetensors_params(folder)
        except Exception:
            return 0

    # ─── Effective values ───────────────────────────────────────────────────
    def _engine_config(self) -> Any:
        engine = getattr(self._llm, "llm_engine", None)
        return getattr(engine, "vllm_config", None)

    def _effective(self, name: str, requested: Any) -> tuple[Any, str]:
        """(value, source) of one engine setting: engine config > config > documented default."""
        vc = self._engine_config()
        if vc is not None:
            if name == "dtype":
                value = getattr(getattr(vc, "model_config", None), "dtype", None)
                if value is not None:
                    return str(value), "engine config"
            elif name == "enable_lora":
                if hasattr(vc, "lora_config"):
                    return vc.lora_config is not None, "engine config"
            elif name in _ENGINE_CONFIG_PATHS:
                section, attr = _ENGINE_CONFIG_PATHS[name]
                obj = getattr(vc, section, None)
                if obj is not None and hasattr(obj, attr):
                    return getattr(obj, attr), "engine config"
        if requested is not None:
            return requested, "config"
        return VLLM_DEFAULTS.get(name), "documented default"

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
            "prefix_cache": self._window_prefix_cache(),
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
        as ``LLM.generate`` does (see ``_run_steps``): that rendering is vLLM's own front end.
        """
        if self._llm is None:
            raise BackendError(f"{self.name} engine: generate() called before load()")
        self.last_phase = phase
        limits = prompt_limits(prompts, config)
        run = PreparedRun(list(prompts), config, phase, limits)
        if not prompts:
            return run
        if config.decoder.decoding_strategy == "beam":
            run.payload = self._beam_plan(prompts, config, limits)
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
        run.payload = _StepPlan(
            engine=engine,
            params=[by_limit[n] for n in limits],
            request_ids=[f"llem-{self._batch_seq}-{i}" for i in range(len(prompts))],
            preprocess=getattr(self._llm, "_preprocess_cmpl", None),
        )
        return run

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """The engine loop (``_run_steps``), the beam searches, or one ``LLM.generate``."""
        plan = prepared.payload
        if isinstance(plan, _StepPlan):
            with self._generation_errors():
                return RawRun(prepared, self._run_steps(plan, prepared.prompts))
        if isinstance(plan, _BeamPlan):
            return RawRun(prepared, self._run_beam(plan))
        return super().execute(prepared, on_batch=on_batch)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """Records from the step loop's stamps, the beam outputs, or the call's metrics."""
        if isinstance(raw.payload, _StepOutputs):
            return self._step_records(raw.prepared.prompts, raw.payload)
        if isinstance(raw.payload, _BeamOutputs):
            return self._beam_records(raw.prepared.prompts, raw.payload)
        return super().records(raw)

    def _run_steps(self, plan: _StepPlan, prompts: Sequence[Prompt]) -> _StepOutputs:
        """Run the engine loop ``LLM.generate`` runs, stamping every engine-core iteration.

        Requests go to ``llm_engine.add_request`` and ``llm_engine.step()`` is called until
        none is left, exactly as ``LLM._run_engine`` does. Each ``step()`` takes one engine-core
        iteration's outputs (``engine_core.get_output()``); llem keeps a reference to that
        iteration's ``EngineCoreOutputs`` on its way (``_CoreIterationLog``): its ``timestamp``
        (the engine core's ``time.monotonic()`` when the iteration's tokens were sampled) and
        each request's new tokens, read after the window (``_step_records``). The requests keep
        ``LLM.generate``'s ``FINAL_ONLY`` outputs, so the front end does what it does for a
        bare ``LLM.generate``. Where the iteration outputs cannot be read (another vLLM), the
        requests ask for ``DELTA`` outputs instead and each ``step()``'s return is stamped.
        Every request's token of one iteration carries the same stamp (``token_times_s``), so
        the time-resolved attribution sees the engine's steps exactly; tokens that arrive
        together (speculative decoding) all carry that stamp there, and share the iteration's
        interval evenly in the ITL gaps (``_spread``). TTFT counts from each request's
        submission (``start_s``), ITL between its tokens.
        """
        from vllm.sampling_params import RequestOutputKind

        engine, preprocess = plan.engine, plan.preprocess
        # rendered one at a time, each added as soon as it is rendered, as LLM.generate does:
        # the engine core starts on the first requests while the front end renders the rest
        # (rendering all 256 prompts first left the GPU idle inside the window)
        log = _CoreIterationLog.attach(getattr(engine, "engine_core", None))
        kind = RequestOutputKind.DELTA if log is None else RequestOutputKind.FINAL_ONLY
        n = len(prompts)
        # one clock for submissions and token stamps: time.monotonic, the energy sampler's
        out = _StepOutputs(
            log=log,
            position={rid: i for i, rid in enumerate(plan.request_ids)},
            stamps=[[] for _ in range(n)],
            prompt_tokens=[None] * n,
            final_tokens=[None] * n,
            done_at=[None] * n,
        )
        position, stamps, submitted = out.position, out.stamps, out.submitted
        prompt_tokens, final_tokens, done_at = out.prompt_tokens, out.final_tokens, out.done_at
        try:
            for i, (rid, prompt, sp) in enumerate(
                zip(plan.request_ids, prompts, plan.params, strict=True)
            ):
                engine_input = preprocess([prompt.text])[0] if callable(preprocess) else prompt.text
                sp.output_kind = kind
                submitted.append(monotonic())
                internal = engine.add_request(
                    rid, engine_input, sp, lora_request=self._lora_request
                )
                if isinstance(internal, str):
                    position[internal] = i  # the engine core's outputs carry the internal id
            while engine.has_unfinished_requests():
                step_outputs = engine.step()
                now = monotonic()
                for step_out in step_outputs:
                    k = position.get(step_out.request_id)
                    if k is None:
                        continue
                    if prompt_tokens[k] is None and step_out.prompt_token_ids is not None:
                        prompt_tokens[k] = len(step_out.prompt_token_ids)
                    new = len(step_out.outputs[0].token_ids) if step_out.outputs else 0
                    if log is not None:
                        final_tokens[k], done_at[k] = new, now  # FINAL_ONLY: the answer, once
                    elif new:
                        stamps[k].extend([now] * new)
        finally:
            if log is not None:
                log.detach()
        return out

    def _step_records(self, prompts: Sequence[Prompt], out: _StepOutputs) -> list[RequestRecord]:
        """Records of the step loop, from its stamps or the engine core's iteration log."""
        stamps, final_tokens, done_at = out.stamps, out.final_tokens, out.done_at
        note = (
            "vllm: per-token timing from the engine step loop (llm_engine.step), one "
            "time.monotonic stamp per step shared by every request in it: ttft_s and every "
            "itl_s gap are measured"
        )
        if out.log is not None:
            stamps, why = out.log.token_times(out.position, final_tokens, out.submitted)
            note = (
                "vllm: per-token timing from the engine core's iterations (EngineCoreOutputs."
                "timestamp of each llm_engine.step, one stamp per iteration shared by every "
                "request in it; outputs FINAL_ONLY as in LLM.generate): ttft_s and every itl_s "
                "gap are measured"
            )
            if why is not None:
                note = f"vllm: no per-token timing: {why}"
        records: list[RequestRecord] = []
        for i, p in enumerate(prompts):
            times = stamps[i]  # each token: its step's stamp (the attribution's steps)
            t_in = out.submitted[i]
            n_out = len(times) if times or final_tokens[i] is None else final_tokens[i]
            done = times[-1] if times else done_at[i]
            records.append(
                RequestRecord(
                    index=p.index,
                    input_tokens=out.prompt_tokens[i] or 0,
                    output_tokens=n_out or 0,
                    latency_s=(done - t_in) if done is not None else 0.0,
                    ttft_s=(times[0] - t_in) if times else None,
                    itl_s=[b - a for a, b in itertools.pairwise(_spread(times))],
                    start_s=t_in,
                    token_times_s=times or None,
                )
            )
        self._add_note(note)
        return records

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

    def _beam_plan(
        self, prompts: Sequence[Prompt], config: ExperimentConfig, limits: list[int]
    ) -> _BeamPlan:
        """Token ids and one ``BeamSearchParams`` per distinct max_tokens (groups of prompts)."""
        from vllm.sampling_params import BeamSearchParams

        width = config.decoder.num_beams or DEFAULT_NUM_BEAMS
        groups = []
        for max_tokens in sorted(set(limits)):
            pos = [i for i, n in enumerate(limits) if n == max_tokens]
            params = BeamSearchParams(
                beam_width=width, max_tokens=max_tokens, ignore_eos=config.decoder.ignore_eos
            )
            groups.append((pos, params))
        ids = [list(self._tokenizer.encode(p.text)) for p in prompts]
        return _BeamPlan(ids=ids, groups=groups)

    def _run_beam(self, plan: _BeamPlan) -> _BeamOutputs:
        """``LLM.beam_search``, one call per distinct max_tokens."""
        results: list[tuple[list[int], Sequence[Any], float]] = []
        for pos, params in plan.groups:
            lora = [self._lora_request] * len(pos) if self._lora_request is not None else None
            t0 = perf_counter()
            try:
                outs = self._llm.beam_search(
                    [{"prompt_token_ids": plan.ids[i]} for i in pos], params, lora_request=lora
                )
            except Exception as e:
                raise BackendError(f"vllm beam search failed: {type(e).__name__}: {e}") from e
            results.append((pos, outs, perf_counter() - t0))
        return _BeamOutputs(ids=plan.ids, calls=results)

    def _beam_records(self, prompts: Sequence[Prompt], out: _BeamOutputs) -> list[RequestRecord]:
        """One record per prompt from the beam searches' best sequences; no TTFT/ITL."""
        records: list[RequestRecord | None] = [None] * len(prompts)
        for batch_index, (pos, outs, wall) in enumerate(out.calls):
            for i, beam in zip(pos, outs, strict=True):
                best = beam.sequences[0]
                records[i] = RequestRecord(
                    index=prompts[i].index,
                    input_tokens=len(out.ids[i]),
                    # the sequence's tokens include the prompt's
                    output_tokens=max(0, len(best.tokens) - len(out.ids[i])),
                    latency_s=wall,
                    ttft_s=None,
                    batch_index=batch_index,
                )
        self._add_note(
            "beam search (LLM.beam_search) has no per-token timing: ttft/itl not recorded"
        )
        return [r for r in records if r is not None]

    # ─── Device housekeeping ────────────────────────────────────────────────
    def reset_peak_memory(self) -> None:
        """Start the window's statistics: no peak-memory counter lives in this process (the
        workers allocate), so this marks where the prefix-cache counters start."""
        self._window_prefix_start = self._prefix_cache_counters()

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


def _spread(stamps: Sequence[float]) -> Sequence[float]:
    """Per-token step stamps with the tokens of one step spread evenly since the previous step.

    Tokens delivered together (speculative decoding) share their step's stamp in
    ``token_times_s`` (the attribution's step timeline); for the ITL gaps they share the step's
    interval evenly instead: the ``k``-th of ``n`` tokens stamped ``now`` after a previous
    stamp ``start`` is at ``start + (now - start) * k / n`` (all at ``now`` in the first step).
    Stamps that are all distinct (one token per step) come back as they are (the common case,
    checked cheaply for every request when the records are built after the window).
    """
    if len(set(stamps)) == len(stamps):  # stamps never decrease: no two equal, no shared step
        return stamps
    out: list[float] = []
    k = 0
    while k < len(stamps):
        now, n = stamps[k], 1
        while k + n < len(stamps) and stamps[k + n] == now:
            n += 1
        start = out[-1] if out else now
        out.extend(start + (now - start) * (j + 1) / n for j in range(n))
        k += n
    return out


class _CoreIterationLog:
    """Each engine-core iteration's stamp and new tokens per request, read as ``step()`` takes them.

    vLLM 0.26's ``LLMEngine.step()`` calls ``engine_core.get_output()`` once and gets one
    iteration's ``EngineCoreOutputs``: ``timestamp`` (the engine core's ``time.monotonic()``
    when the iteration's outputs were made; on Linux the same system-wide clock as llem's) and
    ``outputs``, one ``EngineCoreOutput(request_id, new_token_ids, ...)`` per request that got
    tokens. ``attach`` wraps that method on the client instance (``detach`` restores it); the
    wrapper only records and returns the object unchanged.
    """

    def __init__(self, core: Any, had_own: bool, original: Any) -> None:
        self._core, self._had_own, self._original = core, had_own, original
        self.iterations: list[tuple[float, Sequence[Any]]] = []  # (stamp, EngineCoreOutput list)
        self.unreadable: str | None = None

    @classmethod
    def attach(cls, core: Any) -> _CoreIterationLog | None:
        original = getattr(core, "get_output", None)
        if core is None or not callable(original):
            return None
        try:
            had_own = "get_output" in vars(core)
        except TypeError:  # no instance dict (slots): cannot wrap
            return None
        log = cls(core, had_own, original)

        def get_output() -> Any:
            outputs = original()
            log.record(outputs)
            return outputs

        core.get_output = get_output
        return log

    def detach(self) -> None:
        if self._had_own:
            self._core.get_output = self._original
        else:
            del self._core.get_output

    def record(self, outputs: Any) -> None:
        """Keep the iteration's stamp and its output list; read them after the window."""
        stamp = getattr(outputs, "timestamp", None)
        items = getattr(outputs, "outputs", None)
        if isinstance(stamp, (int, float)) and items is not None:
            self.iterations.append((float(stamp), items))
        elif self.unreadable is None:
            self.unreadable = (
                f"engine_core.get_output() gave {type(outputs).__name__} without timestamp/outputs"
            )

    def token_times(
        self,
        position: dict[str, int],
        final_tokens: Sequence[int | None],
        submitted: Sequence[float],
    ) -> tuple[list[list[float]], str | None]:
        """Per request (by ``position`` of its internal id), its token times; or why none.

        Refused (every request without times) when an iteration could not be read, a
        request's token count disagrees with its final output, or a first token is stamped
        before its request was submitted (the engine core's clock is not llem's).
        """
        stamps: list[list[float]] = [[] for _ in final_tokens]
        empty: list[list[float]] = [[] for _ in final_tokens]
        if self.unreadable:
            return empty, self.unreadable
        if not self.iterations and any(final_tokens):
            return empty, "llm_engine.step() never called engine_core.get_output() (another vLLM)"
        for stamp, items in self.iterations:  # ~32k tokens in a 256-request window: keep it lean
            for item in items:
                i = position.get(getattr(item, "request_id", None))  # type: ignore[arg-type]
                tokens = getattr(item, "new_token_ids", None)
                if i is None or not tokens:
                    continue
                stamps[i].extend([stamp] * len(tokens))
        for i, times in enumerate(stamps):
            if final_tokens[i] is not None and len(times) != final_tokens[i]:
                return empty, (
                    f"the engine core's iterations gave request {i} {len(times)} tokens, its "
                    f"output {final_tokens[i]}"
                )
            if times and times[0] < submitted[i] - 1e-3:
                return empty, (
                    f"request {i}'s first token is stamped {submitted[i] - times[0]:.3f} s "
                    "before its submission: the engine core's clock is not time.monotonic"
                )
        return stamps, None
