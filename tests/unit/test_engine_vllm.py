"""The vLLM engine, specified against a fake ``vllm`` package (``tests/fakes/vllm``).

The fake follows the public offline API of vLLM 0.26 (``vllm/entrypoints/llm.py``: ``LLM``,
``generate``, ``beam_search``, ``get_tokenizer``, ``reset_prefix_cache``, ``get_metrics``; the
V1 ``llm_engine`` loop ``add_request`` / ``step`` / ``has_unfinished_requests``;
``vllm.sampling_params.SamplingParams`` (with ``output_kind``) / ``BeamSearchParams``;
``vllm.lora.request.LoRARequest``; ``RequestOutput.metrics`` as V1 ``RequestStateStats`` or V0
``RequestMetrics``).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.base import InferenceBackend
from llenergymeasure.engines.factory import create_engine
from llenergymeasure.engines.vllm.engine import VLLMBackend
from llenergymeasure.exceptions import BackendError

# The engines' pre-flight probes the hub for uncached hub ids: the fakes' `org/model`s
# pass as reachable, and no test asks the network.
pytestmark = pytest.mark.usefixtures("reachable_hub")

FAKES = Path(__file__).resolve().parents[1] / "fakes"


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake ``vllm`` importable for this test only."""
    _purge("vllm")
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    vllm.instances.clear()
    vllm.METRICS = "v1"
    vllm.STEPPABLE = True
    vllm.STEP_SLEEP_S = 0.0
    yield vllm
    _purge("vllm")


def cfg(**kw: Any) -> ExperimentConfig:
    data: dict[str, Any] = {"model": "org/model", "backend": "vllm"}
    data.update(kw)
    return ExperimentConfig.model_validate(data)


PROMPTS = [Prompt("a bb ccc", index=0), Prompt("dddd", max_new_tokens=5, index=1)]


def loaded(config: ExperimentConfig) -> VLLMBackend:
    engine = VLLMBackend()
    engine.load(config)
    return engine


