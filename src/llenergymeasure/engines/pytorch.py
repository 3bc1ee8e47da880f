"""PyTorch / transformers inference engine.

Importing this module imports neither torch nor transformers: both are imported inside methods.

How a run works (``prepare`` -> ``execute`` -> ``records``, see ``engines.base``):

- ``prepare`` (before the energy window): prompts are tokenised once and grouped into batches of
  ``pytorch.batch_size`` (default 1). ``static`` batching keeps dataset order; ``dynamic`` sorts
  prompts by token length first (length-sorted buckets, less padding). Batches are left-padded
  with an attention mask and moved to the device, each with its generate arguments and its own
  step timer.
- ``execute`` (inside the window): one ``model.generate`` call per batch, the batch's start read
  on two clocks, its generated ids copied to the host (which waits for the batch to finish), and
  nothing else. ``records`` (after the window): output counts, per-token times and one
  ``RequestRecord`` per prompt.
- Each batch is one ``model.generate`` call. Its ``max_new_tokens`` is the largest limit of the
  requests in it (a prompt's own ``max_new_tokens`` overrides ``config.max_new_tokens``); each
  request's counted output is then trimmed to its own limit. With ``decoder.ignore_eos`` the
  batch is forced to that full length (``min_new_tokens = max_new_tokens``).
- ``output_tokens`` counts generated tokens up to and including the first EOS (padding after it
  is never counted). ``latency_s`` is the time from the start of the batch's ``generate`` call to
  the return of its sequences: in static batching every request of a batch is delivered when the
  batch completes. ``ttft_s`` is the time to the batch's first generated token; ``itl_s`` are the
  gaps between this request's successive tokens, up to its last counted token.
- Per-token times come from a streamer (``_StepTimer``) that records one ``perf_counter`` per
  decoding step (and keeps a reference to the step's token tensor, read after the window) and
  does nothing else. transformers already moves each step's new tokens to the
  host (one small ``[batch]`` copy, at a point where the loop synchronises anyway to check for
  EOS), so the timer adds no device synchronisation. Beam search cannot stream in transformers:
  its records carry ``ttft_s=None`` and no ``itl_s``.
- Each batch's start is also read on ``time.monotonic`` (``RequestRecord.start_s``), the
  energy sampler's clock, so per-token times can be placed on the power timeline for the
  time-resolved energy attribution (``perf_counter`` measures the durations; on Linux both
  read ``CLOCK_MONOTONIC``, so the offsets added to ``start_s`` are on the same clock).

Feature notes:

- ``torch_compile``: transformers' own compile path (``cache_implementation="static"``, compile
  on the first decoding step of the first ``generate``, on accelerators only). Compilation
  therefore happens during warmup; the orchestrator forces one warmup run when
  ``torch_compile`` is on and ``n_warmup`` is 0, and records the first warmup run's excess
  latency as ``timing.compile_s`` (see ``harness/orchestrator.py``).
- ``num_processes > 1`` runs through ``engines.data_parallel.DataParallelEngine``, which spawns one
  ``PyTorchBackend(device=...)`` replica per GPU; a ``PyTorchBackend`` itself is one process.
- Speculative decoding: ``LoadInfo.draft_parameter_count`` carries the draft model's size so
  the FLOPs estimate counts both models.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from llenergymeasure.config.catalogue import run_concurrency
from llenergymeasure.engines.base import (
    MEASUREMENT_PHASE,
    BatchProgress,
    InferenceBackend,
    LoadInfo,
    PassthroughKeys,
    PreparedRun,
    RawRun,
    RequestRecord,
    ServeCommand,
    prompt_limits,
)
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.gguf_files import (
    GGUFError,
    GGUFModel,
    gguf_model,
    gguf_model_problem,
    read_gguf_header,
)
from llenergymeasure.install import extra_install_hint

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "DEFAULT_BATCHING_STRATEGY",
    "DEFAULT_NUM_BEAMS",
    "ENGINE_PASSTHROUGH_KEYS",
    "LOAD_PASSTHROUGH_KEYS",
    "TOKENIZER_PASSTHROUGH_KEYS",
    "PyTorchBackend",
    "generation_passthrough_keys",
    "split_passthrough_kwargs",
]

# ─── Engine defaults (what a None in the pytorch: section resolves to) ──────────
# batch_size: the catalogue's run_concurrency (the one place concurrency defaults live).
DEFAULT_BATCHING_STRATEGY = "static"
DEFAULT_TORCH_COMPILE = False
DEFAULT_NUM_BEAMS = 4
DEFAULT_NUM_PROCESSES = 1

_PRECISION_TO_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

#: ``passthrough_kwargs`` keys forwarded to ``from_pretrained`` (model; a subset to the tokenizer).
LOAD_PASSTHROUGH_KEYS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "low_cpu_mem_usage",
        "device_map",
        "max_memory",
        "offload_folder",
        "offload_state_dict",
        "offload_buffers",
        "quantization_config",
        "use_safetensors",
        "variant",
        "subfolder",
        "cache_dir",
        "local_files_only",
        "token",
        "code_revision",
        "use_kernels",
        "key_mapping",
        "force_download",
        "gguf_file",
    }
)
#: The subset of ``LOAD_PASSTHROUGH_KEYS`` also given to the tokenizer's ``from_pretrained``.
TOKENIZER_PASSTHROUGH_KEYS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "cache_dir",
        "local_files_only",
        "token",
        "force_download",
        "gguf_file",
    }
)

#: ``passthrough_kwargs`` keys this engine interprets itself.
#: Attributes transformers leaves on a model after a compiled ``generate``: the compiled call,
#: its config, and the static KV cache memo that makes later caches at least as long.
_COMPILE_STATE_ATTRS = (
    "_compiled_call",
    "_last_compile_config",
    "_cache",
    "_previous_max_cache_length",
)

#: ``torch_compile_mode``: ``torch.compile`` mode for transformers' generate compile path.
ENGINE_PASSTHROUGH_KEYS = frozenset({"torch_compile_mode"})

# Keys that have a first-class config field: setting them in passthrough_kwargs is a conflict.
_CONFLICTING_KEYS = {
    "dtype": "precision",
    "torch_dtype": "precision",
    "attn_implementation": "pytorch.attn_implementation",
    "load_in_4bit": "pytorch.load_in_4bit",
    "load_in_8bit": "pytorch.load_in_8bit",
    "max_new_tokens": "max_new_tokens",
    "min_new_tokens": "decoder.ignore_eos",
    "do_sample": "decoder.decoding_strategy",
    "num_beams": "decoder.num_beams",
    "temperature": "decoder.temperature",
    "top_p": "decoder.top_p",
    "top_k": "decoder.top_k",
    "repetition_penalty": "decoder.repetition_penalty",
    "assistant_model": "decoder.draft_model",
    "disable_compile": "pytorch.torch_compile",
}
# generate() options that would break one-record-per-prompt accounting or are internal.
_FORBIDDEN_GENERATE_KEYS = frozenset(
    {
        "num_return_sequences",
        "return_dict_in_generate",
        "streamer",
        "max_length",
        "is_assistant",
        "transformers_version",
        "_from_model_config",
    }
)


def _generation_config_keys() -> frozenset[str]:
    """Every option ``transformers.GenerationConfig`` knows (for the installed version)."""
    from transformers import GenerationConfig

    return frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_"))


def generation_passthrough_keys() -> tuple[str, frozenset[str]]:
    """("transformers <version>", the keys ``split_passthrough_kwargs`` sends to ``generate``):
    the installed ``GenerationConfig``'s fields less the keys it sorts elsewhere or refuses."""
    import transformers

    other = set(_CONFLICTING_KEYS) | _FORBIDDEN_GENERATE_KEYS
    other |= ENGINE_PASSTHROUGH_KEYS | LOAD_PASSTHROUGH_KEYS
    return f"transformers {transformers.__version__}", _generation_config_keys() - other


