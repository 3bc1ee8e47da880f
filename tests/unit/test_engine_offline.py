"""``OfflineLLMEngine``: a new offline engine needs only its hooks and a catalogue record."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from llenergymeasure.config.catalogue import EngineSpec, register_engine
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.base import InferenceBackend, LoadInfo
from llenergymeasure.engines.offline import OfflineLLMEngine, RequestTiming
from llenergymeasure.exceptions import BackendError


class ToyLLM:
    """Echoes ``max_tokens`` tokens per prompt; the second prompt comes back without timings."""

    def __init__(self) -> None:
        self.shut_down = False

    def generate(self, texts: list[str], params: list[int]) -> list[Any]:
        return [
            SimpleNamespace(
                prompt_token_ids=list(range(len(text.split()))),
                outputs=[SimpleNamespace(token_ids=list(range(n)))],
                timed=i == 0,
            )
            for i, (text, n) in enumerate(zip(texts, params, strict=True))
        ]


class ToyEngine(OfflineLLMEngine):
    name = "toy"
    display_name = "Toy"

    def _start(self, config: ExperimentConfig) -> LoadInfo:
        self._llm = ToyLLM()
        self._tokenizer = "toy-tokenizer"
        return LoadInfo(load_time_s=0.0, parameter_count=0, model_dtype="fp16", device="cpu")

    def _sampling_params(self, config: ExperimentConfig, max_tokens: int) -> Any:
        return max_tokens

    def _run_generate(self, prompts: Sequence[Prompt], params: list[Any]) -> Sequence[Any]:
        outputs: Sequence[Any] = self._llm.generate([p.text for p in prompts], params)
        return outputs

    def _request_timing(self, output: Any, n_out: int) -> RequestTiming | None:
        return (0.1, 0.5, [0.1] * (n_out - 1)) if output.timed else None

    def _timing_note(self, missing: int) -> str:
        return f"{missing} untimed"

    def _shutdown_handle(self, llm: Any) -> None:
        llm.shut_down = True

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"engine": self.name, "max_new_tokens": config.max_new_tokens_for(None)}


def spec(module: str) -> EngineSpec:
    return EngineSpec(
        name="toy",
        engine_class=f"{__name__}:ToyEngine",
        import_module=module,
        distribution="llem-toy-engine",
        extra="toy",
        precisions=("fp16",),
        decoding_strategies=("greedy",),
        config_section=None,
    )


@pytest.fixture
def toy_installed() -> Iterator[None]:
    with register_engine(spec("json")):
        yield


CONFIG_DATA = {"model": "org/m", "backend": "toy", "precision": "fp16", "max_new_tokens": 4}
PROMPTS = [Prompt(index=0, text="a b c"), Prompt(index=1, text="d", max_new_tokens=2)]


def test_a_subclass_is_an_inference_backend(toy_installed):
    assert isinstance(ToyEngine(), InferenceBackend)


def test_generate_before_load_is_an_error(toy_installed):
    config = ExperimentConfig.model_validate(CONFIG_DATA)
    with pytest.raises(BackendError, match="toy engine: generate\\(\\) called before load"):
        ToyEngine().generate(PROMPTS, config)


def test_records_follow_prompt_order_and_untimed_requests_get_the_wall_time(toy_installed):
    config = ExperimentConfig.model_validate(CONFIG_DATA)
    engine = ToyEngine()
    engine.load(config)
    records = engine.generate(PROMPTS, config, phase="warmup")
    assert engine.last_phase == "warmup"
    assert [(r.index, r.input_tokens, r.output_tokens) for r in records] == [(0, 3, 4), (1, 1, 2)]
    assert (records[0].ttft_s, records[0].latency_s, len(records[0].itl_s)) == (0.1, 0.5, 3)
    assert records[1].ttft_s is None and records[1].itl_s == []
    assert records[1].latency_s >= 0
    assert "1 untimed" in engine._notes
    assert engine.generate([], config) == []


def test_not_installed_engine_fails_preflight_with_its_install_hint():
    with register_engine(spec("llem_no_such_module")):
        config = ExperimentConfig.model_validate(CONFIG_DATA)
        engine = ToyEngine()
        assert engine.preflight(config) == [
            'toy engine is not installed: pip install -e ".[toy]"'
        ]
        with pytest.raises(BackendError, match="cannot run this config"):
            engine.load(config)


def test_memory_methods_are_no_ops_and_unload_shuts_the_handle_down(toy_installed):
    config = ExperimentConfig.model_validate(CONFIG_DATA)
    engine = ToyEngine()
    engine.load(config)
    llm = engine._llm
    engine.reset_peak_memory()
    assert engine.peak_memory_bytes() is None
    assert engine.clear_run_state() == ["toy engine keeps no cross-run cache that llem can clear"]
    engine.unload()
    assert llm.shut_down and engine.tokenizer is None
