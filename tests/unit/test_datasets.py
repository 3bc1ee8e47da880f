"""Datasets: JSONL files, synthetic prompts, dispatch and provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.datasets import (
    Prompt,
    SyntheticParams,
    describe_dataset,
    load_prompts,
)
from llenergymeasure.exceptions import ConfigError


def write_jsonl(path: Path, rows: list[Any], *, raw_lines: list[str] | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + (raw_lines or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ByteTokenizer:
    """Minimal HF-like tokenizer: one token per UTF-8 byte."""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [256, *ids] if add_special_tokens else ids

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")


def trained_bpe_tokenizer() -> Any:
    """A real BPE tokenizer with merges (trained in memory), wrapped like a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the history of the city and the world energy model", "a river school music"] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


# --- Prompt -----------------------------------------------------------------------------------


def test_prompt_is_a_frozen_record_with_keyword_index() -> None:
    p = Prompt("hello", 7, index=3)
    assert (p.text, p.max_new_tokens, p.index) == ("hello", 7, 3)
    assert Prompt("x", index=0).max_new_tokens is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "other"  # type: ignore[misc]


def test_importing_datasets_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, llenergymeasure.datasets\n"
        "bad = [m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_prompts_are_read_in_file_order_with_optional_max_new_tokens(tmp_path: Path) -> None:
    rows = [{"prompt": "a"}, {"prompt": "b", "max_new_tokens": 9}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_prompts(str(path), 2) == [Prompt("a", index=0), Prompt("b", 9, index=1)]


def test_jsonl_accepts_a_path_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    assert load_prompts(path, 1) == [Prompt("a", index=0)]


def test_n_takes_the_first_n_prompts_always(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    first3 = load_prompts(path, 3)
    assert [p.text for p in first3] == ["p0", "p1", "p2"]
    assert load_prompts(path, 10)[:3] == first3
    assert load_prompts(path, 3) == first3


def test_metadata_header_lines_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"_provenance": "somewhere", "_license": "apache-2.0"}\n'
        "\n"
        '{"prompt": "first"}\n'
        "   \n"
        '{"prompt": "second", "id": 17}\n',
        encoding="utf-8",
    )
    prompts = load_prompts(path, 2)
    assert [(p.text, p.index) for p in prompts] == [("first", 0), ("second", 1)]


def test_a_prompt_may_contain_unicode_line_separators(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one\u2028two"}, {"prompt": "x"}])
    assert [p.text for p in load_prompts(path, 2)] == ["one\u2028two", "x"]


def test_too_few_prompts_names_the_dataset_and_both_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "small.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(ConfigError) as err:
        load_prompts(path, 5)
    msg = str(err.value)
    assert "small.jsonl" in msg and "2" in msg and "5" in msg
    assert err.value.exit_code == 2


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError, match=r"nope\.jsonl"):
        load_prompts(missing, 1)


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "wrong key"}', "'prompt'"),
        ('{"prompt": ""}', "'prompt'"),
        ('{"prompt": 3}', "'prompt'"),
        ('{"prompt": "x", "max_new_tokens": 0}', "max_new_tokens"),
        ('{"prompt": "x", "max_new_tokens": "5"}', "max_new_tokens"),
        ('{"prompt": "x", "max_new_tokens": true}', "max_new_tokens"),
    ],
)
def test_a_bad_line_names_the_file_and_line_number(
    tmp_path: Path, bad_line: str, fragment: str
) -> None:
    rows = [{"_meta": 1}, {"prompt": "ok"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows, raw_lines=[bad_line])
    with pytest.raises(ConfigError) as err:
        load_prompts(path, 2)  # the second prompt is on the bad line
    assert f"{path}:3" in str(err.value)
    assert fragment in str(err.value)


def test_lines_after_the_prompts_a_run_needs_are_not_parsed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}], raw_lines=["{"])
    assert [p.text for p in load_prompts(path, 2)] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"p\.jsonl:3: invalid JSON"):
        load_prompts(path, 3)


def test_n_must_be_positive(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ConfigError, match="positive"):
        load_prompts(path, 0)


def test_an_unknown_dataset_name_lists_the_valid_choices() -> None:
    with pytest.raises(ConfigError) as err:
        load_prompts("sharegpt", 1)
    assert "aienergyscore" in str(err.value) and "synthetic" in str(err.value)
    assert ".jsonl" in str(err.value)