def test_importing_the_engine_modules_imports_neither_vllm_nor_torch() -> None:
    code = (
        "import importlib, pkgutil, sys, llenergymeasure.engines.vllm as package; "
        "[importlib.import_module(m.name) "
        "for m in pkgutil.iter_modules(package.__path__, package.__name__ + '.')]; "
        "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_vllm_is_a_preflight_problem_with_the_install_command() -> None:
    assert VLLMBackend().preflight(cfg()) == [
        'vllm engine is not installed: pip install -e ".[vllm]"'
    ]
    with pytest.raises(BackendError) as err:
        create_engine("vllm")
    assert 'pip install -e ".[vllm]"' in str(err.value)


def test_factory_returns_the_vllm_engine_when_installed(fake_vllm: ModuleType) -> None:
    engine = create_engine("vllm")
    assert isinstance(engine, VLLMBackend)
    assert isinstance(engine, InferenceBackend)
    assert engine.version() == "0.26.0"


def test_every_vllm_field_reaches_the_engine_argument_it_names(fake_vllm: ModuleType) -> None:
    vllm_section = {
        "max_num_seqs": 64,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "enable_prefix_caching": False,
        "block_size": 32,
        "quantization": "fp8",
        "enable_lora": True,
        "max_lora_rank": 32,
    }
    loaded(cfg(vllm=vllm_section, random_seed=7))
    kwargs = fake_vllm.instances[-1].kwargs
    for name, value in vllm_section.items():
        assert kwargs[name] == value, name
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["seed"] == 7
    assert kwargs["disable_log_stats"] is False  # V1 collects request metrics only with stats on


def test_unset_fields_are_not_passed_and_the_effective_value_is_read_back(
    fake_vllm: ModuleType,
) -> None:
    config = cfg()
    engine = loaded(config)
    kwargs = fake_vllm.instances[-1].kwargs
    for name in ("max_num_seqs", "enable_prefix_caching", "block_size", "enable_lora"):
        assert name not in kwargs
    eff = engine.effective_parameters(config)
    assert eff["max_num_seqs"] == fake_vllm.ENGINE_MAX_NUM_SEQS  # engine's choice, not 256
    assert eff["effective_value_sources"]["max_num_seqs"] == "engine config"
    assert eff["block_size"] == 16
    assert eff["enable_lora"] is False
    assert eff["dtype"] == "bfloat16"


def test_documented_defaults_are_recorded_when_the_engine_config_is_unreadable(
    fake_vllm: ModuleType,
) -> None:
    config = cfg(vllm={"block_size": 32})
    engine = loaded(config)
    del fake_vllm.instances[-1].llm_engine.vllm_config
    eff = engine.effective_parameters(config)
    assert (eff["max_num_seqs"], eff["effective_value_sources"]["max_num_seqs"]) == (
        256,
        "documented default",
    )
    assert (eff["block_size"], eff["effective_value_sources"]["block_size"]) == (32, "config")
    assert eff["max_lora_rank"] == 16


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", "float16"), ("bf16", "bfloat16")])
def test_precision_maps_to_dtype(fake_vllm: ModuleType, precision: str, dtype: str) -> None:
    loaded(cfg(precision=precision))
    assert fake_vllm.instances[-1].kwargs["dtype"] == dtype


def test_int4_and_int8_need_a_matching_quantization_method(fake_vllm: ModuleType) -> None:
    # a static rule: the config model refuses it, so pre-flight never sees it
    with pytest.raises(ValidationError, match=r"vllm\.quantization.*'awq', 'gptq'"):
        cfg(precision="int4")
    with pytest.raises(ValidationError, match=r"'gptq'"):
        cfg(precision="int8", vllm={"quantization": "awq"})
    assert VLLMBackend().preflight(cfg(precision="int4", vllm={"quantization": "awq"})) == []
    loaded(cfg(precision="int4", vllm={"quantization": "gptq"}))
    assert fake_vllm.instances[-1].kwargs["dtype"] == "float16"
    assert fake_vllm.instances[-1].kwargs["quantization"] == "gptq"


def test_greedy_is_temperature_zero_with_per_prompt_max_tokens(fake_vllm: ModuleType) -> None:
    config = cfg(max_new_tokens=8)
    engine = loaded(config)
    engine.generate(PROMPTS, config)
    call = fake_vllm.instances[-1].calls[-1]
    assert call["prompts"] == ["a bb ccc", "dddd"]
    assert [p.temperature for p in call["params"]] == [0.0, 0.0]
    assert [p.max_tokens for p in call["params"]] == [8, 5]
    assert [p.ignore_eos for p in call["params"]] == [False, False]
    assert call["lora"] is None


def test_ignore_eos_forces_full_length(fake_vllm: ModuleType) -> None:
    config = cfg(max_new_tokens=8, decoder={"ignore_eos": True})
    engine = loaded(config)
    records = engine.generate(PROMPTS, config)
    params = fake_vllm.instances[-1].calls[-1]["params"]
    assert [(p.ignore_eos, p.min_tokens, p.max_tokens) for p in params] == [
        (True, 8, 8),
        (True, 5, 5),
    ]
    assert [r.output_tokens for r in records] == [8, 5]


def test_sampling_parameters_map_one_to_one(fake_vllm: ModuleType) -> None:
    config = cfg(
        random_seed=11,
        decoder={
            "decoding_strategy": "sampling",
            "temperature": 0.7,
            "top_p": 0.9,
            "repetition_penalty": 1.1,
        },
    )
    engine = loaded(config)
    engine.generate(PROMPTS[:1], config)
    (p,) = fake_vllm.instances[-1].calls[-1]["params"]
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.seed) == (
        0.7,
        0.9,
        -1,  # top_k None -> -1 (off)
        1.1,
        11,
    )
    config = cfg(decoder={"decoding_strategy": "sampling", "top_k": 40})
    engine = loaded(config)
    engine.generate(PROMPTS[:1], config)
    assert fake_vllm.instances[-1].calls[-1]["params"][0].top_k == 40


@pytest.mark.parametrize("metrics", ["v1", "v0"])
def test_without_the_step_loop_ttft_itl_and_latency_come_from_the_request_metrics(
    fake_vllm: ModuleType, metrics: str
) -> None:
    fake_vllm.STEPPABLE = False  # an llm_engine without add_request/step: one LLM.generate
    fake_vllm.METRICS = metrics
    config = cfg(max_new_tokens=8, decoder={"ignore_eos": True})
    engine = loaded(config)
    rec = engine.generate(PROMPTS, config)[0]
    ttft, step = fake_vllm.TTFT, fake_vllm.STEP
    assert (rec.index, rec.input_tokens, rec.output_tokens) == (0, 3, 8)
    assert rec.ttft_s == pytest.approx(ttft)
    assert rec.latency_s == pytest.approx(ttft + 7 * step)
    assert rec.itl_s == pytest.approx([step] * 7)
    assert any(
        "mean inter-token interval" in n for n in engine.effective_parameters(config)["notes"]
    )


def test_missing_metrics_leave_ttft_empty_and_say_so(fake_vllm: ModuleType) -> None:
    fake_vllm.STEPPABLE = False
    fake_vllm.METRICS = None
    config = cfg()
    engine = loaded(config)
    records = engine.generate(PROMPTS, config)
    assert [r.ttft_s for r in records] == [None, None]
    assert [r.itl_s for r in records] == [[], []]
    assert all(r.latency_s > 0 for r in records)
    notes = engine.effective_parameters(config)["notes"]
    assert any("no per-request metrics" in n for n in notes)


