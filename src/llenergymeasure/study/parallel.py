"""``execution.parallel: per_gpu``: independent runs at the same time, one per visible GPU.

- **Devices.** ``StudyRunner.devices`` or every GPU visible to the study process
  (``visible_gpu_slots``: ``CUDA_VISIBLE_DEVICES`` mapped to NVML devices by UUID). Each run's
  child gets ``CUDA_VISIBLE_DEVICES=<its GPU's UUID>`` before CUDA initialises, so its engine
  uses ``cuda:0`` and its sensor/energy backend measure only that GPU.
- **Engine reuse** (for the engines that reuse, ``StudyBookkeeping.reuses``). Each GPU keeps
  one engine-group process pinned to it; a run with that process's engine key is measured there
  without loading, a run with another key replaces the process. Any other run is a fresh
  process.
- **Scheduling.** Runs start in run order on the first free GPU. A GPU that finished a run is
  free again after the gap (``config_gap_seconds`` / ``cycle_gap_seconds``, as in a sequential
  study, counted per GPU) without blocking the other GPUs.
- **Manifest.** Only the study process writes it (children report over their pipes), after
  every state change, so it is valid at every write.
- **Concurrency record.** When a run ends, every run whose process lifetime overlapped it is
  written into its manifest entry (``concurrent_runs``: run id + GPU), and a completed run's
  ``result.json`` gets a ``measurement_warnings`` note naming them, with the thermal caveat:
  neighbouring GPUs heat each other (and share power delivery and host CPU), so energy and
  throughput can differ from the same run measured alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from llenergymeasure.exceptions import StudyError
from llenergymeasure.study.executors import GroupProcess, StudyBookkeeping, spawn_run
from llenergymeasure.study.manifest import ConcurrentRun, RunEntry, RunError
from llenergymeasure.study.planning import gap_before
from llenergymeasure.study.processes import (
    START_ALLOWANCE_S,
    STOP_GRACE_S,
    SavedRun,
    conclude,
    outcome_of,
    stop_process,
    timeout_error,
)

if TYPE_CHECKING:
    from llenergymeasure.energy.devices import DeviceSlot

__all__ = ["THERMAL_NOTE", "PerGpuExecutor", "overlapping", "run_per_gpu"]

THERMAL_NOTE = (
    "ran concurrently with other runs on neighbouring GPUs (execution.parallel: per_gpu); "
    "GPUs heat each other and share power delivery and host CPU, so energy and throughput may "
    "differ from a run measured alone"
)


@dataclass
class _Active:
    entry: RunEntry
    slot: DeviceSlot
    proc: Any
    receiver: Any  # None: the process died before its run could be sent
    deadline: float | None
    final: tuple[str, dict[str, Any]] | RunError | None = None
    closed: bool = False  # the child's end of the pipe is closed (it exited or crashed)
    reused: bool = False  # measured by the GPU's engine-group process (not a fresh one)


@dataclass
class _Span:
    run_id: str
    device: str | None
    start: float
    end: float | None = None


def overlapping(span: _Span, spans: list[_Span]) -> list[_Span]:
    """The other spans that overlap ``span`` in time (open-ended spans still run)."""
    end = span.end if span.end is not None else float("inf")
    return [
        o
        for o in spans
        if o is not span and o.start < end and (o.end is None or o.end > span.start)
    ]


def _slot_id(slot: DeviceSlot) -> str:
    return slot.uuid or slot.label


class PerGpuExecutor:
    """``execution.parallel: per_gpu`` as a ``StudyExecutor`` (see the module docstring): a
    run whose engine reuses (``StudyBookkeeping.reuses``) goes to its GPU's engine-group
    process, every other run to a fresh process."""

    def execute(self, study: StudyBookkeeping, todo: list[RunEntry]) -> None:
        run_per_gpu(study, todo)


@dataclass
class _SlotState:
    """The engine-group process a GPU keeps (reuse), or None."""

    group: GroupProcess | None = None


def run_per_gpu(runner: StudyBookkeeping, todo: list[RunEntry]) -> None:
    """Run ``todo`` on ``runner``'s GPUs, one run per GPU at a time (see the module docstring).

    A run whose engine reuses (``runner.reuses``): each GPU keeps one engine-group process
    pinned to it: a run whose engine key equals that process's is measured there without
    loading, another key replaces the process (so a group spread over the GPUs loads at most
    once per GPU). A fatal error, crash or timeout ends the process; the GPU's next run starts
    a fresh one. Any other run: a fresh process (the GPU's group process, if any, is closed
    first).
    On Ctrl-C every child is stopped and ``KeyboardInterrupt`` propagates (the runner marks the
    running entries interrupted).
    """
    slots = _slots(runner)
    timeout = runner.manifest.execution.experiment_timeout_seconds
    queue = deque(todo)
    state = {_slot_id(s): _SlotState() for s in slots}
    free_at = {_slot_id(s): 0.0 for s in slots}  # monotonic time from which a GPU is free
    active: list[_Active] = []
    spans: list[_Span] = []
    span_of: dict[str, _Span] = {}
    try:
        while queue or active:
            now = time.monotonic()
            for slot in slots:
                sid = _slot_id(slot)
                if not queue or any(a.slot is slot for a in active) or free_at[sid] > now:
                    continue
                item = _start(runner, queue.popleft(), slot, state[sid], timeout)
                active.append(item)
                span = _Span(item.entry.run_id, item.entry.device, time.monotonic())
                spans.append(span)
                span_of[item.entry.run_id] = span
            if not active:  # every free GPU is in its gap
                waits = [t for t in free_at.values() if t > now]
                runner.sleep(max(0.0, min(waits) - now) if waits else 0.05)
                continue
            for item in _step(runner, active):
                active.remove(item)
                span = span_of[item.entry.run_id]
                span.end = time.monotonic()
                _record(runner, item, state[_slot_id(item.slot)], span, spans)
                if queue:
                    _, seconds = gap_before(
                        item.entry, queue[0], runner.manifest.execution.cycle_order, runner.gaps
                    )
                    free_at[_slot_id(item.slot)] = time.monotonic() + seconds
        for st in state.values():
            _drop(runner, st)
    finally:
        for item in active:
            stop_process(item.proc)
            if item.receiver is not None:
                item.receiver.close()
            if item.proc in runner.processes:
                runner.processes.remove(item.proc)
        for st in state.values():
            _drop(runner, st, graceful=False)


def _slots(runner: StudyBookkeeping) -> list[DeviceSlot]:
    """The GPUs to run on (the runner's, else every visible one); ``StudyError`` when there
    are none or one is listed twice."""
    slots = list(runner.devices) if runner.devices is not None else _visible_slots()
    if not slots:
        raise StudyError(
            "execution.parallel: per_gpu needs GPUs, and none is visible",
            hint="set execution.parallel: none, or check CUDA_VISIBLE_DEVICES / nvidia-smi",
        )
    ids = [_slot_id(s) for s in slots]
    if len(set(ids)) != len(ids):
        raise StudyError(f"per_gpu: the same GPU is listed twice: {ids}")
    return slots


def _drop(runner: StudyBookkeeping, st: _SlotState, *, graceful: bool = True) -> None:
    """Close the GPU's engine-group process, if it has one."""
    if st.group is not None:
        st.group.close(graceful=graceful)
        if st.group.proc in runner.processes:
            runner.processes.remove(st.group.proc)
        st.group = None


def _start(
    runner: StudyBookkeeping,
    entry: RunEntry,
    slot: DeviceSlot,
    st: _SlotState,
    timeout: float | None,
) -> _Active:
    """Start ``entry`` on ``slot``: in the GPU's engine-group process when its engine reuses
    (a new process for another engine key), else in a fresh process."""
    receiver: Any
    reuse = runner.reuses(entry)
    if reuse:
        key = entry.engine_group or entry.config_hash
        if st.group is not None and (st.group.key != key or not st.group.alive):
            _drop(runner, st)
        if st.group is None:
            st.group = GroupProcess(runner, key, visible_devices=slot.visible_devices)
            runner.processes.append(st.group.proc)
        request = runner.start(entry, slot=slot, pid=st.group.proc.pid)
        proc, receiver = st.group.proc, st.group.conn
        if not st.group.send(request):
            receiver = None  # it died before the run: _step reports the crash
    else:
        _drop(runner, st)  # no engine group's process beside a fresh run on this GPU
        request = runner.start(entry, slot=slot)
        proc, receiver = spawn_run(runner, request)
        runner.processes.append(proc)
        runner.attach_pid(entry, proc.pid)
    allowance = 0.0 if reuse else START_ALLOWANCE_S  # until the child is "ready"
    deadline = None if timeout is None else time.monotonic() + timeout + allowance
    item = _Active(entry, slot, proc, receiver, deadline, reused=reuse)
    item.closed = receiver is None
    return item


def _record(
    runner: StudyBookkeeping, item: _Active, st: _SlotState, span: _Span, spans: list[_Span]
) -> None:
    """Record a finished run's outcome, with the runs that overlapped it on other GPUs."""
    if item.reused:
        outcome, ended = _group_outcome(item)
        if ended:
            _drop(runner, st, graceful=False)
    else:
        runner.processes.remove(item.proc)
        item.receiver.close()
        outcome = (
            item.final if isinstance(item.final, RunError) else conclude(item.proc, item.final)
        )
    others = overlapping(span, spans)
    item.entry.concurrent_runs = [ConcurrentRun(run_id=o.run_id, device=o.device) for o in others]
    if others and not isinstance(outcome, RunError):
        outcome = _annotate(outcome, item.entry, others)
    runner.record(item.entry, outcome)
    runner.progress.advance()


def _group_outcome(item: _Active) -> tuple[Any, bool]:
    """A reused engine's run outcome, and whether its process has ended (or must end)."""
    final = item.final
    if isinstance(final, RunError):  # timeout: _step stopped the process
        return final, True
    if final is None:  # crashed
        item.proc.join(STOP_GRACE_S)
        stop_process(item.proc)
        return outcome_of(None, item.proc.exitcode), True
    kind, payload = final
    return outcome_of(final, None), bool(kind != "ok" and payload.get("fatal"))


def _step(runner: StudyBookkeeping, active: list[_Active]) -> list[_Active]:
    """Relay messages for up to 0.2 s; the runs that have ended (final message, exit or
    timeout), with ``final`` set (a ``RunError`` for a timeout)."""
    done: list[_Active] = []
    open_ = [a.receiver for a in active if not a.closed and a.receiver is not None]
    ready = wait(open_, timeout=0.2) if open_ else []
    if not open_:
        time.sleep(0.05)
    for item in active:
        if item.receiver in ready:
            while item.final is None and item.receiver.poll(0):
                try:
                    kind, payload = item.receiver.recv()
                except (EOFError, OSError):
                    item.closed = True
                    break
                if kind == "progress":
                    runner.progress.relay(item.entry.run_id, str(payload))
                elif kind == "ready":  # the process is up: the run's own time starts now
                    timeout = runner.manifest.execution.experiment_timeout_seconds
                    if timeout is not None:
                        item.deadline = time.monotonic() + timeout
                    continue
                else:
                    item.final = (kind, payload)
        if item.final is not None:
            done.append(item)
        elif item.deadline is not None and time.monotonic() >= item.deadline:
            stop_process(item.proc)
            item.final = timeout_error(runner.manifest.execution.experiment_timeout_seconds)
            done.append(item)
        elif not item.proc.is_alive() and (
            item.closed or item.receiver is None or not item.receiver.poll(0)
        ):
            done.append(item)  # ended without a final message: _conclude says how
    return done


def _annotate(outcome: SavedRun, entry: RunEntry, others: list[_Span]) -> SavedRun:
    """Add the concurrency note to a completed run's result (and rewrite its result.json)."""
    result, path = outcome.result, outcome.path
    names = ", ".join(f"{o.run_id} on {o.device}" for o in others)
    note = f"{THERMAL_NOTE}; this run on {entry.device}; concurrent runs: {names}"
    warnings = [*result.measurement_warnings, note]
    result = result.model_copy(update={"measurement_warnings": warnings})
    result.to_json(path, base=path.parent)
    return SavedRun(result, path, outcome.rescue_reason)


def _visible_slots() -> list[DeviceSlot]:
    from llenergymeasure.energy.devices import visible_gpu_slots

    return visible_gpu_slots()
