"""The config YAML reader: regular files of bounded size, no duplicate keys, YAML 1.2 numbers.

Every config file llem reads (experiment, study, ``base:``, user config) goes through
``config.yaml_reader``; these tests drive it directly and through ``llem run``.
"""

from __future__ import annotations

import math
import os
import string
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.bounds import CONFIG_FILE_MAX_BYTES, YAML_MAX_DEPTH
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.config.user_config import load_user_config
from llenergymeasure.config.yaml_reader import parse_yaml, read_config_bytes, read_yaml_file
from llenergymeasure.exceptions import ConfigError

runner = CliRunner()
EXPERIMENT = "model: m\nbackend: pytorch\n"


def _finishes(fn: Any, timeout: float = 30.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "reading the config hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- duplicate keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "first", "again"),
    [
        ("model: m\nbackend: pytorch\nmodel: other\n", "model", 1, 3),
        ("model: m\nwarmup:\n  n_warmup: 1\n  thermal_floor_seconds: 0\n  n_warmup: 2\n",
         "n_warmup", 3, 5),
        ("online:\n  server:\n    extra_args: []\n    port: 8000\n    port: 8001\n", "port", 4, 5),
        ("experiments:\n  - backend: pytorch\n    n: 1\n    n: 2\n", "n", 3, 4),
        ("sweep: {n: [1, 2], n: [3]}\n", "n", 1, 1),
    ],
)  # fmt: skip
def test_a_duplicate_key_at_any_depth_names_the_key_and_both_lines(
    text: str, key: str, first: int, again: int
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml(text, source="exp.yaml")
    message = str(err.value)
    assert f"duplicate key '{key}': first on line {first}, again on line {again}" in message
    assert message.startswith(f"exp.yaml:{again}:")


def _nested_yaml(data: dict[str, Any], indent: int = 0) -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            lines += _nested_yaml(value, indent + 2)
        else:
            lines.append(" " * indent + f"{key}: {value if not isinstance(value, dict) else '{}'}")
    return lines


_KEYS = st.text(string.ascii_lowercase, min_size=1, max_size=6).map(lambda k: f"k_{k}")
_TREES = st.recursive(
    st.integers(0, 9),
    lambda children: st.dictionaries(_KEYS, children, min_size=1, max_size=4),
    max_leaves=20,
).filter(lambda tree: isinstance(tree, dict))


@settings(max_examples=150, deadline=None)
@given(tree=_TREES, data=st.data())
def test_a_key_repeated_in_any_mapping_of_any_document_is_refused(
    tree: dict[str, Any], data: st.DataObject
) -> None:
    lines = _nested_yaml(tree)
    assert parse_yaml("\n".join(lines) + "\n").data == tree  # the document itself is fine
    leaves = [i for i, line in enumerate(lines) if not line.endswith(":")]
    i = data.draw(st.sampled_from(leaves))
    key = lines[i].strip().split(":")[0]
    copy = [*lines[: i + 1], lines[i], *lines[i + 1 :]]  # the same key again, same mapping
    with pytest.raises(ConfigError, match=f"duplicate key '{key}': first on line {i + 1}, again"):
        parse_yaml("\n".join(copy) + "\n")


def test_merge_keys_may_be_overridden_by_the_mapping_that_merges_them() -> None:
    data = parse_yaml("base: &b {n: 1, m: x}\nexp:\n  <<: *b\n  n: 2\n").data
    assert data["exp"] == {"n": 2, "m": "x"}


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("1e-9", 1e-9),
        ("1e3", 1000.0),
        ("1E+3", 1000.0),
        ("-2.5e-3", -0.0025),
        ("6.02e23", 6.02e23),
        (".5", 0.5),
        ("1.0", 1.0),
        ("1_000.5", 1000.5),
        (".inf", math.inf),
    ],
)
def test_numbers_with_an_exponent_are_numbers(written: str, value: float) -> None:
    assert parse_yaml(f"x: {written}\n").data["x"] == value


@pytest.mark.parametrize("written", ["'1e3'", '"1e-9"', "1e", "e3", "1.2.3", "v1e3", "0x1F"])
def test_strings_stay_strings(written: str) -> None:
    value = parse_yaml(f"x: {written}\n").data["x"]
    assert value == yaml.safe_load(f"x: {written}\n")["x"]


@settings(max_examples=300, deadline=None)
@given(
    mantissa=st.from_regex(r"-?(0|[1-9][0-9]{0,5})(\.[0-9]{1,5})?", fullmatch=True),
    sign=st.sampled_from(["", "+", "-"]),
    exponent=st.integers(0, 300),
    letter=st.sampled_from(["e", "E"]),
)
def test_every_json_style_number_is_read_as_python_reads_it(
    mantissa: str, sign: str, exponent: int, letter: str
) -> None:
    written = f"{mantissa}{letter}{sign}{exponent}"
    assert parse_yaml(f"x: {written}\n").data["x"] == float(written)


