"""The TensorRT-LLM engine, specified against a fake ``tensorrt_llm`` (``tests/fakes``).

The fake follows TensorRT-LLM 1.0's public LLM API: ``tensorrt_llm._tensorrt_engine.LLM``
(``save(engine_dir)``, ``generate``, ``tokenizer``, ``shutdown``), ``tensorrt_llm.llmapi``
``BuildConfig`` / ``QuantConfig`` / ``QuantAlgo`` and ``tensorrt_llm.SamplingParams`` with
``return_perf_metrics``. Nothing here ran on real TensorRT-LLM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.factory import create_engine
from llenergymeasure.engines.tensorrt import (
    COMPILE_TIME_FIELDS,
    TensorRTBackend,
    engine_cache_dir,
    engine_cache_key,
)
from llenergymeasure.exceptions import BackendError

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PROMPTS = [Prompt("a bb ccc", index=0), Prompt("dddd", max_new_tokens=4, index=1)]


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake ``tensorrt_llm._tensorrt_engine`` (engine LLM), importable for this test only."""
    _purge("tensorrt_llm")
    monkeypatch.syspath_prepend(str(FAKES))
    import tensorrt_llm._tensorrt_engine as engine_mod

    engine_mod.instances.clear()
    engine_mod.PERF_METRICS = True
    yield engine_mod
    _purge("tensorrt_llm")


def cfg(**kw: Any) -> ExperimentConfig:
    data: dict[str, Any] = {"model": "org/model", "backend": "tensorrt", "precision": "fp16"}
    data.update(kw)
    return ExperimentConfig.model_validate(data)


