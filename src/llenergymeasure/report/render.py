"""Render a report: PNGs beside a self-contained HTML file (images inlined as data URIs).

The page comes from the jinja2 templates in ``report/templates`` (``report.html`` ->
``report.html.j2``), filled by ``experiment_page`` or ``study_page``. The HTML has inline CSS
only: no scripts, fonts, stylesheets or links to anywhere, so it opens offline and can be
mailed around as one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.report.figures import Figures
from llenergymeasure.report.html import render
from llenergymeasure.report.loader import ExperimentSource, load_source
from llenergymeasure.results.stats import STATS_INSTALL_HINT
from llenergymeasure.results.study import StudyStatistics
from llenergymeasure.results.study_statistics import format_statistics, study_statistics

#: Shown in place of the figures when matplotlib is missing (statistics need no matplotlib).
NO_FIGURES_NOTE = (
    "Figures are left out: they need matplotlib, which is not installed "
    f"({STATS_INSTALL_HINT}). The tables and statistics are complete."
)

PAGE_TEMPLATE = "report.html.j2"


@dataclass
class ReportOutcome:
    """What ``render_report`` wrote and the statistics table it produced."""

    html_path: Path
    images: list[Path] = field(default_factory=list)
    kind: str = "study"
    statistics_text: str = ""
    statistics: StudyStatistics | None = None
    notes: list[str] = field(default_factory=list)


def render_report(
    path: str | Path, output: str | Path | None = None, *, x_field: str | None = None
) -> ReportOutcome:
    """Write ``report.html`` (default: inside ``path``) and its PNGs beside it.

    PNGs are named ``<html stem>_*.png``. ``x_field`` (a dotted config field that varies
    between a study's configs) sets the x axis of the swept-field figure; by default it is
    found from the configs (``report.sweep``). Raises ``ConfigError`` when ``path`` is not an
    experiment or study directory, or ``x_field`` does not vary. Without matplotlib the HTML
    and the statistics are written without figures, and ``ReportOutcome.notes`` says so.
    """
    from llenergymeasure.files import write_text
    from llenergymeasure.report.plots import matplotlib_available

    source = load_source(path)
    html_path = Path(output) if output is not None else source.directory / "report.html"
    if html_path.is_dir():
        html_path = html_path / "report.html"
    figures = Figures(html_path.parent, html_path.stem, enabled=matplotlib_available())
    notes = [] if figures.enabled else [NO_FIGURES_NOTE]
    if isinstance(source, ExperimentSource):
        from llenergymeasure.report.experiment_page import experiment_context

        context = experiment_context(source, figures)
        r = source.result
        stats = study_statistics([(r.measurement_config_hash, r.config)], [(1, r)])
        kind = "experiment"
    else:
        from llenergymeasure.report.study_page import study_context

        context = study_context(source, figures, x_field=x_field)
        stats, kind = source.statistics, "study"
    context["notes"] = [*context["notes"], *notes]
    write_text(html_path, render(PAGE_TEMPLATE, context))
    return ReportOutcome(
        html_path=html_path,
        images=figures.images,
        kind=kind,
        statistics_text=format_statistics(stats),
        statistics=stats,
        notes=notes,
    )
