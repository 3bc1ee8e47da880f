"""The engine catalogue: one record per inference engine, read by everything that names engines.

Validation (precisions, decoding strategies, which config section belongs to which engine), the
engine factory, the CLI (``--backend`` choices, ``llem config``, ``--version``), the runners
(isolation, docker shm), the VRAM preview and pre-flight, and engine reuse across a study
(load-time vs per-run fields) all read this module. Adding an engine = one engine module, its
config section, and one ``EngineSpec`` here.

This module sits on the config floor: it imports no engine. The engine class is named by a
dotted path (``"llenergymeasure.engines.vllm.engine:VLLMBackend"``) that the factory imports lazily.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "EngineSpec",
    "ServerExtra",
    "concurrency_path",
    "engine_load_fields",
    "engine_load_key",
    "engine_names",
    "engine_section",
    "engine_spec",
    "register_engine",
    "registered_engines",
    "run_concurrency",
]

#: Every section field of the engine is load-time (vLLM and TensorRT-LLM build their engine
#: from all of them).
ALL_SECTION_FIELDS = "*"

#: The backend of a config that names none when not exactly one engine is installed.
DEFAULT_ENGINE = "pytorch"


@dataclass(frozen=True)
class ServerExtra:
    """Python modules an engine's server needs beyond the engine itself (checked by the online
    pre-flight): ``problem`` says what is missing, ``install`` how to install it."""

    modules: tuple[str, ...]
    problem: str
    install: str


@dataclass(frozen=True)
class EngineSpec:
    """What llem knows about one inference engine, without importing it.

    - ``engine_class``: ``"package.module:ClassName"``, imported only when the engine is built.
    - ``import_module`` / ``distribution``: the module whose presence means "installed", and the
      distribution whose metadata gives its version.
    - ``extra``: the extra of the checkout that installs it.
    - ``config_section``: the ``ExperimentConfig`` attribute holding its settings (None: none).
    - ``isolated``: cannot share a process/environment with another isolated engine (separate
      CUDA runtimes and pinned torch versions).
    - ``needs_shm``: needs a large ``/dev/shm`` in a container (worker processes).
    - ``load_fields``: top-level dotted config fields that change the loaded engine.
    - ``section_load_fields``: fields of ``config_section`` that change the loaded engine, or
      ``ALL_SECTION_FIELDS``. Everything else (batch size, decoder sampling settings, n,
      max_new_tokens, dataset, warmup, seed, baseline...) is per-run.
    - ``concurrency_field`` / ``default_concurrency``: the section field that caps how many
      requests run at once, and what None in it means.
    - ``reuse_proven``: whether sharing one loaded engine across a study's runs was shown on
      hardware to measure the same as a fresh process per run. It is the engine's default of
      ``execution.reuse_engine`` (on where proven, off elsewhere); ``reuse_evidence`` says
      what showed it, or why it is not proven, and where the figures are.
    - ``server_program``: the program online mode starts the engine's OpenAI-compatible server
      with (the engine's ``serve_command`` builds its command line); None: llem starts no
      server for this engine (online mode needs ``online.endpoint``).
    - ``server_extra``: modules that server needs besides the engine (None: none).
    - ``continuous_usage_stats``: the server takes ``stream_options.continuous_usage_stats``
      and then puts the running ``usage.completion_tokens`` on every streamed chunk.
    - ``gguf_as_stored``: a GGUF model's weights stay in the file's quantised blocks in GPU
      memory (vLLM); False: they are dequantised to the run's precision (transformers).
    """

    name: str
    engine_class: str
    import_module: str
    distribution: str
    extra: str
    precisions: tuple[str, ...]
    decoding_strategies: tuple[str, ...]
    config_section: str | None
    isolated: bool = False
    needs_shm: bool = False
    load_fields: tuple[str, ...] = ("model", "precision")
    section_load_fields: tuple[str, ...] | str = ()
    concurrency_field: str | None = None
    default_concurrency: int = 1
    reuse_proven: bool = False
    reuse_evidence: str = "not proven: never compared with a fresh process per run on hardware"
    server_program: str | None = None
    server_extra: ServerExtra | None = None
    continuous_usage_stats: bool = False
    gguf_as_stored: bool = False

    @property
    def install_hint(self) -> str:
        """The pip command that installs this engine."""
        from llenergymeasure.install import extra_install_hint

        return extra_install_hint(self.extra)


_BUILTIN_ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        name="pytorch",
        engine_class="llenergymeasure.engines.pytorch.engine:PyTorchBackend",
        import_module="transformers",
        distribution="transformers",
        extra="pytorch",
        precisions=("fp32", "fp16", "bf16"),
        decoding_strategies=("greedy", "sampling", "beam"),
        config_section="pytorch",
        # passthrough_kwargs are mostly from_pretrained arguments (and torch_compile_mode);
        # all of them count as load-time, which can only prevent a reuse, never allow a wrong one.
        load_fields=(
            "model",
            "precision",
            "lora",
            "decoder.speculative_decoding",
            "decoder.draft_model",
            "passthrough_kwargs",
        ),
        section_load_fields=(
            "attn_implementation",
            "load_in_4bit",
            "load_in_8bit",
            "torch_compile",
            "num_processes",
        ),
        concurrency_field="batch_size",
        default_concurrency=1,
        reuse_proven=False,
        reuse_evidence=(
            "not proven: on one H200 (torch_compile, batch 1/8/32/64 x 3 cycles) J/token agreed "
            "within 2 %, but tok/s at batch 8 read 6 % higher with reuse, outside the 2 % band, "
            "and the batch-8 re-run with 5 cycles is not complete (BENCHMARKS.md, "
            '"Engine reuse (issue 14)")'
        ),
        server_program="transformers",  # transformers serve
        server_extra=ServerExtra(
            modules=("fastapi", "uvicorn", "openai"),
            problem="transformers serve needs transformers' serving extra",
            install="pip install 'transformers[serving]'",
        ),
        # transformers serve refuses unknown request fields (HTTP 422)
        continuous_usage_stats=False,
        gguf_as_stored=False,  # transformers dequantises GGUF weights to the run's precision
    ),
    EngineSpec(
        name="vllm",
        engine_class="llenergymeasure.engines.vllm.engine:VLLMBackend",
        import_module="vllm",
        distribution="vllm",
        extra="vllm",
        precisions=("fp16", "bf16", "int8", "int4"),
        decoding_strategies=("greedy", "sampling", "beam"),
        config_section="vllm",
        isolated=True,
        needs_shm=True,
        load_fields=(
            "model",
            "precision",
            "random_seed",  # LLM(seed=...) is an engine argument
            "decoder.speculative_decoding",
            "decoder.draft_model",
            "passthrough_kwargs",
        ),
        section_load_fields=ALL_SECTION_FIELDS,
        concurrency_field="max_num_seqs",
        default_concurrency=256,  # vLLM's documented default (engines.vllm.engine_args)
        reuse_proven=True,
        reuse_evidence=(
            "proven: vLLM 0.26 on one H200, max_num_seqs 64 and 256 x 3 cycles, J/token within "
            "0.3 % and tok/s within 1.6 % of a fresh process per run, no prefix-cache hit in any "
            'reused window (BENCHMARKS.md, "Engine reuse (issue 14)")'
        ),
        server_program="vllm",  # vllm serve
        continuous_usage_stats=True,
        gguf_as_stored=True,  # vLLM runs the quantised GGUF blocks
    ),
    EngineSpec(
        name="tensorrt",
        engine_class="llenergymeasure.engines.tensorrt.engine:TensorRTBackend",
        import_module="tensorrt_llm",
        distribution="tensorrt-llm",
        extra="tensorrt",
        precisions=("fp16", "int8", "fp8", "int4"),  # fp32/bf16 engines not supported
        decoding_strategies=("greedy", "sampling"),  # no beam search
        config_section="tensorrt",
        isolated=True,
        needs_shm=True,
        load_fields=("model", "precision", "passthrough_kwargs"),
        section_load_fields=ALL_SECTION_FIELDS,
        concurrency_field="max_batch_size",
        default_concurrency=2048,  # BuildConfig default (see engines.tensorrt.build.TRT_DEFAULTS)
        reuse_proven=False,
        reuse_evidence="not proven: the engine has never run on hardware",
        server_program="trtllm-serve",
        # serve/postprocess_handlers.py adds it to each chunk when include_usage is also on,
        # alike in a pre-1.0 copy and in the current main branch (1.2 itself not read); its
        # tests check it on the TensorRT-engine backend too
        continuous_usage_stats=True,
    ),
)

_REGISTRY: dict[str, EngineSpec] = {spec.name: spec for spec in _BUILTIN_ENGINES}

#: name -> EngineSpec, in canonical order (built-in engines first, then registered ones).
#: A read-only live view: ``register_engine`` additions show up here.
ENGINES: Mapping[str, EngineSpec] = _REGISTRY


def engine_names() -> tuple[str, ...]:
    """Names of every known engine, in canonical order."""
    return tuple(_REGISTRY)


def engine_spec(name: str) -> EngineSpec:
    """The record of engine ``name``; KeyError naming the known engines if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known engines: {', '.join(_REGISTRY)}") from None


def registered_engines() -> tuple[EngineSpec, ...]:
    """The records ``register_engine`` added or replaced in this process (not built in): what a
    spawned child process must register again to know the same engines."""
    builtin = {spec.name: spec for spec in _BUILTIN_ENGINES}
    return tuple(spec for name, spec in _REGISTRY.items() if builtin.get(name) != spec)


class _Registration:
    """Returned by ``register_engine``: ``undo()`` it, or use it as a context manager."""

    def __init__(self, spec: EngineSpec, previous: EngineSpec | None) -> None:
        self.spec = spec
        self._previous = previous

    def undo(self) -> None:
        """Remove the registered engine (restoring the record it replaced, if any)."""
        if self._previous is None:
            _REGISTRY.pop(self.spec.name, None)
        else:
            _REGISTRY[self.spec.name] = self._previous

    def __enter__(self) -> EngineSpec:
        return self.spec

    def __exit__(self, *exc: object) -> None:
        self.undo()


def register_engine(spec: EngineSpec) -> _Registration:
    """Add (or replace) an engine record, for plugins and tests.

    Returns a registration to ``undo()``, also usable as ``with register_engine(spec): ...``.
    """
    previous = _REGISTRY.get(spec.name)
    _REGISTRY[spec.name] = spec
    return _Registration(spec, previous)


def _get(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def engine_section(config: Any) -> Any | None:
    """The config section of ``config``'s engine (``config.vllm`` for vLLM), None when the
    engine has none or it is not set."""
    spec = engine_spec(config.backend)
    return getattr(config, spec.config_section, None) if spec.config_section else None


def concurrency_path(backend: str) -> str | None:
    """The dotted config field that caps how many requests ``backend`` runs at once
    (``"vllm.max_num_seqs"``; what ``--batch-size`` sets), None when the engine has none."""
    spec = engine_spec(backend)
    if spec.config_section is None or spec.concurrency_field is None:
        return None
    return f"{spec.config_section}.{spec.concurrency_field}"


def engine_load_fields(config: Any) -> dict[str, Any]:
    """The load-time view of ``config``: every field that changes the loaded engine.

    Keys are dotted field names; unset (None) fields are left out, so a missing engine section
    and one with only defaults give the same view. Two configs with equal views can share one
    loaded engine.
    """
    spec = engine_spec(config.backend)
    view: dict[str, Any] = {"backend": spec.name}
    for name in spec.load_fields:
        value = _get(config, name)
        if value is not None and value != {}:
            view[name] = _plain(value)
    section = getattr(config, spec.config_section, None) if spec.config_section else None
    if section is not None:
        dumped = section.model_dump(mode="json", exclude_none=True)
        wanted = spec.section_load_fields
        for key, value in dumped.items():
            if wanted == ALL_SECTION_FIELDS or key in wanted:
                view[f"{spec.config_section}.{key}"] = value
    return view


def engine_load_key(config: Any) -> str:
    """16-hex SHA-256 of ``engine_load_fields(config)``: equal for configs that can share one
    loaded engine."""
    canonical = json.dumps(engine_load_fields(config), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_concurrency(config: Any) -> int:
    """How many requests the engine runs at once for ``config`` (None resolved).

    PyTorch: ``pytorch.batch_size`` (None -> 1); vLLM: ``vllm.max_num_seqs`` (None -> vLLM's
    default 256); TensorRT-LLM: ``tensorrt.max_batch_size`` (None -> BuildConfig's 2048).
    The one place that says what None means here: used by the VRAM preview, pre-flight and
    warmup.
    """
    spec = engine_spec(config.backend)
    if spec.config_section and spec.concurrency_field:
        value = _get(config, f"{spec.config_section}.{spec.concurrency_field}")
        if value is not None:
            return int(value)
    return spec.default_concurrency