def test_importing_the_engine_module_imports_neither_tensorrt_llm_nor_torch() -> None:
    code = (
        "import sys, llenergymeasure.engines.tensorrt; "
        "print(sorted(m for m in ('tensorrt_llm', 'torch', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_tensorrt_llm_is_a_preflight_problem_with_the_install_command() -> None:
    assert TensorRTBackend().preflight(cfg()) == [
        'tensorrt engine is not installed: pip install "llenergymeasure[tensorrt]"'
    ]


def test_factory_returns_the_tensorrt_engine_when_installed(trt: ModuleType) -> None:
    engine = create_engine("tensorrt")
    assert isinstance(engine, TensorRTBackend)
    assert engine.version() == "1.0.0"


def test_first_load_builds_with_the_compile_time_fields_and_caches_the_engine(
    trt: ModuleType,
) -> None:
    config = cfg(
        precision="int4",
        tensorrt={"max_batch_size": 16, "max_seq_len": 1024, "tp_size": 2, "pp_size": 1},
    )
    engine = TensorRTBackend()
    info = engine.load(config)
    llm = trt.instances[-1]
    assert llm.model == "org/model"
    bc = llm.kwargs["build_config"]
    assert (bc.max_batch_size, bc.max_seq_len) == (16, 1024)
    assert llm.kwargs["quant_config"].quant_algo.value == "W4A16_AWQ"
    assert (llm.kwargs["dtype"], llm.kwargs["tensor_parallel_size"]) == ("float16", 2)
    assert llm.kwargs["pipeline_parallel_size"] == 1
    key = engine.effective_parameters()["engine_cache_key"]
    target = engine_cache_dir(key)
    assert llm.saved_to and (target / "rank0.engine").is_file()
    build = json.loads((target / "llem-build.json").read_text())
    assert build["compile_time"]["max_batch_size"] == 16
    assert any("built TensorRT engine" in n for n in info.notes)
    assert engine.effective_parameters()["engine_origin"] == "built"

    again = TensorRTBackend()
    again.load(config)
    reuse = trt.instances[-1]
    assert reuse.model == str(target)  # loaded from the cache, not rebuilt
    assert reuse.tokenizer_arg == "org/model"
    assert "build_config" not in reuse.kwargs
    assert again.effective_parameters()["engine_origin"] == "cache"


def test_cache_key_covers_every_compile_time_field_and_nothing_else() -> None:
    base = cfg(tensorrt={"max_batch_size": 8})
    key = engine_cache_key(base, "1.0.0", "H100")
    changed = [
        cfg(model="org/other", tensorrt={"max_batch_size": 8}),
        cfg(precision="int8", tensorrt={"max_batch_size": 8}),
        cfg(tensorrt={"max_batch_size": 16}),
        cfg(tensorrt={"max_batch_size": 8, "max_seq_len": 512}),
        cfg(tensorrt={"max_batch_size": 8, "tp_size": 2}),
        cfg(tensorrt={"max_batch_size": 8, "pp_size": 2}),
        cfg(tensorrt={"max_batch_size": 8, "builder_opt_level": 5}),
    ]
    assert all(engine_cache_key(c, "1.0.0", "H100") != key for c in changed)
    assert engine_cache_key(base, "1.0.1", "H100") != key
    assert engine_cache_key(base, "1.0.0", "A100") != key
    runtime_only = cfg(n=7, max_new_tokens=5, tensorrt={"max_batch_size": 8})
    assert engine_cache_key(runtime_only, "1.0.0", "H100") == key
    # None and the default it resolves to build the same engine
    assert engine_cache_key(cfg(tensorrt={"max_batch_size": 2048}), "v", "g") == engine_cache_key(
        cfg(), "v", "g"
    )
    assert set(COMPILE_TIME_FIELDS) >= {"tensorrt.max_batch_size", "tensorrt.max_seq_len"}


def test_engine_path_is_loaded_without_building(trt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    engine = TensorRTBackend()
    engine.load(cfg(tensorrt={"engine_path": str(tmp_path)}))
    llm = trt.instances[-1]
    assert (llm.model, llm.tokenizer_arg) == (str(tmp_path), "org/model")
    assert "build_config" not in llm.kwargs and llm.saved_to == []
    assert engine.effective_parameters()["engine_origin"] == "engine_path"
    bad = cfg(tensorrt={"engine_path": str(tmp_path / "missing")})
    (problem,) = TensorRTBackend().preflight(bad)
    assert "not a TensorRT-LLM engine folder" in problem


@pytest.mark.parametrize(
    ("precision", "algo"),
    [("int8", "W8A8_SQ_PER_CHANNEL"), ("int4", "W4A16_AWQ"), ("fp8", "FP8"), ("fp16", None)],
)
def test_precision_selects_the_quant_algo(trt: ModuleType, precision: str, algo: str) -> None:
    TensorRTBackend().load(cfg(precision=precision))
    quant = trt.instances[-1].kwargs.get("quant_config")
    assert (quant.quant_algo.value if quant else None) == algo


def test_quantization_must_agree_with_precision(trt: ModuleType) -> None:
    # a static rule: the config model refuses it, so pre-flight never sees it
    with pytest.raises(ValidationError, match="needs precision: int4"):
        cfg(tensorrt={"quantization": "int4_awq"})
    with pytest.raises(ValidationError, match="needs precision: int8"):
        cfg(precision="fp8", tensorrt={"quantization": "int8_sq"})
    ok = cfg(precision="int8", tensorrt={"quantization": "int8_sq"})
    assert TensorRTBackend().preflight(ok) == []


def test_builder_opt_level_without_support_is_a_clear_error(trt: ModuleType) -> None:
    with pytest.raises(BackendError, match="builder_opt_level"):
        TensorRTBackend().load(cfg(tensorrt={"builder_opt_level": 4}))


def test_seed_forbidden_combinations_are_config_errors(trt: ModuleType) -> None:
    # static rules live in the config model only; the engine's pre-flight checks the machine
    with pytest.raises(ValidationError, match="decoding_strategy='beam'"):
        cfg(decoder={"decoding_strategy": "beam"})
    with pytest.raises(ValidationError, match="precision='bf16'"):
        cfg(precision="bf16")
    with pytest.raises(ValidationError, match="speculative_decoding"):
        cfg(decoder={"speculative_decoding": True, "draft_model": "org/draft"})
    with pytest.raises(ValidationError, match="lora"):
        cfg(lora={"adapter_id": "org/adapter"})


def test_sampling_params_and_timings(trt: ModuleType) -> None:
    config = cfg(max_new_tokens=6, decoder={"ignore_eos": True})
    engine = TensorRTBackend()
    engine.load(config)
    records = engine.generate(PROMPTS, config)
    params = trt.instances[-1].last_params
    assert [(p.max_tokens, p.min_tokens, p.ignore_eos, p.top_k) for p in params] == [
        (6, 6, True, 1),  # greedy = top_k 1
        (4, 4, True, 1),
    ]
    assert all(p.return_perf_metrics for p in params)
    rec = records[0]
    assert (rec.input_tokens, rec.output_tokens) == (3, 6)
    assert rec.ttft_s == pytest.approx(0.08)
    assert rec.latency_s == pytest.approx(0.08 + 5 * 0.02)
    assert rec.itl_s == pytest.approx([0.02] * 5)

    sampling = cfg(random_seed=3, decoder={"decoding_strategy": "sampling", "temperature": 0.5})
    engine.generate(PROMPTS[:1], sampling)
    (p,) = trt.instances[-1].last_params
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.5, 1.0, None, 3)


def test_missing_perf_metrics_leave_ttft_empty_and_say_so(trt: ModuleType) -> None:
    trt.PERF_METRICS = False
    engine = TensorRTBackend()
    engine.load(cfg())
    records = engine.generate(PROMPTS, cfg())
    assert [r.ttft_s for r in records] == [None, None]
    assert any("no request_perf_metrics" in n for n in engine.effective_parameters()["notes"])
    engine.unload()
    assert trt.instances[-1].shut_down


def test_clear_run_state_says_that_kv_block_reuse_cannot_be_reset(trt: ModuleType) -> None:
    (note,) = TensorRTBackend().clear_run_state()
    assert "enable_block_reuse" in note
