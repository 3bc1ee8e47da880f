"""``llem report``: study statistics, plots and a self-contained HTML report.

``stats`` is pure Python (used by the study runner too); the plots need matplotlib, the
``[report]`` extra, imported only when a report is rendered.
"""

from __future__ import annotations

REPORT_EXTRA_HINT = 'pip install "llenergymeasure[report]"'