def test_lora_adapter_goes_with_every_request(fake_vllm: ModuleType, tmp_path: Path) -> None:
    config = cfg(
        vllm={"enable_lora": True, "max_lora_rank": 64},
        lora={"adapter_path": str(tmp_path)},
    )
    engine = loaded(config)
    engine.generate(PROMPTS, config)
    llm = fake_vllm.instances[-1]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 64
    lora = llm.calls[-1]["lora"]
    assert len(lora) == 2
    assert {(r.lora_name, r.lora_int_id, r.lora_path) for r in lora} == {
        ("llem-adapter", 1, str(tmp_path))
    }
    assert engine.effective_parameters(config)["max_lora_rank"] == 64


def test_lora_hub_adapter_and_merge_refusal(fake_vllm: ModuleType, tmp_path: Path) -> None:
    config = cfg(vllm={"enable_lora": True}, lora={"adapter_id": "org/adapter"})
    engine = loaded(config)
    engine.generate(PROMPTS[:1], config)
    assert fake_vllm.instances[-1].calls[-1]["lora"][0].lora_path == "org/adapter"
    with pytest.raises(ValidationError, match="merge_weights"):
        cfg(vllm={"enable_lora": True}, lora={"adapter_id": "a/b", "merge_weights": True})
    missing = cfg(vllm={"enable_lora": True}, lora={"adapter_path": str(tmp_path / "none")})
    assert "not a directory" in VLLMBackend().preflight(missing)[0]


def test_beam_search_uses_the_engine_beam_search_api(fake_vllm: ModuleType) -> None:
    config = cfg(
        max_new_tokens=8, decoder={"decoding_strategy": "beam", "num_beams": 3, "ignore_eos": True}
    )
    engine = loaded(config)
    records = engine.generate(PROMPTS, config)
    calls = [c for c in fake_vllm.instances[-1].calls if c["method"] == "beam_search"]
    assert len(calls) == 2  # one per distinct max_tokens (5 and 8)
    by_len = {c["params"].max_tokens: c for c in calls}
    assert by_len[8]["prompts"] == [{"prompt_token_ids": [1, 2, 3]}]
    assert (by_len[8]["params"].beam_width, by_len[8]["params"].ignore_eos) == (3, True)
    assert [r.output_tokens for r in records] == [8, 5]  # beam tokens minus the prompt
    assert [r.input_tokens for r in records] == [3, 1]
    assert all(r.ttft_s is None and r.itl_s == [] for r in records)
    assert engine.effective_parameters(config)["num_beams"] == 3


def test_speculative_decoding_builds_speculative_config(fake_vllm: ModuleType) -> None:
    spec = {"speculative_decoding": True, "draft_model": "org/draft"}
    loaded(cfg(decoder=spec))
    assert fake_vllm.instances[-1].kwargs["speculative_config"] == {
        "model": "org/draft",
        "num_speculative_tokens": 5,
    }
    loaded(cfg(decoder=spec, passthrough_kwargs={"num_speculative_tokens": 3}))
    kwargs = fake_vllm.instances[-1].kwargs
    assert kwargs["speculative_config"]["num_speculative_tokens"] == 3
    assert "num_speculative_tokens" not in kwargs
    with pytest.raises(ValidationError, match="beam"):
        cfg(decoder={**spec, "decoding_strategy": "beam"})


def test_passthrough_kwargs_reach_llm_and_conflicts_are_refused(fake_vllm: ModuleType) -> None:
    loaded(cfg(passthrough_kwargs={"max_model_len": 2048, "enforce_eager": True}))
    kwargs = fake_vllm.instances[-1].kwargs
    assert (kwargs["max_model_len"], kwargs["enforce_eager"]) == (2048, True)
    (problem,) = VLLMBackend().preflight(cfg(passthrough_kwargs={"dtype": "float32"}))
    assert "passthrough_kwargs.dtype" in problem and "'precision'" in problem
    with pytest.raises(BackendError, match="engine arguments") as err:
        loaded(cfg(passthrough_kwargs={"not_an_engine_arg": 1}))
    assert "passthrough_kwargs" in str(err.value)


def test_generate_before_load_and_unload(fake_vllm: ModuleType) -> None:
    engine = VLLMBackend()
    with pytest.raises(BackendError, match="before load"):
        engine.generate(PROMPTS, cfg())
    with pytest.raises(BackendError, match="before load"):
        engine.effective_parameters(cfg())
    engine.load(cfg())
    assert engine.tokenizer is not None
    assert engine.peak_memory_bytes() is None
    engine.unload()
    assert fake_vllm.instances[-1].shut_down
    assert engine.tokenizer is None


