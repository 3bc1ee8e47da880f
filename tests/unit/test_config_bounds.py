"""Every number of every config model has a bound, and validation holds it at and past both ends.

The fields are found by walking the config package (every pydantic model in it, through
unions, lists and ``Annotated``), not listed by hand: a new numeric field without a bound from
``config.bounds`` fails ``test_every_numeric_config_field_has_a_bound`` (the ratchet). Then, for
each field found, hypothesis draws values inside the bound (accepted), outside it (rejected,
the error naming the field and the allowed range) and the exact ends.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import types
import typing
from typing import Annotated, Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

import llenergymeasure.config as config_package
from llenergymeasure.config import bounds as B
from llenergymeasure.config.bounds import Bound, bound_of
from llenergymeasure.config.loading import describe_validation_error

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: The smallest valid input of a model that has required fields.
REQUIRED: dict[str, dict[str, Any]] = {
    "ExperimentConfig": {"model": "m", "backend": "pytorch"},
    "SyntheticDatasetConfig": {"n": 1},
}

#: Other fields a field needs set to be valid at all (num_beams only with beam search, ...).
COMPANIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("DecoderConfig", "num_beams"): {"decoding_strategy": "beam"},
    ("OnlineConfig", "burstiness"): {"arrival": "gamma"},
}


def _config_models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for info in pkgutil.iter_modules(config_package.__path__):
        module = importlib.import_module(f"{config_package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                found[obj.__name__] = obj
    return list(found.values())


def _unbounded_numbers(annotation: Any, covered: bool = False) -> int:
    """How many int/float slots of ``annotation`` have no ``Bound`` over them."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        has = any(isinstance(m, Bound) for m in metadata)
        return _unbounded_numbers(inner, covered or has)
    if annotation in (int, float):
        return 0 if covered else 1
    if origin is typing.Literal:
        return 0
    if origin in (Union, types.UnionType):
        return sum(_unbounded_numbers(arg, covered) for arg in typing.get_args(annotation))
    # containers: a field-level bound does not reach inside them
    return sum(_unbounded_numbers(arg) for arg in typing.get_args(annotation))


