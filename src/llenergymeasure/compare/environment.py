"""The environment diff of a comparison: what A and B ran on, and where they differ.

Categorical facts (GPU, driver, versions, energy method, warnings) differ when the sets of
values seen on the two sides differ. Physical state read from the runs' time series differs
beyond a tolerance: the SM clock when the medians of the runs' window means differ by more than
``CLOCK_TOLERANCE`` (relative), the temperature at the start of the window when the medians
differ by more than ``TEMPERATURE_TOLERANCE_C``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence

from llenergymeasure.compare.inputs import Run
from llenergymeasure.compare.models import EnvironmentRow
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.report.versions import engine_text

CLOCK_TOLERANCE = 0.02
TEMPERATURE_TOLERANCE_C = 5.0
#: Libraries shown beside the engines' own distributions (from the catalogue).
_SHARED_LIBRARIES = ("torch",)


def _gpus(run: Run) -> str:
    gpus = run.result.environment.gpus
    if not gpus:
        return "none (CPU)"
    names = Counter(str(g.get("name", "?")) for g in gpus)
    return ", ".join(f"{name} x{count}" for name, count in names.items())


def _power_limit(run: Run) -> str:
    limits = [g.get("power_limit_w") for g in run.result.environment.gpus]
    shown = sorted({f"{float(w):g} W" for w in limits if w is not None})
    return ", ".join(shown) or "n/a"


def _libraries(run: Run) -> str:
    versions = run.result.environment.library_versions
    names = dict.fromkeys([*_SHARED_LIBRARIES, *(s.distribution for s in ENGINES.values())])
    return ", ".join(f"{k} {versions[k]}" for k in names if versions.get(k)) or "n/a"


def _reuse(run: Run) -> str:
    return "reused" if run.result.engine_reused else "loaded by the run"


_CATEGORICAL: tuple[tuple[str, Callable[[Run], str]], ...] = (
    ("GPU", _gpus),
    ("driver", lambda r: r.result.environment.driver_version or "n/a"),
    ("CUDA", lambda r: r.result.environment.cuda_version or "n/a"),
    ("power limit", _power_limit),
    ("CPU", lambda r: r.result.environment.cpu_model or "n/a"),
    (
        "engine",
        lambda r: engine_text(r.result.environment),
    ),
    ("libraries", _libraries),
    ("llem", lambda r: r.result.llem_version),
    ("energy method", lambda r: r.result.energy.method),
    ("engine reuse", _reuse),
)


def _distinct(runs: Sequence[Run], read: Callable[[Run], str]) -> tuple[str, set[str]]:
    """The values seen (with run counts when the runs disagree) and their set."""
    counts = Counter(read(r) for r in runs)
    if len(counts) <= 1:
        return next(iter(counts), "n/a"), set(counts)
    return " | ".join(f"{v} ({c}/{len(runs)})" for v, c in counts.items()), set(counts)


def _categorical_row(
    name: str, a: Sequence[Run], b: Sequence[Run], read: Callable[[Run], str]
) -> EnvironmentRow:
    (ta, sa), (tb, sb) = _distinct(a, read), _distinct(b, read)
    return EnvironmentRow(name=name, a=ta, b=tb, differs=sa != sb)


def _warnings_text(runs: Sequence[Run]) -> tuple[str, set[str]]:
    counts = Counter(w for r in runs for w in dict.fromkeys(r.result.measurement_warnings))
    if not counts:
        return "none", set()
    return ", ".join(f"{w} ({c}/{len(runs)})" for w, c in counts.items()), set(counts)


def _numeric(runs: Sequence[Run], read: Callable[[Run], float | None]) -> list[float]:
    return [v for v in (read(r) for r in runs) if v is not None]


def _numeric_text(values: list[float], unit: str, digits: int) -> str:
    if not values:
        return "n/a (no time series)"
    median = statistics.median(values)
    text = f"{median:.{digits}f} {unit}"
    if len(values) > 1 and min(values) != max(values):
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def _numeric_row(
    name: str,
    a: Sequence[Run],
    b: Sequence[Run],
    read: Callable[[Run], float | None],
    *,
    unit: str,
    digits: int,
    differs: Callable[[float, float], bool],
    rule: str,
) -> EnvironmentRow:
    va, vb = _numeric(a, read), _numeric(b, read)
    flagged = bool(va and vb) and differs(statistics.median(va), statistics.median(vb))
    return EnvironmentRow(
        name=name,
        a=_numeric_text(va, unit, digits),
        b=_numeric_text(vb, unit, digits),
        differs=flagged,
        rule=rule,
    )


def environment_diff(a: Sequence[Run], b: Sequence[Run]) -> list[EnvironmentRow]:
    """One row per fact, in a fixed order, each flagged where A and B differ."""
    rows = [_categorical_row(name, a, b, read) for name, read in _CATEGORICAL]
    rows.append(
        _numeric_row(
            "SM clock in window",
            a,
            b,
            lambda r: r.window.sm_clock_mhz if r.window else None,
            unit="MHz",
            digits=0,
            differs=lambda x, y: abs(y - x) > CLOCK_TOLERANCE * max(x, y),
            rule=f"medians differ by more than {CLOCK_TOLERANCE * 100:g} %",
        )
    )
    rows.append(
        _numeric_row(
            "temperature at window start",
            a,
            b,
            lambda r: r.window.temperature_start_c if r.window else None,
            unit="°C",
            digits=1,
            differs=lambda x, y: abs(y - x) > TEMPERATURE_TOLERANCE_C,
            rule=f"medians differ by more than {TEMPERATURE_TOLERANCE_C:g} °C",
        )
    )
    rows.append(
        _numeric_row(
            "max temperature in window",
            a,
            b,
            lambda r: r.window.temperature_max_c if r.window else None,
            unit="°C",
            digits=1,
            differs=lambda x, y: abs(y - x) > TEMPERATURE_TOLERANCE_C,
            rule=f"medians differ by more than {TEMPERATURE_TOLERANCE_C:g} °C",
        )
    )
    wa, sa = _warnings_text(a)
    wb, sb = _warnings_text(b)
    rows.append(EnvironmentRow(name="measurement warnings", a=wa, b=wb, differs=sa != sb))
    return rows
