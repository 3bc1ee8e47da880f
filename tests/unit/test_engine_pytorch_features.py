"""PyTorch engine features on CPU with builtin:tiny: beam width, speculative-decoding FLOPs, LoRA
(merged and unmerged, adapters built here with peft), passthrough routing, missing optional
packages, torch_compile warmup/compile time, and effective-parameter completeness.

Behaviour already specified in ``test_engine_pytorch.py`` (sampling determinism, dynamic batching
order, unknown passthrough keys, speculative per-token timing) is not repeated here.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.models import DecoderConfig, ExperimentConfig, PyTorchConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.base import PreparedRun, RawRun
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import FakeClock, FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

TEXTS = ["hello there, how are you today?", "the quick brown fox", "x y z"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def make_config(model: str | Path, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": str(model),
        "backend": "pytorch",
        "precision": "fp32",
        "max_new_tokens": 6,
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(TEXTS[i % len(TEXTS)], index=i) for i in range(n)]


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[PyTorchBackend]:
    engine = PyTorchBackend()
    engine.load(make_config(model_dir))
    yield engine
    engine.unload()


def generated_ids(engine: PyTorchBackend, config: ExperimentConfig, n: int = 2) -> list[list[int]]:
    engine.generate(prompts(n), config)
    return engine.last_output_token_ids()


# ─── Beam search ────────────────────────────────────────────────────────────────


def test_num_beams_reaches_generate_and_none_resolves_to_the_engine_default(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    def beam(num_beams: int | None) -> list[list[int]]:
        decoder: dict[str, Any] = {"decoding_strategy": "beam", "ignore_eos": True}
        if num_beams is not None:
            decoder["num_beams"] = num_beams
        return generated_ids(backend, make_config(model_dir, max_new_tokens=8, decoder=decoder))

    enc = backend.tokenizer([TEXTS[0]], return_tensors="pt")
    for width in (1, 3):
        plain = backend._model.generate(
            **enc, max_new_tokens=8, min_new_tokens=8, num_beams=width, do_sample=False
        )
        assert beam(width)[0] == plain[0, enc["input_ids"].shape[1] :].tolist()
    assert beam(None) == beam(4)  # None -> DEFAULT_NUM_BEAMS

    engine = PyTorchBackend()
    beam_config = make_config(model_dir, decoder={"decoding_strategy": "beam"})
    engine.load(beam_config)
    assert engine.effective_parameters(beam_config)["num_beams"] == 4
    engine.unload()


# ─── Speculative decoding: FLOPs count both models ─────────────────────────────


def test_speculative_decoding_flops_count_the_target_and_the_draft_model(
    model_dir: Path,
) -> None:
    common = {
        "dataset": {"n": 2, "input_len": 8, "output_len": 4},
        "n": 2,
        "warmup": {"n_warmup": 0, "thermal_floor_seconds": 0},
        "baseline": {"enabled": False},
    }
    spec = make_config(
        model_dir,
        decoder={"speculative_decoding": True, "draft_model": "builtin:tiny", "ignore_eos": True},
        **common,
    )
    plain = make_config(model_dir, decoder={"ignore_eos": True}, **common)

    def run(config: ExperimentConfig) -> Any:
        orch = ExperimentOrchestrator(engine=PyTorchBackend(), energy_backend=FakeEnergyBackend())
        return orch.run(config).result

    with_draft, without = run(spec), run(plain)

    assert with_draft.flops is not None and without.flops is not None
    base = without.flops.parameter_count
    assert with_draft.flops.parameter_count == 2 * base  # builtin:tiny drafts for itself
    assert with_draft.flops.total_flops == pytest.approx(2 * without.flops.total_flops)
    assert with_draft.flops.confidence == "low"
    assert any("draft" in note for note in with_draft.flops.notes)
    assert with_draft.effective_parameters["draft_parameter_count"] == base
    assert without.effective_parameters["draft_parameter_count"] is None


# ─── LoRA ───────────────────────────────────────────────────────────────────────


def build_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter on q/v projections, saved with save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,  # random B: the adapter changes the outputs
        task_type="CAUSAL_LM",
    )
    get_peft_model(base, lora).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("adapters")
    return build_adapter(model_dir, root / "a", 1), build_adapter(model_dir, root / "b", 2)


def test_lora_adapter_unmerged_and_merged_generate_the_same_tokens_unlike_the_base(
    backend: PyTorchBackend, model_dir: Path, adapters: tuple[Path, Path]
) -> None:
    from peft import PeftModel

    greedy = {"decoder": {"ignore_eos": True}, "max_new_tokens": 8}
    base_ids = generated_ids(backend, make_config(model_dir, **greedy))
    results = {}
    for merge in (False, True):
        config = make_config(
            model_dir, lora={"adapter_path": str(adapters[0]), "merge_weights": merge}, **greedy
        )
        engine = PyTorchBackend()
        assert engine.preflight(config) == []
        info = engine.load(config)
        assert isinstance(engine._model, PeftModel) is (not merge)
        assert engine.effective_parameters(config)["lora"] == {
            "adapter": str(adapters[0]),
            "merge_weights": merge,
        }
        results[merge] = (generated_ids(engine, config), info.parameter_count)
        engine.unload()

    (unmerged_ids, unmerged_params), (merged_ids, merged_params) = results[False], results[True]
    assert unmerged_ids == merged_ids  # merging preserves the function
    assert unmerged_ids != base_ids  # the adapter is applied
    assert unmerged_params > merged_params  # unmerged keeps the A/B matrices
    assert merged_params == sum(p.numel() for p in backend._model.parameters())


def test_adapter_identity_and_merging_enter_the_measurement_config_hash(
    model_dir: Path, adapters: tuple[Path, Path]
) -> None:
    def hashed(adapter: Path, merge: bool = False) -> str:
        return measurement_config_hash(
            make_config(model_dir, lora={"adapter_path": str(adapter), "merge_weights": merge})
        )

    assert hashed(adapters[0]) != hashed(adapters[1])
    assert hashed(adapters[0]) != hashed(adapters[0], merge=True)
    assert hashed(adapters[0]) == hashed(adapters[0])


def test_missing_adapter_directory_is_a_preflight_problem(model_dir: Path, tmp_path: Path) -> None:
    config = make_config(model_dir, lora={"adapter_path": str(tmp_path / "missing")})
    problems = PyTorchBackend().preflight(config)
    assert problems == [f"lora.adapter_path {str(tmp_path / 'missing')!r} is not a directory"]


# ─── Passthrough routing ────────────────────────────────────────────────────────


def test_passthrough_keys_reach_from_pretrained_and_generate(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: dict[str, dict[str, Any]] = {}
    original_model = transformers.AutoModelForCausalLM.from_pretrained
    original_tok = transformers.AutoTokenizer.from_pretrained

    def model_spy(source: Any, **kw: Any) -> Any:
        seen["model"] = kw
        return original_model(source, **kw)

    def tok_spy(source: Any, **kw: Any) -> Any:
        seen["tokenizer"] = kw
        return original_tok(source, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_spy)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_spy)

    long = {"max_new_tokens": 40, "decoder": {"ignore_eos": True}}
    plain = PyTorchBackend()
    plain.load(make_config(model_dir, **long))
    plain_ids = generated_ids(plain, make_config(model_dir, **long), n=1)[0]
    plain.unload()
    assert len(set(plain_ids)) < len(plain_ids)  # greedy repeats tokens without the option

    routed = make_config(
        model_dir,
        passthrough_kwargs={
            "low_cpu_mem_usage": True,
            "no_repeat_ngram_size": 1,
            "revision": "main",
        },
        **long,
    )
    engine = PyTorchBackend()
    assert engine.preflight(routed) == []
    engine.load(routed)
    # load keys go to from_pretrained (the tokenizer gets only the keys it understands) ...
    assert seen["model"]["low_cpu_mem_usage"] is True and seen["model"]["revision"] == "main"
    assert "no_repeat_ngram_size" not in seen["model"]
    assert seen["tokenizer"] == {"revision": "main"}
    # ... and generation keys to generate: no 1-gram may repeat
    ids = generated_ids(engine, routed, n=1)[0]
    assert len(ids) == 40 and len(set(ids)) == len(ids)
    assert engine.effective_parameters(routed)["passthrough_kwargs"]["no_repeat_ngram_size"] == 1
    engine.unload()


def test_an_unknown_passthrough_key_is_rejected_at_preflight_by_name(model_dir: Path) -> None:
    problems = PyTorchBackend().preflight(
        make_config(model_dir, passthrough_kwargs={"use_flash_magic": True})
    )
    assert len(problems) == 1
    assert problems[0].startswith("passthrough_kwargs.use_flash_magic is not a known option")


# ─── Optional packages ──────────────────────────────────────────────────────────


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is not None, reason="flash-attn installed"
)
def test_flash_attention_without_flash_attn_is_a_preflight_error_naming_the_package(
    model_dir: Path,
) -> None:
    config = make_config(model_dir, pytorch={"attn_implementation": "flash_attention_2"})
    problems = PyTorchBackend().preflight(config)
    assert len(problems) == 1
    assert "flash_attention_2" in problems[0] and "pip install flash-attn" in problems[0]


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed"
)
@pytest.mark.parametrize("option", ["load_in_4bit", "load_in_8bit"])
def test_quantisation_without_bitsandbytes_is_a_preflight_error_naming_it(
    model_dir: Path, option: str
) -> None:
    problems = PyTorchBackend().preflight(make_config(model_dir, pytorch={option: True}))
    assert len(problems) == 1
    assert "bitsandbytes" in problems[0] and "pip install bitsandbytes" in problems[0]


# ─── torch_compile ──────────────────────────────────────────────────────────────


class CompilingEngine(FakeEngine):
    """Its first run takes ``compile_s`` longer, like transformers' compile-on-first-use; time
    is a fake clock's, so latencies are exact. ``compiled_in``: the phase that compiled."""

    def __init__(self, compile_s: float, **kwargs: Any) -> None:
        self.clock = FakeClock()
        super().__init__(timer=self.clock, sleep=self.clock.sleep, **kwargs)
        self.compile_s = compile_s
        self.compiled_in: str | None = None

    def compiles_on_first_run(self, config: ExperimentConfig) -> bool:
        return bool(config.pytorch and config.pytorch.torch_compile)

    def execute(self, prepared: PreparedRun, *, on_batch: Any = None) -> RawRun:
        if self.compiled_in is None:
            self.compiled_in = prepared.phase
            self.sleep(self.compile_s)
        return super().execute(prepared, on_batch=on_batch)


