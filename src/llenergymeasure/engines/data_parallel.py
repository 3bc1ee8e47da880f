"""Data parallelism for the PyTorch engine: one spawned process per GPU, late aggregation.

``pytorch.num_processes: N`` (N > 1) runs through ``DataParallelEngine``, an ``InferenceBackend``,
so the orchestrator drives it exactly like a single-process engine:

- **Devices.** The first N GPUs visible to this process (``CUDA_VISIBLE_DEVICES`` mapped to NVML
  devices by UUID, ``energy.devices.visible_gpu_slots``). Process k is pinned to its GPU by setting
  ``CUDA_VISIBLE_DEVICES=<that GPU's UUID>`` in the child before torch initialises CUDA, so the
  child's engine always uses ``cuda:0``; results name the device as the parent sees it
  (``cuda:k``) with its UUID and NVML index. ``default_components`` measures exactly these N
  devices (``data_parallel_nvml_indices``).
- **Processes.** ``load`` spawns N processes (``multiprocessing.get_context("spawn")``, clean CUDA
  state). Each builds its engine with the injectable, picklable ``engine_factory(device)``
  (default ``pytorch_replica``), loads the model on its own device and reports its ``LoadInfo``
  (process 0 also sends its tokenizer). Children ignore SIGINT: the parent decides when they
  stop. The child's side is ``engines.data_parallel_worker``.
- **Sharding.** The prompts of a measured window (the measurement window, the prefill-only
  window) are split into N *contiguous* shards in dataset order, sizes differing by at most one,
  the larger shards first (``shard_contiguous``): process k runs prompts ``[start_k, end_k)``.
  Warmup prompts go to every process in full (each replica warms its own model, caches and
  compiled graphs).
- **Shared window.** ``prepare`` (before the window) sends every child its shard, which it
  prepares (tokenised, padded, on its device) and keeps. The parent opens the energy window
  while the children wait, loaded and idle; ``execute`` tells every child to go, the children
  meet at a barrier and run their prepared shard together, each synchronises its device before
  reporting, and the parent returns only when every child has reported (then the window
  closes). ``synchronize`` in the parent is therefore a no-op. ``records`` (after the window)
  asks every child for its records.
- **Late aggregation.** The children's raw ``RequestRecord`` lists are concatenated in process
  order, i.e. dataset order; the orchestrator computes every statistic over all of them (never
  an average of per-process averages) and energy is summed over the measured devices with the
  per-device list kept. ``process_results()`` gives per-process summaries for the result.

For tests, ``devices=cpu_slots(2)`` with ``allow_cpu_devices=True`` runs the whole multi-process
path on CPU; a data-parallel run on CPU is otherwise a pre-flight problem.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from llenergymeasure.energy.devices import (
    DeviceSlot,
    cpu_slots,
    visible_gpu_slots,
)
from llenergymeasure.engines.base import (
    MEASUREMENT_PHASE,
    WARMUP_PHASE,
    BatchProgress,
    InferenceBackend,
    LoadInfo,
    PreparedRun,
    RawRun,
    RequestRecord,
    prompt_limits,
)
from llenergymeasure.engines.data_parallel_worker import EngineFactory, worker_main
from llenergymeasure.engines.process_plan import (
    data_parallel_nvml_indices,
    device_problems,
    num_processes,
)
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.datasets import Prompt

__all__ = [
    "DataParallelEngine",
    "DeviceSlot",
    "EngineFactory",
    "cpu_slots",
    "data_parallel_nvml_indices",
    "device_problems",
    "num_processes",
    "pytorch_replica",
    "shard_contiguous",
    "single_process_view",
    "visible_gpu_slots",
]

_T = TypeVar("_T")


def single_process_view(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``pytorch.num_processes`` unset: what one replica checks and runs."""
    if config.pytorch is None or config.pytorch.num_processes is None:
        return config
    return config.model_copy(
        update={"pytorch": config.pytorch.model_copy(update={"num_processes": None})}
    )


def shard_contiguous(items: Sequence[_T], n: int) -> list[list[_T]]:
    """Split ``items`` into ``n`` contiguous shards in order; sizes differ by at most one.

    The first ``len(items) % n`` shards hold one item more: 5 items over 2 -> [3, 2].
    """
    if n < 1:
        raise ValueError(f"cannot shard over {n} processes")
    base, extra = divmod(len(items), n)
    shards: list[list[_T]] = []
    start = 0
    for k in range(n):
        size = base + (1 if k < extra else 0)
        shards.append(list(items[start : start + size]))
        start += size
    return shards


