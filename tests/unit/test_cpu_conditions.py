"""A CPU run records what its figures depend on (threads, their settings, host load, governor)
and says when the host was oversubscribed (issue 29, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.null_backend import NullEnergyBackend
from llenergymeasure.harness.environment import (
    cgroup_cpu_limit,
    compute_threads,
    cpu_governor,
    oversubscription,
    thread_environment,
    torch_threads,
)
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.results.environment import CpuConditions
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.testing.energy import SwitchingSensor
from llenergymeasure.testing.engines import FakeEngine

HOST_CPUS = os.cpu_count() or 1


def _config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": "fake-model",
            "backend": "pytorch",
            "dataset": {"n": 3, "input_len": 8, "output_len": 4},
            "n": 3,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
        }
    )


def _loads(*values: float, log: list[str] | None = None) -> Callable[[], tuple[float, ...]]:
    """A load-average reader returning ``values`` in turn as the 1-minute figure."""
    queue = list(values)

    def read() -> tuple[float, float, float]:
        if log is not None:
            log.append("load")
        one = queue.pop(0)
        return (one, 1.0, 0.5)

    return read


def _cpu_run(
    load: Callable[[], tuple[float, ...]], engine: FakeEngine | None = None
) -> ExperimentResult:
    orch = ExperimentOrchestrator(
        engine=engine or FakeEngine(),
        energy_backend=NullEnergyBackend(),
        sensor=None,
        settings=MeasurementSettings(),
        load_average=load,  # type: ignore[arg-type]
    )
    return orch.run(_config()).result


# -- what the environment records -----------------------------------------------------------


def test_a_cpu_run_records_threads_settings_usable_cpus_governor_and_the_window_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("KMP_AFFINITY", "granularity=fine")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    result = _cpu_run(_loads(0.25, 0.75))

    cpu = result.environment.cpu_conditions
    assert cpu is not None
    assert cpu.thread_env["OMP_NUM_THREADS"] == "3"
    assert cpu.thread_env["KMP_AFFINITY"] == "granularity=fine"
    assert "MKL_NUM_THREADS" not in cpu.thread_env  # absent = not set
    assert cpu.usable_cpus == len(os.sched_getaffinity(0))
    assert cpu.host_cpus == HOST_CPUS
    assert cpu.cpu_governor == cpu_governor()
    assert cpu.load_average_start == [0.25, 1.0, 0.5]
    assert cpu.load_average_end == [0.75, 1.0, 0.5]


def test_the_load_is_read_just_before_and_just_after_the_measured_generate() -> None:
    events: list[str] = []
    engine = FakeEngine(on_generate=events.append)
    _cpu_run(_loads(0.1, 0.2, log=events), engine)
    assert events == ["warmup", "load", "measurement", "load"]


def test_the_conditions_survive_the_json_round_trip(tmp_path: Path) -> None:
    result = _cpu_run(_loads(0.5, 0.5))
    path = tmp_path / "result.json"
    result.to_json(path)
    assert ExperimentResult.from_json(path).environment == result.environment


def test_thread_settings_are_the_omp_mkl_kmp_and_openblas_variables_that_are_set() -> None:
    environ = {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "1",
        "KMP_BLOCKTIME": "0",
        "PATH": "/usr/bin",
        "NUMEXPR_MAX_THREADS": "8",
    }
    assert thread_environment(environ) == {
        "KMP_BLOCKTIME": "0",
        "MKL_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "1",
    }


def test_torch_threads_come_from_an_imported_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(
        get_num_threads=lambda: 5,
        get_num_interop_threads=lambda: 3,
        version=types.SimpleNamespace(cuda=None),
    )
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert torch_threads() == (5, 3)
    result = _cpu_run(_loads(0.0, 0.0))
    cpu = result.environment.cpu_conditions
    assert cpu is not None
    assert (cpu.torch_num_threads, cpu.torch_num_interop_threads) == (5, 3)


def test_a_run_without_torch_neither_imports_it_nor_reports_torch_threads() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    code = """
import sys
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.energy.null_backend import NullEnergyBackend
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator
from llenergymeasure.testing.engines import FakeEngine
config = ExperimentConfig.model_validate({
    "model": "fake-model", "backend": "pytorch", "n": 2,
    "dataset": {"n": 2, "input_len": 8, "output_len": 4},
    "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0}, "baseline": {"enabled": False},
})
result = ExperimentOrchestrator(FakeEngine(), NullEnergyBackend()).run(config).result
cpu = result.environment.cpu_conditions
assert cpu is not None and cpu.usable_cpus
assert cpu.torch_num_threads is None and cpu.torch_num_interop_threads is None, cpu
assert "torch" not in sys.modules, "a run without torch imported torch"
"""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_the_governor_is_read_from_cpufreq_and_unknown_where_absent(tmp_path: Path) -> None:
    for cpu, governor in ((0, "performance"), (1, "performance"), (2, "powersave")):
        folder = tmp_path / f"cpu{cpu}" / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_governor").write_text(governor + "\n")
    assert cpu_governor([0, 1], root=tmp_path) == "performance"
    assert cpu_governor([0, 1, 2], root=tmp_path) == "performance,powersave"
    assert cpu_governor([3], root=tmp_path) == "unknown"


@pytest.mark.parametrize(
    ("content", "expected"),
    [("200000 100000\n", 2.0), ("50000 100000\n", 0.5), ("max 100000\n", None), (None, None)],
)
def test_the_cgroup_quota_is_read_in_cpus(
    tmp_path: Path, content: str | None, expected: float | None
) -> None:
    path = tmp_path / "cpu.max"
    if content is not None:
        path.write_text(content)
    assert cgroup_cpu_limit(path) == expected


# -- host_oversubscribed ----------------------------------------------------------------------


def _conditions(**overrides: object) -> CpuConditions:
    data: dict[str, object] = {
        "usable_cpus": 4,
        "host_cpus": 8,
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [1.0, 1.0, 1.0],
    }
    data.update(overrides)
    return CpuConditions.model_validate(data)


def test_a_load_above_the_host_cpus_during_a_cpu_run_warns() -> None:
    result = _cpu_run(_loads(0.5, HOST_CPUS + 1.5))
    assert "host_oversubscribed" in result.measurement_warnings
    cpu = result.environment.cpu_conditions
    assert cpu is not None
    assert cpu.oversubscribed == [
        f"1-minute load average {HOST_CPUS + 1.5:.2f} when the window closed, above the "
        f"host's {HOST_CPUS} logical CPUs"
    ]


def test_a_load_up_to_the_host_cpus_does_not_warn() -> None:
    result = _cpu_run(_loads(float(HOST_CPUS), float(HOST_CPUS)))
    assert "host_oversubscribed" not in result.measurement_warnings
    assert result.environment.cpu_conditions is not None
    assert result.environment.cpu_conditions.oversubscribed == []


def test_an_unknown_load_does_not_warn() -> None:
    orch = ExperimentOrchestrator(FakeEngine(), NullEnergyBackend(), load_average=lambda: None)
    result = orch.run(_config()).result
    cpu = result.environment.cpu_conditions
    assert cpu is not None and cpu.load_average_start is None and cpu.load_average_end is None
    assert "host_oversubscribed" not in result.measurement_warnings


def test_more_compute_threads_than_usable_cpus_is_oversubscription() -> None:
    assert oversubscription(_conditions(torch_num_threads=4), cpu_run=True) == []
    assert oversubscription(_conditions(torch_num_threads=5), cpu_run=True) == [
        "5 compute threads on 4 usable CPUs"
    ]


def test_a_cgroup_quota_lowers_the_usable_cpus() -> None:
    conditions = _conditions(torch_num_threads=4, cgroup_cpu_limit=2.0)
    assert oversubscription(conditions, cpu_run=True) == ["4 compute threads on 2 usable CPUs"]


def test_without_torch_omp_num_threads_counts_as_the_compute_threads() -> None:
    conditions = _conditions(thread_env={"OMP_NUM_THREADS": "6,2"})
    assert compute_threads(conditions) == 6
    assert oversubscription(conditions, cpu_run=True) == ["6 compute threads on 4 usable CPUs"]
    assert compute_threads(_conditions(thread_env={"OMP_NUM_THREADS": "auto"})) is None


def test_torch_threads_win_over_omp_num_threads() -> None:
    # torch clamps OMP_NUM_THREADS to the machine: its own count is what runs
    conditions = _conditions(torch_num_threads=2, thread_env={"OMP_NUM_THREADS": "16"})
    assert compute_threads(conditions) == 2
    assert oversubscription(conditions, cpu_run=True) == []


def test_the_load_is_compared_with_the_host_cpus_not_the_pinned_ones() -> None:
    # pinned to 4 of 8 CPUs: a host load of 6 is work on the other CPUs, not on ours
    assert oversubscription(_conditions(load_average_end=[6.0, 1, 1]), cpu_run=True) == []
    assert len(oversubscription(_conditions(load_average_start=[8.5, 1, 1]), cpu_run=True)) == 1


def test_gpu_runs_never_carry_the_warning() -> None:
    busy = _conditions(torch_num_threads=64, load_average_end=[99.0, 1, 1])
    assert oversubscription(busy, cpu_run=False) == []

    sensor = SwitchingSensor()
    from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
    from llenergymeasure.energy.sampler import EnergySampler

    orch = ExperimentOrchestrator(
        engine=FakeEngine(),
        energy_backend=NvmlEnergyBackend(sensor, EnergySampler(sensor, interval_ms=10)),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=10),
        load_average=_loads(HOST_CPUS + 10.0, HOST_CPUS + 10.0),  # type: ignore[arg-type]
    )
    result = orch.run(_config()).result
    assert result.environment.gpus
    assert "host_oversubscribed" not in result.measurement_warnings
