"""Tables for BENCHMARKS.md from the fidelity studies' result directories (issue 7).

Reads the study directories produced on the GPU machine by
``llem run benchmarks/configs/fidelity_batch_curve.yaml`` and
``llem run benchmarks/configs/fidelity_repeatability.yaml`` (copied under
``benchmarks/results/``) plus an ``nvidia-smi`` idle log, prints the tables and writes them into
BENCHMARKS.md.

    python benchmarks/fidelity_tables.py
"""

from __future__ import annotations

import csv
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from _markdown import update_section

RESULTS = Path(__file__).resolve().parent / "results"
ML_ENERGY = {8: 0.455, 32: 0.165, 64: 0.119}  # Llama-3.1-8B, H100, vLLM 0.11, J/token


def runs(study: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(study.glob("*/result.json"))]


def batch_curve(rs: list[dict[str, Any]]) -> str:
    lines = [
        "| batch | mode | prompts | window s | tok/s | J/out-token | J/out-token adjusted "
        "| mean W | ML.ENERGY vLLM J/token |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
        rs,
        key=lambda r: (
            r["effective_parameters"]["torch_compile"],
            r["effective_parameters"]["batch_size"],
        ),
    ):
        ep = r["effective_parameters"]
        b = ep["batch_size"]
        lines.append(
            f"| {b} | {'compiled' if ep['torch_compile'] else 'eager'} | {r['n_requests']} | "
            f"{r['duration_s']:.1f} | {r['tokens_per_second']:.0f} | "
            f"{r['energy_per_output_token_j']:.3f} | {r['energy_per_output_token_adjusted_j']:.3f} | "
            f"{r['mean_power_w']:.0f} | {ML_ENERGY.get(b, '-')} |"
        )
    return "\n".join(lines)


def agreement(rs: list[dict[str, Any]]) -> str:
    """Counter vs the integrated poll llem keeps as its cross-check, and, where recorded, vs
    NVML's 1 s averaged reading (the pre-fix poll) over the same samples."""
    lines = [
        "| run | config | window s | counter J | poll J (reading) | poll vs counter "
        "| 1 s-average poll vs counter | >= 10 s window | within 2 % |",
        "|---|---|---:|---:|---:|---:|---:|:---:|:---:|",
    ]
    for r in rs:
        e = r["energy"]
        d = e["counter_vs_poll_diff_pct"]
        avg = [dev.get("poll_avg_energy_j") for dev in e["per_device"]]
        avg_d = (
            f"{(sum(avg) - e['counter_energy_j']) / e['counter_energy_j'] * 100:+.2f} %"
            if avg and None not in avg
            else "-"
        )
        source = (e.get("poll_power_source") or "nvml_power_usage").removeprefix("nvml_power_")
        long = r["duration_s"] >= 10
        lines.append(
            f"| {Path(r['output_dir']).name} | {label(r)} | {r['duration_s']:.1f} | "
            f"{e['counter_energy_j']:.0f} | {e['poll_energy_j']:.0f} ({source}) | {d:+.2f} % | "
            f"{avg_d} | {'yes' if long else 'no'} | {'yes' if abs(d) <= 2 else 'no'} |"
        )
    long_runs = [r for r in rs if r["duration_s"] >= 10]
    within = [r for r in long_runs if abs(r["energy"]["counter_vs_poll_diff_pct"]) <= 2]
    worst = max((abs(r["energy"]["counter_vs_poll_diff_pct"]) for r in long_runs), default=0.0)
    flagged = [r for r in rs if "energy_counter_poll_disagreement" in _warning_codes(r)]
    lines.append("")
    lines.append(
        f"- Runs of 10 s or more within 2 %: {len(within)} of {len(long_runs)} (largest gap "
        f"{worst:.2f} %). Runs flagged `energy_counter_poll_disagreement`: {len(flagged)} of "
        f"{len(rs)}."
    )
    return "\n".join(lines)


