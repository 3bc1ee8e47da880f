"""``llem report``: study statistics, plots and a self-contained HTML report.

The statistics come from ``results.stats`` (scipy, used by the study runner and ``llem compare``
too); the figures need matplotlib. Both are the ``[report]`` extra; without matplotlib the
report is written without figures, and its statistics are complete.
"""

from __future__ import annotations

from llenergymeasure.results.stats import STATS_INSTALL_HINT

REPORT_EXTRA_HINT = STATS_INSTALL_HINT
