"""The engine catalogue: one record per engine, read by validation, the factory and the CLI.

A dummy engine registered at run time must be accepted everywhere an engine name is read,
without touching any other module; the load-time view decides which configs can share one
loaded engine; ``run_concurrency`` is the one place where "None" becomes a number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.catalogue import (
    ENGINES,
    EngineSpec,
    engine_load_fields,
    engine_load_key,
    engine_names,
    engine_spec,
    register_engine,
    run_concurrency,
)
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.engines.factory import create_engine
from llenergymeasure.engines.registry import engine_installed
from llenergymeasure.exceptions import BackendError
from llenergymeasure.testing.engines import FakeEngine


class DummyEngine(FakeEngine):
    """The class the dummy record names; the factory imports it by path. A complete engine
    (the fake engine's hooks) as every catalogue engine must be."""

    name = "dummy"


DUMMY = EngineSpec(
    name="dummy",
    engine_class=f"{__name__}:DummyEngine",
    import_module="json",  # always importable: the dummy counts as installed
    distribution="llem-dummy-engine-not-a-distribution",
    extra="dummy",
    precisions=("fp16",),
    decoding_strategies=("greedy",),
    config_section=None,
)

runner = CliRunner()


@pytest.fixture
def dummy_engine() -> Iterator[EngineSpec]:
    with register_engine(DUMMY) as spec:
        yield spec
    assert "dummy" not in ENGINES


def config(**data: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": "org/model", **data})


# --- the catalogue itself -------------------------------------------------------------------


def test_builtin_engines_in_canonical_order():
    assert engine_names()[:3] == ("pytorch", "vllm", "tensorrt")
    assert list(ENGINES) == list(engine_names())


def test_engine_classes_are_named_not_imported():
    for spec in ENGINES.values():
        module, _, cls = spec.engine_class.partition(":")
        assert module.startswith("llenergymeasure.engines.") and cls


def test_unknown_engine_names_the_known_ones():
    with pytest.raises(KeyError, match="pytorch, vllm, tensorrt"):
        engine_spec("sglang")


def test_vllm_and_tensorrt_are_isolated_and_need_shm_pytorch_neither():
    assert ENGINES["vllm"].isolated and ENGINES["tensorrt"].isolated
    assert ENGINES["vllm"].needs_shm and ENGINES["tensorrt"].needs_shm
    assert not ENGINES["pytorch"].isolated and not ENGINES["pytorch"].needs_shm


def test_register_engine_can_be_undone():
    registration = register_engine(DUMMY)
    assert "dummy" in engine_names()
    registration.undo()
    assert "dummy" not in engine_names()


# --- a registered engine is accepted everywhere ----------------------------------------------


def test_registered_engine_passes_validation_with_its_own_precisions(dummy_engine):
    assert config(backend="dummy", precision="fp16").backend == "dummy"
    with pytest.raises(ValidationError, match=r"dummy does not support precision='bf16'"):
        config(backend="dummy", precision="bf16")
    with pytest.raises(ValidationError, match="does not support decoding_strategy='sampling'"):
        config(backend="dummy", precision="fp16", decoder={"decoding_strategy": "sampling"})


def test_registered_engine_rejects_another_engines_section(dummy_engine):
    with pytest.raises(ValidationError, match="vllm: config section provided"):
        config(backend="dummy", precision="fp16", vllm={"max_num_seqs": 4})


def test_unknown_backend_error_lists_every_engine_including_registered_ones(dummy_engine):
    with pytest.raises(ValidationError) as excinfo:
        config(backend="nope")
    assert "pytorch, vllm, tensorrt, dummy" in str(excinfo.value)


def test_registered_engine_is_built_by_the_factory_from_its_class_path(dummy_engine):
    assert engine_installed("dummy")
    engine = create_engine("dummy")
    assert isinstance(engine, DummyEngine)


def test_factory_reports_an_uninstalled_engine_with_its_install_hint():
    missing = EngineSpec(
        name="absent",
        engine_class="llem_absent_engine:Engine",
        import_module="llem_absent_engine",
        distribution="llem-absent-engine",
        extra="absent",
        precisions=("fp16",),
        decoding_strategies=("greedy",),
        config_section=None,
    )
    with register_engine(missing), pytest.raises(BackendError) as excinfo:
        create_engine("absent")
    hint = str(excinfo.value.hint)
    assert hint.startswith("pip install -e") and hint.endswith('[absent]"')


def test_registered_engine_is_listed_in_run_help(dummy_engine):
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "pytorch, vllm, tensorrt or dummy." in result.output


def test_registered_engine_is_listed_in_llem_config(dummy_engine):
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert 'dummy     not installed  (pip install -e ".[dummy]")' in result.output


def test_registered_engine_in_a_cli_run_with_a_bad_precision_exits_2(dummy_engine):
    result = runner.invoke(
        app,
        ["run", "--model", "org/m", "--backend", "dummy", "--precision", "bf16", "--dry-run"],
    )
    assert result.exit_code == 2
    assert "dummy does not support precision='bf16'" in result.output


# --- load-time view and load key ------------------------------------------------------------


def test_pytorch_batch_size_sweep_shares_one_load_key():
    keys = {
        engine_load_key(config(backend="pytorch", pytorch={"batch_size": b})) for b in (1, 4, 16)
    }
    assert len(keys) == 1
    assert engine_load_key(config(backend="pytorch")) in keys


def test_per_run_fields_do_not_change_the_load_key():
    base = config(backend="pytorch")
    varied = config(
        backend="pytorch",
        n=7,
        max_new_tokens=9,
        random_seed=3,
        decoder={"decoding_strategy": "sampling", "temperature": 0.5},
        warmup={"n_warmup": 1},
        baseline={"enabled": False},
        pytorch={"batching_strategy": "dynamic"},
    )
    assert engine_load_key(varied) == engine_load_key(base)


def test_precision_change_changes_the_load_key():
    assert engine_load_key(config(backend="pytorch", precision="fp16")) != engine_load_key(
        config(backend="pytorch", precision="bf16")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attn_implementation", "eager"),
        ("torch_compile", True),
        ("load_in_8bit", True),
        ("num_processes", 2),
    ],
)
def test_pytorch_load_time_fields_change_the_load_key(field, value):
    assert engine_load_key(config(backend="pytorch", pytorch={field: value})) != engine_load_key(
        config(backend="pytorch")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_num_seqs", 8),
        ("tensor_parallel_size", 2),
        ("gpu_memory_utilization", 0.5),
        ("enable_prefix_caching", False),
        ("block_size", 32),
        ("quantization", "fp8"),
        ("enable_lora", True),
        ("max_lora_rank", 8),
    ],
)
def test_every_vllm_section_field_changes_the_load_key(field, value):
    base = config(backend="vllm", precision="bf16")
    changed = config(backend="vllm", precision="bf16", vllm={field: value})
    assert engine_load_key(changed) != engine_load_key(base)
    assert engine_load_fields(changed)[f"vllm.{field}"] == value