def test_clear_run_state_resets_the_prefix_cache(fake_vllm: ModuleType) -> None:
    engine = loaded(cfg())
    notes = engine.clear_run_state()
    assert fake_vllm.instances[-1].calls[-1] == {"method": "reset_prefix_cache"}
    assert notes == ["vllm: prefix cache reset (LLM.reset_prefix_cache)"]
    assert "not loaded" in VLLMBackend().clear_run_state()[0]


def test_per_token_timing_comes_from_the_engine_step_loop(fake_vllm: ModuleType) -> None:
    fake_vllm.STEP_SLEEP_S = 0.002
    config = cfg(max_new_tokens=6, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 1})
    engine = loaded(config)
    first, second = engine.generate(PROMPTS, config)
    llm = fake_vllm.instances[-1]
    assert not any(c["method"] == "generate" for c in llm.calls)  # the step loop, not generate
    # the front end does what it does for LLM.generate: final outputs only
    assert [p.output_kind.name for p in llm.calls[-1]["params"]] == ["FINAL_ONLY", "FINAL_ONLY"]
    assert "get_output" not in vars(llm.llm_engine.engine_core)  # the tap is gone afterwards
    assert (first.output_tokens, second.output_tokens) == (6, 5)
    assert (first.input_tokens, second.input_tokens) == (3, 1)
    for rec in (first, second):
        assert rec.ttft_s is not None and rec.ttft_s > 0
        assert len(rec.itl_s) == rec.output_tokens - 1
        assert all(gap >= 0.0015 for gap in rec.itl_s)  # every gap measured, one per step
        assert rec.latency_s == pytest.approx(rec.ttft_s + sum(rec.itl_s))
    # max_num_seqs 1: the second request waits for the first, and its TTFT shows it
    assert second.ttft_s > first.latency_s
    # start_s: each submission on the sampler's clock, so tokens land on the power timeline
    assert first.start_s is not None and second.start_s is not None
    assert 0 <= second.start_s - first.start_s < first.latency_s
    assert abs(first.start_s - time.monotonic()) < 60
    assert any(
        "engine core's iterations" in n for n in engine.effective_parameters(config)["notes"]
    )


def test_each_prompt_is_rendered_just_before_it_is_added_as_llm_generate_does(
    fake_vllm: ModuleType,
) -> None:
    """Rendering every prompt before adding the first would leave the engine idle in the window."""
    config = cfg(max_new_tokens=3, decoder={"ignore_eos": True})
    engine = loaded(config)
    llm = fake_vllm.instances[-1]
    events: list[str] = []
    render, add = llm._preprocess_cmpl, llm.llm_engine.add_request

    def recording_render(prompts: list[Any], *a: Any, **kw: Any) -> Any:
        events.append(f"render {len(prompts)}")
        return render(prompts, *a, **kw)

    def recording_add(*a: Any, **kw: Any) -> Any:
        events.append("add")
        return add(*a, **kw)

    llm._preprocess_cmpl = recording_render
    llm.llm_engine.add_request = recording_add
    engine.generate(PROMPTS, config)
    assert events == ["render 1", "add", "render 1", "add"]
    # one SamplingParams per distinct limit, shared like LLM.generate's single object
    first, second = llm.calls[-1]["params"]
    assert first is not second and (first.max_tokens, second.max_tokens) == (3, 5)
    engine.generate([PROMPTS[0], Prompt("ee", index=2)], config)
    same_a, same_b = llm.calls[-1]["params"]
    assert same_a is same_b


def test_requests_in_one_step_share_that_steps_stamp(fake_vllm: ModuleType) -> None:
    """The time-resolved attribution finds the engine's steps only if they share one time."""
    fake_vllm.STEP_SLEEP_S = 0.001
    config = cfg(max_new_tokens=6, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 2})
    first, second = loaded(config).generate(PROMPTS, config)
    assert first.token_times_s is not None and second.token_times_s is not None
    assert (len(first.token_times_s), len(second.token_times_s)) == (6, 5)
    assert second.token_times_s == first.token_times_s[:5]  # same floats, step by step
    for rec in (first, second):
        times = rec.token_times_s
        assert times is not None and rec.start_s is not None and rec.ttft_s is not None
        assert times[0] == pytest.approx(rec.start_s + rec.ttft_s)
        assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx(rec.itl_s)