def test_a_number_in_scientific_notation_sets_a_field(write_yaml: Any) -> None:
    path = write_yaml(
        "model: m\nbackend: pytorch\nn: 1e3\ndecoder:\n  temperature: 1e-9\n"
        "warmup:\n  thermal_floor_seconds: 3e1\n"
    )
    config = ExperimentConfig.from_yaml(path)
    assert (config.n, config.decoder.temperature) == (1000, 1e-9)
    assert config.warmup.thermal_floor_seconds == 30.0


# --- what kind of file, how big --------------------------------------------------------------


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml_file(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO"):
        _finishes(lambda: read_yaml_file(fifo))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    for path in (Path("/dev/zero"), link):
        with pytest.raises(ConfigError, match="character device"):
            _finishes(lambda p=path: read_yaml_file(p))


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text(EXPERIMENT)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert read_yaml_file(link).data == {"model": "m", "backend": "pytorch"}


def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    body = EXPERIMENT + "#"
    path.write_text(body + "x" * (CONFIG_FILE_MAX_BYTES - len(body) - 1) + "\n")
    assert path.stat().st_size == CONFIG_FILE_MAX_BYTES
    assert read_yaml_file(path).data["model"] == "m"
    with path.open("a") as fh:
        fh.write("\n")
    with pytest.raises(ConfigError, match="larger than 1,024 KiB"):
        read_yaml_file(path)


def test_a_file_that_grows_after_its_size_was_checked_is_caught_while_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing.yaml"
    path.write_text("x" * 5000)
    real_fstat = os.fstat

    class Small:  # what fstat said before the file grew
        def __init__(self, st: os.stat_result) -> None:
            self.st_mode, self.st_size = st.st_mode, 10

    monkeypatch.setattr(os, "fstat", lambda fd: Small(real_fstat(fd)))
    with pytest.raises(ConfigError, match="larger than"):
        read_config_bytes(path, limit=4096)


def test_text_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model: m\nbackend: pytorch\nname: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(line 3"):
        read_yaml_file(path)


# --- aliases and nesting ---------------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    for prev, name in zip("abcde", "bcdef", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(ConfigError, match="expands to more than 1,000,000 values"):
        _finishes(lambda: parse_yaml("\n".join(lines) + "\n"))


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="alias refers to a node that contains it"):
        parse_yaml("passthrough_kwargs: &a {x: *a}\n")


@pytest.mark.parametrize("depth", [YAML_MAX_DEPTH + 1, 5_000])
def test_nesting_deeper_than_the_limit_is_refused(depth: int) -> None:
    with pytest.raises(ConfigError, match="nested"):
        parse_yaml("x: " + "[" * depth + "]" * depth + "\n")


# --- every config file goes through it -------------------------------------------------------


def test_a_study_file_refuses_a_duplicate_in_its_sweep(write_yaml: Any) -> None:
    path = write_yaml("model: m\nbackend: pytorch\nsweep:\n  n: [1, 2]\n  n: [3]\n", "study.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'n': first on line 4, again on line 5"):
        StudyConfig.from_yaml(path)


def test_a_study_base_file_goes_through_the_same_reader(write_yaml: Any) -> None:
    write_yaml("model: m\nbackend: pytorch\nn: 1\nn: 2\n", "base.yaml")
    study = write_yaml("base: base.yaml\nsweep:\n  max_new_tokens: [1, 2]\n", "study.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'n'"):
        StudyConfig.from_yaml(study)


def test_the_user_config_goes_through_the_same_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("output:\n  results_dir: a\n  results_dir: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'results_dir'"):
        load_user_config(user)
    user.write_text("")
    assert load_user_config(user).output.results_dir == "./results"  # empty = defaults
    user.unlink()
    user.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_user_config(user)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("role", ["experiment", "user config"])
def test_llem_run_exits_2_on_a_fifo_config_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    config = fifo
    if role == "user config":
        monkeypatch.setenv("LLEM_CONFIG", str(fifo))
        config = tmp_path / "exp.yaml"
        config.write_text(EXPERIMENT)
    result = _finishes(lambda: runner.invoke(app, ["run", str(config), "--dry-run"]))
    assert result.exit_code == 2, result.output
    assert f"{fifo} is a FIFO (named pipe), not a regular YAML file" in result.output


def test_llem_run_exits_2_naming_a_duplicate_key(write_yaml: Any) -> None:
    path = write_yaml("model: m\nbackend: pytorch\ndecoder:\n  top_k: 5\n  top_k: 6\n")
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "duplicate key 'top_k': first on line 4, again on line 5" in result.output
    assert "hint:" in result.output
