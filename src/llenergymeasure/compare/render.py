"""``llem compare``'s outputs: plain text (the terminal), Markdown (a pull-request comment) and
an HTML section (the report's machinery). The environment diff always comes first."""

from __future__ import annotations

from llenergymeasure.compare.models import Comparison, GateCheck, MetricComparison, PairComparison
from llenergymeasure.report.html import cell, escape, page, table
from llenergymeasure.results.study_statistics import format_number
from llenergymeasure.text_table import Justify, render_table

_VERDICT_TEXT = {
    "better": "better",
    "worse": "worse",
    "no_difference": "no difference",
    "insufficient_data": "insufficient data",
}


_GATE_CSS = {"fail": "bad", "pass": "ok", "unevaluable": "warn"}

# metric, A mean, B mean, B/A, CI, verdict, detectable, note
_METRIC_COLUMNS: list[Justify] = [
    "left", "right", "right", "right", "left", "left", "right", "left"
]  # fmt: skip


def _ratio(m: MetricComparison) -> str:
    if m.ratio is None:
        return "n/a"
    if m.ratio != 1.0 and round(m.ratio, 4) == 1.0:
        return f"{m.ratio:.7f}"  # a real but tiny difference (e.g. exact, no spread)
    return f"{m.ratio:.4f}"


def _interval(m: MetricComparison) -> str:
    if m.ci_low is None or m.ci_high is None:
        return "n/a"
    return f"[{m.ci_low:.4f}, {m.ci_high:.4f}]"


def _mdd(m: MetricComparison) -> str:
    return "n/a" if m.min_detectable_pct is None else f"±{m.min_detectable_pct:.1f} %"


def _value(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{format_number(value)} {unit}"


def _differs_text(pair: PairComparison) -> str:
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in pair.differs.items())


def _level(c: Comparison) -> str:
    return f"{c.confidence * 100:g} %"


def _gate_line(g: GateCheck) -> str:
    return f"{g.status.upper():<11} {g.metric} worse by > {g.pct:g} % [{g.pair}]: {g.reason}"


# --- text ----------------------------------------------------------------------------------------


def comparison_text(c: Comparison) -> str:
    """The comparison as plain text for a terminal."""
    lines = [
        "llem compare: is B better than A?",
        f"  A: {', '.join(c.a.paths)}  ({c.a.runs} runs, {c.a.configs} configs)",
        f"  B: {', '.join(c.b.paths)}  ({c.b.runs} runs, {c.b.configs} configs)",
        f"  matched by {c.matched_by}: {len(c.pairs)} pair(s)",
        "",
        "environment (! = A and B differ)",
    ]
    if c.environment:
        lines.append(
            render_table(
                None,
                [
                    [f"{'!' if row.differs else ' '} {row.name}", f"A: {row.a}", f"B: {row.b}"]
                    for row in c.environment
                ],
            )
        )
    for note in [*c.notes, *c.a.notes, *c.b.notes]:
        lines.append(f"note: {note}")
    level = _level(c)
    for number, pair in enumerate(c.pairs, 1):
        lines += [
            "",
            f"config {number}: {pair.label}  (A {pair.runs_a} runs [{pair.hash_a}], "
            f"B {pair.runs_b} runs [{pair.hash_b}])",
        ]
        if pair.differs:
            lines.append(f"  A -> B: {_differs_text(pair)}")
        lines.append(
            render_table(
                ["metric", "A mean", "B mean", "B/A", f"{level} CI", "verdict", "detectable", ""],
                [
                    [
                        m.label,
                        _value(m.mean_a, m.unit),
                        _value(m.mean_b, m.unit),
                        _ratio(m),
                        _interval(m),
                        _VERDICT_TEXT[m.verdict],
                        _mdd(m),
                        f"({m.note})" if m.note else "",
                    ]
                    for m in pair.metrics
                ],
                justify=_METRIC_COLUMNS,
            )
        )
    for label, configs in (("only in A", c.unmatched_a), ("only in B", c.unmatched_b)):
        for config in configs:
            lines.append(f"{label} (not compared): {config}")
    lines += [
        "",
        f"B/A {level}: {c.method}",
    ]
    if c.gate:
        lines += ["", "gate (--fail-if-worse)"]
        lines += [f"  {_gate_line(g)}" for g in c.gate]
        lines.append(f"  exit code {c.exit_code}")
    return "\n".join(lines)


