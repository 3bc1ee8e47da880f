"""``llem compare``: is B better than A? Matched configs, B/A with intervals, verdicts, a CI gate.

Library use::

    from llenergymeasure.compare import compare
    c = compare("results/study_a", "results/study_b", by=["precision"],
                fail_if_worse=["j_per_token=2"])
    c.exit_code, [m.verdict for p in c.pairs for m in p.metrics]

The statistics are ``results.stats``'s (scipy, the ``report`` extra), shared with
``llem report``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llenergymeasure.compare.core import compare_sides
from llenergymeasure.compare.gate import evaluate_gate, parse_gate
from llenergymeasure.compare.inputs import Side, load_side
from llenergymeasure.compare.metrics import METRICS, CompareMetric
from llenergymeasure.compare.models import Comparison, MetricComparison, PairComparison
from llenergymeasure.compare.plan import Plan, plan_cycles
from llenergymeasure.results.stats import DEFAULT_CONFIDENCE, DEFAULT_POWER

__all__ = [
    "METRICS",
    "CompareMetric",
    "Comparison",
    "MetricComparison",
    "PairComparison",
    "Plan",
    "Side",
    "compare",
    "compare_sides",
    "load_side",
    "plan_cycles",
]


def compare(
    a: str | Path | Sequence[str | Path],
    b: str | Path | Sequence[str | Path],
    *,
    by: Sequence[str] = (),
    fail_if_worse: Sequence[str] = (),
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> Comparison:
    """Compare the runs under ``a`` with those under ``b`` (paths, or lists of paths).

    ``fail_if_worse``: ``METRIC=PCT`` checks; the result's ``exit_code`` is 0 when all pass,
    1 when one fails, 2 when one cannot be evaluated. ``ConfigError`` for unusable input.
    """
    checks = parse_gate(fail_if_worse)
    side_a = load_side([a] if isinstance(a, (str, Path)) else list(a), "A")
    side_b = load_side([b] if isinstance(b, (str, Path)) else list(b), "B")
    comparison = compare_sides(side_a, side_b, by=by, confidence=confidence, power=power)
    return evaluate_gate(comparison, checks) if checks else comparison