def pytorch_replica(device: str) -> InferenceBackend:
    """The default replica: a ``PyTorchBackend`` bound to ``device``."""
    from llenergymeasure.engines.pytorch.engine import PyTorchBackend

    return PyTorchBackend(device=device)


# ─── The engine the orchestrator sees ───────────────────────────────────────────


@dataclass
class _Child:
    slot: DeviceSlot
    process: Any
    conn: Connection


@dataclass
class _Shards:
    """A prepared data-parallel run: each process's prompts, and whether they are shards of a
    measured window (else every process runs every prompt: warmup)."""

    shards: list[list[Prompt]]
    measured: bool


class DataParallelEngine(InferenceBackend):
    """``InferenceBackend`` running ``pytorch.num_processes`` replicas, one per GPU.

    ``engine_factory`` builds each replica in its child process (picklable; default
    ``pytorch_replica``). ``devices`` overrides GPU discovery; ``allow_cpu_devices`` lets
    ``cpu_slots`` stand in for GPUs (tests only). ``reply_timeout_s`` bounds every wait for
    the children (None: wait as long as they live; a dead child is always detected).
    """

    def __init__(
        self,
        *,
        engine_factory: EngineFactory = pytorch_replica,
        devices: Sequence[DeviceSlot] | None = None,
        allow_cpu_devices: bool = False,
        reply_timeout_s: float | None = None,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self._factory = engine_factory
        self._devices = list(devices) if devices is not None else None
        self._allow_cpu = allow_cpu_devices
        self._reply_timeout_s = reply_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._probe_engine: InferenceBackend | None = None
        self.name: str = self._probe().name
        self._children: list[_Child] = []
        self._barrier: Any = None
        self._tokenizer: Any = None
        self._load_infos: list[LoadInfo] = []
        self._process_results: list[dict[str, Any]] = []
        self._record_processes: list[int] = []
        self._peaks: list[int | None] = []

    # ─── Introspection ──────────────────────────────────────────────────────
    def _probe(self) -> InferenceBackend:
        """A replica built in this process, never loaded: for name, version and pre-flight."""
        if self._probe_engine is None:
            self._probe_engine = self._factory("cpu")
        return self._probe_engine

    def version(self) -> str:
        """Version of the replicas' engine library."""
        return self._probe().version()

    @property
    def tokenizer(self) -> Any:
        """Process 0's tokenizer (sent back after its load); None before ``load``."""
        return self._tokenizer

    def slots(self) -> list[DeviceSlot]:
        """Every candidate device (injected, or the visible GPUs)."""
        if self._devices is None:
            self._devices = visible_gpu_slots()
        return list(self._devices)

    # ─── Pre-flight ─────────────────────────────────────────────────────────
    def preflight(self, config: ExperimentConfig) -> list[str]:
        """Device problems, sharding problems, then the replica engine's own pre-flight."""
        n = num_processes(config)
        problems: list[str] = []
        try:
            slots = self.slots()
        except BackendError as exc:
            slots = []
            problems.append(f"pytorch.num_processes={n}: cannot map the visible GPUs: {exc}")
        if not problems:
            problems.extend(device_problems(config, slots, allow_cpu=self._allow_cpu))
        if config.n < n:
            problems.append(
                f"n={config.n} prompt(s) cannot be sharded over pytorch.num_processes={n} "
                "processes; use n >= num_processes"
            )
        problems.extend(self._probe().preflight(single_process_view(config)))
        return problems

    # ─── Load ───────────────────────────────────────────────────────────────
    def load(self, config: ExperimentConfig) -> LoadInfo:
        """Spawn one process per device; each loads its replica. Returns process 0's facts."""
        if self._children:
            raise BackendError("data-parallel engine: load() called twice without unload()")
        n = num_processes(config)
        slots = self.slots()
        problems = device_problems(config, slots, allow_cpu=self._allow_cpu)
        if problems:
            raise BackendError("; ".join(problems))
        slots = slots[:n]
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        self._barrier = ctx.Barrier(n)
        try:
            for k, slot in enumerate(slots):
                parent_end, child_end = ctx.Pipe(duplex=True)
                process = ctx.Process(
                    target=worker_main,
                    args=(k, slot, self._factory, config, child_end, self._barrier),
                    name=f"llem-dp-{k}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                self._children.append(_Child(slot=slot, process=process, conn=parent_end))
            replies = self._collect("loaded")
        except BaseException:
            self.unload()
            raise
        self._load_infos = [r[1] for r in replies]
        self._tokenizer = replies[0][2]
        first = self._load_infos[0]
        labels = [c.slot.label for c in self._children]
        notes = [note for info in self._load_infos for note in info.notes]
        notes = list(dict.fromkeys(notes))
        notes.append(
            f"data parallel: {n} processes on {', '.join(labels)}, one model replica each; "
            "prompts split into contiguous shards in dataset order"
        )
        return LoadInfo(
            load_time_s=time.perf_counter() - t0,
            parameter_count=first.parameter_count,
            draft_parameter_count=first.draft_parameter_count,
            model_dtype=first.model_dtype,
            device=",".join(labels),
            notes=notes,
        )

    # ─── Generation ─────────────────────────────────────────────────────────
    def prepare(
        self,
        prompts: Sequence[Prompt],
        config: ExperimentConfig,
        *,
        phase: str = MEASUREMENT_PHASE,
    ) -> PreparedRun:
        """Each process prepares its contiguous shard (a warmup: all ``prompts``) and keeps it."""
        if not self._children:
            raise BackendError("data-parallel engine: generate() called before load()")
        n = len(self._children)
        measured = phase != WARMUP_PHASE
        shards = shard_contiguous(list(prompts), n) if measured else [list(prompts)] * n
        for child, shard in zip(self._children, shards, strict=True):
            self._send(child, ("prepare", shard, config, phase))
        self._collect("prepared")
        return PreparedRun(
            list(prompts), config, phase, prompt_limits(prompts, config), _Shards(shards, measured)
        )

    def execute(self, prepared: PreparedRun, *, on_batch: BatchProgress | None = None) -> RawRun:
        """Every process runs its prepared shard, together; returns when all have finished."""
        if not self._children:
            raise BackendError("data-parallel engine: generate() called before load()")
        for child in self._children:
            self._send(child, ("execute",))
        replies = self._collect("done")
        return RawRun(prepared, [(r[1], r[2]) for r in replies])

    def records(self, raw: RawRun) -> list[RequestRecord]:
        """Measured window: every process's records, in prompt order, and per-process summaries.
        Warmup: process 0's records."""
        for child in self._children:
            self._send(child, ("records", raw.prepared.phase))
        replies = self._collect("records")
        plan: _Shards = raw.prepared.payload
        if not plan.measured:
            return list(replies[0][1])

        spans: list[tuple[float, float]] = raw.payload
        records: list[RequestRecord] = []
        owners: list[int] = []
        starts = [t0 for t0, _ in spans]
        summaries = []
        self._peaks = [r[2] for r in replies]
        for k, (child, shard, reply, (t0, t1)) in enumerate(
            zip(self._children, plan.shards, replies, spans, strict=True)
        ):
            part: list[RequestRecord] = list(reply[1])
            if [r.index for r in part] != [p.index for p in shard]:
                raise BackendError(
                    f"data-parallel process {k} returned records for prompts "
                    f"{[r.index for r in part]}, expected {[p.index for p in shard]}"
                )
            records.extend(part)
            owners.extend([k] * len(part))
            duration = t1 - t0
            out_tokens = sum(r.output_tokens for r in part)
            summaries.append(
                {
                    "process_index": k,
                    "device": child.slot.label,
                    "device_uuid": child.slot.uuid,
                    "nvml_index": child.slot.nvml_index,
                    "n_prompts": len(part),
                    "first_prompt_index": shard[0].index if shard else None,
                    "last_prompt_index": shard[-1].index if shard else None,
                    "input_tokens": sum(r.input_tokens for r in part),
                    "output_tokens": out_tokens,
                    "duration_s": duration,
                    "tokens_per_second": out_tokens / duration if duration > 0 else 0.0,
                    "start_offset_s": t0 - min(starts),
                    "peak_memory_bytes": reply[2],
                    "load_time_s": self._load_infos[k].load_time_s if self._load_infos else None,
                }
            )
        self._process_results = summaries
        self._record_processes = owners
        return records

    def process_results(self) -> list[dict[str, Any]]:
        """Per-process summaries of the last measurement (index, device, UUID, tokens, timing)."""
        return [dict(s) for s in self._process_results]

    def record_process_indices(self) -> list[int] | None:
        """Which process produced each record of the last measurement."""
        return list(self._record_processes)

    def metered_nvml_indices(self, config: ExperimentConfig) -> list[int] | None:
        """The replicas' GPUs: the first ``num_processes`` visible ones."""
        return data_parallel_nvml_indices(config)

    def compiles_on_first_run(self, config: ExperimentConfig) -> bool:
        """As the replicas' engine says (each compiles in its own first run)."""
        return self._probe().compiles_on_first_run(single_process_view(config))

    def effective_parameters(self, config: ExperimentConfig) -> dict[str, Any]:
        """Process 0's effective parameters for ``config`` plus the data-parallel layout."""
        if not self._children:
            raise BackendError(
                "data-parallel engine: effective_parameters() requested before load()"
            )
        self._send(self._children[0], ("effective", single_process_view(config)))
        params = dict(self._collect("effective", only=[0])[0][1])
        labels = [c.slot.label for c in self._children]
        params.update(
            {
                "num_processes": len(labels),
                "data_parallel": True,
                "device": ",".join(labels),
                "devices": labels,
                "device_uuids": [c.slot.uuid for c in self._children],
                "sharding": "contiguous",
            }
        )
        return params

    # ─── Device housekeeping ────────────────────────────────────────────────
    def synchronize(self) -> None:
        """No-op: every child synchronises its device before it reports a ``generate``."""

    def reset_peak_memory(self) -> None:
        """Reset every child's peak-memory counter."""
        for child in self._children:
            self._send(child, ("reset_peak",))
        self._collect("ok")
        self._peaks = []

    def clear_run_state(self) -> list[str]:
        """Every replica clears its own run state; their notes, each once, in process order."""
        for child in self._children:
            self._send(child, ("clear_run_state",))
        replies = self._collect("cleared")
        self._peaks = []
        notes = [note for reply in replies for note in reply[1]]
        return list(dict.fromkeys(notes))

    def begin_reused_run(self, config: ExperimentConfig) -> list[str]:
        """Every replica prepares its kept engine for a new run; their notes, each once."""
        for child in self._children:
            self._send(child, ("begin_reused_run", config))
        replies = self._collect("cleared")
        notes = [note for reply in replies for note in reply[1]]
        return list(dict.fromkeys(notes))

    def peak_memory_bytes(self) -> int | None:
        """Largest per-device peak of the last measurement (per process in process_results)."""
        known = [p for p in self._peaks if p is not None]
        return max(known) if known else None

    def unload(self) -> None:
        """Tell every child to stop, wait for it, terminate stragglers. Idempotent."""
        children, self._children = self._children, []
        if self._barrier is not None:
            with contextlib.suppress(Exception):
                self._barrier.abort()
        for child in children:
            with contextlib.suppress(Exception):
                child.conn.send(("stop",))
        deadline = time.monotonic() + self._stop_timeout_s
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.terminate()
                child.process.join(5.0)
            with contextlib.suppress(Exception):
                child.conn.close()
        self._barrier = None

    # ─── Messaging ──────────────────────────────────────────────────────────
    def _send(self, child: _Child, message: tuple[Any, ...]) -> None:
        try:
            child.conn.send(message)
        except (BrokenPipeError, EOFError, OSError) as exc:
            self._fail(self._children.index(child), f"is gone ({type(exc).__name__})")

    def _collect(
        self, expected: str, *, only: Sequence[int] | None = None
    ) -> list[tuple[Any, ...]]:
        """One ``expected`` reply from every child (or the children ``only``), in process
        order; raises on any failure."""
        pending = {k: c for k, c in enumerate(self._children) if only is None or k in only}
        replies: dict[int, tuple[Any, ...]] = {}
        while pending:
            waitables: list[Any] = [c.conn for c in pending.values()]
            waitables += [c.process.sentinel for c in pending.values()]
            if not wait(waitables, timeout=self._reply_timeout_s):
                self._fail(
                    min(pending), f"did not answer within {self._reply_timeout_s} s ({expected})"
                )
            for k, child in list(pending.items()):
                if child.conn.poll():
                    try:
                        message = child.conn.recv()
                    except (EOFError, OSError):
                        self._fail(k, f"died (exit code {self._exit_code(child)})")
                    if message[0] == "error":
                        _, kind, text, hint, trace = message
                        self._fail(k, f"failed: {kind}: {text}", hint=hint, trace=trace)
                    if message[0] != expected:
                        self._fail(k, f"answered {message[0]!r}, expected {expected!r}")
                    replies[k] = message
                    del pending[k]
                elif not child.process.is_alive():
                    self._fail(k, f"died (exit code {self._exit_code(child)})")
        return [replies[k] for k in sorted(replies)]

    @staticmethod
    def _exit_code(child: _Child) -> int | None:
        """The exit code of a child whose pipe closed: its end of the pipe closes as it exits,
        before it is reaped, so wait briefly for the code (None if it is still not gone)."""
        child.process.join(timeout=5)
        return child.process.exitcode

    def _fail(self, k: int, what: str, *, hint: str | None = None, trace: str = "") -> NoReturn:
        label = self._children[k].slot.label if k < len(self._children) else "?"
        self.unload()
        message = f"data-parallel process {k} ({label}) {what}"
        if trace and hint is None:
            hint = "child traceback: " + trace.strip().splitlines()[-1]
        raise BackendError(message, hint=hint)
