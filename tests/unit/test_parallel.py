"""Data parallelism (``pytorch.num_processes``): sharding, device mapping, pre-flight, and the whole
multi-process path through the orchestrator, on CPU, with injected replica engines and sensors.

Replica engines are top-level classes of this module so that spawned processes can unpickle them.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.datasets import Prompt
from llenergymeasure.energy.nvml_backend import NvmlEnergyBackend
from llenergymeasure.energy.sampler import EnergySampler
from llenergymeasure.engines import data_parallel as parallel
from llenergymeasure.engines.base import (
    InferenceBackend,
    LoadInfo,
    PreparedRun,
    RawRun,
    RequestRecord,
    prompt_limits,
)
from llenergymeasure.engines.data_parallel import (
    DataParallelEngine,
    DeviceSlot,
    cpu_slots,
    data_parallel_nvml_indices,
    shard_contiguous,
    visible_gpu_slots,
)
from llenergymeasure.exceptions import BackendError
from llenergymeasure.harness.orchestrator import ExperimentOrchestrator, MeasurementSettings
from llenergymeasure.testing.energy import (
    FakeClock,
    FakeEnergyBackend,
    FakeGpuSensor,
    FakeNvmlDevice,
    FakeNvmlModule,
)
from llenergymeasure.testing.engines import FakeTokenizer

# ─── Replica engines (run inside the spawned processes) ─────────────────────────


class ScriptedReplica(InferenceBackend):
    """A replica whose per-request latency is scripted by prompt index.

    Prompts 0-2 take 1 s, later prompts 4 s; ``batch_index`` carries the pid of the process
    that ran the request (so tests can see which process did what).
    """

    name = "scripted"

    def __init__(self, device: str) -> None:
        self.device = device
        self._tokenizer = FakeTokenizer()
        self.fail_on_index: int | None = None
        self.exit_on_index: int | None = None

    def version(self) -> str:
        return "1.0-scripted"

    def preflight(self, config: ExperimentConfig) -> list[str]:
        return (
            ["replica saw num_processes"] if config.pytorch and config.pytorch.num_processes else []
        )

    def load(self, config: ExperimentConfig) -> LoadInfo:
        return LoadInfo(
            load_time_s=0.01, parameter_count=1000, model_dtype="fake", device=self.device
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def prepare(
        self, prompts: Sequence[Prompt], config: ExperimentConfig, *, phase: str = "measurement"
    ) -> PreparedRun:
        return PreparedRun(list(prompts), config, phase, prompt_limits(prompts, config))

    def execute(self, prepared: PreparedRun, *, on_batch: Any = None) -> RawRun:
        for p in prepared.prompts:
            if p.index == self.fail_on_index:
                raise BackendError(f"scripted failure on prompt {p.index}", hint="scripted hint")
            if p.index == self.exit_on_index:
                os._exit(3)
        return RawRun(prepared, os.getpid())

    def records(self, raw: RawRun) -> list[RequestRecord]:
        records = []
        for p in raw.prepared.prompts:
            latency = 1.0 if p.index < 3 else 4.0
            records.append(
                RequestRecord(
                    index=p.index,
                    input_tokens=len(p.text.split()),
                    output_tokens=4,
                    latency_s=latency,
                    ttft_s=latency / 4,
                    itl_s=[latency / 4] * 3,
                    batch_index=raw.payload,
                )
            )
        return records

    def synchronize(self) -> None:
        pass

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        return {"engine": "scripted", "device": self.device, "num_processes": 1}

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory_bytes(self) -> int | None:
        return 1000 + os.getpid() % 7

    def clear_run_state(self) -> list[str]:
        return [f"scripted replica in process {os.getpid()}: nothing cached"]

    def unload(self) -> None:
        pass


class FailingReplica(ScriptedReplica):
    """Raises in ``generate`` on prompt 3 (which lies in process 1's shard of 5 prompts)."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.fail_on_index = 3


class DyingReplica(ScriptedReplica):
    """Exits the process hard on prompt 3 (process 1's shard)."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.exit_on_index = 3


class UnloadableReplica(ScriptedReplica):
    """Cannot load its model."""

    def load(self, config: ExperimentConfig) -> LoadInfo:
        raise BackendError("could not load model 'nope'", hint="check the model id")


def dp_config(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": "fake-model",
        "backend": "pytorch",
        "dataset": {"n": 5, "input_len": 8, "output_len": 4},
        "n": 5,
        "pytorch": {"num_processes": 2},
        "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
        "baseline": {"duration_seconds": 0.2},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"prompt number {i}", index=i) for i in range(n)]


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU discovery finds nothing, whatever machine the tests run on."""
    monkeypatch.setattr(parallel, "visible_gpu_slots", lambda **_: [])


# ─── Sharding ───────────────────────────────────────────────────────────────────


def test_shards_are_contiguous_in_dataset_order_with_the_larger_shards_first() -> None:
    assert shard_contiguous([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert shard_contiguous(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard_contiguous([0, 1], 3) == [[0], [1], []]
    for n_items in range(0, 12):
        for k in range(1, 5):
            shards = shard_contiguous(list(range(n_items)), k)
            assert len(shards) == k
            assert [x for s in shards for x in s] == list(range(n_items))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        shard_contiguous([1], 0)


# ─── Devices ────────────────────────────────────────────────────────────────────


def four_gpus() -> FakeNvmlModule:
    return FakeNvmlModule(devices=[FakeNvmlDevice(uuid=f"GPU-{c * 4}-0000") for c in "abcd"])


def test_visible_gpus_are_mapped_to_nvml_devices_by_uuid_and_pinned_by_uuid() -> None:
    slots = visible_gpu_slots(
        nvml=four_gpus(), cuda_visible_devices="GPU-cccc,GPU-aaaa", use_env=False
    )
    assert [s.label for s in slots] == ["cuda:0", "cuda:1"]
    assert [s.nvml_index for s in slots] == [2, 0]
    assert [s.uuid for s in slots] == ["GPU-cccc-0000", "GPU-aaaa-0000"]
    # each child sees only its own GPU, as cuda:0
    assert [s.visible_devices for s in slots] == ["GPU-cccc-0000", "GPU-aaaa-0000"]
    assert all(s.device == "cuda:0" for s in slots)
    assert visible_gpu_slots(nvml=FakeNvmlModule(init_error=True)) == []


def test_only_the_gpus_of_the_processes_are_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,2")
    assert data_parallel_nvml_indices(dp_config(), nvml=four_gpus()) == [3, 1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    config = dp_config(pytorch={"num_processes": 3})
    assert data_parallel_nvml_indices(config, nvml=four_gpus()) == [0, 1, 2]


# ─── Pre-flight ─────────────────────────────────────────────────────────────────


def test_data_parallel_on_cpu_is_a_clear_preflight_problem(no_gpus: None) -> None:
    engine = DataParallelEngine(engine_factory=ScriptedReplica)
    problems = engine.preflight(dp_config())
    assert problems == [
        "pytorch.num_processes=2: data parallel needs one GPU per process, but no GPU is "
        "visible (CPU run); set pytorch.num_processes to 1"
    ]
    # CPU slots count only with the test-only override
    assert (
        DataParallelEngine(engine_factory=ScriptedReplica, devices=cpu_slots(2)).preflight(
            dp_config()
        )
        == problems
    )


def test_more_processes_than_visible_gpus_is_a_preflight_problem() -> None:
    gpus = [DeviceSlot(device="cuda:0", label=f"cuda:{k}", uuid=f"GPU-{k}") for k in range(2)]
    engine = DataParallelEngine(engine_factory=ScriptedReplica, devices=gpus)
    problems = engine.preflight(dp_config(pytorch={"num_processes": 4}))
    assert len(problems) == 1
    assert "num_processes=4" in problems[0] and "only 2 GPU(s) are visible" in problems[0]
    assert engine.preflight(dp_config()) == []  # 2 processes on 2 GPUs is fine


def test_preflight_also_runs_the_replica_check_on_a_single_process_view_and_checks_n() -> None:
    engine = DataParallelEngine(
        engine_factory=ScriptedReplica, devices=cpu_slots(3), allow_cpu_devices=True
    )
    # the replica never sees num_processes (it would complain) ...
    assert engine.preflight(dp_config()) == []
    # ... and 2 prompts cannot feed 3 processes
    problems = engine.preflight(
        dp_config(
            n=2, dataset={"n": 2, "input_len": 8, "output_len": 4}, pytorch={"num_processes": 3}
        )
    )
    assert problems == [
        "n=2 prompt(s) cannot be sharded over pytorch.num_processes=3 processes; "
        "use n >= num_processes"
    ]


def test_the_single_process_pytorch_engine_refuses_num_processes_on_cpu(no_gpus: None) -> None:
    pytest.importorskip("transformers")
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    problems = PyTorchBackend().preflight(dp_config(model="builtin:tiny"))
    assert any("data parallel needs one GPU per process" in p for p in problems)


def test_the_engine_factory_routes_num_processes_to_the_data_parallel_engine() -> None:
    pytest.importorskip("transformers")
    from llenergymeasure.engines.factory import create_engine
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    assert isinstance(create_engine("pytorch", dp_config()), DataParallelEngine)
    assert isinstance(
        create_engine("pytorch", dp_config(pytorch={"num_processes": 1})), PyTorchBackend
    )
    assert isinstance(create_engine("pytorch"), PyTorchBackend)
    assert isinstance(DataParallelEngine(engine_factory=ScriptedReplica), InferenceBackend)


# ─── The multi-process path, through the orchestrator ───────────────────────────


class ClockedDataParallelEngine(DataParallelEngine):
    """Advances a fake clock by ``step_s`` while the processes generate (in the parent), so that
    the sensors' energy counters grow by exactly ``power * step_s`` over every window, however
    long the real processes take and whenever each device's counter is read."""

    def __init__(self, clock: FakeClock, step_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.step_s = step_s

    def execute(self, prepared: PreparedRun, *, on_batch: Any = None) -> RawRun:
        raw = super().execute(prepared, on_batch=on_batch)
        self.clock.advance(self.step_s)
        return raw


def test_two_processes_share_one_window_and_statistics_cover_every_raw_request() -> None:
    clock = FakeClock()
    sensor = FakeGpuSensor(n_devices=2, power_w=[100.0, 200.0], clock=clock)
    sampler = EnergySampler(sensor, interval_ms=10, clock=clock)
    engine = ClockedDataParallelEngine(
        clock,
        2.0,
        engine_factory=ScriptedReplica,
        devices=cpu_slots(2),
        allow_cpu_devices=True,
    )
    orch = ExperimentOrchestrator(
        engine=engine,
        energy_backend=NvmlEnergyBackend(sensor=sensor, sampler=sampler),
        sensor=sensor,
        settings=MeasurementSettings(sampling_interval_ms=10),
        clock=clock,
        sleep=clock.sleep,
    )
    result = orch.run(dp_config()).result

    # records come back in dataset order, each tagged with the process that ran it
    assert [r.index for r in result.requests] == [0, 1, 2, 3, 4]
    assert [r.process_index for r in result.requests] == [0, 0, 0, 1, 1]
    pids = {r.batch_index for r in result.requests}
    assert len(pids) == 2 and os.getpid() not in pids  # two separate processes
    assert result.requests[0].batch_index == result.requests[2].batch_index

    # late aggregation: over all five latencies [1, 1, 1, 4, 4], not over per-process means
    mean_of_means = statistics.fmean([statistics.fmean([1.0] * 3), statistics.fmean([4.0] * 2)])
    assert result.latency.mean == pytest.approx(2.2)
    assert result.latency.mean != pytest.approx(mean_of_means)  # 2.5
    assert result.latency.p50 == pytest.approx(1.0)
    assert result.latency.n == 5 and result.itl.n == 15
    assert result.output_tokens == 20

    # energy: one entry per device, summed; device 1 draws twice as much over the 2 s window
    per_device = result.energy.per_device
    assert [d.device_uuid for d in per_device] == sensor.uuids
    assert [d.energy_j for d in per_device] == [pytest.approx(200.0), pytest.approx(400.0)]
    assert result.energy_total_j == pytest.approx(600.0)

    # per-process summaries
    procs = result.process_results
    assert [p["process_index"] for p in procs] == [0, 1]
    assert [p["device"] for p in procs] == ["cpu/0", "cpu/1"]
    assert [p["n_prompts"] for p in procs] == [3, 2]
    assert [(p["first_prompt_index"], p["last_prompt_index"]) for p in procs] == [(0, 2), (3, 4)]
    assert [p["output_tokens"] for p in procs] == [12, 8]
    assert all(p["duration_s"] > 0 and p["tokens_per_second"] > 0 for p in procs)
    # offsets from the earliest start (real clocks of the processes: no upper bound holds on
    # a loaded machine)
    assert all(p["start_offset_s"] >= 0 for p in procs)
    assert min(p["start_offset_s"] for p in procs) == 0
    assert result.peak_memory_bytes == max(p["peak_memory_bytes"] for p in procs)

    params = result.effective_parameters
    assert params["num_processes"] == 2 and params["data_parallel"] is True
    assert params["devices"] == ["cpu/0", "cpu/1"] and params["sharding"] == "contiguous"
    assert engine._children == []  # unloaded: every process stopped


def test_clear_run_state_is_forwarded_to_every_replica() -> None:
    engine = DataParallelEngine(
        engine_factory=ScriptedReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    engine.load(dp_config())
    try:
        notes = engine.clear_run_state()
        pids = [c.process.pid for c in engine._children]
        assert notes == [f"scripted replica in process {pid}: nothing cached" for pid in pids]
    finally:
        engine.unload()


def test_a_failing_process_stops_every_process_and_names_itself() -> None:
    engine = DataParallelEngine(
        engine_factory=FailingReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    engine.load(dp_config())
    processes = [c.process for c in engine._children]
    with pytest.raises(BackendError) as info:
        engine.generate(prompts(5), dp_config())
    message = str(info.value)
    assert "process 1 (cpu/1)" in message and "scripted failure on prompt 3" in message
    assert info.value.hint == "scripted hint"
    assert not any(p.is_alive() for p in processes)


def test_a_process_that_dies_is_detected_instead_of_waited_for() -> None:
    engine = DataParallelEngine(
        engine_factory=DyingReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    engine.load(dp_config())
    with pytest.raises(BackendError, match=r"process 1 \(cpu/1\) died \(exit code 3\)"):
        engine.generate(prompts(5), dp_config())
    assert engine._children == []


def test_a_replica_that_cannot_load_fails_the_load_with_its_message() -> None:
    engine = DataParallelEngine(
        engine_factory=UnloadableReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    orch = ExperimentOrchestrator(engine=engine, energy_backend=FakeEnergyBackend())
    with pytest.raises(BackendError, match="could not load model 'nope'"):
        orch.run(dp_config(baseline={"enabled": False}))
    assert engine._children == []


def test_builtin_tiny_in_two_cpu_processes_matches_one_process() -> None:
    pytest.importorskip("transformers")
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    config = dp_config(
        model="builtin:tiny",
        precision="fp32",
        dataset={"n": 5, "input_len": 12, "output_len": 5},
        warmup={"n_warmup": 0, "thermal_floor_seconds": 0},
        baseline={"enabled": False},
        pytorch={"num_processes": 2, "batch_size": 2},
    )
    dp = (
        ExperimentOrchestrator(
            engine=DataParallelEngine(devices=cpu_slots(2), allow_cpu_devices=True),
            energy_backend=FakeEnergyBackend(),
        )
        .run(config)
        .result
    )
    single_config = config.model_copy(
        update={
            "pytorch": config.pytorch.model_copy(  # type: ignore[union-attr]
                update={"num_processes": None}
            )
        }
    )
    single = (
        ExperimentOrchestrator(engine=PyTorchBackend(), energy_backend=FakeEnergyBackend())
        .run(single_config)
        .result
    )

    assert [p["n_prompts"] for p in dp.process_results] == [3, 2]
    assert [r.process_index for r in dp.requests] == [0, 0, 0, 1, 1]
    # same prompts, same tokens per request, whichever process ran them
    assert [(r.index, r.input_tokens, r.output_tokens) for r in dp.requests] == [
        (r.index, r.input_tokens, r.output_tokens) for r in single.requests
    ]
    assert dp.flops is not None and single.flops is not None
    assert dp.flops.total_flops == single.flops.total_flops
    assert dp.effective_parameters["engine"] == "pytorch"
    assert dp.effective_parameters["device"] == "cpu/0,cpu/1"
    # shard 0: batches [0,1],[2]; shard 1: batch [3,4] (batch indices are per process)
    assert [r.batch_index for r in dp.requests] == [0, 0, 1, 0, 0]


def test_the_prefill_only_window_is_sharded_like_the_measurement_window_and_warmup_is_not() -> None:
    # each process prefills its own shard in the one-token window, as it decoded it in the full
    # one: running every prompt on every process would book N times the prefill work
    engine = DataParallelEngine(
        engine_factory=ScriptedReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    config = dp_config()
    engine.load(config)
    try:
        prefill = engine.generate(prompts(5), config, phase="prefill_window")
        assert [r.index for r in prefill] == [0, 1, 2, 3, 4]
        assert len({r.batch_index for r in prefill}) == 2  # both processes ran a shard
        assert engine.record_process_indices() == [0, 0, 0, 1, 1]
        warm = engine.generate(prompts(2), config, phase="warmup")
        assert [r.index for r in warm] == [0, 1]  # process 0's copy of the full warmup
    finally:
        engine.unload()


def test_effective_parameters_are_asked_of_process_0_for_the_config_given() -> None:
    engine = DataParallelEngine(
        engine_factory=ScriptedReplica, devices=cpu_slots(2), allow_cpu_devices=True
    )
    config = dp_config()
    engine.load(config)
    try:
        params = engine.effective_parameters(config)
    finally:
        engine.unload()
    assert params["engine"] == "scripted" and params["device"] == "cpu/0,cpu/1"
    assert params["num_processes"] == 2 and params["data_parallel"] is True
