"""The TensorRT-LLM engine, specified against a fake ``tensorrt_llm`` (``tests/fakes``).

The fake follows TensorRT-LLM 1.2's LLM API: the engine-building class
``tensorrt_llm._tensorrt_engine.LLM`` (arguments checked against ``TrtLlmArgs``, ``save``,
``generate_async(..., streaming=True)``, ``tokenizer``, ``shutdown``), ``tensorrt_llm.llmapi``
``BuildConfig`` / ``QuantConfig`` / ``QuantAlgo`` / ``KvCacheConfig`` and
``tensorrt_llm.SamplingParams``. Nothing here ran on real TensorRT-LLM.
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
from llenergymeasure.engines.tensorrt import engine as trt_engine
from llenergymeasure.engines.tensorrt import streaming
from llenergymeasure.engines.tensorrt.build import (
    COMPILE_TIME_FIELDS,
    engine_cache_dir,
    engine_cache_key,
    version_problem,
)
from llenergymeasure.engines.tensorrt.engine import TensorRTBackend
from llenergymeasure.exceptions import BackendError

# The engines' pre-flight probes the hub for uncached hub ids: the fakes' `org/model`s
# pass as reachable, and no test asks the network.
pytestmark = pytest.mark.usefixtures("reachable_hub")

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PROMPTS = [Prompt("a bb ccc", index=0), Prompt("dddd", max_new_tokens=4, index=1)]


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake ``tensorrt_llm._tensorrt_engine`` (engine LLM), importable for this test only;
    the engine's ``perf_counter`` reads the fake's clock, so timings are exact."""
    _purge("tensorrt_llm")
    monkeypatch.syspath_prepend(str(FAKES))
    import tensorrt_llm._tensorrt_engine as engine_mod

    engine_mod.reset()
    monkeypatch.setattr(engine_mod, "TOKENS_PER_RESPONSE", 1)
    for module in (trt_engine, streaming):  # load time; each streamed response's stamp
        monkeypatch.setattr(module, "perf_counter", engine_mod.clock)
    yield engine_mod
    _purge("tensorrt_llm")


def cfg(**kw: Any) -> ExperimentConfig:
    data: dict[str, Any] = {"model": "org/model", "backend": "tensorrt", "precision": "fp16"}
    data.update(kw)
    return ExperimentConfig.model_validate(data)


def loaded(trt: ModuleType, config: ExperimentConfig) -> tuple[TensorRTBackend, Any]:
    engine = TensorRTBackend()
    engine.load(config)
    return engine, trt.instances[-1]


