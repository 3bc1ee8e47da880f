"""Fake ``vllm`` (public offline API of vLLM 0.26) for llem's tests.

Follows ``vllm/entrypoints/llm.py``: ``LLM(model, *, tensor_parallel_size=1, dtype="auto",
quantization=None, seed=None, gpu_memory_utilization=0.9, **kwargs)`` where unknown kwargs are
rejected by ``EngineArgs`` (TypeError); ``LLM.generate(prompts, sampling_params=None, *,
use_tqdm=True, lora_request=None) -> list[RequestOutput]``; ``LLM.beam_search(prompts, params,
lora_request=None) -> list[BeamSearchOutput]``; ``LLM.get_tokenizer()``;
``LLM.llm_engine.vllm_config`` with ``scheduler_config``/``parallel_config``/``cache_config``/
``model_config``/``lora_config``; ``LLM.reset_prefix_cache() -> bool``;
``LLM.collective_rpc(method, timeout=None, args=(), kwargs=None)`` (workers report
``compilation_config.compilation_time`` = ``WORKER_COMPILE_S``); ``LLM.get_metrics()``
(``vllm.v1.metrics.reader`` ``Counter(name, labels, value)``: ``vllm:prefix_cache_queries`` and
``vllm:prefix_cache_hits``); ``LLM._preprocess_cmpl(prompts)`` (renders prompts for the
engine); and the V1 ``LLMEngine`` loop that ``LLM.generate`` runs: ``llm_engine.add_request(
request_id, prompt, params, arrival_time=None, lora_request=None, ..., priority=0) -> str``,
``has_unfinished_requests()``, ``step() -> list[RequestOutput]`` honouring
``SamplingParams.output_kind`` (CUMULATIVE / DELTA / FINAL_ONLY). As in vLLM 0.26, ``step()``
takes one iteration's ``EngineCoreOutputs`` from ``llm_engine.engine_core.get_output()``
(``outputs``: one ``EngineCoreOutput(request_id, new_token_ids, finish_reason)`` per request
that produced a token, under the engine-internal id that ``add_request`` returns; ``timestamp``:
``time.monotonic()`` when the iteration's outputs were built) and turns it into RequestOutputs.

Engine loop: up to ``max_num_seqs`` requests run at once (first come, first served); every
``step`` gives each running request one token and sleeps ``STEP_SLEEP_S``. A prompt seen before
(since the last ``reset_prefix_cache``) counts all its tokens as prefix-cache hits.
``STEPPABLE = False`` gives an ``llm_engine`` without the loop methods (older vLLM).

Deterministic behaviour: a prompt's tokens are its words (id = word length); a request
generates ``max_tokens`` tokens when ``ignore_eos`` else ``min(max_tokens, NATURAL_LEN)``.
``METRICS`` selects what ``RequestOutput.metrics`` holds: "v1" (``RequestStateStats``), "v0"
(``RequestMetrics``) or None (V1 with stats off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from vllm.beam_search import BeamSearchOutput, BeamSearchSequence
from vllm.outputs import CompletionOutput, RequestMetrics, RequestOutput, RequestStateStats
from vllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

__version__ = "0.26.0"
__all__ = ["LLM", "SamplingParams"]

NATURAL_LEN = 3
#: Every LLM created (tests reset it).
instances: list[LLM] = []
METRICS: str | None = "v1"
#: max_num_seqs the fake engine resolves None to (vLLM V1 raises it on large GPUs).
ENGINE_MAX_NUM_SEQS = 1024

# Timestamps of the fake metrics (seconds).
TTFT = 0.05
STEP = 0.01
#: Wall time one engine step takes (the step loop's per-token timestamps see it).
STEP_SLEEP_S = 0.0
#: False: ``llm_engine`` has no add_request/step loop.
STEPPABLE = True
# what the workers report to LLM.collective_rpc: torch.compile seconds, or an error to raise
WORKER_COMPILE_S = 0.0
WORKER_RPC_ERROR: Exception | None = None

_ENGINE_ARGS = {
    "tokenizer",
    "tokenizer_mode",
    "skip_tokenizer_init",
    "trust_remote_code",
    "tensor_parallel_size",
    "dtype",
    "quantization",
    "revision",
    "tokenizer_revision",
    "seed",
    "gpu_memory_utilization",
    "swap_space",
    "cpu_offload_gb",
    "enforce_eager",
    "disable_log_stats",
    "max_num_seqs",
    "enable_prefix_caching",
    "block_size",
    "enable_lora",
    "max_lora_rank",
    "max_loras",
    "speculative_config",
    "max_model_len",
    "kv_cache_dtype",
    "compilation_config",
    "hf_token",
    "download_dir",
    "load_format",
}


class FakeTokenizer:
    eos_token_id = 2

    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


@dataclass
class _EngineConfig:
    scheduler_config: Any
    parallel_config: Any
    cache_config: Any
    model_config: Any
    lora_config: Any


class LLM:
    """Records its engine arguments and every call; generates deterministically."""

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        seed: int | None = None,
        gpu_memory_utilization: float = 0.9,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _ENGINE_ARGS)
        if unknown:
            raise TypeError(
                f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}"
            )
        self.model = model
        self.kwargs = dict(
            kwargs,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            quantization=quantization,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.calls: list[dict[str, Any]] = []
        self.shut_down = False
        lora = (
            SimpleNamespace(max_lora_rank=kwargs.get("max_lora_rank", 16))
            if kwargs.get("enable_lora")
            else None
        )
        vllm_config = _EngineConfig(
            scheduler_config=SimpleNamespace(
                max_num_seqs=kwargs.get("max_num_seqs") or ENGINE_MAX_NUM_SEQS
            ),
            parallel_config=SimpleNamespace(tensor_parallel_size=tensor_parallel_size),
            cache_config=SimpleNamespace(
                gpu_memory_utilization=gpu_memory_utilization,
                enable_prefix_caching=kwargs.get("enable_prefix_caching", True),
                block_size=kwargs.get("block_size") or 16,
            ),
            model_config=SimpleNamespace(
                dtype="torch.bfloat16" if dtype == "auto" else f"torch.{dtype}",
                quantization=quantization,
            ),
            lora_config=lora,
        )
        core = SimpleNamespace(shutdown=self._shutdown)
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self._cached_prompts: set[tuple[int, ...]] = set()
        self.llm_engine: Any = (
            _LLMEngine(self, vllm_config, core)
            if STEPPABLE
            else SimpleNamespace(vllm_config=vllm_config, engine_core=core)
        )
        instances.append(self)

    def reset_prefix_cache(
        self, reset_running_requests: bool = False, reset_connector: bool = False
    ) -> bool:
        """vLLM 0.26: True when the prefix cache was emptied (no running request held blocks)."""
        self.calls.append({"method": "reset_prefix_cache"})
        self._cached_prompts.clear()
        return True

    def collective_rpc(
        self,
        method: Any,
        timeout: float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """vLLM 0.26: run ``method`` (a worker method's name, or a callable given the worker)
        on every worker (``tensor_parallel_size`` of them); their results in order."""
        self.calls.append({"method": "collective_rpc", "timeout": timeout})
        if WORKER_RPC_ERROR is not None:
            raise WORKER_RPC_ERROR
        workers = [
            SimpleNamespace(compilation_config=SimpleNamespace(compilation_time=WORKER_COMPILE_S))
            for _ in range(self.llm_engine.vllm_config.parallel_config.tensor_parallel_size)
        ]
        call = method if callable(method) else (lambda w, *a, **k: getattr(w, method)(*a, **k))
        return [call(w, *args, **(kwargs or {})) for w in workers]

    def get_metrics(self) -> list[Counter]:
        return [
            Counter("vllm:prefix_cache_queries", {"engine": "0"}, self.prefix_cache_queries),
            Counter("vllm:prefix_cache_hits", {"engine": "0"}, self.prefix_cache_hits),
            Counter("vllm:num_preemptions", {"engine": "0"}, 0),
        ]

    def _count_prefix(self, token_ids: list[int]) -> None:
        key = tuple(token_ids)
        self.prefix_cache_queries += len(token_ids)
        if key in self._cached_prompts:
            self.prefix_cache_hits += len(token_ids)
        self._cached_prompts.add(key)

    def _preprocess_cmpl(
        self,
        prompts: list[Any],
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        tok = FakeTokenizer()
        return [{"type": "token", "prompt": p, "prompt_token_ids": tok.encode(p)} for p in prompts]

    def _shutdown(self) -> None:
        self.shut_down = True

    def get_tokenizer(self, lora_request: Any = None) -> FakeTokenizer:
        return FakeTokenizer()

    @staticmethod
    def _n_out(max_tokens: int, ignore_eos: bool) -> int:
        return max_tokens if ignore_eos else min(max_tokens, NATURAL_LEN)

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
    ) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        if isinstance(lora_request, list) and len(lora_request) != len(prompts):
            raise ValueError("Lora request list should be the same length as the prompts")
        self.calls.append(
            {"method": "generate", "prompts": prompts, "params": params, "lora": lora_request}
        )
        tok = FakeTokenizer()
        outs = []
        for text in prompts:
            self._count_prefix(tok.encode(text))
        for i, (text, sp) in enumerate(zip(prompts, params, strict=True)):
            n = self._n_out(sp.max_tokens or 16, sp.ignore_eos)
            first = 10.0 + TTFT
            last = first + STEP * (n - 1)
            if METRICS == "v1":
                metrics: Any = RequestStateStats(
                    num_generation_tokens=n,
                    arrival_time=1_700_000_000.0,
                    queued_ts=10.0,
                    scheduled_ts=10.001,
                    first_token_ts=first,
                    last_token_ts=last,
                    first_token_latency=TTFT,
                )
            elif METRICS == "v0":
                metrics = RequestMetrics(
                    arrival_time=10.0,
                    last_token_time=last,
                    first_scheduled_time=10.001,
                    first_token_time=first,
                    time_in_queue=0.001,
                    finished_time=last,
                )
            else:
                metrics = None
            outs.append(
                RequestOutput(
                    request_id=str(i),
                    prompt=text,
                    prompt_token_ids=tok.encode(text),
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            index=0,
                            text="x" * n,
                            token_ids=[7] * n,
                            cumulative_logprob=None,
                            logprobs=None,
                        )
                    ],
                    finished=True,
                    metrics=metrics,
                    lora_request=lora_request[i]
                    if isinstance(lora_request, list)
                    else lora_request,
                )
            )
        return outs

    def beam_search(
        self,
        prompts: list[Any],
        params: BeamSearchParams,
        lora_request: Any = None,
    ) -> list[BeamSearchOutput]:
        self.calls.append(
            {"method": "beam_search", "prompts": prompts, "params": params, "lora": lora_request}
        )
        outs = []
        for prompt in prompts:
            ids = (
                list(prompt["prompt_token_ids"])
                if "prompt_token_ids" in prompt
                else (FakeTokenizer().encode(prompt["prompt"]))
            )
            n = self._n_out(params.max_tokens, params.ignore_eos)
            seqs = [
                BeamSearchSequence(tokens=ids + [7] * n, logprobs=[], cum_logprob=-1.0 * b)
                for b in range(params.beam_width)
            ]
            outs.append(BeamSearchOutput(sequences=seqs))
        return outs


@dataclass
class Counter:
    """``vllm.v1.metrics.reader.Counter``."""

    name: str
    labels: dict[str, str]
    value: int


@dataclass
class EngineCoreOutput:
    """``vllm.v1.engine.EngineCoreOutput`` (the fields llem reads)."""

    request_id: str  # the engine-internal id
    new_token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class EngineCoreOutputs:
    """``vllm.v1.engine.EngineCoreOutputs``: one engine-core iteration's outputs."""

    outputs: list[EngineCoreOutput] = field(default_factory=list)
    timestamp: float = 0.0


class _EngineCoreClient:
    """``llm_engine.engine_core``: ``get_output()`` runs one iteration of the engine loop."""

    def __init__(self, shutdown: Any, iterate: Any) -> None:
        self.shutdown = shutdown
        self._iterate = iterate

    def get_output(self) -> EngineCoreOutputs:
        return self._iterate()


@dataclass
class _Request:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    params: SamplingParams
    n_out: int
    produced: int = 0
    sent: int = 0
    arrival: float = field(default_factory=time.monotonic)
    first_ts: float = 0.0
    last_ts: float = 0.0
    internal_id: str = ""


class _LLMEngine:
    """The V1 ``LLMEngine`` loop that ``LLM.generate`` drives."""

    def __init__(self, llm: LLM, vllm_config: _EngineConfig, engine_core: Any) -> None:
        self._llm = llm
        self.vllm_config = vllm_config
        self.engine_core = _EngineCoreClient(engine_core.shutdown, self._iterate)
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []
        self._by_internal_id: dict[str, _Request] = {}

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        prompt_text: str | None = None,
    ) -> str:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if isinstance(prompt, dict):
            text, ids = prompt.get("prompt", ""), list(prompt["prompt_token_ids"])
        else:
            text, ids = prompt, FakeTokenizer().encode(prompt)
        if not self.has_unfinished_requests() or self._llm.calls[-1]["method"] != "add_request":
            self._llm.calls.append(
                {"method": "add_request", "prompts": [], "params": [], "lora": None}
            )
        call = self._llm.calls[-1]
        call["prompts"].append(text)
        call["params"].append(params)
        if lora_request is not None:
            call["lora"] = [*(call["lora"] or []), lora_request]
        n_out = LLM._n_out(params.max_tokens or 16, params.ignore_eos)
        # the engine-internal id; RequestOutputs carry the external one
        request = _Request(
            request_id, text, ids, params, n_out, internal_id=f"{request_id}-0a1b2c3d"
        )
        self._waiting.append(request)
        self._llm._count_prefix(ids)
        self._by_internal_id[request.internal_id] = request
        return request.internal_id

    def has_unfinished_requests(self) -> bool:
        return bool(self._waiting or self._running)

    def get_num_unfinished_requests(self) -> int:
        return len(self._waiting) + len(self._running)

    def _iterate(self) -> EngineCoreOutputs:
        """One engine-core iteration: every running request produces one token."""
        limit = self.vllm_config.scheduler_config.max_num_seqs
        while self._waiting and len(self._running) < limit:
            self._running.append(self._waiting.pop(0))
        if STEP_SLEEP_S:
            time.sleep(STEP_SLEEP_S)
        now = time.monotonic()
        core: list[EngineCoreOutput] = []
        for req in list(self._running):
            req.produced += 1
            if req.produced == 1:
                req.first_ts = now
            req.last_ts = now
            finished = req.produced >= req.n_out
            if finished:
                self._running.remove(req)
            core.append(EngineCoreOutput(req.internal_id, [7], "length" if finished else None))
        return EngineCoreOutputs(core, timestamp=now)

    def step(self) -> list[RequestOutput]:
        iteration = self.engine_core.get_output()
        outputs: list[RequestOutput] = []
        for co in iteration.outputs:
            req = self._by_internal_id[co.request_id]
            finished = co.finish_reason is not None
            kind = req.params.output_kind
            if kind == RequestOutputKind.FINAL_ONLY and not finished:
                continue
            if kind == RequestOutputKind.DELTA:
                tokens = [7] * (req.produced - req.sent)
            else:
                tokens = [7] * req.produced
            req.sent = req.produced
            outputs.append(
                RequestOutput(
                    request_id=req.request_id,
                    prompt=req.prompt,
                    prompt_token_ids=req.prompt_token_ids,
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            index=0,
                            text="x" * len(tokens),
                            token_ids=tokens,
                            cumulative_logprob=None,
                            logprobs=None,
                            finish_reason="length" if finished else None,
                        )
                    ],
                    finished=finished,
                    metrics=RequestStateStats(
                        num_generation_tokens=req.produced,
                        arrival_time=req.arrival,
                        first_token_ts=req.first_ts,
                        last_token_ts=req.last_ts,
                        first_token_latency=req.first_ts - req.arrival,
                    )
                    if finished
                    else None,
                )
            )
        return outputs