def test_the_reference_aienergyscore_jsonl_file_loads(tmp_path: Path) -> None:
    reference = Path("/work/shared/data/aienergyscore.jsonl")
    if not reference.is_file():
        pytest.skip("reference file not available on this machine")
    prompts = load_prompts(reference, 1000)
    assert len(prompts) == 1000
    assert prompts[0].text.startswith("Du Fu")


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_prompts_have_exactly_input_len_tokens_and_output_len_budget() -> None:
    tok = ByteTokenizer()
    spec = SyntheticParams(n=4, input_len=50, output_len=7, seed=1)
    prompts = load_prompts(spec, 4, tokenizer=tok)
    assert len(prompts) == 4
    for i, p in enumerate(prompts):
        assert len(tok.encode(p.text, add_special_tokens=False)) == 50
        assert p.max_new_tokens == 7
        assert p.index == i


@pytest.mark.parametrize("input_len", [1, 2, 7, 32, 100, 512])
def test_synthetic_length_is_exact_with_a_bpe_tokenizer_that_has_merges(input_len: int) -> None:
    tok = trained_bpe_tokenizer()
    spec = SyntheticParams(n=3, input_len=input_len, output_len=4, seed=5)
    for p in load_prompts(spec, 3, tokenizer=tok):
        assert len(tok.encode(p.text, add_special_tokens=False)) == input_len


def test_synthetic_is_seeded_and_deterministic() -> None:
    tok = ByteTokenizer()
    a = load_prompts(SyntheticParams(n=5, input_len=40, seed=3), 5, tokenizer=tok)
    b = load_prompts(SyntheticParams(n=5, input_len=40, seed=3), 5, tokenizer=tok)
    c = load_prompts(SyntheticParams(n=5, input_len=40, seed=4), 5, tokenizer=tok)
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]
    assert len({p.text for p in a}) == 5  # prompts differ from one another


def test_synthetic_first_k_prompts_do_not_depend_on_n() -> None:
    tok = ByteTokenizer()
    few = load_prompts(SyntheticParams(n=10, input_len=30), 2, tokenizer=tok)
    many = load_prompts(SyntheticParams(n=10, input_len=30), 10, tokenizer=tok)
    assert many[:2] == few


def test_the_string_synthetic_means_the_default_config() -> None:
    tok = ByteTokenizer()
    prompts = load_prompts("synthetic", 3, tokenizer=tok)
    assert prompts == load_prompts(SyntheticParams(n=3), 3, tokenizer=tok)
    assert all(len(tok.encode(p.text, add_special_tokens=False)) == 512 for p in prompts)
    assert all(p.max_new_tokens == 128 for p in prompts)


def test_any_object_with_n_input_len_output_len_seed_is_a_synthetic_spec() -> None:
    @dataclasses.dataclass
    class LikePydantic:
        n: int
        input_len: int = 16
        output_len: int = 2
        seed: int = 42

    prompts = load_prompts(LikePydantic(n=2), 2, tokenizer=ByteTokenizer())
    assert [len(p.text.encode()) for p in prompts] == [16, 16]


def test_synthetic_without_a_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        load_prompts(SyntheticParams(n=1), 1)


def test_synthetic_asking_for_more_than_its_n_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_prompts(SyntheticParams(n=2), 3, tokenizer=ByteTokenizer())
    assert "synthetic" in str(err.value) and "2" in str(err.value) and "3" in str(err.value)


def test_synthetic_input_len_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="input_len"):
        load_prompts(SyntheticParams(n=1, input_len=0), 1, tokenizer=ByteTokenizer())


def test_synthetic_raises_when_the_tokenizer_cannot_produce_the_length() -> None:
    class AlwaysOneToken(ByteTokenizer):
        def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
            return [1]

    with pytest.raises(ConfigError, match="exactly 5 tokens"):
        load_prompts(SyntheticParams(n=1, input_len=5), 1, tokenizer=AlwaysOneToken())


# --- provenance -------------------------------------------------------------------------------


def test_describe_a_jsonl_file_gives_path_sha256_and_count(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"_meta": "x"}, {"prompt": "a"}, {"prompt": "b"}])
    record = describe_dataset(path)
    assert record == {
        "kind": "jsonl",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_available": 2,
    }


def test_describe_synthetic_records_its_parameters() -> None:
    record = describe_dataset(SyntheticParams(n=20, input_len=32, output_len=8, seed=1))
    assert record["kind"] == "synthetic"
    assert (record["n"], record["input_len"], record["output_len"], record["seed"]) == (
        20,
        32,
        8,
        1,
    )
    assert record["generator"]
    assert describe_dataset("synthetic")["input_len"] == 512
    assert describe_dataset("synthetic")["n"] is None
