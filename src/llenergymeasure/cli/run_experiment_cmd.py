"""``llem run`` of a single experiment: measure in-process, save, print the summary."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from llenergymeasure.cli.options import RunOptions
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.redaction import redact
from llenergymeasure.results.models import ExperimentResult
from llenergymeasure.results.online import LatencyStats

logger = logging.getLogger(__name__)


def _fmt(value: float | None, unit: str, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g} {unit}".strip()


def format_summary(result: ExperimentResult, path: Path | None) -> str:
    """The final summary printed on stdout."""
    e = result.energy
    lines = [
        f"llem result  {result.config.model}  [{result.config.backend}, {result.config.precision}]",
        f"  config hash          {result.measurement_config_hash}",
        f"  prompts / tokens     {result.n_requests} "
        f"{'requests' if result.online is not None else 'prompts'}, {result.input_tokens} in, "
        f"{result.output_tokens} out",
        f"  window               {result.duration_s:.3f} s",
        f"  throughput           {result.tokens_per_second:.2f} tok/s, "
        f"{result.requests_per_second:.3f} req/s",
        f"  latency mean/p50/p99 {_ms(result.latency.mean)} / {_ms(result.latency.p50)} / "
        f"{_ms(result.latency.p99)}",
        f"  TTFT mean / ITL mean {_ms(result.ttft.mean)} / {_ms(result.itl.mean)}",
    ]
    if e.available:
        lines += [
            f"  energy (raw)         {_fmt(result.energy_total_j, 'J', 5)}  "
            f"[{e.backend}: {e.method}]",
            f"  energy / out token   {_fmt(result.energy_per_output_token_j, 'J', 4)} raw, "
            f"{_fmt(result.energy_per_output_token_adjusted_j, 'J', 4)} baseline-adjusted",
            f"  mean power           {_fmt(result.mean_power_w, 'W', 4)}, baseline "
            f"{_fmt(e.baseline_power_w, 'W', 4)}",
        ]
        if e.counter_vs_poll_diff_pct is not None:
            lines.append(f"  counter vs poll      {e.counter_vs_poll_diff_pct:+.2f} %")
        lines += _where_the_joules_go(result)
    else:
        why = e.not_measured_reason or "no GPU energy sensor"
        lines.append(f"  energy               not measured ({e.backend}: {why})")
        lines += _host_estimate(result)
    if result.online is not None:
        lines += online_summary_lines(result)
    if result.carbon.co2_g is not None:
        lines.append(f"  CO2                  {result.carbon.co2_g:.4g} g")
    if result.measurement_warnings:
        lines.append(f"  warnings             {', '.join(result.measurement_warnings)}")
    if path is not None:
        lines.append(f"  saved                {path}")
    return "\n".join(lines)


def summary_dict(result: ExperimentResult, path: Path | None) -> dict[str, Any]:
    """The final summary as plain data (``llem run --json``)."""
    e = result.energy
    return {
        "model": result.config.model,
        "backend": result.config.backend,
        "precision": result.config.precision,
        "measurement_config_hash": result.measurement_config_hash,
        "n_requests": result.n_requests,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "duration_s": result.duration_s,
        "tokens_per_second": result.tokens_per_second,
        "requests_per_second": result.requests_per_second,
        "latency_s": {
            "mean": result.latency.mean,
            "p50": result.latency.p50,
            "p99": result.latency.p99,
        },
        "ttft_mean_s": result.ttft.mean,
        "itl_mean_s": result.itl.mean,
        "energy_available": e.available,
        "energy_backend": e.backend,
        "energy_total_j": result.energy_total_j,
        "energy_per_output_token_j": result.energy_per_output_token_j,
        "energy_per_output_token_adjusted_j": result.energy_per_output_token_adjusted_j,
        "mean_power_w": result.mean_power_w,
        "baseline_power_w": e.baseline_power_w,
        "co2_g": result.carbon.co2_g,
        "measurement_warnings": list(result.measurement_warnings),
        "timing": result.timing.model_dump(mode="json"),
        "result_path": str(path) if path is not None else None,
    }


def format_timings(result: ExperimentResult) -> str:
    """Phase timings, one per line (logged at DEBUG: ``llem run --verbose``, the log file)."""
    t = result.timing
    phases = [
        ("pre-flight", t.preflight_s),
        ("environment", t.environment_s),
        ("idle baseline", t.baseline_s),
        ("model load", t.load_s),
        ("dataset", t.dataset_s),
        ("warmup", t.warmup_s),
        ("thermal floor", t.thermal_floor_s),
        ("measurement window", t.measurement_s),
        ("total", t.total_s),
    ]
    lines = ["phase timings"]
    lines += [f"  {name:<19} {seconds:8.3f} s" for name, seconds in phases]
    if t.compile_s is not None:
        lines.append(f"  {'(torch.compile)':<19} {t.compile_s:8.3f} s, part of warmup")
    return "\n".join(lines)


def _where_the_joules_go(result: ExperimentResult) -> list[str]:
    """Summary lines of the prefill/decode split, per-request energy and the host's share."""
    lines: list[str] = []
    split = result.phase_split
    if split is not None:
        lines.append(
            f"  prefill / decode     {_fmt(split.energy_prefill_j, 'J', 4)} "
            f"({split.share_prefill:.1%}) / {_fmt(split.energy_decode_j, 'J', 4)}  "
            f"[differential]; {_fmt(split.j_per_input_token_prefill, 'J', 3)}/input token, "
            f"{_fmt(split.j_per_decode_token, 'J', 3)}/decode token"
        )
    elif result.config.measurement.phase_split:
        lines.append(f"  prefill / decode     n/a: {result.phase_split_unavailable}")
    a = result.energy_attribution
    if a is not None:
        lines.append(
            f"  time-resolved split  {_fmt(a.energy_prefill_j, 'J', 4)} / "
            f"{_fmt(a.energy_decode_j, 'J', 4)}  (confidence {a.confidence}); per-request "
            "energy in result.json"
        )
    c = result.energy.components
    if c is not None and c.host_energy_j is not None:
        lines.append(
            f"  with host (CPU/DRAM) {_fmt(c.total_with_host_j, 'J', 5)}  (energy figures "
            "above are GPU-only)"
        )
    return lines


