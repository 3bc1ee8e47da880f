"""A reused PyTorch engine with ``torch_compile`` compiles each run like a fresh process.

Why it matters (issue 14): on an H200, batch 8 on a reused compiled engine ran 2-3 % slower
than in a fresh process after a batch-64 run had used the same engine. The premise test below
shows the mechanism on CPU: Dynamo's automatic dynamic shapes turn the second batch size seen
into a symbolic dimension (one generic graph for every later size), where a fresh process
compiles a static graph for its one size.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.pytorch.engine import PyTorchBackend

torch = pytest.importorskip("torch")


def compiled_config(compile_on: bool = True) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"model": "builtin:tiny", "backend": "pytorch", "pytorch": {"torch_compile": compile_on}}
    )


def model_after_a_compiled_generate() -> SimpleNamespace:
    return SimpleNamespace(
        _compiled_call=object(),
        _last_compile_config=object(),
        _cache=object(),
        _previous_max_cache_length=768,
        config=SimpleNamespace(max_position_embeddings=2048),
    )


def test_dynamo_specialises_a_fresh_process_but_not_the_second_shape_of_a_kept_one():
    graphs: list[bool] = []  # per compiled graph: has a symbolic (dynamic) dimension

    def recording_backend(gm: Any, example_inputs: list[Any]) -> Any:
        shapes = [
            n.meta["example_value"].shape
            for n in gm.graph.nodes
            if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.Tensor)
        ]
        graphs.append(any(isinstance(d, torch.SymInt) for shape in shapes for d in shape))
        return gm.forward

    def forward(x: Any) -> Any:
        return (x * 2).sum(dim=-1)

    torch._dynamo.reset()
    step = torch.compile(forward, backend=recording_backend)  # dynamic=None, as transformers
    step(torch.ones(8, 4))
    step(torch.ones(64, 4))  # a kept engine's second batch size
    step(torch.ones(8, 4))  # ... and its first again: served by the generic graph
    assert graphs == [False, True], "the second shape recompiles with a symbolic batch size"

    torch._dynamo.reset()  # what begin_reused_run does before the next run's warmup
    step = torch.compile(forward, backend=recording_backend)
    step(torch.ones(64, 4))
    assert graphs[-1] is False, "after a reset the run's shape is compiled static again"
    torch._dynamo.reset()


def test_a_reused_compiled_engine_drops_its_compiled_state_before_the_next_run(monkeypatch):
    resets: list[str] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append("dynamo"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: resets.append("empty_cache"))
    engine = PyTorchBackend()
    engine._model = model_after_a_compiled_generate()
    monkeypatch.setattr(engine, "_on_cuda", lambda: True)

    notes = engine.begin_reused_run(compiled_config())

    model = vars(engine._model)
    for attr in ("_compiled_call", "_last_compile_config", "_cache"):
        assert attr not in model, attr
    assert "_previous_max_cache_length" not in model, "later static caches would stay long"
    assert "config" in model, "the model itself is kept"
    assert resets == ["dynamo", "empty_cache"]
    assert len(notes) == 1 and "torch._dynamo.reset" in notes[0]


@pytest.mark.parametrize("compile_on, on_cuda", [(False, True), (True, False)])
def test_an_engine_that_compiled_nothing_keeps_its_state(monkeypatch, compile_on, on_cuda):
    resets: list[str] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append("dynamo"))
    engine = PyTorchBackend()
    engine._model = model_after_a_compiled_generate()
    monkeypatch.setattr(engine, "_on_cuda", lambda: on_cuda)

    assert engine.begin_reused_run(compiled_config(compile_on)) == []
    assert "_cache" in vars(engine._model) and resets == []
