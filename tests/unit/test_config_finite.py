"""Every float a user can write in any config is finite: inf and nan are validation errors.

A non-finite value would be written to JSON as ``null`` and make llem's own results unreadable,
so the rule covers every config model (experiment, study execution, online, user config), found
by walking the config package rather than listed by hand.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import types
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

import llenergymeasure.config as config_package
from llenergymeasure.config.loading import validate_experiment_dict
from llenergymeasure.exceptions import ConfigError

#: The smallest valid input of each config model that has a float field of its own.
MINIMAL_INPUT: dict[str, dict[str, Any]] = {
    "DecoderConfig": {},
    "WarmupConfig": {},
    "BaselineConfig": {},
    "VLLMConfig": {},
    "TensorRTConfig": {},
    "ServerConfig": {},
    "SLOConfig": {},
    "OnlineConfig": {},
    "MeasurementSection": {},
    "ExecutionSection": {},
    "SlurmSection": {},
    "ExecutionConfig": {},
}

#: Fields where infinity is a documented value (and nan still is not).
INFINITY_MEANS_SOMETHING = {("OnlineConfig", "request_rate")}


def _config_models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for info in pkgutil.iter_modules(config_package.__path__):
        module = importlib.import_module(f"{config_package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                found[obj.__name__] = obj
    return list(found.values())


def _has_float(annotation: Any) -> bool:
    if annotation is float:
        return True
    if get_origin(annotation) is Annotated:
        return _has_float(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_has_float(arg) for arg in get_args(annotation))
    return False


def _float_fields() -> list[tuple[type[BaseModel], str]]:
    return [
        (model, name)
        for model in _config_models()
        for name, field in model.model_fields.items()
        if _has_float(field.annotation)
    ]


def test_the_walk_finds_the_float_fields_the_issue_names():
    names = {(model.__name__, field) for model, field in _float_fields()}
    assert ("WarmupConfig", "thermal_floor_seconds") in names
    assert ("BaselineConfig", "duration_seconds") in names
    assert ("DecoderConfig", "temperature") in names
    assert ("ExecutionConfig", "experiment_timeout_seconds") in names
    assert ("MeasurementSection", "datacenter_pue") in names


@pytest.mark.parametrize(
    ("model", "field"), _float_fields(), ids=lambda v: getattr(v, "__name__", str(v))
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_config_float_field_rejects_non_finite_values(
    model: type[BaseModel], field: str, value: float
):
    assert model.__name__ in MINIMAL_INPUT, f"add {model.__name__}'s minimal input to this test"
    base = MINIMAL_INPUT[model.__name__]
    model.model_validate(base)  # the minimal input itself is valid
    if (model.__name__, field) in INFINITY_MEANS_SOMETHING and value == math.inf:
        model.model_validate({**base, field: value})
        return
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**base, field: value})
    assert field in str(raised.value)


def test_non_finite_yaml_values_are_config_errors_naming_the_field():
    data = {"model": "m", "backend": "pytorch", "warmup": {"thermal_floor_seconds": math.inf}}
    with pytest.raises(ConfigError, match="thermal_floor_seconds"):
        validate_experiment_dict(data)


@pytest.mark.parametrize("value", [math.inf, math.nan, [1.0, math.nan], {"x": -math.inf}])
def test_non_finite_numbers_in_passthrough_kwargs_are_rejected(value: Any):
    data = {"model": "m", "backend": "pytorch", "passthrough_kwargs": {"k": value}}
    with pytest.raises(ConfigError, match=r"passthrough_kwargs\.k"):
        validate_experiment_dict(data)
