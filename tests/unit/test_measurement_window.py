"""One measurement window for every energy window, opened and closed in the documented order.

docs/methodology.md, section 1, step 8: the sampler's label and one sample, the peak-memory
reset, the host's RAPL counters, a device sync, the energy backend's ``begin()``, the engine's
run and nothing else, a sync, ``end()``, RAPL, the ``cooldown`` label and one sample. Prompts
are prepared before the window and records are built after it. The offline run, the
prefill-only window and the online load are each driven through fakes here.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_openai_server import FakeOpenAIServer

import llenergymeasure
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.base import EnergyMeasurement
from llenergymeasure.energy.rapl import HostEnergyMeasurement, RaplReader
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.energy.window import MeasurementWindow
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.online.run import run_online
from llenergymeasure.testing.energy import FakeEnergyBackend, FakeGpuSensor
from llenergymeasure.testing.engines import FakeEngine

SRC = Path(llenergymeasure.__file__).parent

Log = list[str]


class LoggingSampler(EnergySampler):
    """A real sampler over a fake sensor that logs its labels and synchronous samples."""

    def __init__(self, log: Log) -> None:
        super().__init__(FakeGpuSensor(n_devices=1), interval_ms=50)
        self.log = log

    def set_phase(self, phase: str) -> None:
        self.log.append(f"phase:{phase}")
        super().set_phase(phase)

    def sample_now(self) -> None:
        self.log.append("sample")
        super().sample_now()


class LoggingBackend(FakeEnergyBackend):
    """A fake energy backend that logs ``begin``/``end`` (and what ``on_begin`` says then)."""

    def __init__(
        self, log: Log, sampler: EnergySampler | None = None, on_edge: Callable[[], str] = str
    ) -> None:
        super().__init__(100.0)
        self.log = log
        self.sampler = sampler  # the orchestrator samples with the backend's own sampler
        self.on_edge = on_edge

    def begin(self) -> None:
        self.log.append("energy.begin" + self.on_edge())
        super().begin()

    def end(self) -> EnergyMeasurement:
        self.log.append("energy.end" + self.on_edge())
        return super().end()


class LoggingRapl(RaplReader):
    def __init__(self, log: Log, root: Path) -> None:
        super().__init__(root=root)
        self.log = log

    def begin(self) -> None:
        self.log.append("rapl.begin")
        super().begin()

    def end(self) -> HostEnergyMeasurement:
        self.log.append("rapl.end")
        return super().end()


def powercap(tmp_path: Path) -> Path:
    """A one-package RAPL tree (the kernel's layout)."""
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("1000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return tmp_path / "powercap"


def logging_engine(log: Log) -> FakeEngine:
    engine = FakeEngine(output_tokens=3, seconds_per_token=0.0, on_event=log.append)
    engine.tokenizer.on_call = lambda what: log.append("tokenize")
    return engine


def config(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": "fake-model",
        "backend": "pytorch",
        "dataset": {"n": 3, "input_len": 4, "output_len": 3},
        "n": 3,
        "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
        "baseline": {"enabled": False},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def windows(log: Log) -> list[Log]:
    """Each energy window's events, from the prepare before it to the records after it
    (tokenizer calls left out: they are checked apart)."""
    out: list[Log] = []
    for i, event in enumerate(log):
        if event == "energy.begin":
            start = max(j for j in range(i) if log[j] == "prepare")
            end = log.index("records", i)
            out.append([e for e in log[start : end + 1] if e != "tokenize"])
    return out


OFFLINE_WINDOW = [
    "prepare",
    "phase:measurement",
    "sample",
    "reset_peak_memory",
    "rapl.begin",
    "synchronize",
    "energy.begin",
    "execute",
    "synchronize",
    "energy.end",
    "rapl.end",
    "phase:cooldown",
    "sample",
    "records",
]

PREFILL_WINDOW = [
    "prepare",
    "phase:prefill_window",
    "sample",
    "synchronize",
    "energy.begin",
    "execute",
    "synchronize",
    "energy.end",
    "phase:cooldown",
    "sample",
    "records",
]


def run_offline(tmp_path: Path, **overrides: Any) -> Log:
    log: Log = []
    sampler = LoggingSampler(log)
    orchestrator = ExperimentOrchestrator(
        engine=logging_engine(log),
        energy_backend=LoggingBackend(log, sampler),
        sensor=sampler.sensor,
        settings=MeasurementSettings(sampling_interval_ms=50),
        rapl_reader=LoggingRapl(log, powercap(tmp_path)),
    )
    orchestrator.run(config(**overrides))
    return log


def test_the_offline_window_opens_and_closes_in_the_documented_order(tmp_path: Path) -> None:
    log = run_offline(tmp_path)
    (window,) = windows(log)
    assert window == OFFLINE_WINDOW


def test_the_prefill_only_window_opens_and_closes_like_the_measurement_window(
    tmp_path: Path,
) -> None:
    log = run_offline(tmp_path, measurement={"phase_split": True})
    measurement, prefill = windows(log)
    assert measurement == OFFLINE_WINDOW
    assert prefill == PREFILL_WINDOW  # no peak-memory reset and no RAPL reading


def test_no_tokenizer_call_and_no_record_is_built_inside_any_window(tmp_path: Path) -> None:
    log = run_offline(tmp_path, measurement={"phase_split": True})
    opened = [i for i, e in enumerate(log) if e == "energy.begin"]
    closed = [i for i, e in enumerate(log) if e == "energy.end"]
    assert len(opened) == len(closed) == 2
    for start, end in zip(opened, closed, strict=True):
        inside = log[start:end]
        assert inside.count("tokenize") == 0
        assert inside.count("records") == 0
        assert [e for e in inside if e not in ("synchronize",)] == ["energy.begin", "execute"]
    assert log.count("tokenize") > 0 and log.count("records") > 0  # they do happen, outside


def test_the_online_window_brackets_the_measured_requests_and_nothing_else(
    tmp_path: Path,
) -> None:
    log: Log = []
    sampler = LoggingSampler(log)
    with FakeOpenAIServer() as server:
        backend = LoggingBackend(log, on_edge=lambda: f" after {len(server.bodies)} requests")
        window = MeasurementWindow(backend, sampler=sampler)
        run_online(
            ExperimentConfig(
                model="org/m",
                backend="vllm",
                mode="online",
                n=4,
                max_new_tokens=2,
                online={"endpoint": server.url, "n_warmup_requests": 2},
            ),
            [f"prompt {i}" for i in range(4)],
            output_dir=tmp_path,
            window=window,
        )
    assert log == [
        "phase:measurement",
        "sample",
        "energy.begin after 2 requests",  # the two warmups are done, no measured one sent
        "energy.end after 6 requests",  # every measured response is in
        "phase:cooldown",
        "sample",
    ]
    assert window.reading.energy.total_energy_j == 100.0
    t0, t1 = window.reading.span
    assert t0 < t1


def test_a_window_that_fails_inside_still_closes_the_backend_and_keeps_the_error() -> None:
    log: Log = []
    backend = LoggingBackend(log)
    window = MeasurementWindow(backend)
    with pytest.raises(RuntimeError, match="boom"), window:
        raise RuntimeError("boom")
    assert log == ["energy.begin", "energy.end"]
    with pytest.raises(RuntimeError, match="has not been closed"):
        _ = window.reading


def test_a_broken_rapl_tree_never_stops_the_window_and_says_why(tmp_path: Path) -> None:
    window = MeasurementWindow(FakeEnergyBackend(), host=RaplReader(root=tmp_path / "nowhere"))
    with window:
        pass
    host = window.reading.host
    assert host is not None and not host.available
    assert "no powercap tree" in (host.reason or "")


def calls_outside_the_window_module(attr: str) -> list[str]:
    """``x.<attr>()`` calls (no arguments) in src, outside ``energy/window.py``."""
    found = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "energy" / "window.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == attr
                and not node.args
                and not node.keywords
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_but_the_window_opens_or_closes_an_energy_window() -> None:
    # energy backends' begin()/end() and the RAPL reader's are called by MeasurementWindow only
    assert calls_outside_the_window_module("begin") == []
    assert calls_outside_the_window_module("end") == []