def _host_estimate(result: ExperimentResult) -> list[str]:
    """The host's CPU/DRAM figure of a run without a GPU figure (never a headline)."""
    c = result.energy.components
    if c is None or c.host_energy_j is None:
        return []
    host = [x for x in c.components if x.component != "gpu" and x.energy_j is not None]
    kind = "estimated" if any(x.estimated for x in host) else "measured"
    methods = ", ".join(dict.fromkeys(x.method for x in host))
    return [f"  host (CPU/DRAM)      {_fmt(c.host_energy_j, 'J', 5)}  ({kind}, {methods})"]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.2f} ms"


def _ms_pair(stats: LatencyStats | None) -> str:
    return "n/a" if stats is None else f"{stats.p50_ms:.1f} / {stats.p99_ms:.1f} ms"


def online_summary_lines(result: ExperimentResult) -> list[str]:
    """The online part of the summary: load, J/request, J/token, goodput, TTFT/TPOT."""
    online = result.online
    assert online is not None
    m = online.metrics
    achieved = (
        f", achieved {online.achieved_rate_per_s:.2f} req/s"
        if online.achieved_rate_per_s is not None
        else ""
    )
    cap = f", at most {online.max_concurrency} in flight" if online.max_concurrency else ""
    failed = f", {m.n_failed} failed {m.errors}" if m.n_failed else ""
    if m.goodput_per_s is None:
        goodput = "n/a (no online.slo targets)"
    else:
        goodput = f"{m.goodput_per_s:.3f} req/s ({m.n_slo_met} of {m.n_ok} requests met the SLO)"
    lines = [
        f"  online load          {online.request_rate} req/s {online.arrival}{achieved}{cap}; "
        f"{m.n_ok}/{m.n_requests} requests ok{failed}",
        f"  server               {online.endpoint} ({online.request_model})",
        f"  J / request          {_fmt(m.energy_per_request_j, 'J', 4)} raw, "
        f"{_fmt(m.adjusted_energy_per_request_j, 'J', 4)} baseline-adjusted",
        f"  J / output token     {_fmt(m.energy_per_output_token_j, 'J', 4)} raw, "
        f"{_fmt(m.adjusted_energy_per_output_token_j, 'J', 4)} baseline-adjusted",
        f"  goodput              {goodput}",
        f"  TTFT p50 / p99       {_ms_pair(m.ttft)}",
        f"  TPOT p50 / p99       {_ms_pair(m.tpot)}",
        f"  client CPU           {online.client_cpu_s:.2f} s over the window",
    ]
    lines += [f"  note                 {w}" for w in online.warnings]
    if online.server_log:
        lines.append(f"  server log           {online.server_log} (beside result.json)")
    return lines


def run_single(config: ExperimentConfig, opts: RunOptions) -> int:
    """Measure ``config`` in this process and write it under the results directory."""
    from llenergymeasure.config.user_config import setting
    from llenergymeasure.harness.measure import measure
    from llenergymeasure.results.io import experiment_dir_name, unique_directory

    results_root = opts.output or Path(setting("output.results_dir"))
    if config.mode == "online":
        from llenergymeasure.online.preflight import online_preflight

        problems = online_preflight(config, None)  # before a directory is made for nothing
        if problems:
            from llenergymeasure.exceptions import PreFlightError

            raise PreFlightError(problems)
    # The run directory exists before anything is measured: an unusable output location is a
    # ConfigError now, not a lost measurement later. It is removed again if nothing lands in it
    # (an online run's server log, kept on failure, is something).
    name = experiment_dir_name(config.model, config.backend, datetime.now().astimezone())
    directory = unique_directory(results_root, name)
    try:
        if config.mode == "online":
            measured = measure(config, work_dir=directory)
        else:
            measured = measure(config)
        # The results folder the user chose is the base: a run folder that became a link, or a
        # results folder that vanished, is refused, and the measurement goes to a rescue folder.
        path = measured.save(directory, export_csv=opts.export_csv, base=results_root)
    except BaseException:
        kept = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        if kept:
            logger.info("kept %s in %s", ", ".join(kept), directory)
        else:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    saved = measured.saved
    rescued = saved is not None and saved.rescued
    if rescued:
        assert saved is not None
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if nothing landed in it
    for line in format_timings(measured.result).splitlines():
        logger.debug("%s", line)
    if opts.as_json:
        summary = summary_dict(measured.result, path)
        if rescued:
            assert saved is not None
            summary.update(
                rescued_from=str(saved.rescued_from), rescue_reason=saved.reason, exit_code=3
            )
        typer.echo(json.dumps(redact(summary)))
    else:
        typer.echo(format_summary(measured.result, path))
        if rescued:
            assert saved is not None
            typer.echo(
                f"  RESCUED              could not save in {saved.rescued_from}: {saved.reason};"
                f" the result was saved to {saved.directory} instead (exit code 3)"
            )
    return 3 if rescued else 0


__all__ = ["format_summary", "format_timings", "online_summary_lines", "run_single", "summary_dict"]
