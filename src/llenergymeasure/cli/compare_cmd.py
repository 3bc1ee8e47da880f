"""``llem compare``: options in, comparison (or plan) out, exit code by the gate.

Exit codes: 0 compared (every ``--fail-if-worse`` check passed), 1 a check failed (B is worse
than A by more than PCT with confidence), 2 usage error (bad paths or options, nothing to
match, or a gated metric without an interval: fewer than 3 cycles or not measured).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import typer

from llenergymeasure.exceptions import ConfigError


@dataclass(frozen=True)
class CompareOptions:
    """What ``llem compare`` was given on the command line."""

    a: str
    b: str | None = None
    by: list[str] = field(default_factory=list)
    fail_if_worse: list[str] = field(default_factory=list)
    as_json: bool = False
    markdown: bool = False
    html: Path | None = None
    plan: bool = False
    detect_pct: float | None = None


def _check(opts: CompareOptions) -> None:
    if opts.as_json and opts.markdown:
        raise ConfigError("--json and --markdown: choose one output format")
    if opts.plan:
        if opts.fail_if_worse or opts.markdown or opts.html is not None:
            raise ConfigError(
                "--plan prints how many cycles a study needs; --fail-if-worse, --markdown and "
                "--html apply to a comparison",
                hint="llem compare A [B] --plan --detect 5",
            )
        return
    if opts.b is None:
        raise ConfigError(
            "llem compare needs two sides: A and B",
            hint="llem compare results/study_a results/study_b (or --plan with one side)",
        )
    if opts.detect_pct is not None:
        raise ConfigError("--detect applies to --plan", hint="llem compare A --plan --detect 5")


def _check_html_target(html: Path, inputs: list[Path]) -> None:
    """``--html`` must name a file that is not one of the inputs (never written over)."""
    if html.is_dir():
        raise ConfigError(f"--html {html} is a directory", hint="name the HTML file to write")
    target = html.resolve()
    if any(target == p.resolve() for p in inputs):
        raise ConfigError(f"--html {html} is one of the results being compared")


def execute_compare(opts: CompareOptions) -> int:
    """Run ``llem compare`` with parsed options; returns the exit code."""
    from llenergymeasure.compare.gate import evaluate_gate, parse_gate
    from llenergymeasure.compare.inputs import load_side

    _check(opts)
    checks = parse_gate(opts.fail_if_worse)
    side_a = load_side([opts.a], "A")
    side_b = load_side([opts.b], "B") if opts.b is not None else None
    if opts.plan:
        from llenergymeasure.compare.plan import DEFAULT_DETECT_PCT, plan_cycles, plan_text

        detect = DEFAULT_DETECT_PCT if opts.detect_pct is None else opts.detect_pct
        plan = plan_cycles(side_a, side_b, detect_pct=detect, by=opts.by)
        typer.echo(json.dumps(plan.model_dump(mode="json")) if opts.as_json else plan_text(plan))
        return 0
    from llenergymeasure.compare.core import compare_sides
    from llenergymeasure.compare.render import (
        comparison_markdown,
        comparison_page,
        comparison_text,
    )

    assert side_b is not None
    if opts.html is not None:
        _check_html_target(opts.html, [r.path for r in (*side_a.runs, *side_b.runs)])
    comparison = compare_sides(side_a, side_b, by=opts.by)
    if checks:
        comparison = evaluate_gate(comparison, checks)
    if opts.html is not None:
        from llenergymeasure.files import write_text

        write_text(opts.html, comparison_page(comparison))
    if opts.as_json:
        typer.echo(json.dumps(comparison.model_dump(mode="json")))
    elif opts.markdown:
        typer.echo(comparison_markdown(comparison), nl=False)
    else:
        typer.echo(comparison_text(comparison))
        if opts.html is not None:
            typer.echo(f"\nhtml  {opts.html}")
    if comparison.exit_code == 2:
        typer.echo(
            "error: a gated metric has no interval (fewer than 3 cycles on a side, or not "
            "measured): the gate cannot decide",
            err=True,
        )
    return comparison.exit_code