def test_load_key_is_16_hex():
    key = engine_load_key(config(backend="pytorch"))
    assert len(key) == 16 and int(key, 16) >= 0


def test_lora_is_load_time_for_pytorch():
    plain = config(backend="pytorch")
    adapted = config(backend="pytorch", lora={"adapter_id": "org/a"})
    merged = config(backend="pytorch", lora={"adapter_id": "org/a", "merge_weights": True})
    assert len({engine_load_key(c) for c in (plain, adapted, merged)}) == 3


# --- concurrency ----------------------------------------------------------------------------


def test_run_concurrency_resolves_none_per_engine():
    assert run_concurrency(config(backend="pytorch")) == 1
    assert run_concurrency(config(backend="pytorch", pytorch={"batch_size": 8})) == 8
    assert run_concurrency(config(backend="vllm")) == 256
    assert run_concurrency(config(backend="vllm", vllm={"max_num_seqs": 64})) == 64
    assert run_concurrency(config(backend="tensorrt", precision="fp16")) == 2048
    assert (
        run_concurrency(
            config(backend="tensorrt", precision="fp16", tensorrt={"max_batch_size": 4})
        )
        == 4
    )


def test_dry_run_preview_shows_vllms_concurrency():
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            "org/m",
            "--backend",
            "vllm",
            "--dataset",
            "synthetic",
            "-n",
            "2",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "batch            256" in result.output


def test_every_builtin_engine_implements_clear_run_state():
    import importlib

    for spec in ENGINES.values():
        module, _, name = spec.engine_class.partition(":")
        engine_class = getattr(importlib.import_module(module), name)
        assert callable(getattr(engine_class, "clear_run_state", None)), spec.name


def test_online_mode_asks_the_engine_for_its_server_and_one_without_is_a_config_error(
    dummy_engine,
):
    from llenergymeasure.exceptions import ConfigError
    from llenergymeasure.online.server import server_launch

    online = config(backend="dummy", precision="fp16", mode="online", online={})
    with pytest.raises(ConfigError, match="no server of its own"):
        server_launch(online, host="127.0.0.1", port=1)
