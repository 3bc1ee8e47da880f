"""Entry point inside a runner container: read the config, measure, save into the out dir.

``python -m llenergymeasure.runners.container_entry [CONFIG_JSON [OUT_DIR]]``; the config path
defaults to ``$LLEM_CONFIG_PATH``, the out dir to ``/llem/out``. Writes ``result.json`` (+
``timeseries.parquet``) on success; on failure writes ``error.json`` ({type, message}) and
exits 1 so that the host can report the reason.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the experiment of the config JSON and save it into the out dir; exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    config_path = Path(args[0] if args else os.environ.get("LLEM_CONFIG_PATH", ""))
    out_dir = Path(args[1] if len(args) > 1 else "/llem/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from llenergymeasure.config.models import ExperimentConfig
        from llenergymeasure.harness.measure import measure

        config = ExperimentConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
        measured = measure(
            config,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
            work_dir=out_dir,  # an online run's server log lands beside the result as it goes
        )
        measured.save(out_dir)
    except Exception as e:
        traceback.print_exc()
        from llenergymeasure.results.io import atomic_write_text

        atomic_write_text(
            out_dir / "error.json",
            json.dumps({"type": type(e).__name__, "message": str(e)}, indent=2),
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