def test_token_stamps_are_the_engine_cores_iteration_times(fake_vllm: ModuleType) -> None:
    config = cfg(max_new_tokens=4, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 2})
    engine = loaded(config)
    core = fake_vllm.instances[-1].llm_engine.engine_core
    iterate, core_stamps = core._iterate, []

    def iterate_and_keep() -> Any:
        outputs = iterate()
        core_stamps.append(outputs.timestamp)
        return outputs

    core._iterate = iterate_and_keep
    first, second = engine.generate(PROMPTS, config)  # 4 and 5 tokens, side by side
    assert first.token_times_s == core_stamps[:4]  # the core's stamps, not the front end's
    assert second.token_times_s == core_stamps[:5]


class _UnwrappableCore:
    """An engine-core client llem cannot wrap (no instance dict)."""

    __slots__ = ("_iterate",)

    def __init__(self, iterate: Any) -> None:
        self._iterate = iterate

    def get_output(self) -> Any:
        return self._iterate()


def test_where_core_outputs_cannot_be_read_each_step_is_stamped_as_it_returns(
    fake_vllm: ModuleType,
) -> None:
    config = cfg(max_new_tokens=4, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 2})
    engine = loaded(config)
    llm_engine = fake_vllm.instances[-1].llm_engine
    llm_engine.engine_core = _UnwrappableCore(llm_engine.engine_core._iterate)
    first, second = engine.generate(PROMPTS, config)
    kinds = [p.output_kind.name for p in fake_vllm.instances[-1].calls[-1]["params"]]
    assert kinds == ["DELTA", "DELTA"]  # new tokens reported by every step()
    assert first.token_times_s is not None and second.token_times_s is not None
    assert second.token_times_s[:4] == first.token_times_s
    assert any("engine step loop" in n for n in engine.effective_parameters(config)["notes"])


def test_a_core_log_that_disagrees_with_the_outputs_gives_no_per_token_times(
    fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llenergymeasure.engines.vllm.step_loop import CoreIterationLog

    record = CoreIterationLog.record

    def record_missing_the_first_iteration(self: Any, outputs: Any) -> None:
        if not self.iterations:
            outputs = type(outputs)([], outputs.timestamp)
        record(self, outputs)

    monkeypatch.setattr(CoreIterationLog, "record", record_missing_the_first_iteration)
    config = cfg(max_new_tokens=4, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 2})
    engine = loaded(config)
    records = engine.generate(PROMPTS, config)
    assert all(r.ttft_s is None and r.token_times_s is None for r in records)
    assert [r.output_tokens for r in records] == [4, 5]  # counts still from the outputs
    assert all(r.latency_s > 0 for r in records)  # until its final output reached llem
    notes = engine.effective_parameters(config)["notes"]
    assert any("no per-token timing" in n and "gave request 0 3 tokens" in n for n in notes)


def test_a_step_that_bypasses_the_core_client_gives_no_per_token_times_and_says_why(
    fake_vllm: ModuleType,
) -> None:
    config = cfg(max_new_tokens=3, decoder={"ignore_eos": True}, vllm={"max_num_seqs": 2})
    engine = loaded(config)
    llm_engine = fake_vllm.instances[-1].llm_engine
    # another vLLM: step() takes its iterations from somewhere llem did not wrap
    elsewhere = SimpleNamespace(
        engine_core=_UnwrappableCore(llm_engine.engine_core._iterate),
        _by_internal_id=llm_engine._by_internal_id,
    )
    step = type(llm_engine).step
    llm_engine.step = lambda: step(elsewhere)
    records = engine.generate(PROMPTS, config)
    assert all(r.ttft_s is None and r.latency_s > 0 for r in records)
    notes = engine.effective_parameters(config)["notes"]
    assert any("never called engine_core.get_output" in n for n in notes)


def test_tokens_delivered_together_share_the_step_interval(fake_vllm: ModuleType) -> None:
    from types import SimpleNamespace

    class TwoTokenSteps:
        """Every step delivers two tokens (as speculative decoding can)."""

        def __init__(self) -> None:
            self.left = 0

        def add_request(self, rid: str, prompt: Any, params: Any, **kw: Any) -> str:
            self.rid, self.left = rid, 4
            return rid

        def has_unfinished_requests(self) -> bool:
            return self.left > 0

        def step(self) -> list[Any]:
            self.left -= 2
            return [
                SimpleNamespace(
                    request_id=self.rid,
                    prompt_token_ids=[1, 2],
                    outputs=[SimpleNamespace(token_ids=[7, 7])],
                    finished=self.left == 0,
                )
            ]

    engine = VLLMBackend()
    engine._llm = SimpleNamespace(llm_engine=TwoTokenSteps())
    (rec,) = engine.generate([Prompt("a b", index=0)], cfg())
    assert rec.output_tokens == 4 and len(rec.itl_s) == 3
    # the second step's pair, split evenly (to the float resolution of monotonic time)
    assert rec.itl_s[1] == pytest.approx(rec.itl_s[2], abs=1e-9)


