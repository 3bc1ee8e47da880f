"""Datasets are read and checked in pre-flight, before the idle baseline and the model load;
a file is read once per run, streamed, and only as far as the run needs.

The run side uses the fake engine (``llenergymeasure.testing``): each bad file must stop the
run with a ``PreFlightError`` naming the file and line while the engine has loaded nothing.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llenergymeasure.cli.app import app
from llenergymeasure.config.bounds import DATASET_LINE_MAX_BYTES
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets.jsonl import scan_jsonl
from llenergymeasure.datasets.loader import prepare_dataset
from llenergymeasure.exceptions import ConfigError, PreFlightError
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.testing.energy import FakeEnergyBackend
from llenergymeasure.testing.engines import FakeEngine

runner = CliRunner()


def _rows(n: int) -> str:
    return "".join(json.dumps({"prompt": f"prompt number {i}"}) + "\n" for i in range(n))


def _config(dataset: Path, n: int = 4, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": "fake-model",
            "backend": "pytorch",
            "dataset": str(dataset),
            "n": n,
            "max_new_tokens": 4,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            **extra,
        }
    )


def _orchestrator(engine: FakeEngine, energy: FakeEnergyBackend | None = None) -> Any:
    return ExperimentOrchestrator(engine=engine, energy_backend=energy or FakeEnergyBackend())


def _finishes(fn: Any, timeout: float = 30.0) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "reading the dataset hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- each bad file stops the run before anything is loaded ----------------------------------


def _bad_json(path: Path) -> None:
    path.write_text(_rows(2) + '{"prompt": "three"\n' + _rows(3))


def _bad_encoding(path: Path) -> None:
    path.write_bytes(_rows(4).encode() + b'{"prompt": "caf\xe9"}\n' + _rows(2).encode())


def _too_few(path: Path) -> None:
    path.write_text(_rows(2))


def _huge_line(path: Path) -> None:
    with path.open("w") as fh:
        fh.write(_rows(1))
        fh.write(json.dumps({"prompt": "x" * (DATASET_LINE_MAX_BYTES + 10)}) + "\n")


def _not_an_object(path: Path) -> None:
    path.write_text(_rows(1) + '["a list"]\n')


def _max_new_tokens_out_of_range(path: Path) -> None:
    path.write_text(_rows(1) + json.dumps({"prompt": "p", "max_new_tokens": 10**9}) + "\n")


def _duplicate_key(path: Path) -> None:
    path.write_text(_rows(1) + '{"prompt": "a", "prompt": "b"}\n')


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        (_bad_json, ":3: invalid JSON"),
        (_bad_encoding, ":5: not UTF-8 text (byte 0xe9"),
        (_too_few, "has 2 prompts but 4 were asked for"),
        (_huge_line, ":2: line longer than 16 MiB"),
        (_not_an_object, ":2: expected a JSON object"),
        (_max_new_tokens_out_of_range, ":2: 'max_new_tokens' must be an integer in [1, 1,048,576]"),
        (_duplicate_key, ":2: invalid row (key 'prompt' appears twice)"),
    ],
)
def test_a_bad_dataset_stops_the_run_in_preflight_before_the_engine_loads(
    tmp_path: Path, write: Any, fragment: str
) -> None:
    path = tmp_path / "prompts.jsonl"
    write(path)
    engine = FakeEngine()
    energy = FakeEnergyBackend()
    with pytest.raises(PreFlightError) as err:
        _orchestrator(engine, energy).run(_config(path))
    message = str(err.value)
    assert f"{path}{fragment}" in message if fragment.startswith(":") else fragment in message
    assert str(path) in message
    assert err.value.exit_code == 2
    assert engine.loads == 0 and engine.calls == []
    assert energy.begin_calls == 0


def test_preflight_reports_the_dataset_with_every_other_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    _bad_json(path)
    engine = FakeEngine(problems=["engine not installed"])
    problems = _orchestrator(engine).preflight(_config(path))
    assert problems[0] == "engine not installed"
    assert any(f"{path}:3: invalid JSON" in p for p in problems)


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero"])
def test_a_dataset_that_is_not_a_regular_file_is_refused_without_hanging(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "prompts.jsonl"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(path)
    else:
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero here")
        path.symlink_to("/dev/zero")
    engine = FakeEngine()
    with pytest.raises(PreFlightError, match="not a regular file"):
        _finishes(lambda: _orchestrator(engine).run(_config(path)))
    assert engine.loads == 0


def test_dry_run_checks_the_dataset_file_like_preflight(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    _bad_encoding(data)
    config = tmp_path / "exp.yaml"
    config.write_text(f"model: m\nbackend: pytorch\ndataset: {data}\nn: 6\n")
    result = runner.invoke(app, ["run", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"{data}:5: not UTF-8 text" in result.output
    data.write_text(_rows(7))  # n + one warmup row
    assert runner.invoke(app, ["run", str(config), "--dry-run"]).exit_code == 0


def test_a_study_with_a_bad_dataset_stops_before_its_directory_exists(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    _too_few(data)
    study = tmp_path / "study.yaml"
    study.write_text(
        f"model: m\nbackend: pytorch\ndataset: {data}\nsweep:\n  n: [1, 3]\n"
        "execution: {n_cycles: 1}\n"
    )
    out = tmp_path / "results"
    result = runner.invoke(app, ["run", str(study), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "has 2 prompts but n=3 were asked for" in result.output
    assert not out.exists()


def test_a_cli_run_stops_at_the_dataset_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(PyTorchBackend, "load", no_load)
    data = tmp_path / "prompts.jsonl"
    _bad_json(data)
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"model: builtin:tiny\nbackend: pytorch\nprecision: fp32\ndataset: {data}\nn: 3\n"
        "warmup: {n_warmup: 0, thermal_floor_seconds: 0}\nbaseline: {enabled: false}\n"
    )
    out = tmp_path / "results"
    result = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{data}:3: invalid JSON" in result.output
    assert not out.exists() or not any(out.iterdir())


# --- read once, streamed ------------------------------------------------------------------------


class _OpenCounter:
    """Counts every open of one path through os.open, open() and io.open."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.target = os.path.realpath(path)
        self.count = 0
        for module, name in ((os, "open"), (builtins, "open"), (io, "open")):
            original = getattr(module, name)
            monkeypatch.setattr(module, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def counted(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, bytes, os.PathLike)):
                try:
                    if os.path.realpath(os.fsdecode(file)) == self.target:
                        self.count += 1
                except (TypeError, ValueError):
                    pass
            return original(file, *args, **kwargs)

        return counted


