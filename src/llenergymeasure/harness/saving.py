"""A finished measurement (``MeasuredExperiment``) and saving it: where it was asked for,
else a rescue folder.

A measurement's files (``result.json`` last, so its presence means the rest is there) go
through the one write path (``llenergymeasure.files``): redacted, atomic, never through a link,
never over an input or another measurement. If any of them cannot be written where asked
(disk full, read-only, permission denied, the folder gone or replaced by a file, a refused
destination), all of them are written into a fresh folder under the first rescue root that
works (``rescue.rescue_roots``), ``result.json``'s ``output_dir`` says where, and the returned
``SavedFiles`` says why, so the caller can tell the user (``llem run`` exits 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.files import write_bytes, write_json
from llenergymeasure.redaction import redact_text
from llenergymeasure.rescue import FileWriter, SavedFiles, save_files
from llenergymeasure.results.models import ExperimentResult

__all__ = ["RESULT_NAME", "TIMESERIES_NAME", "MeasuredExperiment", "save_measurement"]

RESULT_NAME = "result.json"
TIMESERIES_NAME = "timeseries.parquet"


@dataclass
class MeasuredExperiment:
    """A result and its timeseries (pyarrow table, or None when nothing was sampled).

    ``artifacts``: other files kept beside ``result.json`` (name -> content), e.g. an online
    run's ``server.log`` and ``online_requests.json``.
    """

    result: ExperimentResult
    timeseries: Any = None
    artifacts: dict[str, bytes] = field(default_factory=dict)
    saved: SavedFiles | None = None  # where save() put the files (a rescue folder?)

    def save(
        self,
        directory: Path,
        *,
        export_csv: bool = False,
        base: Path | None = None,
        rescue: bool = True,
    ) -> Path:
        """Write ``result.json`` (+ ``timeseries.parquet``, ``result.csv``, artifacts) into
        ``directory``, or a rescue folder if that fails and ``rescue``;
        returns the ``result.json`` written, and ``saved`` says where and why."""
        self.saved = save_measurement(
            self, directory, export_csv=export_csv, base=base, rescue=rescue
        )
        return self.saved.directory / "result.json"


def _artifact_writer(name: str, content: bytes) -> FileWriter:
    def write(path: Path, base: Path | None) -> Path:
        if name.endswith(".json"):
            try:
                data = json.loads(content)
            except ValueError:
                pass
            else:
                return write_json(path, data, base=base, indent=1)
        text = content.decode("utf-8", "surrogateescape")
        return write_bytes(path, redact_text(text).encode("utf-8", "surrogateescape"), base=base)

    return write


def save_measurement(
    measured: MeasuredExperiment,
    directory: Path,
    *,
    export_csv: bool = False,
    base: Path | None = None,
    rescue: bool = True,
) -> SavedFiles:
    """Write ``measured`` into ``directory`` (``base``: the folder the user chose, see
    ``files``), or into a rescue folder; ``measured.result.output_dir`` is set to where it went.
    """
    from llenergymeasure.files import write_table

    writers: list[tuple[str, FileWriter]] = [
        (name, _artifact_writer(name, content)) for name, content in measured.artifacts.items()
    ]
    if measured.timeseries is not None:
        table = measured.timeseries
        writers.append(
            (TIMESERIES_NAME, lambda path, b: write_table(path, table, base=b)),
        )
    if export_csv:
        writers.append(("result.csv", lambda path, b: _result(measured, path).to_csv(path, base=b)))
    writers.append(
        (RESULT_NAME, lambda path, b: _write_result(measured, path, b)),
    )
    saved = save_files(directory, writers, base=base, rescue=rescue)
    measured.result = measured.result.model_copy(update={"output_dir": str(saved.directory)})
    return saved


def _result(measured: MeasuredExperiment, path: Path) -> ExperimentResult:
    return measured.result.model_copy(update={"output_dir": str(path.parent)})


def _write_result(measured: MeasuredExperiment, path: Path, base: Path | None) -> Path:
    return write_json(path, _result(measured, path), base=base)