def test_prefix_cache_hit_rate_covers_the_window_and_clear_run_state_empties_the_cache(
    fake_vllm: ModuleType,
) -> None:
    config = cfg()
    engine = loaded(config)

    def window() -> dict[str, Any]:
        engine.reset_peak_memory()  # the orchestrator calls it just before the window
        engine.generate(PROMPTS, config)
        stats: dict[str, Any] = engine.effective_parameters(config)["prefix_cache"]
        return stats

    first = window()
    assert (first["queries_tokens"], first["hits_tokens"], first["hit_rate"]) == (4, 0, 0.0)
    assert window()["hit_rate"] == 1.0  # same prompts again on the same engine: all cached
    engine.clear_run_state()
    assert window()["hit_rate"] == 0.0


def test_a_warmup_leaves_no_prefix_cache_behind_for_the_window(fake_vllm: ModuleType) -> None:
    # in a fresh process too, where the harness does not clear before the window: a warmup
    # prompt sharing a prefix with measured ones must not skip part of their prefill
    config = cfg()
    engine = loaded(config)
    engine.generate(PROMPTS, config, phase="warmup")  # the very prompts the window measures
    assert fake_vllm.instances[-1].calls[-1] == {"method": "reset_prefix_cache"}
    engine.reset_peak_memory()
    engine.generate(PROMPTS, config)
    stats = engine.effective_parameters(config)
    assert stats["prefix_cache"]["hits_tokens"] == 0
    assert "vllm: prefix cache reset (LLM.reset_prefix_cache), after every warmup" in str(stats)


def test_engine_start_time_is_a_load_part(fake_vllm: ModuleType) -> None:
    info = VLLMBackend().load(cfg())
    assert set(info.timing_parts) == {"engine_start_s"}  # the workers compiled nothing
    assert 0 <= info.timing_parts["engine_start_s"] <= info.load_time_s
    assert any("report 0 s of torch.compile" in n for n in info.notes)  # and it says so


def test_compile_time_comes_from_the_workers_when_the_engine_core_is_another_process(
    fake_vllm: ModuleType,
) -> None:
    fake_vllm.WORKER_COMPILE_S = 12.5
    info = VLLMBackend().load(cfg())
    assert info.timing_parts["compile_s"] == 12.5
    assert {"method": "collective_rpc", "timeout": 30} in fake_vllm.instances[-1].calls


def test_a_failing_worker_rpc_only_loses_the_compile_time(fake_vllm: ModuleType) -> None:
    fake_vllm.WORKER_COMPILE_S = 12.5
    fake_vllm.WORKER_RPC_ERROR = TimeoutError("workers busy")
    info = VLLMBackend().load(cfg())
    assert set(info.timing_parts) == {"engine_start_s"}
    assert any("collective_rpc failed: TimeoutError: workers busy" in n for n in info.notes)


def test_max_sequence_length_is_vllm_max_model_len():
    from types import SimpleNamespace

    engine = VLLMBackend()
    assert engine.max_sequence_length() is None  # nothing loaded
    engine._llm = SimpleNamespace(
        llm_engine=SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096))
    )
    assert engine.max_sequence_length() == 4096