def compile_config(n_warmup: int, torch_compile: bool = True) -> ExperimentConfig:
    return make_config(
        "fake-model",
        dataset={"n": 3, "input_len": 4, "output_len": 4},
        n=3,
        pytorch={"torch_compile": torch_compile},
        warmup={"n_warmup": n_warmup, "thermal_floor_seconds": 0},
        baseline={"enabled": False},
    )


def compile_run(engine: CompilingEngine, config: ExperimentConfig) -> ExperimentResult:
    """The run timed on the engine's fake clock (warmup latencies and the window)."""
    orchestrator = ExperimentOrchestrator(
        engine=engine, energy_backend=FakeEnergyBackend(), timer=engine.clock
    )
    return orchestrator.run(config).result


def test_torch_compile_with_no_warmup_forces_one_so_compilation_stays_out_of_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = CompilingEngine(0.3, output_tokens=4, seconds_per_token=0.001)
    result = compile_run(engine, compile_config(n_warmup=0))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    assert [phase for phase, _ in engine.calls] == ["warmup", "measurement"]
    assert result.warmup.runs == 1
    assert any("torch_compile" in n for n in result.warmup.notes)
    assert any("torch_compile" in m for m in warnings)
    assert engine.compiled_in == "warmup"
    assert result.timing.compile_s is not None and result.timing.compile_s >= 0.3
    # the compile time is not in the measurement window: 3 prompts x 4 tokens x 1 ms
    assert result.duration_s == pytest.approx(0.012)