# ─── Import, install, version ───────────────────────────────────────────────
def test_importing_the_engine_modules_imports_neither_tensorrt_llm_nor_torch() -> None:
    code = (
        "import importlib, pkgutil, sys, llenergymeasure.engines.tensorrt as package; "
        "[importlib.import_module(m.name) "
        "for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.')]; "
        "print(sorted(m for m in ('tensorrt_llm', 'torch', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_tensorrt_llm_is_a_preflight_problem_with_the_install_command() -> None:
    assert TensorRTBackend().preflight(cfg()) == [
        'tensorrt engine is not installed: pip install -e ".[tensorrt]"'
    ]


def test_factory_returns_the_tensorrt_engine_when_installed(trt: ModuleType) -> None:
    engine = create_engine("tensorrt")
    assert isinstance(engine, TensorRTBackend)
    assert engine.version() == "1.2.1"
    assert engine.preflight(cfg()) == []


@pytest.mark.parametrize("version", ["1.2.0", "1.2.1", "1.2.0rc8", "1.2.1.post1"])
def test_every_1_2_release_passes_the_version_check(version: str) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version", ["1.1.0", "1.3.0rc5", "0.21.0", "2.0.0", "unknown"])
def test_any_other_release_is_a_preflight_problem_naming_the_pin(
    trt: ModuleType, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    import tensorrt_llm

    monkeypatch.setattr(tensorrt_llm, "__version__", version)
    (problem,) = TensorRTBackend().preflight(cfg())
    assert "targets TensorRT-LLM 1.2.x" in problem and repr(version) in problem
    with pytest.raises(BackendError, match=r"1\.2\.x"):
        TensorRTBackend().load(cfg())
    assert trt.instances == []


# ─── Build, cache, load ─────────────────────────────────────────────────────
def test_first_load_builds_with_the_trt_engine_llm_and_caches_the_engine(
    trt: ModuleType,
) -> None:
    config = cfg(
        precision="int4",
        tensorrt={"max_batch_size": 16, "max_seq_len": 1024, "tp_size": 2, "pp_size": 1},
    )
    engine, llm = loaded(trt, config)
    assert isinstance(llm, trt.LLM)  # tensorrt_llm._tensorrt_engine.LLM, not tensorrt_llm.LLM
    assert llm.model == "org/model"
    bc = llm.kwargs["build_config"]
    assert (bc.max_batch_size, bc.max_seq_len) == (16, 1024)
    assert llm.kwargs["quant_config"].quant_algo.value == "W4A16_AWQ"
    assert (llm.kwargs["dtype"], llm.kwargs["tensor_parallel_size"]) == ("float16", 2)
    assert llm.kwargs["pipeline_parallel_size"] == 1
    key = engine.effective_parameters(config)["engine_cache_key"]
    target = engine_cache_dir(key)
    assert llm.saved_to and (target / "rank0.engine").is_file()
    build = json.loads((target / "llem-build.json").read_text())
    assert build["compile_time"]["max_batch_size"] == 16
    assert any("built TensorRT engine" in n for n in engine.effective_parameters(config)["notes"])
    assert engine.effective_parameters(config)["engine_origin"] == "built"

    again, reuse = loaded(trt, config)
    assert reuse.model == str(target)  # loaded from the cache, not rebuilt
    assert reuse.tokenizer_arg == "org/model"
    assert "build_config" not in reuse.kwargs and "quant_config" not in reuse.kwargs
    assert again.effective_parameters(config)["engine_origin"] == "cache"


def test_the_pytorch_backend_llm_would_refuse_a_build_so_the_engine_never_uses_it(
    trt: ModuleType,
) -> None:
    import tensorrt_llm

    with pytest.raises(ValueError, match="specific to TensorRT backend"):
        tensorrt_llm.LLM("org/model", build_config=object())
    loaded(trt, cfg())
    assert [type(i) for i in trt.instances] == [trt.LLM]


def test_a_passthrough_key_that_is_no_trtllmargs_field_fails_the_load_by_name(
    trt: ModuleType,
) -> None:
    with pytest.raises(BackendError, match="invalid argument: max_num_seqs"):
        TensorRTBackend().load(cfg(passthrough_kwargs={"max_num_seqs": 8}))


def test_cache_key_covers_every_compile_time_field_and_nothing_else() -> None:
    base = cfg(tensorrt={"max_batch_size": 8})
    key = engine_cache_key(base, "1.2.1", "H100")
    changed = [
        cfg(model="org/other", tensorrt={"max_batch_size": 8}),
        cfg(precision="int8", tensorrt={"max_batch_size": 8}),
        cfg(tensorrt={"max_batch_size": 16}),
        cfg(tensorrt={"max_batch_size": 8, "max_seq_len": 512}),
        cfg(tensorrt={"max_batch_size": 8, "tp_size": 2}),
        cfg(tensorrt={"max_batch_size": 8, "pp_size": 2}),
    ]
    assert all(engine_cache_key(c, "1.2.1", "H100") != key for c in changed)
    assert engine_cache_key(base, "1.2.0", "H100") != key
    assert engine_cache_key(base, "1.2.1", "A100") != key
    runtime_only = [
        cfg(n=7, max_new_tokens=5, tensorrt={"max_batch_size": 8}),
        cfg(tensorrt={"max_batch_size": 8, "enable_block_reuse": True}),
        cfg(tensorrt={"max_batch_size": 8, "kv_cache_free_gpu_memory_fraction": 0.5}),
    ]
    assert all(engine_cache_key(c, "1.2.1", "H100") == key for c in runtime_only)
    # None and the default it resolves to build the same engine
    assert engine_cache_key(cfg(tensorrt={"max_batch_size": 2048}), "v", "g") == engine_cache_key(
        cfg(), "v", "g"
    )
    assert set(COMPILE_TIME_FIELDS) >= {"tensorrt.max_batch_size", "tensorrt.max_seq_len"}


def test_engine_path_is_loaded_without_building(trt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    config = cfg(tensorrt={"engine_path": str(tmp_path)})
    engine, llm = loaded(trt, config)
    assert (llm.model, llm.tokenizer_arg) == (str(tmp_path), "org/model")
    assert "build_config" not in llm.kwargs and llm.saved_to == []
    assert llm.kwargs["kv_cache_config"].enable_block_reuse is False
    assert engine.effective_parameters(config)["engine_origin"] == "engine_path"
    bad = cfg(tensorrt={"engine_path": str(tmp_path / "missing")})
    (problem,) = TensorRTBackend().preflight(bad)
    assert "not a TensorRT-LLM engine folder" in problem


@pytest.mark.parametrize(
    ("precision", "algo"),
    [("int8", "W8A8_SQ_PER_CHANNEL"), ("int4", "W4A16_AWQ"), ("fp8", "FP8"), ("fp16", None)],
)
def test_precision_selects_the_quant_algo(trt: ModuleType, precision: str, algo: str) -> None:
    _, llm = loaded(trt, cfg(precision=precision))
    quant = llm.kwargs.get("quant_config")
    assert (quant.quant_algo.value if quant else None) == algo


def test_quantization_must_agree_with_precision(trt: ModuleType) -> None:
    # a static rule: the config model refuses it, so pre-flight never sees it
    with pytest.raises(ValidationError, match="needs precision: int4"):
        cfg(tensorrt={"quantization": "int4_awq"})
    with pytest.raises(ValidationError, match="needs precision: int8"):
        cfg(precision="fp8", tensorrt={"quantization": "int8_sq"})
    ok = cfg(precision="int8", tensorrt={"quantization": "int8_sq"})
    assert TensorRTBackend().preflight(ok) == []


def test_there_is_no_builder_optimisation_level_because_1_2_buildconfig_has_none() -> None:
    with pytest.raises(ValidationError, match="builder_opt_level"):
        cfg(tensorrt={"builder_opt_level": 3})


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


# ─── KV block reuse ─────────────────────────────────────────────────────────
def test_kv_block_reuse_is_off_unless_asked_for_and_clear_run_state_says_which(
    trt: ModuleType,
) -> None:
    engine, llm = loaded(trt, cfg())
    kv = llm.kwargs["kv_cache_config"]
    assert isinstance(kv, sys.modules["tensorrt_llm.llmapi"].KvCacheConfig)
    assert kv.enable_block_reuse is False
    assert kv.free_gpu_memory_fraction == 0.9  # TensorRT-LLM's default, not passed
    assert engine.effective_parameters(cfg())["enable_block_reuse"] is False
    (note,) = engine.clear_run_state()
    assert "block reuse is off" in note

    reusing = cfg(tensorrt={"enable_block_reuse": True, "kv_cache_free_gpu_memory_fraction": 0.5})
    engine, llm = loaded(trt, reusing)
    kv = llm.kwargs["kv_cache_config"]
    assert (kv.enable_block_reuse, kv.free_gpu_memory_fraction) == (True, 0.5)
    params = engine.effective_parameters(reusing)
    assert (params["enable_block_reuse"], params["kv_cache_free_gpu_memory_fraction"]) == (
        True,
        0.5,
    )
    (note,) = engine.clear_run_state()
    assert "block reuse is on" in note and "may reuse KV blocks" in note


def test_a_passthrough_kv_cache_config_wins_and_is_what_gets_recorded(trt: ModuleType) -> None:
    from tensorrt_llm.llmapi import KvCacheConfig

    config = cfg(passthrough_kwargs={"kv_cache_config": KvCacheConfig()})
    engine, llm = loaded(trt, config)
    assert llm.kwargs["kv_cache_config"].enable_block_reuse is True
    assert engine.effective_parameters(config)["enable_block_reuse"] is True
    assert "block reuse is on" in engine.clear_run_state()[0]


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_kv_cache_fraction_outside_0_1_is_a_config_error(fraction: float) -> None:
    with pytest.raises(ValidationError, match="kv_cache_free_gpu_memory_fraction"):
        cfg(tensorrt={"kv_cache_free_gpu_memory_fraction": fraction})


# ─── Generation ─────────────────────────────────────────────────────────────
def test_sampling_params_greedy_is_top_k_1_and_ignore_eos_fixes_the_length(
    trt: ModuleType,
) -> None:
    config = cfg(max_new_tokens=6, decoder={"ignore_eos": True})
    engine, llm = loaded(trt, config)
    records = engine.generate(PROMPTS, config)
    params = [sp for _, sp, _ in llm.submitted]
    assert [(p.max_tokens, p.min_tokens, p.ignore_eos, p.top_k) for p in params] == [
        (6, 6, True, 1),  # greedy = top_k 1 (None would sample from all logits)
        (4, 4, True, 1),
    ]
    assert [r.output_tokens for r in records] == [6, 4]

    sampling = cfg(random_seed=3, decoder={"decoding_strategy": "sampling", "temperature": 0.5})
    engine.generate(PROMPTS[:1], sampling)
    p = llm.submitted[-1][1]
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.5, 1.0, None, 3)


def test_every_prompt_is_streamed_and_all_are_in_flight_together(trt: ModuleType) -> None:
    config = cfg(max_new_tokens=5, decoder={"ignore_eos": True})
    engine, llm = loaded(trt, config)
    prompts = [Prompt(f"p{i} x", index=10 + i) for i in range(4)]
    records = engine.generate(prompts, config)
    assert [(text, streaming) for text, _, streaming in llm.submitted] == [
        (p.text, True) for p in prompts
    ]
    assert trt.in_flight[1] == 4  # none waited for another to finish
    assert [r.index for r in records] == [10, 11, 12, 13]
    assert all(r.input_tokens == 2 and r.output_tokens == 5 for r in records)
    assert all(len(r.itl_s) == 4 and r.ttft_s is not None and r.ttft_s > 0 for r in records)
    assert all(r.start_s is not None for r in records)


def test_ttft_and_every_inter_token_gap_come_from_the_streamed_responses(
    trt: ModuleType,
) -> None:
    config = cfg(max_new_tokens=6, decoder={"ignore_eos": True})
    engine, _ = loaded(trt, config)
    (rec,) = engine.generate(PROMPTS[:1], config)
    assert (rec.input_tokens, rec.output_tokens) == (3, 6)
    assert rec.ttft_s == pytest.approx(0.08)
    assert rec.itl_s == pytest.approx([0.02] * 5)
    assert rec.latency_s == pytest.approx(0.08 + 5 * 0.02)
    notes = engine.effective_parameters(config)["notes"]
    assert any("streaming generate_async" in n for n in notes)


def test_tokens_that_arrive_in_one_response_share_its_interval(
    trt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt, "TOKENS_PER_RESPONSE", 2)  # 1 token, then 2 per response
    config = cfg(max_new_tokens=5, decoder={"ignore_eos": True})
    engine, _ = loaded(trt, config)
    (rec,) = engine.generate(PROMPTS[:1], config)
    assert rec.output_tokens == 5
    assert rec.ttft_s == pytest.approx(0.08)
    assert rec.itl_s == pytest.approx([0.02] * 4)  # each pair's 0.04 s split evenly


def test_the_final_response_decides_the_token_count(
    trt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt, "TRIM_ON_FINISH", 2)  # streamed 4 tokens, the final output has 3
    config = cfg(max_new_tokens=5, decoder={"ignore_eos": True})
    engine, _ = loaded(trt, config)
    (rec,) = engine.generate(PROMPTS[:1], config)
    assert rec.output_tokens == 3 and len(rec.itl_s) == 2


def test_a_failing_request_is_a_backend_error(trt: ModuleType) -> None:
    engine, llm = loaded(trt, cfg())
    llm.shut_down = True  # the real generate_async raises "LLM is shutting down"
    with pytest.raises(BackendError, match="TensorRT-LLM generation failed: RuntimeError"):
        engine.generate(PROMPTS, cfg())


def test_unload_shuts_the_llm_down(trt: ModuleType) -> None:
    engine, llm = loaded(trt, cfg())
    engine.unload()
    assert llm.shut_down and engine.handle is None


def test_execute_stamps_responses_and_records_are_built_after_it(
    trt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    real = streaming.RequestRecord
    monkeypatch.setattr(streaming, "RequestRecord", lambda **kw: built.append(kw) or real(**kw))
    config = cfg()
    engine, _ = loaded(trt, config)
    raw = engine.execute(engine.prepare(PROMPTS, config))
    assert built == []  # inside the window: submissions and one stamp per response, no record
    records = engine.records(raw)
    assert len(built) == len(records) == len(PROMPTS)
    assert [r.output_tokens for r in records] == [
        len(s.final.outputs[0].token_ids) for s in raw.payload
    ]


def test_an_uncached_hub_model_fails_preflight_when_the_hub_cannot_be_reached(
    trt: ModuleType, unreachable_hub: str
) -> None:
    (problem,) = TensorRTBackend().preflight(cfg(model="llem-test-org/uncached"))
    assert problem.startswith(
        "model: 'llem-test-org/uncached' is not in the HF cache and the HF hub is unreachable"
    )
    assert unreachable_hub in problem and "HF_HUB_OFFLINE=1" in problem
