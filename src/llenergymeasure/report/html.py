"""The report's HTML machinery: jinja2 templates (package data, autoescaped) and their cells.

Pages are rendered from ``report/templates/``: ``base.html.j2`` (the self-contained page: inline
CSS only, no scripts, fonts, stylesheets or links to anywhere, so it opens offline and can be
mailed around as one file), ``macros.html.j2`` (tables, figures, notes) and one template per
page. Every value reaches the page through jinja2's autoescaping; a cell that needs markup
(a coloured status, a list of warnings) is given as ``Span`` parts, never as HTML text.

``escape``, ``cell``, ``table`` and ``page`` keep the older string interface for
``llem compare``'s HTML section; they render through the same templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any

from llenergymeasure._version import __version__

if TYPE_CHECKING:
    import jinja2

TEMPLATE_PACKAGE = "llenergymeasure.report"
TEMPLATE_FOLDER = "templates"


@dataclass(frozen=True)
class Span:
    """Text in a cell, with an optional CSS class (``ok``, ``warn``, ``bad``)."""

    text: str
    css: str = ""


@dataclass(frozen=True)
class Cell:
    """One table cell: its parts (joined by ``sep``), right-aligned when ``num``."""

    parts: tuple[Span, ...]
    num: bool = False
    sep: str = ", "


@dataclass(frozen=True)
class Row:
    """One table row and its CSS class (``first``, ``front``, ``differs``)."""

    cells: tuple[Cell, ...]
    css: str = ""


@dataclass(frozen=True)
class Table:
    """A table: header texts and rows."""

    header: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Figure:
    """An inlined PNG (``data:`` URI), its alt text and caption."""

    data_uri: str
    alt: str
    caption: str = ""
    heading: str = ""


@dataclass
class Section:
    """A heading, then notes, figures, tables and short paragraphs, in that order."""

    heading: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)  # (summary, preformatted text)


def text_cell(value: object, *, num: bool = False, css: str = "") -> Cell:
    """A cell holding ``value`` as text (escaped when rendered)."""
    return Cell((Span(str(value), css),), num=num)


def spans_cell(spans: Sequence[Span], *, sep: str = ", ") -> Cell:
    """A cell of several (coloured) parts."""
    return Cell(tuple(spans), sep=sep)


def make_table(
    header: Sequence[str], rows: Sequence[Sequence[Cell]], css: Sequence[str] = ()
) -> Table:
    """A ``Table`` from header texts, rows of cells and an optional CSS class per row."""
    classes = list(css) + [""] * (len(rows) - len(css))
    return Table(
        tuple(header), tuple(Row(tuple(r), c) for r, c in zip(rows, classes, strict=False))
    )


@cache
def environment() -> jinja2.Environment:
    """The jinja2 environment of the report templates (autoescape on, undefined names fail)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_FOLDER),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render ``template`` (a file in ``report/templates``) with ``context`` and the page footer."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        environment()
        .get_template(template)
        .render({"llem_version": __version__, "generated": generated, **context})
    )


# --- the string interface of llem compare's section ------------------------------------------


def escape(value: object) -> str:
    """``value`` as HTML text (quotes escaped too)."""
    from markupsafe import escape as _escape

    return str(_escape(str(value)))


def cell(value: object, *, num: bool = False, raw: bool = False) -> str:
    """One ``<td>``: escaped text (``raw``: HTML as given), right-aligned when ``num``."""
    from markupsafe import Markup

    content = Markup(str(value)) if raw else value
    return _macro("raw_cell")(content, num)


def table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A table; ``rows`` hold ready cells (``cell``), ``classes`` a CSS class per row."""
    from markupsafe import Markup

    marked = [[Markup(c) for c in row] for row in rows]
    return _macro("raw_table")(header, marked, classes or [""] * len(rows))


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (HTML), with the CSS and a generated-by line."""
    from markupsafe import Markup

    return render("page.html.j2", {"title": title, "body": Markup(body)})


def _macro(name: str) -> Any:
    """A macro of ``macros.html.j2`` as a callable returning HTML text."""
    module = environment().get_template("macros.html.j2").module
    macro = getattr(module, name)
    return lambda *args: str(macro(*args))
