"""``chat_template: true``: every prompt (any dataset) wrapped in the tokenizer's chat template.

Each prompt is one user message rendered with the generation prompt, before warmup and the
window; the result records that and which template. A tokenizer without a template is a
pre-flight error. The tokenizers here are ``builtin:tiny``'s (it has a template) and copies of
it with the template removed or replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import llenergymeasure as llem
from llenergymeasure.cli.app import app
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets.chat import apply_chat_template, chat_template_of
from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.engines.builtin import TINY_CHAT_TEMPLATE
from llenergymeasure.exceptions import ConfigError, PreFlightError
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

cli = CliRunner()
#: What the tiny template adds around a prompt, in bytes (= tokens of the byte tokenizer).
TEMPLATE_TOKENS = len("user: ") + len("\nassistant: ")


def tokenizer_of(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def no_template_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """builtin:tiny with its chat template removed (a base model's tokenizer)."""
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert chat_template_of(tokenizer_of(folder)) is None
    return folder


def test_each_prompt_becomes_one_user_message_with_the_generation_prompt(tiny_model_dir: Path):
    prompts = [Prompt("hello", 5, index=3)]
    (out,) = apply_chat_template(prompts, tokenizer_of(tiny_model_dir))
    assert out.text == "user: hello\nassistant: "
    assert (out.max_new_tokens, out.index) == (5, 3)


def test_a_template_that_writes_the_bos_token_does_not_double_it(
    tiny_model_dir: Path, tmp_path: Path
):
    folder = tmp_path / "bos-template"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text("{{ bos_token }}" + TINY_CHAT_TEMPLATE)
    tokenizer = tokenizer_of(folder)
    (out,) = apply_chat_template([Prompt("hi", index=0)], tokenizer)
    assert out.text == "user: hi\nassistant: "
    ids = tokenizer(out.text)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_a_tokenizer_without_a_template_is_an_error_with_a_hint(no_template_model: Path):
    with pytest.raises(ConfigError, match="has no chat template") as info:
        apply_chat_template([Prompt("x", index=0)], tokenizer_of(no_template_model))
    assert info.value.hint is not None and "chat_template: false" in info.value.hint


class ChatEngine(FakeEngine):
    """The fake engine with a real tokenizer, recording every prompt text by phase."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(output_tokens=2)
        self._tokenizer = tokenizer
        self.texts: dict[str, list[str]] = {}

    def prepare(self, prompts: Any, config: Any, *, phase: str = "measurement") -> Any:
        self.texts.setdefault(phase, []).extend(p.text for p in prompts)
        return super().prepare(prompts, config, phase=phase)


def _config(model: str, dataset: Any, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": model,
            "backend": "pytorch",
            "dataset": dataset,
            "n": 2,
            "max_new_tokens": 2,
            "chat_template": True,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            **extra,
        }
    )


def test_measured_and_warmup_prompts_are_templated_and_the_result_says_which_template(
    tiny_model_dir: Path, tmp_path: Path
):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    engine = ChatEngine(tokenizer_of(tiny_model_dir))
    orchestrator = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    result = orchestrator.run(_config(str(tiny_model_dir), str(jsonl))).result
    assert engine.texts["measurement"] == ["user: q0\nassistant: ", "user: q1\nassistant: "]
    assert engine.texts["warmup"] == ["user: q2\nassistant: "]
    assert result.config.chat_template is True
    record = result.dataset["chat_template"]
    assert record["applied"] is True and record["role"] == "user"
    assert record["add_generation_prompt"] is True
    import hashlib

    expected = hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest()
    assert record["template_sha256"] == expected


def test_synthetic_prompts_are_templated_too(tiny_model_dir: Path):
    engine = ChatEngine(tokenizer_of(tiny_model_dir))
    orchestrator = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    result = orchestrator.run(
        _config(str(tiny_model_dir), {"n": 2, "input_len": 6, "output_len": 2})
    ).result
    for text in engine.texts["measurement"] + engine.texts["warmup"]:
        assert text.startswith("user: ") and text.endswith("\nassistant: ")
    assert result.dataset["kind"] == "synthetic" and result.dataset["chat_template"]["applied"]


def test_a_model_without_a_template_stops_in_pre_flight_before_the_load(no_template_model: Path):
    engine = ChatEngine(tokenizer_of(no_template_model))
    orchestrator = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    with pytest.raises(PreFlightError, match="has no chat template") as info:
        orchestrator.run(_config(str(no_template_model), "synthetic"))
    assert str(no_template_model) in str(info.value)
    assert not engine.loaded


def test_llem_run_with_chat_template_through_the_real_engine(tmp_path: Path):
    args = ["run", "-m", "builtin:tiny", "-d", "synthetic", "-n", "2", "--input-len", "8"]
    args += ["--max-new-tokens", "2", "--set", "warmup.n_warmup=0", "--set", "baseline.enabled=0"]
    plain = cli.invoke(app, [*args, "--json", "-o", str(tmp_path / "a")])
    chat = cli.invoke(
        app, [*args, "--set", "chat_template=true", "--json", "-o", str(tmp_path / "b")]
    )
    assert plain.exit_code == 0, plain.output
    assert chat.exit_code == 0, chat.output
    plain_result = llem.ExperimentResult.from_json(json.loads(plain.stdout)["result_path"])
    chat_result = llem.ExperimentResult.from_json(json.loads(chat.stdout)["result_path"])
    assert chat_result.input_tokens - plain_result.input_tokens == 2 * TEMPLATE_TOKENS
    assert chat_result.dataset["chat_template"]["applied"] is True
    assert "chat_template" not in plain_result.dataset
