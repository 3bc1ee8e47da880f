"""Fake ``vllm`` (public offline API of vLLM 0.11.x) for llem's tests.

Follows ``vllm/entrypoints/llm.py``: ``LLM(model, *, tensor_parallel_size=1, dtype="auto",
quantization=None, seed=None, gpu_memory_utilization=0.9, **kwargs)`` where unknown kwargs are
rejected by ``EngineArgs`` (TypeError); ``LLM.generate(prompts, sampling_params=None, *,
use_tqdm=True, lora_request=None) -> list[RequestOutput]``; ``LLM.beam_search(prompts, params,
lora_request=None) -> list[BeamSearchOutput]``; ``LLM.get_tokenizer()``;
``LLM.llm_engine.vllm_config`` with ``scheduler_config``/``parallel_config``/``cache_config``/
``model_config``/``lora_config``.

Deterministic behaviour: a prompt's tokens are its words (id = word length); a request
generates ``max_tokens`` tokens when ``ignore_eos`` else ``min(max_tokens, NATURAL_LEN)``.
``METRICS`` selects what ``RequestOutput.metrics`` holds: "v1" (``RequestStateStats``), "v0"
(``RequestMetrics``) or None (V1 with stats off).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from vllm.beam_search import BeamSearchOutput, BeamSearchSequence
from vllm.outputs import CompletionOutput, RequestMetrics, RequestOutput, RequestStateStats
from vllm.sampling_params import BeamSearchParams, SamplingParams

__version__ = "0.11.0"
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
        self.llm_engine = SimpleNamespace(
            vllm_config=_EngineConfig(
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
            ),
            engine_core=SimpleNamespace(shutdown=self._shutdown),
        )
        instances.append(self)

    def _shutdown(self) -> None:
        self.shut_down = True

    def reset_prefix_cache(
        self, reset_running_requests: bool = False, reset_connector: bool = False
    ) -> bool:
        """vLLM 0.26: True when the prefix cache was emptied (no running request held blocks)."""
        self.calls.append({"method": "reset_prefix_cache"})
        return True

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
