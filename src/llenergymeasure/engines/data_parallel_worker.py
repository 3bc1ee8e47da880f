"""The child process of the data-parallel engine: one model replica on one device, driven by
its parent (``engines.data_parallel.DataParallelEngine``) over a pipe.

The child pins itself to its GPU (``CUDA_VISIBLE_DEVICES`` before CUDA initialises), ignores
SIGINT (the parent decides when it stops), loads its replica, reports its ``LoadInfo`` (process
0 also its tokenizer), then answers the parent's commands until told to stop. Any failure is
sent back to the parent, which raises it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from llenergymeasure.energy.devices import DeviceSlot
from llenergymeasure.engines.base import WARMUP_PHASE, InferenceBackend, PreparedRun, RawRun
from llenergymeasure.exceptions import BackendError

if TYPE_CHECKING:
    from llenergymeasure.config.models import ExperimentConfig

__all__ = ["EngineFactory", "worker_main"]

#: Builds one replica's engine for a device string ("cuda:0", "cpu"). Must be picklable
#: (a top-level function or class) because it is sent to spawned processes.
EngineFactory = Callable[[str], InferenceBackend]


def worker_main(
    index: int,
    slot: DeviceSlot,
    factory: EngineFactory,
    config: ExperimentConfig,
    conn: Connection,
    barrier: Any,
) -> None:
    """Load one replica, then serve ``prepare`` / ``execute`` / ``records`` / ``reset_peak`` /
    ``clear_run_state`` / ``begin_reused_run`` / ``effective`` until told to ``stop``."""
    with contextlib.suppress(ValueError):  # not the main thread: keep the default handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    if slot.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.visible_devices  # before CUDA initialises
    engine: InferenceBackend | None = None
    prepared: PreparedRun | None = None
    raw: RawRun | None = None
    try:
        engine = factory(slot.device)
        info = engine.load(config)
        tokenizer = engine.tokenizer if index == 0 else None
        conn.send(("loaded", info, tokenizer))
        while True:
            command = conn.recv()
            kind = command[0]
            if kind == "stop":
                break
            if kind == "reset_peak":
                engine.reset_peak_memory()
                conn.send(("ok",))
            elif kind == "clear_run_state":
                conn.send(("cleared", engine.clear_run_state()))
            elif kind == "begin_reused_run":
                conn.send(("cleared", engine.begin_reused_run(command[1])))
            elif kind == "effective":
                conn.send(("effective", engine.effective_parameters(command[1])))
            elif kind == "prepare":
                _, prompts, run_config, phase = command
                prepared, raw = engine.prepare(prompts, run_config, phase=phase), None
                conn.send(("prepared",))
            elif kind == "execute":
                if prepared is None:
                    raise BackendError("data-parallel worker: execute before prepare")
                barrier.wait()  # every process starts generating together
                t0 = time.perf_counter()
                raw = engine.execute(prepared)
                engine.synchronize()
                t1 = time.perf_counter()
                prepared = None
                conn.send(("done", t0, t1))
            elif kind == "records":
                if raw is None:
                    raise BackendError("data-parallel worker: records before execute")
                records, raw = engine.records(raw), None
                if command[1] == WARMUP_PHASE:
                    engine.after_warmup_run()
                conn.send(("records", records, engine.peak_memory_bytes()))
            else:
                raise BackendError(f"data-parallel worker: unknown command {kind!r}")
    except BaseException as exc:  # reported to the parent, which raises
        with contextlib.suppress(Exception):
            conn.send(
                (
                    "error",
                    type(exc).__name__,
                    getattr(exc, "message", str(exc)),
                    getattr(exc, "hint", None),
                    traceback.format_exc(limit=8),
                )
            )
    finally:
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.unload()
        conn.close()
