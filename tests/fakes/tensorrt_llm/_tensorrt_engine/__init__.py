"""Fake ``tensorrt_llm._tensorrt_engine.LLM`` (TensorRT-LLM 1.2: ``llmapi.llm._TrtLLM``).

What it follows from the real class:

- ``LLM(model, tokenizer=None, tokenizer_mode="auto", skip_tokenizer_init=False,
  trust_remote_code=False, tensor_parallel_size=1, dtype="auto", revision=None,
  tokenizer_revision=None, **kwargs)``; a keyword that is not a ``TrtLlmArgs`` field is a
  ``ValueError`` ("LLM got invalid argument: ...").
- ``save(engine_dir)`` copies the built engine (here: writes ``config.json`` +
  ``rank0.engine``) and raises ``RuntimeError`` when no engine was built (an engine folder was
  loaded); ``tokenizer``; ``shutdown()``.
- ``generate(inputs, sampling_params=None, use_tqdm=True, ...)`` -> list of ``RequestOutput``.
- ``generate_async(inputs, sampling_params=None, lora_request=None,
  prompt_adapter_request=None, streaming=False, ...)`` -> ``RequestOutput``: awaitable, and an
  async iterator yielding the request so far after each response. As in the real result, async
  iteration needs the request to have been submitted inside a running event loop.

Deterministic behaviour: a request generates ``max_tokens`` tokens with ``ignore_eos``, else
``min(max_tokens, 3)``. Streaming answers the first token after ``PREFILL_S`` and then
``TOKENS_PER_RESPONSE`` tokens per response, ``DECODE_S`` per token, advancing the fake clock
``NOW`` (tests read it through ``clock()``); ``TRIM_ON_FINISH`` drops that many tokens from
the final response (the real result trims a stop string that is not to be included).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

instances: list[LLM] = []
PREFILL_S = 0.08
DECODE_S = 0.02
TOKENS_PER_RESPONSE = 1
#: Tokens dropped from the final response, as a stop string left out of the output is.
TRIM_ON_FINISH = 0
NOW = [10.0]
#: Requests submitted and not finished, and the most seen at once.
in_flight = [0, 0]

#: ``TrtLlmArgs`` fields (1.2) the fake accepts besides the named parameters.
TRT_LLM_ARGS = frozenset(
    {
        "pipeline_parallel_size",
        "context_parallel_size",
        "gpus_per_node",
        "build_config",
        "quant_config",
        "calib_config",
        "kv_cache_config",
        "enable_chunked_prefill",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "max_input_len",
        "max_beam_width",
        "return_perf_metrics",
        "enable_build_cache",
        "workspace",
        "fast_build",
        "scheduler_config",
        "backend",
    }
)


def clock() -> float:
    return NOW[0]


def reset() -> None:
    instances.clear()
    NOW[0] = 10.0
    in_flight[:] = [0, 0]


class _Tokenizer:
    eos_token_id = 2

    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    request_perf_metrics: Any = None

    @property
    def length(self) -> int:
        return len(self.token_ids)


class RequestOutput:
    """One request's result: the outputs so far, filled response by response."""

    def __init__(self, prompt: str, prompt_token_ids: list[int], n_tokens: int, streaming: bool):
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(index=0)]
        self.finished = False
        self._n_tokens = n_tokens
        self._streaming = streaming
        try:
            asyncio.get_running_loop()
            self._has_loop = True
        except RuntimeError:
            self._has_loop = False
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])

    def _step(self) -> None:
        out = self.outputs[0]
        first = not out.token_ids
        new = 1 if first else TOKENS_PER_RESPONSE
        new = min(new, self._n_tokens - len(out.token_ids))
        NOW[0] += PREFILL_S if first else DECODE_S * new
        out.token_ids.extend([7] * new)
        out.text = "x" * len(out.token_ids)
        if len(out.token_ids) >= self._n_tokens:
            self.finished = True
            out.finish_reason = "length"
            in_flight[0] -= 1
            if TRIM_ON_FINISH:
                del out.token_ids[-TRIM_ON_FINISH:]
                out.finish_reason = "stop"

    def result(self, timeout: float | None = None) -> RequestOutput:
        while not self.finished:
            self._step()
        return self

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        assert self._has_loop, "The asyncio event loop was not present during initialization"
        await asyncio.sleep(0)  # other requests' responses interleave, as in the engine
        if self._streaming:
            self._step()
        else:
            self.result()
        return self

    def __await__(self) -> Iterator[Any]:
        async def done() -> RequestOutput:
            return self.result()

        return done().__await__()


class LLM:
    def __init__(
        self,
        model: str,
        tokenizer: Any = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        for key in kwargs:
            if key not in TRT_LLM_ARGS:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.model = model
        self.tokenizer_arg = tokenizer
        self.kwargs = dict(kwargs, tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.built = not (Path(model) / "config.json").is_file()
        self.tokenizer = _Tokenizer()
        self.saved_to: list[str] = []
        self.submitted: list[tuple[str, Any, bool]] = []
        self.shut_down = False
        instances.append(self)

    def save(self, engine_dir: str) -> None:
        if not self.built:
            raise RuntimeError("The engine is not built yet.")
        path = Path(engine_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"version": "1.2.1"}))
        (path / "rank0.engine").write_bytes(b"engine")
        self.saved_to.append(engine_dir)

    def generate_async(
        self,
        inputs: Any,
        sampling_params: Any = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        if self.shut_down:
            raise RuntimeError("LLM is shutting down")
        from tensorrt_llm import SamplingParams

        sp = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(inputs, str):
            raise TypeError("the fake takes text prompts only")
        self.submitted.append((inputs, sp, streaming))
        n = sp.max_tokens if sp.ignore_eos else min(sp.max_tokens, 3)
        return RequestOutput(inputs, self.tokenizer.encode(inputs), n, streaming)

    def generate(
        self,
        inputs: Any,
        sampling_params: Any = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
    ) -> Any:
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params] * len(prompts)
        )
        futures = [
            self.generate_async(p, sampling_params=sp, streaming=False)
            for p, sp in zip(prompts, params, strict=True)
        ]
        for f in futures:
            f.result()
        return futures[0] if isinstance(inputs, str) else futures

    def shutdown(self) -> None:
        self.shut_down = True