def _warning_codes(r: dict[str, Any]) -> list[str]:
    return [w if isinstance(w, str) else w.get("code", "") for w in r["measurement_warnings"]]


def label(r: dict[str, Any]) -> str:
    ep = r["effective_parameters"]
    return f"batch {ep['batch_size']}, {'compiled' if ep['torch_compile'] else 'eager'}"


def repeatability(rs: list[dict[str, Any]]) -> str:
    groups: dict[tuple[bool, int], list[dict[str, Any]]] = {}
    for r in rs:
        ep = r["effective_parameters"]
        groups.setdefault((ep["torch_compile"], ep["batch_size"]), []).append(r)
    lines = [
        "| config | cycles | J/out-token per cycle | mean | CV J/token | tok/s per cycle | CV tok/s |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for _, g in sorted(groups.items()):
        j = [r["energy_per_output_token_j"] for r in g]
        t = [r["tokens_per_second"] for r in g]
        cv = statistics.stdev(j) / statistics.fmean(j)
        cvt = statistics.stdev(t) / statistics.fmean(t)
        lines.append(
            f"| {label(g[0])} | {len(g)} | {', '.join(f'{x:.3f}' for x in j)} | "
            f"{statistics.fmean(j):.3f} | {cv * 100:.1f} % | {', '.join(f'{x:.0f}' for x in t)} | "
            f"{cvt * 100:.1f} % |"
        )
    return "\n".join(lines)


def baseline(curve: list[dict[str, Any]], smi_csv: Path) -> str:
    with smi_csv.open() as fh:
        rows = list(csv.reader(fh))[1:]
    watts = [float(r[1].strip().split()[0]) for r in rows]
    settled = watts[len(watts) // 2 :]
    base = curve[0]["energy"]["baseline"]
    lines = [
        f"- llem idle baseline: {base['power_w']:.1f} W ({base['n_samples']} samples over "
        f"{base['duration_s']:.0f} s, before the model was loaded).",
        f"- `nvidia-smi --query-gpu=power.draw -lms 500` at idle on the same machine just before: "
        f"{statistics.fmean(settled):.1f} W (mean of the last {len(settled)} readings; the "
        f"first readings, {max(watts):.0f} W, were still falling after the model build).",
        "",
        "| run | raw J | baseline J (W x window) | baseline share of raw | adjusted J |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in curve:
        if r["effective_parameters"]["torch_compile"]:
            continue
        e = r["energy"]
        lines.append(
            f"| batch {r['effective_parameters']['batch_size']}, eager | {e['total_j']:.0f} | "
            f"{e['baseline_energy_j']:.0f} | {e['baseline_energy_j'] / e['total_j'] * 100:.0f} % | "
            f"{e['adjusted_j']:.0f} |"
        )
    negative = [r for r in curve if (r["energy_adjusted_j"] or 0) < 0]
    lines.append("")
    lines.append(f"- Runs with negative adjusted energy: {len(negative)} of {len(curve)}.")
    return "\n".join(lines)


def _seconds(a: str, b: str) -> float:
    def parse(x: str) -> datetime:
        return datetime.fromisoformat(x.replace("Z", "+00:00"))

    return (parse(b) - parse(a)).total_seconds()


def time_to_result(study: Path, rs: list[dict[str, Any]]) -> str:
    """Where a study's wall time goes. Wall time is the sum of the study's sessions (a study
    stopped by a time limit and resumed has two), so pauses between sessions do not count."""
    manifest = json.loads((study / "study_manifest.json").read_text())
    sessions = manifest["sessions"]
    wall = sum(_seconds(x["started_at"], x["finished_at"]) for x in sessions)
    phases = ["baseline_s", "load_s", "warmup_s", "thermal_floor_s", "measurement_s"]
    sums = {p: sum(r["timing"][p] for r in rs) for p in phases}
    compile_s = sum(r["timing"].get("compile_s") or 0.0 for r in rs)
    in_runs = sum(r["timing"]["total_s"] for r in rs)
    lines = ["| part | seconds | share of wall time |", "|---|---:|---:|"]
    for p in phases:
        name = p.removesuffix("_s")
        if p == "warmup_s" and compile_s:
            name += f" (of which torch.compile {compile_s:.0f} s)"
        lines.append(f"| {name} | {sums[p]:.0f} | {sums[p] / wall * 100:.0f} % |")
    other = in_runs - sum(sums.values())
    lines.append(
        f"| other inside runs (environment, dataset, metrics) | {other:.0f} | "
        f"{other / wall * 100:.0f} % |"
    )
    lines.append(
        f"| outside runs (process spawn, imports, manifest; a run cut off by a session's end) "
        f"| {wall - in_runs:.0f} | {(wall - in_runs) / wall * 100:.0f} % |"
    )
    lines.append(f"| **study wall time** ({len(sessions)} session(s)) | **{wall:.0f}** | 100 % |")
    lines.append("")
    lines.append(
        f"Measurement windows are {sums['measurement_s'] / wall * 100:.0f} % of the wall time "
        f"({len(rs)} runs, {wall / len(rs):.0f} s of wall time per run for "
        f"{sums['measurement_s'] / len(rs):.1f} s of measurement)."
    )
    return "\n".join(lines)


def machine(rs: list[dict[str, Any]]) -> str:
    """GPU (with its UUID: lent machines differ), driver, versions and date, from the results."""
    env = rs[0]["environment"]
    libs = env["library_versions"]
    gpus = {f"{g['name']} ({g['uuid'][:12]}...)" for r in rs for g in r["environment"]["gpus"]}
    days = sorted({r["started_at_utc"][:10] for r in rs})
    return (
        f"one {', '.join(sorted(gpus))}, driver {env['driver_version']}, torch {libs['torch']}, "
        f"transformers {libs['transformers']}; {', '.join(days)}"
    )


def main() -> None:
    curve_dir = RESULTS / "fidelity_curve"
    rep_dir = RESULTS / "fidelity_repeatability"
    curve, rep = runs(curve_dir), runs(rep_dir)
    sections = {
        "Fidelity 5: batch-size curve, eager and compiled (H100)": batch_curve(curve),
        "Fidelity 2: NVML counter vs 100 ms polling (H100)": agreement(curve + rep),
        "Fidelity 3: repeatability (H100)": repeatability(rep),
        "Fidelity 4: baseline honesty (H100)": baseline(curve, curve_dir / "smi_idle.csv"),
        "Fidelity 6: time to result (H100)": (
            "Batch-curve study (8 runs, `--no-gaps`):\n\n"
            + time_to_result(curve_dir, curve)
            + "\n\nRepeatability study (15 runs, `--no-gaps`):\n\n"
            + time_to_result(rep_dir, rep)
        ),
    }
    source = (
        "\n\nFrom `benchmarks/results/fidelity_curve/` (curve: "
        f"{machine(curve)}) and `benchmarks/results/fidelity_repeatability/` (repeatability: "
        f"{machine(rep)}); Llama-3.1-8B-shaped random weights, bf16, 512-token synthetic "
        "prompts, 128 forced new tokens. Studies: `llem run benchmarks/configs/"
        "fidelity_batch_curve.yaml --no-gaps` and `llem run benchmarks/configs/"
        "fidelity_repeatability.yaml --no-gaps` (model: `python benchmarks/"
        "make_llama8b_shaped.py --out .devout/llama8b`; idle log: stage `idle` of "
        "`benchmarks/run_gpu_suite.sh`). Tables: `python benchmarks/fidelity_tables.py`."
    )
    for title, body in sections.items():
        print(f"## {title}\n\n{body}\n")
        update_section(body + source, title)


if __name__ == "__main__":
    main()
