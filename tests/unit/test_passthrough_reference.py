"""The engines guide lists exactly the ``passthrough_kwargs`` keys each engine accepts: the list
is generated from the engines' ``passthrough_keys()`` (``docs/gen_reference.py``), and each
engine sorts and refuses keys by the very sets it declares there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from llenergymeasure.config.catalogue import engine_names
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.factory import engine_class
from llenergymeasure.engines.pytorch.engine import PyTorchBackend
from llenergymeasure.engines.pytorch.passthrough import split_passthrough_kwargs
from llenergymeasure.engines.tensorrt.engine import TensorRTBackend
from llenergymeasure.engines.vllm.engine import VLLMBackend
from llenergymeasure.engines.vllm.engine_args import build_engine_args

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "gen_reference.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _without_open_keys(block: str, prefix: str) -> list[str]:
    return [line for line in block.splitlines() if not line.startswith(prefix)]


def test_the_engines_guide_lists_what_the_engines_declare(gen: ModuleType) -> None:
    committed = gen.passthrough_block(gen.ENGINES_GUIDE.read_text(encoding="utf-8"))
    generated = gen.render_passthrough()
    hint = "stale passthrough list: run `python docs/gen_reference.py` and commit the result"
    import transformers

    if f"{gen.OPEN_KEYS_PREFIX}transformers {transformers.__version__} " in committed:
        assert committed == generated, hint
    else:  # generated with another transformers: its GenerationConfig keys may differ
        prefix = gen.OPEN_KEYS_PREFIX
        assert _without_open_keys(committed, prefix) == _without_open_keys(generated, prefix), hint


def test_every_engine_of_the_catalogue_describes_its_passthrough_keys() -> None:
    for name in engine_names():
        keys = engine_class(name).passthrough_keys()
        assert keys is not None and keys.engine == name


def test_pytorch_sorts_every_key_where_its_declaration_says() -> None:
    keys = PyTorchBackend.passthrough_keys()
    assert keys.open_keys is not None
    _, generate_keys = keys.open_keys()
    for destination, route in keys.routes:
        load, gen_kw, engine, problems = split_passthrough_kwargs(dict.fromkeys(route, 1))
        assert set(load) == route and not (gen_kw or engine or problems), destination
    load, gen_kw, engine, problems = split_passthrough_kwargs(dict.fromkeys(generate_keys, 1))
    assert set(gen_kw) == generate_keys and not (load or engine or problems)
    load, gen_kw, engine, problems = split_passthrough_kwargs(dict.fromkeys(keys.own, 1))
    assert set(engine) == set(keys.own) and not problems
    for key in keys.refused:
        *_, problems = split_passthrough_kwargs({key: 1})
        assert len(problems) == 1 and f"passthrough_kwargs.{key} " in problems[0]
    *_, problems = split_passthrough_kwargs({"not_a_transformers_option": 1})
    assert problems  # anything else is refused


def _config(backend: str, extra: dict[str, object]) -> ExperimentConfig:
    precision = "fp16" if backend != "pytorch" else "bf16"
    return ExperimentConfig.model_validate(
        {"model": "builtin:tiny", "backend": backend, "precision": precision, **extra}
    )


@pytest.mark.parametrize("engine", [VLLMBackend, TensorRTBackend])
def test_offline_engines_refuse_exactly_the_keys_they_declare(engine: type) -> None:
    keys = engine.passthrough_keys()
    for key in keys.refused:
        config = _config(engine.name, {"passthrough_kwargs": {key: 1}})
        problems = engine()._machine_problems(config)
        assert any(p.startswith(f"passthrough_kwargs.{key} is controlled by") for p in problems)
    accepted = engine()._machine_problems(_config(engine.name, {"passthrough_kwargs": {"x": 1}}))
    assert not any("passthrough_kwargs" in p for p in accepted)


def test_vllm_forwards_every_key_but_its_own_and_the_refused_ones() -> None:
    keys = VLLMBackend.passthrough_keys()
    extra = {"max_model_len": 512, "tokenizer": "org/tok", "num_speculative_tokens": 3}
    args = build_engine_args(_config("vllm", {"passthrough_kwargs": extra}))
    assert (args["max_model_len"], args["tokenizer"]) == (512, "org/tok")
    assert not set(keys.own) & set(args)
