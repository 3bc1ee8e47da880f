"""Credentials in passthrough_kwargs never reach a file llem writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llenergymeasure.config.hashing import measurement_config_hash
from llenergymeasure.config.loading import build_experiment_config
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.secrets import REDACTED, is_secret_key, redact_secrets
from llenergymeasure.results.io import flatten

SECRET = "hf_SuperSecretValue123"


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "hf_token",
        "use_auth_token",
        "api_key",
        "API-KEY",
        "apikey",
        "password",
        "client_secret",
        "aws_secret_access_key",
        "auth",
        "Authorization",
        "private_key",
    ],
)
def test_credential_keys_are_secret(key: str):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["max_tokens", "tokenizer", "tokenizer_mode", "num_speculative_tokens", "author", "revision"],
)
def test_ordinary_option_keys_are_not_secret(key: str):
    assert not is_secret_key(key)


def test_redaction_reaches_nested_values_and_keeps_the_rest():
    value = {"revision": "main", "headers": {"Authorization": "Bearer x"}, "list": [{"token": 1}]}
    assert redact_secrets(value) == {
        "revision": "main",
        "headers": {"Authorization": REDACTED},
        "list": [{"token": REDACTED}],
    }


def _config() -> ExperimentConfig:
    return ExperimentConfig(
        model="builtin:tiny",
        backend="pytorch",
        passthrough_kwargs={"token": SECRET, "revision": "main"},
    )


def test_the_config_keeps_the_secret_for_the_engine_but_every_dump_hides_it():
    config = _config()
    assert config.passthrough_kwargs == {"token": SECRET, "revision": "main"}
    assert SECRET not in config.model_dump_json()
    assert SECRET not in json.dumps(config.model_dump(mode="json"))
    assert SECRET not in json.dumps(flatten(config.model_dump(mode="json")))
    assert config.model_dump()["passthrough_kwargs"] == {"token": REDACTED, "revision": "main"}


def test_a_config_read_back_from_a_file_has_no_placeholder_credential_and_the_same_hash():
    config = _config()
    reread = ExperimentConfig.model_validate_json(config.model_dump_json())
    assert reread.passthrough_kwargs == {"revision": "main"}  # engine uses env credentials
    assert measurement_config_hash(reread) == measurement_config_hash(config)


def test_overriding_a_config_keeps_its_credentials():
    rebuilt = build_experiment_config(_config(), {"n": 5})
    assert rebuilt.passthrough_kwargs == {"token": SECRET, "revision": "main"}


def test_a_study_directory_on_disk_holds_no_secret(tmp_path: Path):
    from llenergymeasure.config.study import StudyConfig
    from llenergymeasure.study.runner import StudyRunner

    data = {
        "name": "secret-study",
        "model": "builtin:tiny",
        "backend": "pytorch",
        "dataset": "synthetic",
        "n": 2,
        "passthrough_kwargs": {"hf_token": SECRET},
    }
    runner = StudyRunner.create(StudyConfig.from_dict(data), tmp_path, quiet=True)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the study wrote its manifest"
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    from llenergymeasure.study.manifest import load_manifest

    assert load_manifest(runner.study_dir).experiments[0].passthrough_kwargs == {}
