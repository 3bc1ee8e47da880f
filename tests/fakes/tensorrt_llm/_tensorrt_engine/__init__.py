"""Fake ``tensorrt_llm._tensorrt_engine.LLM`` (TensorRT-LLM 1.0 ``_tensorrt_engine/llm.py``).

``LLM(model, tokenizer=None, ..., tensor_parallel_size=1, dtype="auto", **kwargs)``;
``save(engine_dir)`` copies the built engine (here: writes ``config.json`` + ``rank0.engine``);
``generate(inputs, sampling_params, use_tqdm=True)``; ``tokenizer``; ``shutdown()``.
A request generates ``max_tokens`` tokens with ``ignore_eos``, else ``min(max_tokens, 3)``;
with ``return_perf_metrics`` its ``CompletionOutput.request_perf_metrics.timing_metrics`` has
``arrival_time`` 10.0, ``first_token_time`` 10.08, ``last_token_time`` + 0.02 s per token.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

instances: list[LLM] = []
PERF_METRICS = True


class _Tokenizer:
    eos_token_id = 2

    def encode(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]


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
        self.model = model
        self.tokenizer_arg = tokenizer
        self.kwargs = dict(kwargs, tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.built = not (Path(model) / "config.json").is_file()
        self.tokenizer = _Tokenizer()
        self.saved_to: list[str] = []
        self.shut_down = False
        instances.append(self)

    def save(self, engine_dir: str) -> None:
        if not self.built:
            raise RuntimeError("The engine is not built yet.")
        path = Path(engine_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"version": "1.0.0"}))
        (path / "rank0.engine").write_bytes(b"engine")
        self.saved_to.append(engine_dir)

    def generate(self, inputs: Any, sampling_params: Any = None, use_tqdm: bool = True) -> Any:
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params] * len(prompts)
        )
        self.last_params = params
        outs = []
        for text, sp in zip(prompts, params, strict=True):
            n = sp.max_tokens if sp.ignore_eos else min(sp.max_tokens, 3)
            perf = None
            if sp.return_perf_metrics and PERF_METRICS:
                perf = SimpleNamespace(
                    timing_metrics=SimpleNamespace(
                        arrival_time=10.0,
                        first_scheduled_time=10.001,
                        first_token_time=10.08,
                        last_token_time=10.08 + 0.02 * (n - 1),
                    )
                )
            outs.append(
                SimpleNamespace(
                    prompt=text,
                    prompt_token_ids=self.tokenizer.encode(text),
                    outputs=[
                        SimpleNamespace(
                            index=0, text="x", token_ids=[7] * n, request_perf_metrics=perf
                        )
                    ],
                )
            )
        return outs

    def shutdown(self) -> None:
        self.shut_down = True