# --- markdown ------------------------------------------------------------------------------------


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_markdown(c: Comparison) -> str:
    """The comparison as Markdown tables, for a pull-request comment."""
    level = _level(c)
    lines = [
        "### llem compare: B vs A",
        "",
        f"A: `{', '.join(c.a.paths)}` ({c.a.runs} runs) · B: `{', '.join(c.b.paths)}` "
        f"({c.b.runs} runs) · matched by {c.matched_by}",
        "",
        "| environment | A | B | |",
        "|---|---|---|:---:|",
    ]
    for row in c.environment:
        flag = "**differs**" if row.differs else ""
        lines.append(f"| {_md(row.name)} | {_md(row.a)} | {_md(row.b)} | {flag} |")
    for note in c.notes:
        lines += ["", f"> {_md(note)}"]
    lines += [
        "",
        f"| config | metric | A | B | B/A ({level} CI) | verdict | detectable |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for pair in c.pairs:
        for m in pair.metrics:
            verdict = _VERDICT_TEXT[m.verdict]
            if m.verdict in ("better", "worse"):
                verdict = f"**{verdict}**"
            ratio = _ratio(m) if m.ci_low is None else f"{_ratio(m)} {_interval(m)}"
            lines.append(
                f"| {_md(pair.label)} | {_md(m.label)} | {_md(_value(m.mean_a, m.unit))} | "
                f"{_md(_value(m.mean_b, m.unit))} | {ratio} | {verdict} | {_mdd(m)} |"
            )
    if c.gate:
        lines += ["", "| gate | config | status | why |", "|---|---|---|---|"]
        for g in c.gate:
            status = f"**{g.status}**" if g.status != "pass" else g.status
            check = f"{_md(g.metric)} worse by > {g.pct:g} %"
            lines.append(f"| {check} | {_md(g.pair)} | {status} | {_md(g.reason)} |")
    lines += ["", f"<sub>{_md(c.method)}</sub>"]
    return "\n".join(lines) + "\n"


# --- html ----------------------------------------------------------------------------------------


def comparison_html(c: Comparison) -> str:
    """The comparison as an HTML section (headings and tables, no page around it)."""
    level = _level(c)
    body = [
        "<h2>Comparison: B vs A</h2>",
        f'<p class="meta">A: {escape(", ".join(c.a.paths))} ({c.a.runs} runs) · B: '
        f"{escape(', '.join(c.b.paths))} ({c.b.runs} runs) · matched by {escape(c.matched_by)}</p>",
        "<h3>Environment</h3>",
        table(
            ["", "A", "B", ""],
            [
                [
                    cell(r.name),
                    cell(r.a),
                    cell(r.b),
                    cell('<span class="warn">differs</span>' if r.differs else "", raw=True),
                ]
                for r in c.environment
            ],
            ["differs" if r.differs else "" for r in c.environment],
        ),
    ]
    for note in [*c.notes, *c.a.notes, *c.b.notes]:
        body.append(f'<p class="note">{escape(note)}</p>')
    for pair in c.pairs:
        body.append(_pair_html(pair, level))
    if c.gate:
        body.append(_gate_html(c.gate))
    body.append(f'<p class="meta">{escape(c.method)}</p>')
    return "".join(body)


_VERDICT_CSS = {"better": "ok", "worse": "bad", "no_difference": "", "insufficient_data": "warn"}


def _pair_html(pair: PairComparison, level: str) -> str:
    """One matched config: its heading and its metrics table."""
    head = (
        f"<h3>{escape(pair.label)}</h3>"
        f'<p class="meta">A {pair.runs_a} runs [{escape(pair.hash_a)}] · B {pair.runs_b} runs '
        f"[{escape(pair.hash_b)}]"
        + (f" · A → B: {escape(_differs_text(pair))}" if pair.differs else "")
        + "</p>"
    )
    rows = []
    for m in pair.metrics:
        verdict = escape(_VERDICT_TEXT[m.verdict])
        if _VERDICT_CSS[m.verdict]:
            verdict = f'<span class="{_VERDICT_CSS[m.verdict]}">{verdict}</span>'
        rows.append(
            [
                cell(m.label),
                cell(_value(m.mean_a, m.unit), num=True),
                cell(_value(m.mean_b, m.unit), num=True),
                cell(_ratio(m), num=True),
                cell(_interval(m), num=True),
                cell(verdict, raw=True),
                cell(_mdd(m), num=True),
                cell(m.note or ""),
            ]
        )
    headers = ["metric", "A mean", "B mean", "B/A", f"{level} CI", "verdict", "detectable", "note"]
    return head + table(headers, rows)


def _gate_html(gate: list[GateCheck]) -> str:
    """The gate's checks and their status."""
    return "<h3>Gate</h3>" + table(
        ["check", "config", "status", "why"],
        [
            [
                cell(f"{g.metric} worse by > {g.pct:g} %"),
                cell(g.pair),
                cell(f'<span class="{_GATE_CSS[g.status]}">{escape(g.status)}</span>', raw=True),
                cell(g.reason),
            ]
            for g in gate
        ],
    )


def comparison_page(c: Comparison) -> str:
    """A self-contained HTML page holding ``comparison_html``."""
    return page("llem compare", "<h1>llem compare</h1>" + comparison_html(c))
