"""The PyTorch engine on CPU, driving the built-in tiny random Llama (saved, then loaded from disk).

One model is loaded per module; each test passes its own ExperimentConfig to ``generate``
(batching and decoding are read from the config given to ``generate``; the model, dtype and
passthrough options from the config given to ``load``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.base import InferenceBackend, LoadInfo, RequestRecord
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.exceptions import BackendError

TEXTS = ["hello there, how are you today?", "a", "the quick brown fox", "x y z"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def make_config(model_dir: str | Path, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": str(model_dir),
        "backend": "pytorch",
        "precision": "fp32",
        "max_new_tokens": 6,
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def prompts(*limits: int | None, texts: list[str] = TEXTS) -> list[Prompt]:
    return [
        Prompt(texts[i % len(texts)], max_new_tokens=limit, index=i)
        for i, limit in enumerate(limits)
    ]


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[PyTorchBackend]:
    engine = PyTorchBackend()
    engine.load(make_config(model_dir))
    yield engine
    engine.unload()


def bare_greedy(engine: PyTorchBackend, text: str, n: int) -> list[int]:
    """Greedy continuation by a plain ``model.generate`` call, forced to ``n`` tokens."""
    enc = engine.tokenizer([text], return_tensors="pt")
    model = engine._model
    out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return [int(t) for t in out[0, enc["input_ids"].shape[1] :]]


# ─── Contract ────────────────────────────────────────────────────────────────


def test_engine_satisfies_the_inference_backend_protocol() -> None:
    assert isinstance(PyTorchBackend(), InferenceBackend)
    assert PyTorchBackend.name == "pytorch"


def test_importing_the_engine_modules_does_not_import_torch_or_transformers() -> None:
    code = (
        "import importlib, pkgutil, sys, llenergymeasure.engines.base\n"
        "import llenergymeasure.engines.pytorch as package\n"
        "for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_load_reports_time_parameters_dtype_and_device(model_dir: Path) -> None:
    engine = PyTorchBackend()
    info = engine.load(make_config(model_dir))
    assert isinstance(info, LoadInfo)
    assert info.load_time_s > 0
    assert info.parameter_count > 0
    assert info.model_dtype == "float32"
    assert info.device == "cpu"
    assert engine.peak_memory_bytes() is None  # no GPU memory counter on CPU
    engine.synchronize()  # no-op on CPU
    engine.reset_peak_memory()
    assert engine.tokenizer.padding_side == "left"
    assert engine.tokenizer.pad_token_id is not None
    engine.unload()
    with pytest.raises(BackendError):
        engine.generate(prompts(None), make_config(model_dir))


# ─── Records and token accounting ───────────────────────────────────────────


def test_batch_of_unequal_prompts_gives_one_record_per_prompt_in_order(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    config = make_config(model_dir, pytorch={"batch_size": 3}, decoder={"ignore_eos": True})
    records = backend.generate(prompts(None, None, None, None), config)

    assert [r.index for r in records] == [0, 1, 2, 3]
    assert all(isinstance(r, RequestRecord) for r in records)
    assert [r.batch_index for r in records] == [0, 0, 0, 1]
    expected_inputs = [len(backend.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert [r.input_tokens for r in records] == expected_inputs  # padding not counted
    assert [r.output_tokens for r in records] == [6, 6, 6, 6]


def test_execute_reports_the_prompts_done_after_each_batch(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    config = make_config(model_dir, pytorch={"batch_size": 3}, decoder={"ignore_eos": True})
    heard: list[int] = []
    prepared = backend.prepare(prompts(None, None, None, None), config)
    backend.execute(prepared, on_batch=heard.append)
    assert heard == [3, 4]


def test_ignore_eos_forces_exactly_max_new_tokens_even_when_eos_is_generated(
    model_dir: Path, backend: PyTorchBackend
) -> None:
    # Make the 3rd greedily generated token of prompt 0 the EOS token.
    continuation = bare_greedy(backend, TEXTS[0], 8)
    k = 2
    while continuation[k] in continuation[:k]:
        k += 1
    eos = continuation[k]

    engine = PyTorchBackend()
    engine.load(make_config(model_dir, passthrough_kwargs={"eos_token_id": eos}))

    stopped = engine.generate(prompts(8), make_config(model_dir))
    assert stopped[0].output_tokens == k + 1  # up to and including EOS
    assert engine.last_output_token_ids()[0] == continuation[: k + 1]

    forced = engine.generate(prompts(8), make_config(model_dir, decoder={"ignore_eos": True}))
    assert forced[0].output_tokens == 8
    engine.unload()


def test_a_request_that_hits_eos_in_a_batch_counts_no_padding(
    model_dir: Path, backend: PyTorchBackend
) -> None:
    continuation = bare_greedy(backend, TEXTS[0], 8)
    k = 1
    while continuation[k] in continuation[:k]:
        k += 1
    engine = PyTorchBackend()
    engine.load(make_config(model_dir, passthrough_kwargs={"eos_token_id": continuation[k]}))
    records = engine.generate(prompts(8, 8, 8), make_config(model_dir, pytorch={"batch_size": 3}))
    assert records[0].output_tokens == k + 1
    assert len(records[0].itl_s) == k
    for record, ids in zip(records, engine.last_output_token_ids(), strict=True):
        assert len(ids) == record.output_tokens
        assert continuation[k] not in ids[:-1]  # nothing counted after the first EOS
    engine.unload()


def test_per_prompt_max_new_tokens_overrides_the_config_within_one_batch(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    # The batch generates up to its largest limit; each request is counted up to its own.
    config = make_config(
        model_dir, max_new_tokens=6, pytorch={"batch_size": 3}, decoder={"ignore_eos": True}
    )
    records = backend.generate(prompts(3, None, 9), config)
    assert [r.output_tokens for r in records] == [3, 6, 9]
    assert [len(r.itl_s) for r in records] == [2, 5, 8]


def test_timing_ttft_within_latency_and_one_itl_per_token_gap(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    config = make_config(model_dir, pytorch={"batch_size": 2}, decoder={"ignore_eos": True})
    records = backend.generate(prompts(None, 4, None), config)
    for r in records:
        assert r.ttft_s is not None
        assert 0 < r.ttft_s <= r.latency_s
        assert len(r.itl_s) == r.output_tokens - 1
        assert all(gap >= 0 for gap in r.itl_s)
        assert r.ttft_s + sum(r.itl_s) <= r.latency_s
    # requests of one batch share its start, first token and completion
    assert records[0].ttft_s == records[1].ttft_s
    assert records[0].latency_s == records[1].latency_s
    # and its start on the sampler's clock (time.monotonic), the anchor of every token time
    assert records[0].start_s is not None and records[0].start_s == records[1].start_s
    assert records[0].start_s <= time.monotonic()
    assert records[2].start_s is not None and records[2].start_s >= records[0].start_s


def test_dynamic_batching_groups_by_length_but_returns_prompt_order(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    texts = ["a much longer prompt than the others", "b", "medium text", "c"]
    config = make_config(
        model_dir,
        pytorch={"batch_size": 2, "batching_strategy": "dynamic"},
        decoder={"ignore_eos": True},
    )
    records = backend.generate(prompts(None, None, None, None, texts=texts), config)
    assert [r.index for r in records] == [0, 1, 2, 3]
    # the two shortest prompts (1 and 3) share the first batch
    assert [r.batch_index for r in records] == [1, 0, 1, 0]


# ─── Decoding ────────────────────────────────────────────────────────────────


def test_greedy_decoding_is_deterministic_and_matches_plain_generate(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    config = make_config(model_dir, decoder={"ignore_eos": True})
    backend.generate(prompts(None), config)
    first = backend.last_output_token_ids()
    backend.generate(prompts(None), config)
    assert backend.last_output_token_ids() == first
    assert first[0] == bare_greedy(backend, TEXTS[0], 6)


def test_sampling_is_reproducible_with_a_seed_and_changes_with_another(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    def sample(seed: int) -> list[list[int]]:
        config = make_config(
            model_dir,
            max_new_tokens=12,
            random_seed=seed,
            decoder={"decoding_strategy": "sampling", "temperature": 1.5, "ignore_eos": True},
        )
        backend.generate(prompts(None, None), config)
        return backend.last_output_token_ids()

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_beam_search_counts_tokens_but_cannot_time_them(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    # transformers does not stream beam search, so there is no per-token timing
    config = make_config(
        model_dir, decoder={"decoding_strategy": "beam", "num_beams": 2, "ignore_eos": True}
    )
    records = backend.generate(prompts(None, 4), config)
    assert [r.output_tokens for r in records] == [6, 4]
    assert all(r.ttft_s is None and r.itl_s == [] and r.latency_s > 0 for r in records)


def test_speculative_decoding_times_every_accepted_token(model_dir: Path) -> None:
    config = make_config(
        model_dir,
        decoder={"speculative_decoding": True, "draft_model": str(model_dir), "ignore_eos": True},
    )
    engine = PyTorchBackend()
    assert engine.preflight(config) == []
    engine.load(config)
    records = engine.generate(prompts(None), config)
    assert records[0].output_tokens == 6
    assert len(records[0].itl_s) == 5
    assert engine.effective_parameters(config)["draft_model"] == str(model_dir)
    engine.unload()


# ─── Effective parameters ───────────────────────────────────────────────────


def test_effective_parameters_resolve_every_none_to_the_engine_default(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    params = backend.effective_parameters(make_config(model_dir))
    assert params["batch_size"] == 1
    assert params["batching_strategy"] == "static"
    assert params["torch_compile"] is False
    assert params["attn_implementation"] in {"sdpa", "eager"}
    assert params["num_processes"] == 1
    assert params["load_in_4bit"] is False and params["load_in_8bit"] is False
    assert params["dtype"] == "float32"
    assert params["device"] == "cpu"
    assert params["decoding_strategy"] == "greedy"
    assert params["do_sample"] is False and params["num_beams"] == 1
    assert params["max_new_tokens"] == 6
    assert params["ignore_eos"] is False
    assert params["padding_side"] == "left"
    assert params["cache_implementation"] == "dynamic"
    assert None not in (params["pad_token_id"], params["eos_token_id"])


def test_effective_parameters_of_sampling_resolve_top_k_none_to_no_filtering(
    model_dir: Path,
) -> None:
    engine = PyTorchBackend()
    config = make_config(
        model_dir,
        pytorch={"batch_size": 4, "batching_strategy": "dynamic"},
        decoder={"decoding_strategy": "sampling", "temperature": 0.7, "top_p": 0.9},
    )
    engine.load(config)
    params = engine.effective_parameters(config)
    assert params["batch_size"] == 4 and params["batching_strategy"] == "dynamic"
    assert params["do_sample"] is True
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.7, 0.9, 0)
    assert params["random_seed"] == 42
    engine.unload()


def test_effective_parameters_before_load_is_an_error() -> None:
    with pytest.raises(BackendError):
        PyTorchBackend().effective_parameters(make_config("builtin:tiny"))


# ─── Pre-flight ──────────────────────────────────────────────────────────────


def test_preflight_passes_a_valid_config_without_loading_the_model(model_dir: Path) -> None:
    engine = PyTorchBackend()
    assert engine.preflight(make_config(model_dir)) == []
    assert engine.tokenizer is None  # nothing was loaded


def test_preflight_rejects_unknown_and_conflicting_passthrough_keys(model_dir: Path) -> None:
    config = make_config(
        model_dir,
        passthrough_kwargs={
            "no_such_option": 1,
            "temperature": 0.3,
            "num_return_sequences": 2,
            "no_repeat_ngram_size": 3,  # a GenerationConfig field: fine
            "revision": "main",  # a from_pretrained option: fine
        },
    )
    problems = PyTorchBackend().preflight(config)
    assert len(problems) == 3
    assert any("no_such_option" in p for p in problems)
    assert any("temperature" in p and "decoder.temperature" in p for p in problems)
    assert any("num_return_sequences" in p for p in problems)


def test_load_refuses_passthrough_problems(model_dir: Path) -> None:
    with pytest.raises(BackendError, match="no_such_option"):
        PyTorchBackend().load(make_config(model_dir, passthrough_kwargs={"no_such_option": 1}))


def test_preflight_reports_unresolvable_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = PyTorchBackend()
    missing = engine.preflight(make_config(tmp_path / "nope"))
    assert len(missing) == 1 and "does not exist" in missing[0]

    assert "unknown built-in" in engine.preflight(make_config("builtin:nope"))[0]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = engine.preflight(make_config("llem-test-org/not-a-cached-model"))
    assert len(offline) == 1 and "HF_HUB_OFFLINE" in offline[0]


def test_preflight_reports_unsupported_pytorch_options(model_dir: Path) -> None:
    config = make_config(model_dir, pytorch={"num_processes": 2})
    problems = PyTorchBackend().preflight(config)
    assert any("num_processes" in p for p in problems)


def test_speculative_decoding_above_batch_one_is_a_config_error_not_a_preflight_one(
    model_dir: Path,
) -> None:
    with pytest.raises(ValidationError, match=r"speculative_decoding.*batch_size=1"):
        make_config(
            model_dir,
            pytorch={"batch_size": 2},
            decoder={"speculative_decoding": True, "draft_model": str(model_dir)},
        )


def test_unloadable_model_becomes_a_backend_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # a folder that is no model
    with pytest.raises(BackendError, match=str(tmp_path)) as info:
        PyTorchBackend().load(make_config(tmp_path))
    assert info.value.hint is not None and "HF_HUB_OFFLINE" in info.value.hint


def test_clear_run_state_says_generate_keeps_no_cross_call_cache(model_dir: Path) -> None:
    engine = PyTorchBackend()
    engine.load(make_config(model_dir))
    notes = engine.clear_run_state()
    assert any("no cross-call KV cache" in n for n in notes)
    engine.unload()


def test_max_sequence_length_is_the_loaded_model_position_limit():
    from types import SimpleNamespace

    engine = PyTorchBackend()
    assert engine.max_sequence_length() is None  # nothing loaded
    engine._model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048))
    assert engine.max_sequence_length() == 2048
    engine._model = SimpleNamespace(config=SimpleNamespace(n_positions=1024))
    assert engine.max_sequence_length() == 1024


# ─── Nothing inside the window but generate and its clocks ─────────────────────


class _CountingTokenizer:
    """The loaded tokenizer behind a proxy that counts every call made through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._inner(*args, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._inner.encode(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_prompts_are_tokenised_padded_and_on_the_device_before_execute_and_records_after(
    backend: PyTorchBackend, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from llenergymeasure.engines.pytorch import batching

    config = make_config(model_dir, pytorch={"batch_size": 3}, decoder={"ignore_eos": True})
    tokenizer = _CountingTokenizer(backend.tokenizer)
    monkeypatch.setattr(backend, "_tokenizer", tokenizer)
    built: list[Any] = []
    real = batching.RequestRecord
    monkeypatch.setattr(batching, "RequestRecord", lambda **kw: built.append(kw) or real(**kw))

    prepared = backend.prepare(prompts(None, None, None, None), config)
    assert tokenizer.calls == 1  # every prompt at once, before the window
    for batch in prepared.payload:  # padded, with a mask, on the engine's device
        assert isinstance(batch.input_ids, torch.Tensor)
        assert batch.input_ids.device == backend._device
        assert batch.input_ids.shape == batch.attention_mask.shape
    raw = backend.execute(prepared)
    assert tokenizer.calls == 1 and built == []  # nothing tokenised, no record in the window
    records = backend.records(raw)
    assert len(built) == len(records) == 4
    assert [r.output_tokens for r in records] == [6, 6, 6, 6]


def test_the_step_timer_does_nothing_per_step_but_read_the_clock() -> None:
    from llenergymeasure.engines.pytorch.batching import StepTimer

    timer = StepTimer()
    opaque = object()  # no .dim(), no .shape: put() must not look at the step's tokens
    for _ in range(3):
        timer.put(opaque)
    assert len(timer.times) == 2 and timer.values == [opaque, opaque]  # the prompt call skipped


def test_effective_parameters_come_from_the_config_passed_not_from_preflight(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    # a reused engine: loaded for one config, pre-flighted for another, asked about a third
    other = make_config(model_dir, max_new_tokens=99, pytorch={"batch_size": 7})
    assert backend.preflight(other) == []
    params = backend.effective_parameters(make_config(model_dir))
    assert (params["batch_size"], params["max_new_tokens"]) == (1, 6)
    bigger = backend.effective_parameters(make_config(model_dir, pytorch={"batch_size": 4}))
    assert bigger["batch_size"] == 4
