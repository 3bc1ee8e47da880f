"""Aligned tables for the terminal, rendered by rich.

``render_table`` returns the table as text, so that the callers keep composing their output
as strings (summaries, previews, comparisons) and print it to the stream they print the rest
on. Cells are plain text (no rich markup, no highlighting, no wrapping: every value stays on
one line and greppable); lines carry no trailing spaces. The header is bold only when the
stream is a terminal and ``NO_COLOR`` is not set; the header rule is ASCII dashes.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from typing import IO, Literal

__all__ = ["render_table", "wants_color"]

Justify = Literal["left", "right"]

_WIDE = 10_000  # the console width: columns get their natural width, nothing wraps
# a rule of dashes under the header and nothing else (rich's SIMPLE_HEAD, in ASCII)
_HEAD_RULE = "    \n    \n -- \n    \n    \n    \n    \n    \n"


def wants_color(stream: IO[str] | None = None) -> bool:
    """Whether text for ``stream`` (default stdout) may carry styles: a terminal, ``NO_COLOR``
    unset, ``TERM`` not ``dumb``."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def render_table(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[object]],
    *,
    justify: Sequence[Justify] | None = None,
    indent: int = 2,
    rule: bool = False,
    stream: IO[str] | None = None,
) -> str:
    """``rows`` under ``header`` (None: no header) as aligned text, ``indent`` spaces in.

    ``justify`` per column (default left); ``rule``: a line under the header; ``stream``: where
    the text will be printed (default stdout), for colour and encoding.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    target = stream if stream is not None else sys.stdout
    color = wants_color(target)
    n_columns = len(header) if header is not None else max((len(r) for r in rows), default=0)
    boxed = rule and header is not None
    table = Table(
        box=box.Box(_HEAD_RULE, ascii=True) if boxed else None,
        show_header=header is not None,
        show_edge=False,
        pad_edge=False,
        # two spaces between columns: the rule's divider is one of them
        padding=(0, 1, 0, 0) if boxed else (0, 1),
        header_style="",
        safe_box=True,
    )
    for i in range(n_columns):
        table.add_column(
            Text.assemble((header[i], "bold" if color else "")) if header is not None else "",
            justify=justify[i] if justify is not None else "left",
            no_wrap=True,
        )
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=_WIDE,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        markup=False,
        highlight=False,
        emoji=False,
        legacy_windows=False,
    )
    console.print(table)
    pad = " " * indent
    return "\n".join(pad + line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))
