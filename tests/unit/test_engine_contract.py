"""The engine contract is explicit: one base class declares every hook the harness calls.

Outside ``engines/`` nothing probes an engine for optional methods (``getattr``, ``hasattr``,
``isinstance`` against a protocol, ``cast``): a hook the harness needs is declared on
``InferenceBackend`` with a default. Every engine llem ships (and every test double) is a
concrete subclass. Each rule the engines share lives once: a prompt's new-token limit,
concurrency defaults.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import llenergymeasure
from llenergymeasure.config.catalogue import engine_spec, run_concurrency
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.engines.base import InferenceBackend, prompt_limits
from llenergymeasure.engines.data_parallel import DataParallelEngine
from llenergymeasure.engines.offline import OfflineLLMEngine
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.engines.pytorch.engine_args import batch_size
from llenergymeasure.engines.tensorrt.build import TRT_DEFAULTS
from llenergymeasure.engines.tensorrt.engine import TensorRTBackend
from llenergymeasure.engines.vllm.engine import VLLMBackend
from llenergymeasure.engines.vllm.engine_args import VLLM_DEFAULTS
from llenergymeasure.testing.engines import FakeEngine
from llenergymeasure.testing.study import LoggingFakeEngine

SRC = Path(llenergymeasure.__file__).parent
PROBES = {"getattr", "hasattr", "isinstance", "cast", "callable"}


def _outside_engines() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "engines"]


def _names_an_engine(node: ast.AST) -> bool:
    """``engine``, ``self.engine``, ``x.engine.tokenizer``, ...: an engine or its attribute."""
    text = ast.unparse(node)
    return any(part == "engine" or part.endswith("_engine") for part in text.split("."))


def _engine_probes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in PROBES
            and any(_names_an_engine(arg) for arg in node.args)
        ):
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_outside_the_engines_probes_an_engine_for_hooks() -> None:
    assert [hit for p in _outside_engines() for hit in _engine_probes(p)] == []


def test_the_probe_check_sees_a_probe() -> None:
    code = "begin = getattr(self.engine, 'begin_reused_run', None)\nhasattr(engine, 'x')\n"
    tree = ast.parse(code)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert all(any(_names_an_engine(a) for a in c.args) for c in calls)


def _engine_attributes(path: Path) -> list[tuple[str, str]]:
    """(where, attribute) of every ``<engine>.attr`` read in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in (
            "engine",
            "self.engine",
        ):
            found.append((f"{path.relative_to(SRC)}:{node.lineno}", node.attr))
    return found


def test_the_harness_calls_only_hooks_the_contract_declares() -> None:
    declared = set(dir(InferenceBackend))
    used = [hit for p in _outside_engines() for hit in _engine_attributes(p)]
    assert used, "the harness drives engines through self.engine"
    assert [(where, attr) for where, attr in used if attr not in declared] == []


@pytest.mark.parametrize(
    "engine_class",
    [
        PyTorchBackend,
        VLLMBackend,
        TensorRTBackend,
        DataParallelEngine,
        FakeEngine,
        LoggingFakeEngine,
    ],
    ids=lambda c: c.__name__,
)
def test_every_engine_is_a_concrete_inference_backend(engine_class: type) -> None:
    assert issubclass(engine_class, InferenceBackend)
    assert not inspect.isabstract(engine_class), engine_class.__abstractmethods__


def test_the_offline_llm_engines_share_one_base() -> None:
    assert issubclass(VLLMBackend, OfflineLLMEngine)
    assert issubclass(TensorRTBackend, OfflineLLMEngine)


def test_an_engine_missing_a_required_hook_cannot_be_built() -> None:
    class NoRecords(FakeEngine):
        records = InferenceBackend.records  # type: ignore[assignment]

    with pytest.raises(TypeError, match="records"):
        NoRecords()


def test_the_defaults_are_the_documented_no_ops() -> None:
    engine = FakeEngine()
    config = ExperimentConfig(model="m", backend="pytorch")
    assert engine.max_sequence_length() is None
    assert engine.peak_memory_bytes() is None
    assert engine.begin_reused_run(config) == []
    assert engine.compiles_on_first_run(config) is False
    assert engine.process_results() == [] and engine.record_process_indices() is None


# ─── Each rule once ──────────────────────────────────────────────────────────────


def test_a_prompts_new_token_limit_is_one_rule_for_every_engine() -> None:
    config = ExperimentConfig(model="m", backend="pytorch", max_new_tokens=16)
    prompts = [Prompt("a", index=0), Prompt("b", max_new_tokens=3, index=1)]
    assert prompt_limits(prompts, config) == [16, 3]
    synthetic = ExperimentConfig(
        model="m", backend="pytorch", dataset={"n": 2, "output_len": 5}, n=2
    )
    assert prompt_limits(prompts, synthetic) == [5, 3]
    assert synthetic.max_new_tokens == 5  # and the config records what runs


def test_concurrency_defaults_come_from_the_catalogue() -> None:
    assert batch_size(ExperimentConfig(model="m", backend="pytorch")) == 1
    for backend, defaults, name in (
        ("vllm", VLLM_DEFAULTS, "max_num_seqs"),
        ("tensorrt", TRT_DEFAULTS, "max_batch_size"),
    ):
        assert defaults[name] == engine_spec(backend).default_concurrency
    config = ExperimentConfig(model="m", backend="pytorch", pytorch={"batch_size": 8})
    assert batch_size(config) == run_concurrency(config) == 8