def test_tokens_accepted_together_keep_their_steps_stamp_for_the_energy_attribution(
    fake_vllm: ModuleType,
) -> None:
    """Speculative decoding: request 0 gets two tokens in the second iteration, request 1 one.

    ``token_times_s`` must give both of request 0's tokens that iteration's stamp (the
    attribution counts tokens sharing a time as one step's work); spreading them over the
    interval invents a step that only request 0 was in and hands it that part of the energy.
    The ITL gaps still share the interval evenly.
    """
    from llenergymeasure.phase_split.records import token_timed_batches
    from llenergymeasure.phase_split.timeline import steps_from_token_times

    class SpeculativeSteps:
        """Two requests; tokens per iteration: (1, 1), (2, 1), (1, 1)."""

        PLAN = ((1, 1), (2, 1), (1, 1))

        def __init__(self) -> None:
            self.ids: list[str] = []
            self.done = 0
            self.stamps: list[float] = []
            self.engine_core = SimpleNamespace(get_output=self._get_output)

        def add_request(self, rid: str, prompt: Any, params: Any, **kw: Any) -> str:
            self.ids.append(rid)
            return rid

        def has_unfinished_requests(self) -> bool:
            return self.done < len(self.PLAN)

        def _get_output(self) -> Any:
            self.stamps.append(time.monotonic() + 0.1 * (self.done + 1))
            counts = self.PLAN[self.done]
            self.done += 1
            items = [
                SimpleNamespace(request_id=rid, new_token_ids=[7] * n)
                for rid, n in zip(self.ids, counts, strict=True)
            ]
            return SimpleNamespace(outputs=items, timestamp=self.stamps[-1])

        def step(self) -> list[Any]:
            self.engine_core.get_output()
            if self.done < len(self.PLAN):
                return []
            totals = [sum(c[i] for c in self.PLAN) for i in range(2)]
            return [
                SimpleNamespace(
                    request_id=rid,
                    prompt_token_ids=[1, 2],
                    outputs=[SimpleNamespace(token_ids=[7] * n)],
                    finished=True,
                )
                for rid, n in zip(self.ids, totals, strict=True)
            ]

    engine = VLLMBackend()
    llm_engine = SpeculativeSteps()
    engine._llm = SimpleNamespace(llm_engine=llm_engine)
    records = engine.generate([Prompt("a b", index=0), Prompt("c d", index=1)], cfg())
    s1, s2, s3 = llm_engine.stamps
    assert [r.output_tokens for r in records] == [4, 3]
    assert records[0].token_times_s == [s1, s2, s2, s3]
    assert records[1].token_times_s == [s1, s2, s3]
    # three engine iterations, three steps; request 0 has two tokens in the second
    steps = steps_from_token_times(token_timed_batches(records))
    assert [s.end_s for s in steps] == [s1, s2, s3]
    assert {w.request: w.tokens for w in steps[1].work} == {0: 2, 1: 1}
    # ITL: the pair shares its iteration's interval evenly
    assert records[0].itl_s == pytest.approx([(s2 - s1) / 2, (s2 - s1) / 2, s3 - s2])


class _Counter:
    """Counts calls made through the functions it wraps."""

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, fn: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


@pytest.mark.parametrize(
    "decoder", [{}, {"decoding_strategy": "beam", "num_beams": 2}], ids=["steps", "beam"]
)
def test_execute_neither_tokenises_nor_builds_records(
    fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch, decoder: dict[str, Any]
) -> None:
    # what llem does; vLLM's own front end renders each prompt as it is added (LLM.generate too)
    from llenergymeasure.engines.vllm import beam_search, step_loop

    config = cfg(decoder=decoder)
    engine = loaded(config)
    built, tokenised = _Counter(), _Counter()
    for module in (step_loop, beam_search):  # where the two paths build their records
        monkeypatch.setattr(module, "RequestRecord", built.wrap(module.RequestRecord))
    monkeypatch.setattr(engine.tokenizer, "encode", tokenised.wrap(engine.tokenizer.encode))
    prepared = engine.prepare(PROMPTS, config)
    done_before = tokenised.calls
    raw = engine.execute(prepared)
    assert (built.calls, tokenised.calls) == (0, done_before)
    records = engine.records(raw)
    assert built.calls == len(records) == len(PROMPTS)


def test_effective_parameters_come_from_the_config_passed_not_from_preflight(
    fake_vllm: ModuleType,
) -> None:
    config = cfg(max_new_tokens=8)
    engine = loaded(config)
    assert engine.preflight(cfg(max_new_tokens=99)) == []  # the next run of a reused engine
    assert engine.effective_parameters(config)["max_new_tokens"] == 8


# --- GGUF models (vLLM's GGUF API: LLM(model=<path>.gguf, tokenizer=...)) ---------------------


def _gguf_file(path: Path) -> Path:
    """A small complete GGUF file: a llama header and two F32 tensors (8 x 4 and 4 values)."""
    from gguf_models import gguf_bytes, string, u32

    path.write_bytes(
        gguf_bytes(
            {"general.architecture": string("llama"), "llama.context_length": u32(512)},
            [("token_embd.weight", (4, 8), 0, 0), ("output_norm.weight", (4,), 0, 128)],
            data=b"\0" * (128 + 16),
        )
    )
    return path


def test_a_gguf_file_is_given_to_vllm_as_its_path(fake_vllm: ModuleType, tmp_path: Path) -> None:
    model = _gguf_file(tmp_path / "m-Q8_0.gguf")
    engine = VLLMBackend()
    info = engine.load(cfg(model=str(model), precision="fp16"))
    llm = fake_vllm.instances[-1]
    assert llm.model == str(model) and "tokenizer" not in llm.kwargs
    assert info.parameter_count == 8 * 4 + 4  # from the GGUF header: FLOPs get it
    (note,) = [n for n in info.notes if n.startswith("GGUF file")]
    assert "vLLM runs the quantised blocks" in note and "converted from the file" in note
    effective = engine.effective_parameters(cfg(model=str(model), precision="fp16"))
    assert effective["gguf"]["parameter_count"] == 36
    assert effective["gguf"]["tensor_types"] == {"F32": 2}
    assert effective["model_source"] == str(model)