def test_compile_time_is_the_first_warmup_runs_excess_over_the_later_ones() -> None:
    engine = CompilingEngine(0.3, output_tokens=4, seconds_per_token=0.001)
    result = compile_run(engine, compile_config(n_warmup=3))
    assert result.warmup.runs == 3 and result.warmup.notes == []
    first, *rest = result.warmup.latencies_s
    assert rest == [pytest.approx(0.004)] * 2 and first == pytest.approx(0.304)
    assert result.timing.compile_s == pytest.approx(first - statistics.median(rest), abs=1e-9)
    assert result.timing.compile_s == pytest.approx(0.3)


def test_without_torch_compile_nothing_is_forced_and_no_compile_time_is_recorded() -> None:
    engine = CompilingEngine(0.0, output_tokens=4, seconds_per_token=0.001)
    result = compile_run(engine, compile_config(n_warmup=0, torch_compile=False))
    assert result.warmup.runs == 0 and [p for p, _ in engine.calls] == ["measurement"]
    assert result.timing.compile_s is None


def test_torch_compile_on_cpu_uses_the_static_cache_and_says_it_did_not_compile(
    model_dir: Path,
) -> None:
    engine = PyTorchBackend()
    config = make_config(model_dir, pytorch={"torch_compile": True})
    info = engine.load(config)
    params = engine.effective_parameters(config)
    assert params["torch_compile"] is True and params["torch_compile_applied"] is False
    assert params["cache_implementation"] == "static"
    assert any("torch_compile" in note for note in info.notes)
    records = engine.generate(prompts(2), make_config(model_dir, pytorch={"torch_compile": True}))
    assert len(records) == 2
    engine.unload()


# ─── Effective parameters ───────────────────────────────────────────────────────


def test_every_pytorch_and_decoder_field_is_reported_with_none_resolved(
    backend: PyTorchBackend, model_dir: Path
) -> None:
    params = backend.effective_parameters(make_config(model_dir))
    for name in PyTorchConfig.model_fields:
        assert name in params, name
        assert params[name] is not None, name  # None-sentinels resolved to the engine default
    for name in DecoderConfig.model_fields:
        assert name in params, name
    for name in ("precision", "max_new_tokens", "model", "passthrough_kwargs", "lora"):
        assert name in params
    assert params["torch_compile_applied"] is False
    assert params["bnb_4bit_compute_dtype"] is None
