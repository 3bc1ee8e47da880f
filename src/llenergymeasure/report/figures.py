"""The figures of one report: drawn beside the HTML as ``<stem>_<name>.png`` and inlined.

``Figures`` draws only when matplotlib is installed (``enabled``); every figure it drew is in
``images``, in page order, and comes back as an ``html.Figure`` holding the PNG as a data URI.
The sections shared by both pages live here too: the latency distribution and the phase
figures.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.report.html import Figure, Section
from llenergymeasure.results.models import ExperimentResult

LATENCY_CAPTION = (
    "Left and middle: empirical CDFs over every measured request of each config's runs (the "
    "share of requests that finished, or got their first token, within a time). Offline, a "
    "request's latency runs from its batch's start to its last token, so requests of one "
    "batch share a step. "
)

ENERGY_NOT_MEASURED = (
    "Energy not measured (no sensor): no run has an energy figure, so the report shows no "
    "energy, power or where-the-energy-goes figures and leaves those rows out of its tables."
)


def safe_name(name: str) -> str:
    """A file-name part made of letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "run"


def inline(path: Path, alt: str, caption: str = "", heading: str = "") -> Figure:
    """A PNG file as an inlined figure."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Figure(f"data:image/png;base64,{data}", alt, caption, heading)


@dataclass
class Figures:
    """Draws a report's PNGs into ``directory`` as ``<prefix>_<name>.png`` when ``enabled``."""

    directory: Path
    prefix: str
    enabled: bool
    images: list[Path] = field(default_factory=list)

    def draw(
        self, name: str, plot: Callable[[Path], Path], alt: str, caption: str = ""
    ) -> Figure | None:
        """Run ``plot(path)`` and return the figure (None when figures are off)."""
        if not self.enabled:
            return None
        path = plot(self.directory / f"{self.prefix}_{safe_name(name)}.png")
        return self.keep(path, alt, caption)

    def keep(self, path: Path, alt: str, caption: str = "", heading: str = "") -> Figure:
        """A PNG drawn elsewhere (into this report's directory), recorded and inlined."""
        self.images.append(path)
        return inline(path, alt, caption, heading)


def energy_measured(results: Sequence[ExperimentResult]) -> bool:
    """Whether any run measured energy (a machine without a sensor: none did)."""
    return any(r.energy.available and r.energy_total_j is not None for r in results)


def latency_section(
    figures: Figures, configs: Sequence[tuple[str, Sequence[ExperimentResult]]]
) -> Section | None:
    """The latency distribution of each config (None when no run kept request records)."""
    from llenergymeasure.report.latency_plot import ITL_NOTE, latency_series, plot_latency_cdf

    series = latency_series(configs)
    if not series or not figures.enabled:
        return None
    section = Section("Latency distribution")
    whose = "Latency per config" if len(configs) > 1 else "Latency of the run"
    figure = figures.draw(
        "latency",
        lambda p: plot_latency_cdf(
            series, p, title=f"{whose}: CDF of every request, and stored ITL quantiles"
        ),
        "latency and time-to-first-token CDFs per config",
        LATENCY_CAPTION + "Right: " + ITL_NOTE + ".",
    )
    if figure is not None:
        section.figures.append(figure)
    return section


def phase_section(
    figures: Figures, configs: Sequence[tuple[str, Sequence[ExperimentResult]]]
) -> Section | None:
    """Where the joules go (prefill/decode bars, per-request energy), where results have it."""
    from llenergymeasure.report.phase_section import phase_figures

    if not figures.enabled:
        return None
    drawn = phase_figures(configs, figures.directory, figures.prefix)
    if not drawn.figures:
        return None
    section = Section("Where the energy goes: prefill vs decode, per request")
    section.figures += [figures.keep(f.path, f.alt, f.caption) for f in drawn.figures]
    return section
