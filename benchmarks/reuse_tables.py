"""BENCHMARKS.md tables for engine reuse (issue 14): the same study run with and without reuse.

Reads pairs of study directories (``--pair NAME REUSE_DIR FRESH_DIR``), each produced on one
machine by ``llem run <study.yaml> --no-gaps`` and ``... --no-gaps --no-reuse-engine``, and
writes the "Engine reuse" section of BENCHMARKS.md:

- per config: J/output-token and tokens/s, mean and cycle-to-cycle CV, with and without reuse,
  and whether they agree within the larger of 2 % and the configs' own CV;
- per study: wall time, time in measurement windows, configured waits (idle baseline, thermal
  floor, gaps), the rest (spawn, imports, engine load, compile, warmup), and engine loads.

    python benchmarks/reuse_tables.py --pair "PyTorch compiled" DIR_A DIR_B --pair vLLM DIR_C DIR_D
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from _markdown import add_section_options, publish
from _studies import Run, flat, load_study, machine, mean_cv


def config_labels(manifest: dict[str, Any]) -> list[str]:
    """A short label per config: the fields whose values differ between the study's configs."""
    flat_configs = [flat(c) for c in manifest["experiments"]]
    keys = sorted({k for f in flat_configs for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flat_configs}) > 1]
    shown = [k for k in varying if k not in {"n", "dataset.n"}] or varying
    return [", ".join(f"{k.split('.')[-1]} {f.get(k)}" for k in shown) for f in flat_configs]


def _seconds(session: dict[str, Any]) -> float:
    if not session.get("finished_at"):
        return 0.0
    start = datetime.fromisoformat(session["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(session["finished_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def wall_time_s(manifest: dict[str, Any]) -> float:
    """Active study time: the sum of its sessions (pauses between resumes do not count)."""
    return sum(_seconds(s) for s in manifest["sessions"])


def per_config_table(
    reuse: tuple[dict[str, Any], list[Run]],
    fresh: tuple[dict[str, Any], list[Run]],
) -> tuple[str, int, int]:
    labels = config_labels(reuse[0])
    lines = [
        "| config | cycles | J/token reuse (CV) | J/token fresh (CV) | diff | band | agree "
        "| tok/s reuse (CV) | tok/s fresh (CV) | diff | agree |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|:---:|",
    ]
    agreeing = total = 0
    for index, label in enumerate(labels):
        a = [r for r in reuse[1] if r.config_index == index]
        b = [r for r in fresh[1] if r.config_index == index]
        if not a or not b:
            lines.append(f"| {label} | {len(a)}/{len(b)} | missing runs |||||||||")
            continue
        cells = []
        oks = []
        for key in ("energy_per_output_token_j", "tokens_per_second"):
            ma, cva = mean_cv([r.result[key] for r in a])
            mb, cvb = mean_cv([r.result[key] for r in b])
            diff = (ma - mb) / mb
            band = max(0.02, cva, cvb)
            ok = abs(diff) <= band
            oks.append(ok)
            fmt = ".4f" if key.startswith("energy") else ".0f"
            cells.append(
                f"{ma:{fmt}} ({cva * 100:.1f} %) | {mb:{fmt}} ({cvb * 100:.1f} %) | "
                f"{diff * 100:+.1f} % | "
                + (f"{band * 100:.1f} % | " if key[0] == "e" else "")
                + ("yes" if ok else "**no**")
            )
        total += 1
        agreeing += all(oks)
        lines.append(f"| {label} | {min(len(a), len(b))} | " + " | ".join(cells) + " |")
    return "\n".join(lines), agreeing, total


def time_row(name: str, manifest: dict[str, Any], runs: list[Run]) -> str:
    results = [r.result for r in runs]
    wall = wall_time_s(manifest)
    # the phase split's prefill-only window is a measurement window too
    windows = sum(
        r["timing"]["measurement_s"]
        + ((r.get("phase_split") or {}).get("duration_prefill_s") or 0.0)
        for r in results
    )
    waits = sum(r["timing"]["baseline_s"] + r["timing"]["thermal_floor_s"] for r in results)
    loads = sum(1 for r in results if not r.get("engine_reused", False))
    load_s = sum(r["timing"]["load_s"] for r in results)
    warm_s = sum(r["timing"]["warmup_s"] for r in results)
    other = wall - windows - waits
    share = other / wall if wall else 0.0
    return (
        f"| {name} | {len(results)} | {loads} | {wall:.0f} | {windows:.0f} ({windows / wall:.0%}) | "
        f"{waits:.0f} | {load_s:.0f} | {warm_s:.0f} | {other:.0f} | **{share:.0%}** |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "REUSE", "FRESH"))
    add_section_options(parser)
    args = parser.parse_args()
    parts: list[str] = []
    timing = [
        "| study | runs | engine loads | wall s | windows s (share) | configured waits s "
        "| load s | warmup s | rest s | outside windows and waits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, reuse_dir, fresh_dir in args.pair or []:
        reuse = load_study(Path(reuse_dir))
        fresh = load_study(Path(fresh_dir))
        table, agreeing, total = per_config_table(reuse, fresh)
        parts.append(
            f"### {name} ({machine(r.result for r in reuse[1])})\n\n{table}\n\n"
            f"{agreeing} of {total} configs agree on both J/token and tok/s."
        )
        timing.append(time_row(f"{name}, reuse", *reuse))
        timing.append(time_row(f"{name}, fresh process per run", *fresh))
    body = "\n\n".join(parts)
    body += (
        "\n\n### Where the wall time goes\n\n"
        "Windows = the measurement windows, with the prefill-only windows of runs that measured "
        "the phase split. Configured waits = idle baseline + thermal floor (gaps were off). Rest "
        "= spawn and imports, engine load, compile and warmup (the phase split's too), "
        "pre-flight, result writing.\n\n" + "\n".join(timing)
    )
    if args.extra and args.extra.is_file():
        body += "\n\n" + args.extra.read_text()
    publish(body, "Engine reuse (issue 14)", args.no_write)


if __name__ == "__main__":
    main()