def test_the_base_model_tokenizer_vllm_recommends_goes_through_passthrough(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    model = _gguf_file(tmp_path / "m.gguf")
    extra = {"tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    info = VLLMBackend().load(cfg(model=str(model), passthrough_kwargs=extra))
    assert fake_vllm.instances[-1].kwargs["tokenizer"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any("tokenizer HuggingFaceTB/SmolLM2-135M-Instruct" in n for n in info.notes)


def test_gguf_file_of_a_folder_becomes_the_file_path_not_an_engine_argument(
    fake_vllm: ModuleType, tmp_path: Path
) -> None:
    _gguf_file(tmp_path / "m-Q4_K_M.gguf")
    VLLMBackend().load(cfg(model=str(tmp_path), passthrough_kwargs={"gguf_file": "m-Q4_K_M.gguf"}))
    llm = fake_vllm.instances[-1]
    assert llm.model == str(tmp_path / "m-Q4_K_M.gguf") and "gguf_file" not in llm.kwargs


def test_vllm_preflight_wants_the_gguf_plugin_and_a_complete_file(
    fake_vllm: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    model = _gguf_file(tmp_path / "m.gguf")
    assert VLLMBackend().preflight(cfg(model=str(model))) == []  # the fake plugin is there
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[:-20])
    (problem,) = VLLMBackend().preflight(cfg(model=str(cut)))
    assert problem.startswith(f"model: GGUF file {str(cut)!r} is truncated: tensor ")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm_gguf_plugin" else real(name, *a),
    )
    (problem,) = VLLMBackend().preflight(cfg(model=str(model)))
    assert problem == (
        "model: vLLM 0.26.0 loads GGUF files only with the vllm-gguf-plugin package, which is "
        "not installed: pip install vllm-gguf-plugin"
    )


def test_only_vllm_releases_from_0_24_need_the_gguf_plugin() -> None:
    from llenergymeasure.engines.vllm.model_files import needs_gguf_plugin

    assert needs_gguf_plugin("0.26.0") and needs_gguf_plugin("0.24.1")
    assert not needs_gguf_plugin("0.23.1") and not needs_gguf_plugin("0.10.2")
    assert needs_gguf_plugin("unknown")  # the release this engine targets


# --- hub models in pre-flight (one bounded probe, as the PyTorch engine does) ----------------


def _cache_model(hf_cache: Path, repo: str, filename: str = "config.json") -> None:
    """``repo`` in the HF cache as a download leaves it (a snapshot and refs/main)."""
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / filename).write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")


def test_uncached_hub_models_fail_preflight_when_the_hub_cannot_be_reached(
    fake_vllm: ModuleType, unreachable_hub: str
) -> None:
    spec = {"speculative_decoding": True, "draft_model": "llem-test-org/uncached-draft"}
    problems = VLLMBackend().preflight(cfg(model="llem-test-org/uncached", decoder=spec))
    assert [p.split(":", 1)[0] for p in problems] == ["model", "decoder.draft_model"]
    for problem in problems:
        assert "is not in the HF cache and the HF hub is unreachable" in problem
        assert unreachable_hub in problem and "HF_HUB_OFFLINE=1" in problem


def test_a_cached_hub_model_needs_no_probe(
    fake_vllm: ModuleType, unreachable_hub: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    from llenergymeasure import hub

    # the hub client reads HF_HUB_CACHE once, when it is first imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    _cache_model(tmp_path / "hf-cache", "llem-test-org/cached")
    monkeypatch.setattr(hub, "probe_hub", lambda **_: pytest.fail("the hub was probed"))
    assert VLLMBackend().preflight(cfg(model="llem-test-org/cached")) == []


def test_offline_an_uncached_lora_adapter_and_gguf_repo_file_are_problems(
    fake_vllm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lora = cfg(
        model="llem-test-org/uncached",
        vllm={"enable_lora": True},
        lora={"adapter_id": "llem-test-org/adapter"},
    )
    assert [p.split(":", 1)[0] for p in VLLMBackend().preflight(lora)] == [
        "model",
        "lora.adapter_id",
    ]
    gguf = cfg(model="llem-test-org/m-GGUF", passthrough_kwargs={"gguf_file": "m-Q4_0.gguf"})
    (problem,) = VLLMBackend().preflight(gguf)
    assert problem.startswith(
        "model: 'llem-test-org/m-GGUF/m-Q4_0.gguf' is not in the HF cache and HF_HUB_OFFLINE"
    )
