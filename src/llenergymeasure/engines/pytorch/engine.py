"""``PyTorchBackend``: the PyTorch / transformers engine on one device (see the package
docstring for how a run works).

Importing this module imports neither torch nor transformers: both are imported inside methods.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from importlib import metadata
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

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
from llenergymeasure.engines.pytorch.batching import (
    BatchRun,
    batch_records,
    build_batches,
    encode_prompts,
)
from llenergymeasure.engines.pytorch.engine_args import (
    DEFAULT_NUM_PROCESSES,
    PRECISION_TO_DTYPE,
    batch_size,
    batching_strategy,
    decoding_kwargs,
    serve_argv,
    torch_compile,
)
from llenergymeasure.engines.pytorch.loading import (
    apply_lora,
    checked_passthrough,
    gguf_loaded,
    load_draft_model,
    load_model_and_tokenizer,
    model_kwargs,
    model_location,
    parameter_count,
    prepare_tokenizer,
    select_device,
)
from llenergymeasure.engines.pytorch.passthrough import (
    CONFLICTING_KEYS,
    FORBIDDEN_GENERATE_KEYS,
    LOAD_PASSTHROUGH_KEYS,
    TOKENIZER_PASSTHROUGH_KEYS,
    generation_passthrough_keys,
)
from llenergymeasure.engines.pytorch.preflight import preflight_problems
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = ["PyTorchBackend"]

#: Attributes transformers leaves on a model after a compiled ``generate``: the compiled call,
#: its config, and the static KV cache memo that makes later caches at least as long.
_COMPILE_STATE_ATTRS = (
    "_compiled_call",
    "_last_compile_config",
    "_cache",
    "_previous_max_cache_length",
)


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
                **{k: f"set by `{field}`" for k, field in CONFLICTING_KEYS.items()},
                **{k: "would break one record per prompt" for k in FORBIDDEN_GENERATE_KEYS},
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
        argv = serve_argv(config, model=model, host=host, port=port)
        return ServeCommand(argv=argv, supports_ignore_eos=False)

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """What on this machine would stop ``config`` from running: libraries installed (torch,
        transformers, bitsandbytes, flash-attn, peft), model and adapter files, GPUs for data
        parallelism, passthrough keys. Static config rules (precision, 4/8-bit exclusivity,
        speculative decoding at batch 1) are the config model's; loads nothing."""
        return preflight_problems(config)

    # ─── Load ───────────────────────────────────────────────────────────────
    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Load tokenizer, model (dtype, attention, quantisation), LoRA adapter and draft model.

        The steps are ``engines.pytorch.loading``'s, in order."""
        t0 = perf_counter()
        import torch
        import transformers

        # llem prints its own phase progress; transformers' per-shard bars would interleave.
        transformers.utils.logging.disable_progress_bar()

        load_kw, gen_kw, engine_kw = checked_passthrough(config, self._requested_device)
        self._engine_kwargs = engine_kw
        self._load_notes = []
        device = self._device = select_device(self._requested_device)
        dtype = getattr(torch, PRECISION_TO_DTYPE[config.precision])
        model_kw = model_kwargs(config, device, dtype, load_kw)
        source, self._model_source, gguf = model_location(config, load_kw)
        model, tokenizer = load_model_and_tokenizer(
            config, source, self._model_source, gguf, model_kw, load_kw
        )
        self._gguf_summary = None
        if gguf is not None:
            self._gguf_summary, note = gguf_loaded(config, load_kw, model, self._model_source)
            self._load_notes.append(note)
        prepare_tokenizer(tokenizer, config.model)
        if config.lora is not None:
            model = apply_lora(model, config.lora)
        draft = load_draft_model(config, device, dtype)

        self._model, self._tokenizer, self._draft = model, tokenizer, draft
        self._gen_kwargs = gen_kw
        self._eos_ids = self._resolve_eos_ids(gen_kw)
        if device.type != "cuda" and torch_compile(config):
            self._load_notes.append(
                "torch_compile requested but transformers compiles generate only on "
                "accelerators: running uncompiled on CPU"
            )
        if device.type == "cpu":
            self._load_notes.append("running on CPU: no GPU energy")
        self.synchronize()
        return LoadInfo(
            load_time_s=perf_counter() - t0,
            parameter_count=parameter_count(model),
            model_dtype=str(model.dtype).removeprefix("torch."),
            device=str(device),
            notes=list(self._load_notes),
            draft_parameter_count=parameter_count(draft) if draft is not None else 0,
        )

    def _resolve_eos_ids(self, gen_kw: dict[str, Any]) -> list[int]:
        eos = gen_kw.get("eos_token_id")
        if eos is None:
            eos = getattr(self._model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self._tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    def _decoding_kwargs(self, config: ExperimentConfig) -> dict[str, Any]:
        """generate() kwargs fixed for the whole run (everything except the length limits)."""
        return decoding_kwargs(
            config,
            tokenizer=self._tokenizer,
            draft=self._draft,
            engine_kwargs=self._engine_kwargs,
            gen_kwargs=self._gen_kwargs,
        )

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
        return torch_compile(config)

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
            "batch_size": batch_size(config),
            "batching_strategy": batching_strategy(config),
            "attn_implementation": getattr(model_cfg, "_attn_implementation", None),
            "torch_compile": torch_compile(config),
            # transformers compiles generate only on accelerators
            "torch_compile_applied": torch_compile(config) and self._on_cuda(),
            "torch_compile_mode": self._engine_kwargs.get("torch_compile_mode"),
            "cache_implementation": kw.get("cache_implementation") or "dynamic",
            "load_in_4bit": bool(pt.load_in_4bit) if pt is not None else False,
            "load_in_8bit": bool(pt.load_in_8bit) if pt is not None else False,
            "bnb_4bit_compute_dtype": (
                PRECISION_TO_DTYPE[config.precision] if pt is not None and pt.load_in_4bit else None
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
                parameter_count(self._draft) if self._draft is not None else None
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
        self._require_loaded()
        self.last_phase = phase
        limits = prompt_limits(prompts, config)
        run = PreparedRun(list(prompts), config, phase, limits, payload=[])
        if not prompts:
            return run
        encoded = encode_prompts(self._tokenizer, prompts)
        run.payload = build_batches(
            encoded,
            limits,
            self._decoding_kwargs(config),
            pad_id=self._tokenizer.pad_token_id,
            batch_size=batch_size(config),
            dynamic=batching_strategy(config) == "dynamic",
            ignore_eos=config.decoder.ignore_eos,
            device=self._device,
        )
        return run

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """One ``model.generate`` per prepared batch; per batch: its start on two clocks, its
        generated ids copied to the host (the copy waits for the batch), its end."""
        model, _ = self._require_loaded()
        import torch

        sampling = prepared.config.decoder.decoding_strategy == "sampling"
        seed = prepared.config.random_seed
        runs: list[BatchRun] = []
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
            runs.append(BatchRun(batch, start, t0, perf_counter(), gen))
            if on_batch is not None:
                done += len(batch.positions)
                on_batch(done)
        return RawRun(prepared, runs)

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """One record per prompt, in prompt order: counted output tokens (up to and including
        the first EOS, at most the prompt's own limit), latency, TTFT and ITL of its batch."""
        prompts, limits = raw.prepared.prompts, raw.prepared.limits
        records, self._last_outputs = batch_records(prompts, limits, raw.payload, self._eos_ids)
        return records

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
        if not (torch_compile(config) and self._on_cuda()) or self._model is None:
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
