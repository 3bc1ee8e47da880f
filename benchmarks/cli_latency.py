"""CLI latency benchmark: ``llem --help`` and a 1,000-point study ``--dry-run``.

Run from the repository root:

    python benchmarks/cli_latency.py

Each command runs once to warm the OS file cache, then ``--runs`` times (default 7); the median
and minimum wall times are reported against the targets (help < 0.5 s, 1,000-point dry run < 2 s).
The table is printed and written into the ``## CLI latency`` section of ``BENCHMARKS.md`` at the
repository root (the file is created if missing; other sections are left untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTION = "## CLI latency"
REPRODUCE = "python benchmarks/cli_latency.py"

# precision x2, n x10, pytorch.batch_size x5, decoder.temperature x10 = 1,000 valid points
STUDY_YAML = """\
name: cli-latency-1000
model: builtin:tiny
backend: pytorch
dataset: aienergyscore
sweep:
  precision: [fp32, bf16]
  n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  pytorch.batch_size: [1, 2, 4, 8, 16]
  decoder.temperature: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
execution:
  n_cycles: 1
"""
STUDY_POINTS = 1000


def llem_command() -> tuple[list[str], str]:
    """The installed console script beside this interpreter, else the module entry point."""
    script = Path(sys.executable).with_name("llem")
    if script.exists():
        return [str(script)], "llem"
    return [sys.executable, "-c", "from llenergymeasure.cli.app import main; main()"], "llem"


def time_command(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    def once() -> float:
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
        return elapsed

    once()  # warm run (file cache, .pyc)
    return [once() for _ in range(runs)]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    total = os.cpu_count()
    return f"{usable} usable of {total}" if usable and usable != total else f"{total}"


def render(rows: list[tuple[str, list[float], float]]) -> str:
    lines = [
        "| command | median s | min s | target | met? |",
        "|---|---:|---:|---:|:---:|",
    ]
    for command, times, target in rows:
        median = statistics.median(times)
        lines.append(
            f"| `{command}` | {median:.3f} | {min(times):.3f} | < {target:g} s | "
            f"{'yes' if median < target else 'NO'} |"
        )
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace the ``## CLI latency`` section of ``path`` (up to the next ``## ``), or append it."""
    section = f"{SECTION}\n\n{body.rstrip()}\n"
    if not path.exists():
        path.write_text(f"# Benchmarks\n\n{section}", encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(SECTION)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "BENCHMARKS.md",
        help="markdown file whose '## CLI latency' section is rewritten",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    base, shown = llem_command()
    with tempfile.TemporaryDirectory(prefix="llem-bench-") as tmp:
        tmp_path = Path(tmp)
        # An isolated, empty user config and cache so that the machine's settings do not matter.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLEM_")}
        env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), LLEM_CACHE_DIR=str(tmp_path / "cache"))
        study = tmp_path / "study-1000.yaml"
        study.write_text(STUDY_YAML, encoding="utf-8")

        check = subprocess.run(
            [*base, "run", str(study), "--dry-run"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        expected = f"{STUDY_POINTS} experiments x 1 cycles"
        if check.returncode != 0 or expected not in check.stdout:
            raise SystemExit(
                f"the generated study did not expand to {STUDY_POINTS} points:\n"
                f"{check.stdout[-500:]}\n{check.stderr}"
            )

        rows = [
            (f"{shown} --help", time_command([*base, "--help"], args.runs, env), 0.5),
            (
                f"{shown} run <1,000-point study> --dry-run",
                time_command([*base, "run", str(study), "--dry-run"], args.runs, env),
                2.0,
            ),
        ]

    table = render(rows)
    print(table)
    meta = (
        f"- Machine: {cpu_model()}, {cores()} CPU cores\n"
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}\n"
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Method: wall time of a fresh `{shown}` process (subprocess), 1 warm run then "
        f"{args.runs} timed runs; empty user config; the study is precision x2, n x10, "
        f"pytorch.batch_size x5, decoder.temperature x10 = {STUDY_POINTS} valid points.\n"
        f"- Reproduce: `{REPRODUCE}`\n"
    )
    print()
    print(meta)
    if not args.no_write:
        write_section(args.output, f"{table}\n\n{meta}")
        print(f"wrote the '{SECTION}' section of {args.output}")
    return 0 if all(statistics.median(t) < target for _, t, target in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
