"""What varies across a study: one rule for the study table, the report and the dry-run preview."""

from __future__ import annotations

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.results.study_statistics import varying_fields


def _config(precision: str = "fp32", **pytorch: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"model": "builtin:tiny", "backend": "pytorch", "precision": precision, "pytorch": pytorch}
    )


def test_only_fields_that_differ_are_named_with_dotted_keys_in_field_order() -> None:
    configs = [_config(batch_size=8), _config("fp16", batch_size=1), _config(batch_size=8)]
    assert varying_fields(configs) == ["precision", "pytorch.batch_size"]


def test_a_field_set_in_one_config_and_unset_in_another_varies() -> None:
    assert varying_fields([_config(), _config(torch_compile=True)]) == ["pytorch.torch_compile"]


def test_columns_a_table_shows_anyway_can_be_left_out() -> None:
    configs = [_config(batch_size=8), _config("fp16", batch_size=1)]
    assert varying_fields(configs, exclude=("precision",)) == ["pytorch.batch_size"]


def test_identical_configs_vary_in_nothing() -> None:
    assert varying_fields([_config(batch_size=2), _config(batch_size=2)]) == []
    assert varying_fields([]) == []
