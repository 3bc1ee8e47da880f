"""The report section of where the joules go (issue 16): the stacked prefill/decode bar per
config and the per-request energy histogram, drawn only where results carry the data.

Bars show energy per request (the config's runs averaged): the differential split where the
run measured one (``measurement.phase_split``), otherwise the time-resolved split; the method
is named beside each bar. The histogram pools the per-request energies (``requests[i].
energy_j``) of a config's runs and plots them against prompt length too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.report.phase_plots import plot_phase_bars, plot_request_energy
from llenergymeasure.results.models import ExperimentResult

__all__ = [
    "PhaseFigure",
    "PhaseSection",
    "phase_figures",
    "phase_summary_rows",
    "split_per_request",
]


@dataclass
class PhaseFigure:
    """One PNG of the section, with its alt text and caption."""

    path: Path
    alt: str
    caption: str


@dataclass
class PhaseSection:
    """The section's figures (empty when no result has the data)."""

    figures: list[PhaseFigure] = field(default_factory=list)


def split_per_request(result: ExperimentResult) -> tuple[float, float, str] | None:
    """``(prefill J, decode J, method)`` per request of one run, or None without a split."""
    n = result.n_requests
    if n <= 0:
        return None
    if result.phase_split is not None:
        s = result.phase_split
        return s.energy_prefill_j / n, s.energy_decode_j / n, s.method
    a = result.energy_attribution
    if a is not None:
        return a.energy_prefill_j / n, a.energy_decode_j / n, a.method
    return None


def _config_split(
    runs: Sequence[ExperimentResult],
) -> tuple[float | None, float | None, str | None]:
    splits = [s for s in (split_per_request(r) for r in runs) if s is not None]
    if not splits:
        return None, None, None
    # one method per bar: the differential figure when any run has it
    method = "differential" if any(m == "differential" for *_, m in splits) else splits[0][2]
    chosen = [s for s in splits if s[2] == method]
    return (
        statistics.fmean(p for p, _, _ in chosen),
        statistics.fmean(d for _, d, _ in chosen),
        method,
    )


def phase_figures(
    configs: Sequence[tuple[str, Sequence[ExperimentResult]]], out_dir: Path, prefix: str
) -> PhaseSection:
    """The section for ``configs`` (label, its completed runs), PNGs written to ``out_dir``."""
    section = PhaseSection()
    bars = [(label, *_config_split(runs)) for label, runs in configs]
    if any(pre is not None for _, pre, _, _ in bars):
        png = plot_phase_bars(
            [label for label, *_ in bars],
            [pre for _, pre, _, _ in bars],
            [dec for _, _, dec, _ in bars],
            out_dir / f"{prefix}_phases.png",
            methods=[m for *_, m in bars],
        )
        section.figures.append(
            PhaseFigure(
                png,
                "prefill vs decode energy per request",
                "Energy per request, prefill (with the first token) vs decode. [differential]: "
                "a prefill-only window (max_new_tokens 1) measured in the same run, decode = "
                "total - prefill. [time_resolved]: the window's energy split over engine steps "
                "from the per-token timestamps and the power samples. Raw GPU energy.",
            )
        )
    for number, (label, runs) in enumerate(configs, 1):
        requests = [q for r in runs for q in r.requests if q.energy_j is not None]
        if not requests:
            continue
        confidences = sorted(
            {r.energy_attribution.confidence for r in runs if r.energy_attribution is not None}
        )
        png = plot_request_energy(
            [q.energy_j for q in requests if q.energy_j is not None],
            out_dir / f"{prefix}_request_energy_{number}.png",
            prompt_tokens=[q.input_tokens for q in requests],
            title=f"Energy per request: {label}",
            note=f"time-resolved attribution, confidence {', '.join(confidences)}",
        )
        reasons = {
            r.energy_attribution.confidence_reason
            for r in runs
            if r.energy_attribution is not None and r.energy_attribution.confidence != "high"
        }
        caption = (
            "Each engine step's energy shared among its requests by the tokens each processed "
            "in it (prompt tokens at prefill, one per decode token); the requests of a run sum "
            "to its window energy."
        )
        if reasons:
            caption += " Confidence: " + "; ".join(sorted(reasons))
        section.figures.append(PhaseFigure(png, f"per-request energy of {label}", caption))
    return section


def phase_summary_rows(r: ExperimentResult) -> list[tuple[str, str]]:
    """Summary-table rows of one result: the splits, per-request energy, the host's share."""
    rows: list[tuple[str, str]] = []
    s = r.phase_split
    if s is not None:
        rows.append(
            (
                "prefill / decode energy (differential)",
                f"{s.energy_prefill_j:.4g} J ({s.share_prefill:.1%}) / {s.energy_decode_j:.4g} J; "
                f"{s.j_per_input_token_prefill:.4g} J per input token, "
                f"{s.j_per_decode_token:.4g} J per decode token",
            )
        )
    elif r.config.measurement.phase_split:
        rows.append(("prefill / decode energy (differential)", f"n/a: {r.phase_split_unavailable}"))
    a = r.energy_attribution
    if a is not None:
        share = a.share_prefill
        rows.append(
            (
                "prefill / decode energy (time-resolved)",
                f"{a.energy_prefill_j:.4g} J"
                + (f" ({share:.1%})" if share is not None else "")
                + f" / {a.energy_decode_j:.4g} J; confidence {a.confidence}",
            )
        )
        energies = [q.energy_j for q in r.requests if q.energy_j is not None]
        if energies:
            rows.append(
                (
                    "energy per request mean / p50 / max",
                    " / ".join(
                        f"{v:.4g} J"
                        for v in (
                            statistics.fmean(energies),
                            statistics.median(energies),
                            max(energies),
                        )
                    ),
                )
            )
    elif r.energy_attribution_unavailable:
        rows.append(("energy per request", f"n/a: {r.energy_attribution_unavailable}"))
    c = r.energy.components
    if c is not None:
        parts = [
            f"{x.component} {x.energy_j:.4g} J ({x.method}{', estimated' if x.estimated else ''})"
            for x in c.components
            if x.energy_j is not None
        ]
        missing = [x.component for x in c.components if x.energy_j is None]
        text = (
            f"{c.total_with_host_j:.4g} J" if c.total_with_host_j is not None else "n/a"
        ) + f" = {' + '.join(parts) or 'nothing measured'}"
        if missing:
            text += f"; not measured: {', '.join(missing)}"
        rows.append(("energy with host (headline figures are GPU-only)", text))
    return rows