def split_passthrough_kwargs(
    kwargs: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """Split ``passthrough_kwargs`` into (load, generate, engine) kwargs and problems.

    Load keys are a fixed set of ``from_pretrained`` options; generate keys are whatever
    ``GenerationConfig`` accepts in the installed transformers. Unknown keys, and keys that
    have a config field of their own, are problems naming the key.
    """
    load: dict[str, Any] = {}
    gen: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    problems: list[str] = []
    if not kwargs:
        return load, gen, engine, problems
    gen_keys = _generation_config_keys()
    for key, value in kwargs.items():
        if key in _CONFLICTING_KEYS:
            problems.append(
                f"passthrough_kwargs.{key} is controlled by the config field "
                f"'{_CONFLICTING_KEYS[key]}'; set it there instead"
            )
        elif key in _FORBIDDEN_GENERATE_KEYS:
            problems.append(
                f"passthrough_kwargs.{key} is not allowed with the pytorch engine "
                "(it would break per-request accounting)"
            )
        elif key in ENGINE_PASSTHROUGH_KEYS:
            engine[key] = value
        elif key in LOAD_PASSTHROUGH_KEYS:
            load[key] = value
        elif key in gen_keys:
            gen[key] = value
        else:
            problems.append(
                f"passthrough_kwargs.{key} is not a known option of the pytorch engine "
                "(neither a from_pretrained option nor a transformers GenerationConfig field)"
            )
    return load, gen, engine, problems


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().exists()


_GGUF_LOAD_HINT = (
    "transformers loads GGUF files of the architectures its GGUF loader knows (llama, mistral, "
    "qwen2, ...); for another one use backend vllm, or the original HF checkpoint"
)


def _gguf_problems(gguf: GGUFModel, load_kw: dict[str, Any]) -> list[str]:
    """A GGUF model on this machine: the ``gguf`` package transformers reads it with, the file
    complete (local, or in the HF cache), else a hub that answers."""
    problems: list[str] = []
    if importlib.util.find_spec("gguf") is None:
        problems.append(
            f"{gguf.field}: transformers reads GGUF files with the gguf package, which is not "
            "installed: pip install gguf"
        )
    if gguf.on_hub and gguf.local_path is None:
        from llenergymeasure.hub import hub_model_problem

        problem = hub_model_problem(
            gguf.source,
            "model",
            revision=load_kw.get("revision"),
            cache_dir=load_kw.get("cache_dir"),
            filename=gguf.filename,
        )
    else:
        problem = gguf_model_problem(gguf)
    return [*problems, problem] if problem else problems


def _offline_hint() -> str:
    return (
        "check the model id and network access; offline, put the model in the HF cache and set "
        "HF_HUB_OFFLINE=1, or pass a local directory as `model:`"
    )


class _StepTimer:
    """A generate() streamer that timestamps every decoding step and does nothing else.

    transformers calls ``put`` once with the prompt ids, then once per step with that step's new
    tokens (shape ``[batch]``; assisted generation passes ``[1, k]`` for ``k`` accepted tokens),
    then ``end``. The prompt call is skipped. ``put`` keeps the time and a reference to the
    step's tensor; how many tokens the step gave is read after the window (``token_times``).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[Any] = []
        self.end_time: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        now = perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(now)
        self.values.append(value)

    def end(self) -> None:
        self.end_time = perf_counter()

    def token_times(self) -> list[float]:
        """One timestamp per generated position (tokens of one step share its time)."""
        sizes = [int(v.shape[-1]) if v.dim() > 1 else 1 for v in self.values]
        if all(n == 1 for n in sizes):
            return self.times
        out: list[float] = []
        for t, n in zip(self.times, sizes, strict=True):
            out.extend([t] * n)
        return out


@functools.lru_cache(maxsize=1)
def _streamer_class() -> type:
    """``_StepTimer`` mixed with transformers' ``BaseStreamer`` (built lazily, once)."""
    from transformers.generation.streamers import BaseStreamer

    return type("StepTimerStreamer", (_StepTimer, BaseStreamer), {})


def _make_streamer() -> _StepTimer:
    """A fresh per-batch step timer usable as a generate() streamer."""
    timer: _StepTimer = _streamer_class()()
    return timer


@dataclass
class _Batch:
    """One prepared batch: prompt positions, input lengths, padded ids and mask on the device,
    its generate arguments (with its ``max_new_tokens``) and its step timer (None: beam search,
    which transformers cannot stream)."""

    positions: list[int]
    input_lengths: list[int]
    input_ids: Any
    attention_mask: Any
    kwargs: dict[str, Any]
    streamer: _StepTimer | None


@dataclass
class _BatchRun:
    """What ``execute`` kept of one batch: its start on the sampler's clock (``monotonic``),
    its start and end on ``perf_counter``, and its generated ids (on the host)."""

    batch: _Batch
    start_s: float
    t0: float
    t_end: float
    generated: Any


class PyTorchBackend(InferenceBackend):
    """Inference through HuggingFace transformers ``generate`` on one device."""

    name = "pytorch"
    fields_without_server_flag: ClassVar[Mapping[str, str]] = {
        "pytorch.batch_size": "the server batches requests itself; shape the load with "
        "online.max_concurrency / online.request_rate",
        "pytorch.num_processes": "transformers serve runs one process",
    }

    def __init__(self, device: str | None = None) -> None:
        """``device`` pins the engine (a data-parallel replica); None: ``cuda:0`` else CPU."""
        self._requested_device = device
        self._model: Any = None
        self._draft: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._gen_kwargs: dict[str, Any] = {}
        self._engine_kwargs: dict[str, Any] = {}
        self._eos_ids: list[int] = []
        self._load_notes: list[str] = []
        self._model_source: str | None = None
        self._gguf_summary: dict[str, Any] | None = None
        self._last_outputs: list[tuple[list[int], Any, list[int]]] = []
        self.last_phase: str | None = None

    # ─── Introspection ──────────────────────────────────────────────────────
    def version(self) -> str:
        """Installed transformers version ("not installed" when missing)."""
        try:
            return metadata.version("transformers")
        except metadata.PackageNotFoundError:
            return "not installed"

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (left padding, pad token set); None before ``load``.

        (Never raises: ``isinstance(x, InferenceBackend)`` reads it on Python 3.10/3.11.)
        """
        return self._tokenizer

    @classmethod
    def passthrough_keys(cls) -> PassthroughKeys:
        """``from_pretrained`` options (a fixed set), ``torch_compile_mode``, and any
        ``GenerationConfig`` field of the installed transformers (``split_passthrough_kwargs``
        sorts them the same way)."""
        return PassthroughKeys(
            engine=cls.name,
            own={
                "torch_compile_mode": "the `torch.compile` mode of transformers' compile path "
                "(with `pytorch.torch_compile: true`)",
            },
            routes=(
                ("`from_pretrained` of the model and the tokenizer", TOKENIZER_PASSTHROUGH_KEYS),
                (
                    "`from_pretrained` of the model",
                    LOAD_PASSTHROUGH_KEYS - TOKENIZER_PASSTHROUGH_KEYS,
                ),
            ),
            open_route=(
                "`generate` when it is a field of the installed transformers' "
                "`GenerationConfig`, else it is a pre-flight error"
            ),
            open_keys=generation_passthrough_keys,
            refused={
                **{k: f"set by `{field}`" for k, field in _CONFLICTING_KEYS.items()},
                **{k: "would break one record per prompt" for k in _FORBIDDEN_GENERATE_KEYS},
            },
        )

    def metered_nvml_indices(self, config: ExperimentConfig) -> list[int] | None:
        """The GPU(s) its process(es) use: the first ``num_processes`` visible ones (one for a
        single-process run), mapped by UUID."""
        from llenergymeasure.engines.process_plan import data_parallel_nvml_indices

        return data_parallel_nvml_indices(config)

    # ─── Online mode ────────────────────────────────────────────────────────
    def serve_command(
        self, config: ExperimentConfig, *, model: str, host: str, port: int
    ) -> ServeCommand:
        """``transformers serve MODEL`` (the model is pinned): ``--dtype``,
        ``--default-seed``, ``--attn-implementation``, ``--compile``, ``--quantization
        bnb-4bit|bnb-8bit`` and ``--continuous-batching`` for ``batching_strategy: dynamic``.
        transformers serve refuses unknown request fields, so ``ignore_eos`` is not sent, and
        serves the model under its own name."""
        online = config.online
        if online is not None and online.served_model_name:
            raise ConfigError(
                "online.served_model_name is not supported with transformers serve "
                "(it serves the model under its own name)",
                hint="remove online.served_model_name",
            )
        argv = ["transformers", "serve", model, "--host", host, "--port", str(port)]
        argv += ["--dtype", _PRECISION_TO_DTYPE.get(config.precision, "auto")]
        argv += ["--default-seed", str(config.random_seed)]
        p = config.pytorch
        if p is not None:
            if p.attn_implementation is not None:
                argv += ["--attn-implementation", p.attn_implementation]
            if p.torch_compile:
                argv.append("--compile")
            if p.load_in_4bit:
                argv += ["--quantization", "bnb-4bit"]
            elif p.load_in_8bit:
                argv += ["--quantization", "bnb-8bit"]
            if p.batching_strategy == "dynamic":
                argv.append("--continuous-batching")
        return ServeCommand(argv=argv, supports_ignore_eos=False)

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """What on this machine would stop ``config`` from running: libraries installed (torch,
        transformers, bitsandbytes, flash-attn, peft), model and adapter files, GPUs for data
        parallelism, passthrough keys. Static config rules (precision, 4/8-bit exclusivity,
        speculative decoding at batch 1) are the config model's; loads nothing."""
        problems: list[str] = []
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(
                f"pytorch engine needs {', '.join(missing)}: {extra_install_hint('pytorch')}"
            )
            return problems

        load_kw, _gen_kw, _engine_kw, pt_problems = split_passthrough_kwargs(
            config.passthrough_kwargs
        )
        problems.extend(pt_problems)
        problems.extend(
            self._check_model_source(config.model, "model", load_kw, config.passthrough_kwargs)
        )

        pt = config.pytorch
        if pt is not None:
            if (pt.load_in_4bit or pt.load_in_8bit) and importlib.util.find_spec(
                "bitsandbytes"
            ) is None:
                problems.append(
                    "pytorch.load_in_4bit/load_in_8bit need bitsandbytes: pip install bitsandbytes"
                )
            if (pt.num_processes or 1) > 1:
                problems.extend(self._data_parallel_problems(config))
            if pt.attn_implementation == "flash_attention_2" and (
                importlib.util.find_spec("flash_attn") is None
            ):
                problems.append(
                    "pytorch.attn_implementation=flash_attention_2 needs flash-attn: "
                    "pip install flash-attn (or use sdpa)"
                )

        dec = config.decoder
        if dec.speculative_decoding and dec.draft_model:
            problems.extend(self._check_model_source(dec.draft_model, "decoder.draft_model"))

        if config.lora is not None:
            if importlib.util.find_spec("peft") is None:
                problems.append("lora: needs peft: pip install peft")
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

    def _data_parallel_problems(self, config: ExperimentConfig) -> list[str]:
        """num_processes > 1 on this single-process engine: the device problem, else a pointer."""
        from llenergymeasure.energy.devices import visible_gpu_slots
        from llenergymeasure.engines.process_plan import device_problems

        try:
            slots = visible_gpu_slots()
        except BackendError as e:
            return [f"pytorch.num_processes: cannot map the visible GPUs: {e}"]
        problems = device_problems(config, slots)
        if problems:
            return problems
        return [
            "pytorch.num_processes > 1 runs through the data-parallel engine "
            "(create_engine(backend, config) or engines.data_parallel.DataParallelEngine); "
            "PyTorchBackend itself runs one process"
        ]

    def _check_model_source(
        self,
        name: str,
        field_name: str,
        load_kw: dict[str, Any] | None = None,
        passthrough: dict[str, Any] | None = None,
    ) -> list[str]:
        """Cheap check that ``name`` can be resolved (no download, no model load); a GGUF
        file (``name`` ending in ``.gguf``, or ``passthrough``'s ``gguf_file``) is read up to
        its tensor data."""
        load_kw = load_kw or {}
        gguf = gguf_model(
            name,
            passthrough,
            revision=load_kw.get("revision"),
            cache_dir=load_kw.get("cache_dir"),
            field=field_name,
        )
        if gguf is not None:
            return _gguf_problems(gguf, load_kw)
        if name.startswith("builtin:"):
            try:
                from llenergymeasure.engines import builtin
            except ImportError:
                return [f"{field_name}: built-in models are not available in this install"]
            known = getattr(builtin, "BUILTIN_MODELS", None)
            if not builtin.is_builtin_model(name) or (known is not None and name not in known):
                valid = ", ".join(known) if known else "builtin:tiny"
                return [f"{field_name}: unknown built-in model {name!r}; valid: {valid}"]
            return []
        if _looks_like_path(name):
            path = Path(name).expanduser()
            if not path.is_dir():
                return [f"{field_name}: local model directory {name!r} does not exist"]
            if not (path / "config.json").is_file():
                return [f"{field_name}: {name!r} has no config.json (not a HF model folder)"]
            return []
        # Hub id: fine if cached; else offline, or a hub that does not answer one bounded
        # probe, is a problem now (the hub client would retry for about a minute at load)
        from llenergymeasure.hub import hub_model_problem

        problem = hub_model_problem(
            name, field_name, revision=load_kw.get("revision"), cache_dir=load_kw.get("cache_dir")
        )
        return [problem] if problem else []

    # ─── Load ───────────────────────────────────────────────────────────────
    def _resolve_source(self, name: str) -> str:
        if name.startswith("builtin:"):
            from llenergymeasure.engines.builtin import resolve_builtin_model

            return str(resolve_builtin_model(name))
        if _looks_like_path(name):
            return str(Path(name).expanduser())
        return name

    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Load tokenizer, model (dtype, attention, quantisation), LoRA adapter and draft model."""
        t0 = perf_counter()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # llem prints its own phase progress; transformers' per-shard bars would interleave.
        transformers.utils.logging.disable_progress_bar()

        model: Any

        load_kw, gen_kw, engine_kw, problems = split_passthrough_kwargs(config.passthrough_kwargs)
        if problems:
            raise BackendError("; ".join(problems))
        if config.precision not in _PRECISION_TO_DTYPE:
            raise BackendError(f"pytorch engine does not support precision={config.precision!r}")
        pt = config.pytorch
        if self._requested_device is None and pt is not None and (pt.num_processes or 1) > 1:
            raise BackendError(
                "PyTorchBackend runs one process; pytorch.num_processes > 1 needs the "
                "data-parallel engine",
                hint="build the engine with create_engine(config.backend, config)",
            )
        self._engine_kwargs = engine_kw
        self._load_notes = []
        if self._requested_device is not None:
            device = torch.device(self._requested_device)
        else:
            device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # stray allocations land on this GPU, not cuda:0
        self._device = device
        dtype = getattr(torch, _PRECISION_TO_DTYPE[config.precision])

        model_kw: dict[str, Any] = {"device_map": str(device)}
        model_kw[_dtype_kwarg_name(transformers.__version__)] = dtype
        if pt is not None and pt.attn_implementation is not None:
            model_kw["attn_implementation"] = pt.attn_implementation
        if pt is not None and (pt.load_in_4bit or pt.load_in_8bit):
            from transformers import BitsAndBytesConfig

            if pt.load_in_4bit:
                model_kw["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_compute_dtype=dtype
                )
            else:
                model_kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        model_kw.update(load_kw)

        gguf = gguf_model(
            config.model,
            config.passthrough_kwargs,
            revision=load_kw.get("revision"),
            cache_dir=load_kw.get("cache_dir"),
        )
        tok_kw = {k: v for k, v in load_kw.items() if k in TOKENIZER_PASSTHROUGH_KEYS}
        if gguf is None:
            source = self._resolve_source(config.model)
            self._model_source = source
        else:  # from_pretrained(folder or hub repo, gguf_file=name) for model and tokenizer
            source = gguf.source
            self._model_source = gguf.label
            tok_kw["gguf_file"] = model_kw["gguf_file"] = gguf.filename
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **tok_kw)
            model = AutoModelForCausalLM.from_pretrained(source, **model_kw)
        except Exception as e:
            from llenergymeasure.files import damaged_model_error, environment_error

            damaged = damaged_model_error(e, model=config.model)
            if damaged is not None:
                raise damaged from e
            if isinstance(e, OSError) and e.errno is not None:  # the disk, not the model id
                raise environment_error(e, doing=f"loading {config.model!r}") from e
            raise BackendError(
                f"could not load model {self._model_source or config.model!r}: "
                f"{type(e).__name__}: {e}",
                hint=_GGUF_LOAD_HINT if gguf is not None else _offline_hint(),
            ) from e
        model.eval()
        self._gguf_summary = None
        if gguf is not None:
            self._gguf_summary = self._gguf_loaded(config, load_kw, model)

        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise BackendError(
                    f"tokenizer of {config.model!r} has neither a pad nor an eos token",
                    hint="set a pad token in the tokenizer config",
                )
            tokenizer.pad_token = tokenizer.eos_token

        if config.lora is not None:
            from peft import PeftModel

            adapter = config.lora.adapter_path or config.lora.adapter_id
            if adapter is None:
                raise BackendError("lora: needs adapter_path or adapter_id")
            try:
                model = PeftModel.from_pretrained(model, adapter)
            except Exception as e:
                raise BackendError(
                    f"could not load LoRA adapter {adapter!r}: {type(e).__name__}: {e}"
                ) from e
            if config.lora.merge_weights:
                model = model.merge_and_unload()
            model.eval()

        draft = None
        if config.decoder.speculative_decoding and config.decoder.draft_model:
            draft_kw: dict[str, Any] = {"device_map": str(device)}
            draft_kw[_dtype_kwarg_name(transformers.__version__)] = dtype
            draft_source = self._resolve_source(config.decoder.draft_model)
            draft_gguf = gguf_model(config.decoder.draft_model)
            if draft_gguf is not None:
                draft_source, draft_kw["gguf_file"] = draft_gguf.source, draft_gguf.filename
            try:
                draft = AutoModelForCausalLM.from_pretrained(draft_source, **draft_kw)
            except Exception as e:
                raise BackendError(
                    f"could not load draft model {config.decoder.draft_model!r}: "
                    f"{type(e).__name__}: {e}",
                    hint=_offline_hint(),
                ) from e
            draft.eval()

        self._model, self._tokenizer, self._draft = model, tokenizer, draft
        self._gen_kwargs = gen_kw
        self._eos_ids = self._resolve_eos_ids(gen_kw)
        if device.type != "cuda" and self._torch_compile(config):
            self._load_notes.append(
                "torch_compile requested but transformers compiles generate only on "
                "accelerators: running uncompiled on CPU"
            )
        if device.type == "cpu":
            self._load_notes.append("running on CPU: no GPU energy")
        self.synchronize()
        return LoadInfo(
            load_time_s=perf_counter() - t0,
            parameter_count=_parameter_count(model),
            model_dtype=str(model.dtype).removeprefix("torch."),
            device=str(device),
            notes=list(self._load_notes),
            draft_parameter_count=_parameter_count(draft) if draft is not None else 0,
        )

    def _gguf_loaded(
        self, config: ExperimentConfig, load_kw: dict[str, Any], model: Any
    ) -> dict[str, Any] | None:
        """What the result records about a GGUF model just loaded, and a load note saying
        what ran: transformers dequantises GGUF weights to the torch dtype (or, for the few
        architectures it has GGUF kernels for, keeps them in blocks)."""
        gguf = gguf_model(  # a hub file is in the HF cache now
            config.model,
            config.passthrough_kwargs,
            revision=load_kw.get("revision"),
            cache_dir=load_kw.get("cache_dir"),
        )
        header = None
        if gguf is not None and gguf.local_path is not None:
            try:
                header = read_gguf_header(gguf.local_path)
            except GGUFError:
                header = None
        dtype = str(model.dtype).removeprefix("torch.")
        packed = len(getattr(getattr(model, "hf_quantizer", None), "packed_modules", None) or {})
        weights = (
            f"{packed} weight matrices kept in GGUF blocks (transformers' GGUF kernels), the "
            f"rest dequantised to {dtype}"
            if packed
            else f"dequantised to {dtype} by transformers"
        )
        types = header.tensor_types() if header is not None else {}
        shown = ", ".join(f"{n} {t}" for t, n in types.items()) or "tensor types unknown"
        self._load_notes.append(
            f"GGUF file {gguf.label if gguf else config.model} ({shown}): weights {weights}"
            + ("" if packed else f"; the run measures {dtype} matmuls, not quantised kernels")
        )
        summary = header.summary() if header is not None else {"file": self._model_source}
        return {**summary, "weights": weights}

    def _resolve_eos_ids(self, gen_kw: dict[str, Any]) -> list[int]:
        eos = gen_kw.get("eos_token_id")
        if eos is None:
            eos = getattr(self._model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self._tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    # ─── Resolution of None-sentinels ──────────────────────────────────────
    @staticmethod
    def _batch_size(config: ExperimentConfig) -> int:
        return run_concurrency(config)

    @staticmethod
    def _batching_strategy(config: ExperimentConfig) -> str:
        s = config.pytorch.batching_strategy if config.pytorch is not None else None
        return DEFAULT_BATCHING_STRATEGY if s is None else str(s)

    @staticmethod
    def _torch_compile(config: ExperimentConfig) -> bool:
        tc = config.pytorch.torch_compile if config.pytorch is not None else None
        return DEFAULT_TORCH_COMPILE if tc is None else bool(tc)

    def _decoding_kwargs(self, config: ExperimentConfig) -> dict[str, Any]:
        """generate() kwargs fixed for the whole run (everything except the length limits)."""
        dec = config.decoder
        kw: dict[str, Any] = {
            "pad_token_id": self._tokenizer.pad_token_id,
            "repetition_penalty": dec.repetition_penalty,
        }
        if dec.decoding_strategy == "sampling":
            kw.update(
                do_sample=True,
                num_beams=1,
                temperature=dec.temperature,
                top_p=dec.top_p,
                top_k=0 if dec.top_k is None else dec.top_k,  # 0 = no top-k filtering
            )
        elif dec.decoding_strategy == "beam":
            kw.update(do_sample=False, num_beams=dec.num_beams or DEFAULT_NUM_BEAMS)
        else:
            kw.update(do_sample=False, num_beams=1)
        if self._draft is not None:
            kw["assistant_model"] = self._draft
        compile_on = self._torch_compile(config)
        kw["disable_compile"] = not compile_on
        if compile_on:
            # transformers' own compile path: compiled forward over a static KV cache
            kw["cache_implementation"] = "static"
            mode = self._engine_kwargs.get("torch_compile_mode")
            if mode is not None:
                from transformers import CompileConfig

                kw["compile_config"] = CompileConfig(mode=mode)
        kw.update(self._gen_kwargs)
        if "stop_strings" in kw:
            kw["tokenizer"] = self._tokenizer
        return kw

    def max_sequence_length(self) -> int | None:
        """Prompt + generated tokens the loaded model can attend to (None: unknown/not loaded)."""
        model_cfg = getattr(self._model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(model_cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def compiles_on_first_run(self, config: ExperimentConfig) -> bool:
        """``pytorch.torch_compile``: transformers compiles in the first ``generate``."""
        return self._torch_compile(config)

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        """Every parameter ``config`` runs with on the loaded model, None-sentinels resolved."""
        if self._model is None:
            raise BackendError("pytorch engine: effective_parameters() requested before load()")
        import torch

        pt = config.pytorch
        dec = config.decoder
        kw = self._decoding_kwargs(config)
        sampling = dec.decoding_strategy == "sampling"
        model_cfg = getattr(self._model, "config", None)
        return {
            "engine": self.name,
            "engine_version": self.version(),
            "torch_version": torch.__version__,
            "model": config.model,
            "model_source": self._model_source,
            "gguf": self._gguf_summary,
            "device": str(self._device),
            "precision": config.precision,
            "dtype": str(self._model.dtype).removeprefix("torch."),
            "batch_size": self._batch_size(config),
            "batching_strategy": self._batching_strategy(config),
            "attn_implementation": getattr(model_cfg, "_attn_implementation", None),
            "torch_compile": self._torch_compile(config),
            # transformers compiles generate only on accelerators
            "torch_compile_applied": self._torch_compile(config) and self._on_cuda(),
            "torch_compile_mode": self._engine_kwargs.get("torch_compile_mode"),
            "cache_implementation": kw.get("cache_implementation") or "dynamic",
            "load_in_4bit": bool(pt.load_in_4bit) if pt is not None else False,
            "load_in_8bit": bool(pt.load_in_8bit) if pt is not None else False,
            "bnb_4bit_compute_dtype": (
                _PRECISION_TO_DTYPE[config.precision]
                if pt is not None and pt.load_in_4bit
                else None
            ),
            "num_processes": (pt.num_processes if pt is not None else None)
            or DEFAULT_NUM_PROCESSES,
            "decoding_strategy": dec.decoding_strategy,
            "do_sample": kw["do_sample"],
            "num_beams": kw["num_beams"],
            "temperature": dec.temperature if sampling else None,
            "top_p": dec.top_p if sampling else None,
            "top_k": kw["top_k"] if sampling else None,
            "repetition_penalty": dec.repetition_penalty,
            "random_seed": config.random_seed if sampling else None,
            "max_new_tokens": config.max_new_tokens_for(None),
            "ignore_eos": dec.ignore_eos,
            "min_new_tokens": "max_new_tokens" if dec.ignore_eos else None,
            "speculative_decoding": dec.speculative_decoding,
            "draft_model": dec.draft_model if dec.speculative_decoding else None,
            "draft_parameter_count": (
                _parameter_count(self._draft) if self._draft is not None else None
            ),
            "lora": (
                {
                    "adapter": config.lora.adapter_path or config.lora.adapter_id,
                    "merge_weights": config.lora.merge_weights,
                }
                if config.lora is not None
                else None
            ),
            "padding_side": self._tokenizer.padding_side,
            "pad_token_id": self._tokenizer.pad_token_id,
            "eos_token_id": list(self._eos_ids),
            "passthrough_kwargs": dict(config.passthrough_kwargs or {}),
        }

    # ─── Generation ─────────────────────────────────────────────────────────
    def _require_loaded(self) -> tuple[Any, Any]:
        if self._model is None or self._tokenizer is None:
            raise BackendError("pytorch engine: generate() called before load()")
        return self._model, self._tokenizer

    def prepare(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = MEASUREMENT_PHASE,
    ) -> PreparedRun:
        """Tokenise once, batch, left-pad, move to the device; one step timer per batch.

        Each batch's ``max_new_tokens`` is the largest limit of its requests (``ignore_eos``:
        also its ``min_new_tokens``).
        """
        import torch

        self._require_loaded()
        self.last_phase = phase
        limits = prompt_limits(prompts, config)
        run = PreparedRun(list(prompts), config, phase, limits, payload=[])
        if not prompts:
            return run
        tokenizer = self._tokenizer
        encoded: list[list[int]] = tokenizer([p.text for p in prompts])["input_ids"]
        for p, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise BackendError(f"prompt {p.index} tokenises to zero tokens")
        base_kw = self._decoding_kwargs(config)
        stream = int(base_kw["num_beams"]) == 1  # transformers cannot stream beam search
        order = list(range(len(prompts)))
        if self._batching_strategy(config) == "dynamic":
            order.sort(key=lambda i: len(encoded[i]))
        bs = self._batch_size(config)
        pad_id = tokenizer.pad_token_id
        batches: list[_Batch] = []
        for start in range(0, len(order), bs):
            pos = order[start : start + bs]
            width = max(len(encoded[i]) for i in pos)
            input_ids = torch.full((len(pos), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(pos), width), dtype=torch.long)
            for row, i in enumerate(pos):
                n = len(encoded[i])
                input_ids[row, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, width - n :] = 1
            max_new = max(limits[i] for i in pos)
            kw = dict(base_kw, max_new_tokens=max_new)
            if config.decoder.ignore_eos:
                kw["min_new_tokens"] = max_new
            batches.append(
                _Batch(
                    positions=pos,
                    input_lengths=[len(encoded[i]) for i in pos],
                    input_ids=input_ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    kwargs=kw,
                    streamer=_make_streamer() if stream else None,
                )
            )
        run.payload = batches
        return run

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """One ``model.generate`` per prepared batch; per batch: its start on two clocks, its
        generated ids copied to the host (the copy waits for the batch), its end."""
        model, _ = self._require_loaded()
        import torch

        sampling = prepared.config.decoder.decoding_strategy == "sampling"
        seed = prepared.config.random_seed
        runs: list[_BatchRun] = []
        done = 0
        for batch in prepared.payload:
            if sampling:
                torch.manual_seed(seed)
            start = monotonic()  # the sampler's clock: places this batch on its timeline
            t0 = perf_counter()
            try:
                out = model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    streamer=batch.streamer,
                    **batch.kwargs,
                )
                seqs = getattr(out, "sequences", out)
                gen = seqs[:, batch.input_ids.shape[1] :].cpu()
            except (RuntimeError, ValueError, TypeError) as e:
                raise self._generation_error(e, len(batch.positions)) from e
            runs.append(_BatchRun(batch, start, t0, perf_counter(), gen))
            if on_batch is not None:
                done += len(batch.positions)
                on_batch(done)
        return RawRun(prepared, runs)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per prompt, in prompt order: counted output tokens (up to and including
        the first EOS, at most the prompt's own limit), latency, TTFT and ITL of its batch."""
        import torch

        prompts, limits = raw.prepared.prompts, raw.prepared.limits
        eos = torch.tensor(self._eos_ids, dtype=torch.long) if self._eos_ids else None
        records: list[RequestRecord | None] = [None] * len(prompts)
        self._last_outputs = []
        for batch_index, run in enumerate(raw.payload):
            batch: _Batch = run.batch
            pos = batch.positions
            counts = [
                min(c, limits[i])
                for c, i in zip(_output_counts(run.generated, eos), pos, strict=True)
            ]
            self._last_outputs.append((pos, run.generated, counts))
            times = batch.streamer.token_times() if batch.streamer is not None else []
            for row, i in enumerate(pos):
                own = times[: counts[row]]
                records[i] = RequestRecord(
                    index=prompts[i].index,
                    input_tokens=batch.input_lengths[row],
                    output_tokens=counts[row],
                    latency_s=run.t_end - run.t0,
                    ttft_s=(own[0] - run.t0) if own else None,
                    itl_s=[b - a for a, b in itertools.pairwise(own)],
                    batch_index=batch_index,
                    start_s=run.start_s,
                )
        return [r for r in records if r is not None]

    def _generation_error(self, error: Exception, batch_len: int) -> BackendError:
        dtype = str(self._model.dtype).removeprefix("torch.")
        text = str(error)
        hint: str | None = None
        if "out of memory" in text.lower():
            hint = "lower pytorch.batch_size or max_new_tokens, or use a smaller precision"
        elif not self._on_cuda() and dtype != "float32":
            hint = f"{dtype} may be unsupported for this model on CPU: try precision fp32"
        return BackendError(
            f"generation failed on {self._device} with dtype {dtype} "
            f"(batch of {batch_len}): {type(error).__name__}: {text}",
            hint=hint,
        )

    def last_output_token_ids(self) -> list[list[int]]:
        """Counted generated token ids of each prompt of the last ``generate`` call.

        In prompt order; for inspection and tests (converted only when asked for).
        """
        n = sum(len(pos) for pos, _, _ in self._last_outputs)
        out: list[list[int]] = [[] for _ in range(n)]
        for pos, gen, counts in self._last_outputs:
            rows = gen.tolist()
            for row, i in enumerate(pos):
                out[i] = rows[row][: counts[row]]
        return out

    # ─── Device housekeeping ────────────────────────────────────────────────
    def _on_cuda(self) -> bool:
        return self._device is not None and self._device.type == "cuda"

    def synchronize(self) -> None:
        """``torch.cuda.synchronize`` on GPU; no-op on CPU."""
        if self._on_cuda():
            import torch

            torch.cuda.synchronize(self._device)

    def reset_peak_memory(self) -> None:
        """Reset the CUDA peak-allocation counter (no-op on CPU)."""
        if self._on_cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self._device)

    def peak_memory_bytes(self) -> int | None:
        """``torch.cuda.max_memory_allocated`` since the last reset; None on CPU."""
        if not self._on_cuda():
            return None
        import torch

        return int(torch.cuda.max_memory_allocated(self._device))

    def begin_reused_run(self, config: ExperimentConfig) -> list[str]:
        """Make a run on the kept model compile exactly as a fresh process would.

        Called before the warmup of every run that reuses this engine. Without it, the
        compiled forward of an earlier run carries over: ``torch.compile``'s automatic dynamic
        shapes recompile on the second batch size with a symbolic batch dimension (generic,
        slower kernels than the static ones a fresh process builds), and transformers sizes
        every later static KV cache to the longest one seen (``_previous_max_cache_length``),
        so a 128-token run after a 256-token one would attend over a longer cache. Dropping
        Dynamo's in-memory state, the compiled call and the cache means the warmup recompiles
        for this run's own shapes (from the on-disk compile caches, which are kept).
        """
        if not (self._torch_compile(config) and self._on_cuda()) or self._model is None:
            return []
        import torch

        for attr in _COMPILE_STATE_ATTRS:
            if attr in vars(self._model):
                delattr(self._model, attr)
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        return [
            "pytorch: torch.compile state reset before the warmup (torch._dynamo.reset; "
            "compiled forward and static KV cache dropped), so this run compiles for its own "
            "shapes as a fresh process would; on-disk compile caches kept"
        ]

    def clear_run_state(self) -> list[str]:
        """Free the previous run's tensors and reset the peak-memory counter.

        HF ``generate`` keeps no cache across calls (each call builds a fresh KV cache), so
        there is no cross-run work to drop; the last run's output ids are released.
        """
        self._last_outputs = []
        gc.collect()
        notes = ["pytorch: transformers generate keeps no cross-call KV cache; nothing to drop"]
        if self._on_cuda():
            import torch

            torch.cuda.empty_cache()
            notes.append("pytorch: released cached CUDA blocks (torch.cuda.empty_cache)")
        self.reset_peak_memory()
        return notes

    def unload(self) -> None:
        """Drop model, draft and tokenizer and release cached device memory."""
        on_cuda = self._on_cuda()
        self._model = self._draft = self._tokenizer = None
        self._last_outputs = []
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()


def _parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _output_counts(gen: Any, eos: Any) -> list[int]:
    """Generated tokens per row up to and including the first EOS (all of them if none)."""
    import torch

    width = int(gen.shape[1])
    if eos is None or width == 0:
        return [width] * int(gen.shape[0])
    is_eos = torch.isin(gen, eos)
    first = is_eos.to(torch.int8).argmax(dim=1) + 1
    return torch.where(is_eos.any(dim=1), first, torch.full_like(first, width)).tolist()


def _dtype_kwarg_name(transformers_version: str) -> str:
    """``dtype`` (transformers >= 4.56) or the older ``torch_dtype``."""
    try:
        major, minor = (int(x) for x in transformers_version.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
