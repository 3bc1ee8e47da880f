"""The one redaction step: what is a secret, in structures, in text and in printed streams."""

from __future__ import annotations

import io
import json

import pytest

from llenergymeasure.redaction import (
    REDACTED,
    RedactingStream,
    is_credential_flag,
    is_secret_key,
    redact,
    redact_json,
    redact_text,
    remember_secret,
)


@pytest.mark.parametrize(
    "key",
    ["hf_token", "access_token", "HF_TOKEN", "x-api-key", "Proxy-Authorization", "cookie"],
)
def test_credential_names_are_secret(key: str):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "energy_per_output_token_j",
        "flops_per_output_token",
        "first_token_time_s",
        "n_multi_token_chunks",
        "j_per_decode_token_adjusted",
        "max_tokens",
        "tokenizer",
    ],
)
def test_metric_names_with_token_in_them_are_not_secret(key: str):
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    "flag, secret",
    [
        ("--api-key", True),
        ("--hf-token", True),
        ("--token", True),
        ("-password", True),
        ("--tokenizer", False),
        ("--max-num-batched-tokens", False),
        ("api-key", False),  # not a flag
    ],
)
def test_credential_flags(flag: str, secret: bool):
    assert is_credential_flag(flag) is secret


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://user:pa55word@host:8000/v1", "http://<redacted>@host:8000/v1"),
        ("see https://alice@example.org/x", "see https://<redacted>@example.org/x"),
        (
            "vllm serve m --api-key sk-AAAA1111 --port 1",
            "vllm serve m --api-key <redacted> --port 1",
        ),
        ("serve --hf-token=hf_BBBB2222 --port 1", "serve --hf-token=<redacted> --port 1"),
        (
            "['--api-key', 'sk-CCCC3333', '--port', '1']",
            "['--api-key', '<redacted>', '--port', '1']",
        ),
        ("Authorization: Bearer abcdef123456", "Authorization: Bearer <redacted>"),
        ("x-api-key: k-DDDD4444\nnext", "x-api-key: <redacted>\nnext"),
        ("sent Bearer eyJhbGciOi.payload.sig", "sent Bearer <redacted>"),
        ("HF_TOKEN=hf_EEEE5555 llem run", "HF_TOKEN=<redacted> llem run"),
        (
            "{'token': 'hf_FFFF6666', 'revision': 'main'}",
            "{'token': '<redacted>', 'revision': 'main'}",
        ),
        ('{"api_key": "GGGG7777", "max_tokens": 4}', '{"api_key": "<redacted>", "max_tokens": 4}'),
        ("  password: HHHH8888\n  port: 1", "  password: <redacted>\n  port: 1"),
    ],
)
def test_text_rules(text: str, expected: str):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "llem run --model builtin:tiny --dataset synthetic -n 20",
        "--disable-auth --port 8000",  # a credential-looking switch with no value
        "basic settings; Bearer tokens are documented elsewhere",
        "max_new_tokens=128 tokens_per_second=3.5",
        "J / output token: 0.31",
        "unexpected token: '}' at line 3",
        "https://huggingface.co/meta-llama/Llama-3.1-8B",
    ],
)
def test_ordinary_text_is_left_alone(text: str):
    assert redact_text(text) == text


def test_a_value_found_once_is_redacted_wherever_it_appears_later():
    redact_text("--api-key sk-remembered-9999")
    assert redact_text("the server said: bad key sk-remembered-9999") == (
        f"the server said: bad key {REDACTED}"
    )


def test_environment_credentials_are_redacted_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "envsecret-1234")
    assert redact_text("request failed for envsecret-1234") == f"request failed for {REDACTED}"


def test_remember_secret_covers_keys_whose_variable_name_says_nothing():
    remember_secret("opaque-key-77777")
    assert "opaque-key-77777" not in redact_text("key=opaque-key-77777 and opaque-key-77777")


def test_structures_keys_at_any_depth_argv_lists_and_strings():
    data = {
        "passthrough_kwargs": {"token": "hf_IIII9999", "revision": "main", "use_auth_token": True},
        "online": {
            "endpoint": "http://bob:s3cr3t-pw@10.0.0.1:8000/v1",
            "server": {"extra_args": ["--api-key", "sk-JJJJ0000", "--port", "9"]},
        },
        "headers": [{"Authorization": "Bearer KKKK1111"}],
        "energy_per_output_token_j": 0.25,
    }
    out = redact(data)
    assert out["passthrough_kwargs"] == {
        "token": REDACTED,
        "revision": "main",
        "use_auth_token": True,  # whether a credential is used is not the credential
    }
    assert out["online"]["endpoint"] == "http://<redacted>@10.0.0.1:8000/v1"
    assert out["online"]["server"]["extra_args"] == ["--api-key", REDACTED, "--port", "9"]
    assert out["headers"] == [{"Authorization": REDACTED}]
    assert out["energy_per_output_token_j"] == 0.25
    text = json.dumps(out)
    for secret in ("hf_IIII9999", "s3cr3t-pw", "sk-JJJJ0000", "KKKK1111"):
        assert secret not in text
    assert data["passthrough_kwargs"]["token"] == "hf_IIII9999", "the input is not changed"


def test_redact_json_keeps_a_model_readable_and_round_trips_without_secrets():
    from llenergymeasure.config.models import ExperimentConfig

    endpoint = ExperimentConfig(
        model="m", backend="vllm", mode="online", online={"endpoint": "http://u:LLLL2222pw@h:1/v1"}
    )
    started = ExperimentConfig(
        model="m",
        backend="vllm",
        mode="online",
        online={"server": {"extra_args": ["--api-key", "MMMM3333"]}},
    )
    text = redact_json(endpoint) + redact_json(started)
    assert "LLLL2222pw" not in text and "MMMM3333" not in text
    back = ExperimentConfig.model_validate_json(redact_json(endpoint))
    assert back.online is not None and back.online.endpoint == "http://<redacted>@h:1/v1"
    back = ExperimentConfig.model_validate_json(redact_json(started))
    assert back.online is not None and back.online.effective_server.extra_args == [
        "--api-key",
        REDACTED,
    ]


def test_the_config_hash_holds_no_credential_and_survives_a_round_trip():
    from llenergymeasure.config.hashing import measurement_config_hash
    from llenergymeasure.config.models import ExperimentConfig

    def config(endpoint: str) -> ExperimentConfig:
        return ExperimentConfig(
            model="m", backend="vllm", mode="online", online={"endpoint": endpoint}
        )

    with_password = config("http://u:NNNN4444@127.0.0.1:1/v1")
    other_password = config("http://u:OOOO5555@127.0.0.1:1/v1")
    assert measurement_config_hash(with_password) == measurement_config_hash(other_password)
    reread = ExperimentConfig.model_validate_json(redact_json(with_password))
    assert measurement_config_hash(reread) == measurement_config_hash(with_password)


def test_a_redacting_stream_filters_writes_and_passes_everything_else_through():
    sink = io.StringIO()
    stream = RedactingStream(sink)
    assert stream.write("endpoint http://a:PPPP6666@h/v1\n") == len(
        "endpoint http://a:PPPP6666@h/v1\n"
    )
    stream.writelines(["--token QQQQ7777\n"])
    stream.flush()
    assert sink.getvalue() == "endpoint http://<redacted>@h/v1\n--token <redacted>\n"
    assert stream.wrapped is sink and stream.closed is False
