"""Study wall time with and without engine reuse (issue 14), on this machine's CPU.

Run from the repository root:

    python benchmarks/study_reuse.py

One ``builtin:tiny`` study (2 configs: ``pytorch.batch_size`` 1 and 4, so one engine group;
4 interleaved cycles = 8 runs; no gaps, no thermal floor, no idle baseline) runs twice in this
invocation: with ``reuse_engine: true`` (one spawned process loads the model once and measures
the 8 runs) and with ``reuse_engine: false`` (a fresh process per run). The table shows wall
time, the measurement windows' share of it, the number of engine loads and tok/s per config.
It is printed and written into the ``## Study engine reuse (CPU)`` section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _markdown import add_section_options, publish

from llenergymeasure.config.study import StudyConfig
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.study.runner import StudyRunner

TITLE = "Study engine reuse (CPU)"
REPRODUCE = "python benchmarks/study_reuse.py"
BATCH_SIZES = (1, 4)


def study(reuse: bool, cycles: int, n: int) -> StudyConfig:
    return StudyConfig.from_dict(
        {
            "name": f"reuse-{'on' if reuse else 'off'}",
            "model": "builtin:tiny",
            "backend": "pytorch",
            "dataset": {"n": n, "input_len": 32, "output_len": 16},
            "n": n,
            "warmup": {"n_warmup": 1, "thermal_floor_seconds": 0},
            "baseline": {"enabled": False},
            "sweep": {"pytorch.batch_size": list(BATCH_SIZES)},
            "execution": {
                "n_cycles": cycles,
                "cycle_order": "interleaved",
                "config_gap_seconds": 0,
                "cycle_gap_seconds": 0,
                "reuse_engine": reuse,
            },
        }
    )


def run_once(reuse: bool, cycles: int, n: int, root: Path) -> dict[str, Any]:
    runner = StudyRunner.create(study(reuse, cycles, n), root, quiet=True)
    t0 = time.perf_counter()
    result = runner.run()
    wall = time.perf_counter() - t0
    runs: list[ExperimentResult] = list(result.results)
    if len(runs) != len(runner.manifest.runs):
        raise SystemExit(f"reuse={reuse}: {len(runs)} of {len(runner.manifest.runs)} completed")
    windows = sum(r.duration_s for r in runs)
    loads = sum(1 for r in runs if not r.engine_reused)
    tps = {
        b: statistics.median(
            r.tokens_per_second
            for r in runs
            if (r.config.pytorch and r.config.pytorch.batch_size) == b
        )
        for b in BATCH_SIZES
    }
    return {"wall": wall, "windows": windows, "loads": loads, "runs": len(runs), "tps": tps}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("-n", type=int, default=8, help="prompts per run")
    add_section_options(parser, extra=False)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llem-reuse-bench-") as tmp:
        on = run_once(True, args.cycles, args.n, Path(tmp) / "on")
        off = run_once(False, args.cycles, args.n, Path(tmp) / "off")
    import os

    cores = os.cpu_count()
    lines = [
        f"Machine: {cpu_model()} ({cores} logical cores visible), Python "
        f"{platform.python_version()}, {dt.date.today().isoformat()}. Reproduce: `{REPRODUCE}`.",
        "",
        f"`builtin:tiny`, `pytorch.batch_size` {list(BATCH_SIZES)} (one engine group) x "
        f"{args.cycles} interleaved cycles = {on['runs']} runs, n={args.n} synthetic prompts "
        "(32 -> 16 tokens), one warmup run, no gaps / thermal floor / idle baseline.",
        "",
        "| engine reuse | wall time (s) | windows (s) | windows' share | engine loads | "
        + " | ".join(f"tok/s batch {b} (median)" for b in BATCH_SIZES)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(BATCH_SIZES),
    ]
    for label, row in (("on", on), ("off", off)):
        lines.append(
            f"| {label} | {row['wall']:.1f} | {row['windows']:.2f} | "
            f"{100 * row['windows'] / row['wall']:.1f} % | {row['loads']} | "
            + " | ".join(f"{row['tps'][b]:.0f}" for b in BATCH_SIZES)
            + " |"
        )
    lines += [
        "",
        f"Wall-time ratio off / on: **{off['wall'] / on['wall']:.1f}x**. On this CPU the time "
        "outside the windows is mostly spawning a process and importing torch, which reuse pays "
        "once per engine group instead of once per run. Throughput on a small shared CPU is "
        "noisy (other jobs may run at the same time), so the tok/s columns do not compare reuse "
        "on and off; that comparison belongs on a GPU (issue 14's GPU section).",
    ]
    body = "\n".join(lines)
    publish(body, TITLE, args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