def _field_is_numeric(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation in (int, float):
        return True
    if origin is typing.Literal:
        return False
    return any(_field_is_numeric(arg) for arg in typing.get_args(annotation))


def _numeric_fields() -> list[tuple[type[BaseModel], str]]:
    return [
        (model, name)
        for model in _config_models()
        for name, info in model.model_fields.items()
        if _field_is_numeric(info.annotation)
    ]


def _unbounded(model: type[BaseModel]) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        field_bound = any(isinstance(m, Bound) for m in info.metadata)
        if _unbounded_numbers(info.annotation, field_bound):
            out.append(f"{model.__name__}.{name}")
    return out


# --- the ratchet -----------------------------------------------------------------------------


def test_every_numeric_config_field_has_a_bound() -> None:
    missing = [name for model in _config_models() for name in _unbounded(model)]
    assert not missing, (
        "numeric config fields without a bound: annotate them with a Bound from "
        f"llenergymeasure.config.bounds (Annotated[int, B.SOMETHING]): {missing}"
    )


def test_the_ratchet_reports_a_numeric_field_without_a_bound() -> None:
    class NewSection(BaseModel):
        bounded: Annotated[int, B.PROMPTS] = 1
        plain: float = 1.0
        in_a_list: list[int] = Field(default_factory=list)
        optional: Annotated[float, B.GAP_SECONDS] | None = None
        label: str = "x"

    assert _unbounded(NewSection) == ["NewSection.plain", "NewSection.in_a_list"]


def test_the_walk_finds_the_fields_the_issue_names() -> None:
    names = {(model.__name__, field) for model, field in _numeric_fields()}
    expected = {
        ("ExperimentConfig", "n"),
        ("ExperimentConfig", "random_seed"),
        ("ExperimentConfig", "max_new_tokens"),
        ("WarmupConfig", "thermal_floor_seconds"),
        ("BaselineConfig", "duration_seconds"),
        ("SyntheticDatasetConfig", "seed"),
        ("PyTorchConfig", "batch_size"),
        ("VLLMConfig", "gpu_memory_utilization"),
        ("TensorRTConfig", "max_seq_len"),
        ("OnlineConfig", "request_rate"),
        ("OnlineConfig", "gpus"),
        ("ServerConfig", "startup_timeout_s"),
        ("SLOConfig", "ttft_ms"),
        ("ExecutionConfig", "config_gap_seconds"),
        ("ExecutionConfig", "experiment_timeout_seconds"),
        ("MeasurementSection", "carbon_intensity_gco2_kwh"),
        ("MeasurementSection", "datacenter_pue"),
        ("MeasurementSection", "sampling_interval_ms"),
        ("SlurmSection", "poll_interval_seconds"),
    }
    assert expected <= names
    assert len(names) >= 50


def test_every_bound_is_finite_non_empty_and_explained() -> None:
    for name in B.__all__:
        bound = getattr(B, name)
        if isinstance(bound, Bound):
            assert math.isfinite(bound.lower) and math.isfinite(bound.upper), name
            assert bound.lower < bound.upper, name
            assert bound.why, f"{name} has no reason"


def test_seeds_stay_within_what_numpy_seeding_accepts() -> None:
    import numpy as np

    np.random.seed(int(B.SEED.upper))
    np.random.seed(int(B.SEED.lower))
    with pytest.raises(ValueError):
        np.random.seed(int(B.SEED.upper) + 1)
    with pytest.raises(ValueError):
        np.random.seed(int(B.SEED.lower) - 1)


# --- values at and past every bound ----------------------------------------------------------

FIELDS = _numeric_fields()
IDS = [f"{model.__name__}.{name}" for model, name in FIELDS]


def _bound(model: type[BaseModel], name: str) -> Bound:
    info = model.model_fields[name]
    bound = bound_of(info.annotation, info.metadata)
    assert bound is not None
    return bound


def _is_int(model: type[BaseModel], name: str) -> bool:
    """Whether the field's number is an int (else a float)."""

    def ints(annotation: Any) -> bool:
        if annotation is int:
            return True
        if annotation is float:
            return False
        return any(ints(arg) for arg in typing.get_args(annotation))

    return ints(model.model_fields[name].annotation)


def _validate(model: type[BaseModel], name: str, value: float) -> BaseModel:
    data = {**REQUIRED.get(model.__name__, {}), **COMPANIONS.get((model.__name__, name), {})}
    listed = typing.get_origin(_strip_optional(model.model_fields[name].annotation)) is list
    data[name] = [value] if listed else value
    return model.model_validate(data)


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (Union, types.UnionType) else annotation


def _inside(bound: Bound, integer: bool) -> st.SearchStrategy[float]:
    if integer:
        return st.integers(math.ceil(bound.lower), math.floor(bound.upper)).filter(bound.contains)
    return st.floats(
        bound.lower,
        bound.upper,
        exclude_min=bound.lower_open,
        exclude_max=bound.upper_open,
        allow_nan=False,
    )


def _outside(bound: Bound, integer: bool) -> st.SearchStrategy[float]:
    if integer:
        low = math.ceil(bound.lower) - (0 if bound.lower_open else 1)
        high = math.floor(bound.upper) + (0 if bound.upper_open else 1)
        return st.integers(max_value=low) | st.integers(min_value=high)
    return st.floats(
        max_value=bound.lower, exclude_max=not bound.lower_open, allow_nan=False
    ).filter(math.isfinite) | st.floats(
        min_value=bound.upper, exclude_min=not bound.upper_open, allow_nan=False
    ).filter(math.isfinite)


@pytest.mark.parametrize(("model", "name"), FIELDS, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_values_inside_the_bound_are_accepted(
    model: type[BaseModel], name: str, data: st.DataObject
) -> None:
    bound = _bound(model, name)
    value = data.draw(_inside(bound, _is_int(model, name)))
    _validate(model, name, value)


@pytest.mark.parametrize(("model", "name"), FIELDS, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_values_outside_the_bound_are_rejected_naming_the_field_and_range(
    model: type[BaseModel], name: str, data: st.DataObject
) -> None:
    bound = _bound(model, name)
    value = data.draw(_outside(bound, _is_int(model, name)))
    with pytest.raises(ValidationError) as err:
        _validate(model, name, value)
    assert any(name in map(str, e["loc"]) for e in err.value.errors())
    if (model.__name__, name) != ("OnlineConfig", "request_rate"):  # its own validator
        text = "\n".join(describe_validation_error(err.value, model))
        assert f"allowed {bound.interval()}" in text, text
    else:
        assert bound.interval() in str(err.value)


@pytest.mark.parametrize(("model", "name"), FIELDS, ids=IDS)
def test_the_exact_ends_of_each_bound(model: type[BaseModel], name: str) -> None:
    bound = _bound(model, name)
    integer = _is_int(model, name)
    step_down = (lambda v: v - 1) if integer else (lambda v: math.nextafter(v, -math.inf))
    step_up = (lambda v: v + 1) if integer else (lambda v: math.nextafter(v, math.inf))
    lower = int(bound.lower) if integer else bound.lower
    upper = int(bound.upper) if integer else bound.upper
    for value, accepted in (
        (lower, not bound.lower_open),
        (step_down(lower), False),
        (upper, not bound.upper_open),
        (step_up(upper), False),
    ):
        if accepted:
            _validate(model, name, value)
        else:
            with pytest.raises(ValidationError):
                _validate(model, name, value)