def test_a_run_reads_its_dataset_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(_rows(50))
    config = _config(
        path,
        n=4,
        pytorch={"batch_size": 2},
        warmup={"n_warmup": 2, "thermal_floor_seconds": 0},
        measurement={"phase_split": True},  # warmup prompts are taken twice
    )
    engine = FakeEngine(output_tokens=2, seconds_per_token=0.0)
    opens = _OpenCounter(path, monkeypatch)
    result = _orchestrator(engine).run(config).result

    assert opens.count == 1
    assert engine.loads == 1
    assert [phase for phase, _ in engine.calls].count("measurement") == 1
    assert result.warmup.prompt_source == "dataset rows 4..5 (after the 4 measured)"
    assert result.dataset["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.dataset["n_available"] is None  # parsing stopped at the rows it needed


def test_the_prompts_measured_are_the_first_n_rows(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(_rows(10))
    engine = FakeEngine(output_tokens=1, seconds_per_token=0.0)
    measured: list[str] = []
    original = engine.prepare

    def prepare(prompts: Any, config: Any, *, phase: str = "measurement") -> Any:
        if phase == "measurement":
            measured.extend(p.text for p in prompts)
        return original(prompts, config, phase=phase)

    engine.prepare = prepare  # type: ignore[method-assign]
    _orchestrator(engine).run(_config(path, n=3))
    assert measured == [f"prompt number {i}" for i in range(3)]


def test_parsing_stops_after_the_rows_needed_and_the_rest_is_only_hashed(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(_rows(5) + "this line is not JSON\n" + _rows(5))
    scan = scan_jsonl(path, limit=5)
    assert [p.index for p in scan.prompts] == [0, 1, 2, 3, 4]
    assert not scan.complete
    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert scan.size_bytes == path.stat().st_size
    with pytest.raises(ConfigError, match=r":6: invalid JSON"):
        scan_jsonl(path, limit=6)


def test_a_big_file_is_streamed_not_held(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for _ in range(40):
            fh.write(_rows(5_000))
    size = path.stat().st_size
    assert size > 5 * 2**20

    tracemalloc.start()
    try:
        prepared = prepare_dataset(str(path), 10, extra=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(prepared.rows or ()) == 12
    assert peak < size / 2, f"peak {peak} bytes for a file of {size}"
    assert prepared.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_whole_file_description_counts_every_prompt(tmp_path: Path) -> None:
    from llenergymeasure.datasets import describe_dataset

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"_meta": 1}\n' + _rows(7))
    assert describe_dataset(path)["n_available"] == 7
    assert prepare_dataset(str(path), 7).provenance["n_available"] == 7  # read to the end


def test_an_online_run_reads_its_dataset_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_openai_server import FakeOpenAIServer

    from llenergymeasure.harness.online import measure_online
    from llenergymeasure.harness.settings import MeasurementSettings

    path = tmp_path / "prompts.jsonl"
    path.write_text(_rows(20))
    with FakeOpenAIServer() as server:
        config = ExperimentConfig.model_validate(
            {
                "model": "org/served-model",
                "backend": "vllm",
                "dataset": str(path),
                "n": 3,
                "max_new_tokens": 2,
                "baseline": {"enabled": False},
                "mode": "online",
                "online": {"endpoint": server.url, "n_warmup_requests": 0},
            }
        )
        opens = _OpenCounter(path, monkeypatch)
        measured = measure_online(
            config,
            sensor=None,
            settings=MeasurementSettings(energy_backend="none"),
            work_dir=tmp_path,
        )
    assert opens.count == 1
    assert measured.result.online is not None and measured.result.online.metrics.n_ok == 3
    assert measured.result.dataset["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_online_run_with_a_bad_dataset_starts_no_server(tmp_path: Path) -> None:
    from llenergymeasure.harness.online import measure_online
    from llenergymeasure.harness.settings import MeasurementSettings

    path = tmp_path / "prompts.jsonl"
    _bad_json(path)
    started: list[Any] = []

    def server_factory(*args: Any, **kwargs: Any) -> Any:
        started.append(args)
        raise AssertionError("a server was started")

    config = ExperimentConfig.model_validate(
        {
            "model": "org/served-model",
            "backend": "vllm",
            "dataset": str(path),
            "n": 4,
            "mode": "online",
            "online": {"endpoint": "http://127.0.0.1:9"},
        }
    )
    with pytest.raises(PreFlightError, match=r"prompts\.jsonl:3: invalid JSON"):
        measure_online(
            config,
            sensor=None,
            settings=MeasurementSettings(energy_backend="none"),
            server_factory=server_factory,
        )
    assert started == []
