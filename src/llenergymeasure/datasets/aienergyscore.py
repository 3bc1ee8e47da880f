"""The AI Energy Score text-generation prompts (``aienergyscore``, the default dataset).

Hub dataset ``AIEnergyScore/text_generation`` (1000 prompts from WikiText, OSCAR and UltraChat,
Apache-2.0), pinned to one commit and fetched with ``huggingface_hub.snapshot_download`` into the
HF cache. Only data files (``*.parquet``, ``*.jsonl``, ``*.csv``) are fetched; the file is chosen
deterministically (see :func:`pick_data_files`) and its prompt column is ``text`` (falling back to
``prompt``, then to the only string column). Parsing uses pyarrow only.

With ``HF_HUB_OFFLINE=1`` nothing goes to the network: a cached snapshot is used or a clear
``ConfigError`` is raised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure.datasets.prompt import Prompt
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.hub import hub_offline, probe_hub

AIENERGYSCORE = "aienergyscore"
AIENERGYSCORE_REPO_ID = "AIEnergyScore/text_generation"
AIENERGYSCORE_REVISION = "2dc92b2ee2cd9776a51ccf08c6c2ab04138370c3"
AIENERGYSCORE_N = 1000
"""Number of prompts in the pinned revision (for messages; the loaded count is authoritative)."""

DATA_PATTERNS: tuple[str, ...] = ("*.parquet", "*.jsonl", "*.csv")
"""Data file formats, most preferred first."""

TEXT_COLUMNS: tuple[str, ...] = ("text", "prompt")
"""Prompt column names tried in order."""

OFFLINE_HINT = (
    "run once with network access to cache it, or use your own prompts: "
    '--dataset path/to/prompts.jsonl (one {"prompt": "..."} per line)'
)


class Downloader(Protocol):
    """Fetches a hub dataset revision; returns a local folder (or one data file).

    With ``local_files_only`` it must not touch the network.
    """

    def __call__(
        self, *, repo_id: str, revision: str, cache_dir: Path | None, local_files_only: bool
    ) -> Path: ...


def hub_downloader(
    *, repo_id: str, revision: str, cache_dir: Path | None, local_files_only: bool
) -> Path:
    """Default :class:`Downloader`: ``snapshot_download`` of the data files into the HF cache.

    Online, the hub is probed first (``llenergymeasure.hub.probe_hub``: one bounded request) so
    that an unreachable hub fails in seconds rather than after the client's retries.
    """
    from huggingface_hub import snapshot_download

    if not local_files_only:
        unreachable = probe_hub()
        if unreachable is not None:
            raise ConnectionError(unreachable)

    folder = snapshot_download(
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        allow_patterns=list(DATA_PATTERNS),
        local_files_only=local_files_only,
    )
    return Path(folder)


def hf_offline() -> bool:
    """True if ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return hub_offline()


def fetch_aienergyscore(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    downloader: Downloader | None = None,
    local_files_only: bool | None = None,
) -> list[Path]:
    """Local data files of the pinned ``aienergyscore`` revision, downloading if needed.

    ``local_files_only`` defaults to ``HF_HUB_OFFLINE``. Raises ``ConfigError`` when the dataset
    is not cached and cannot be downloaded.
    """
    fetch = downloader or hub_downloader
    offline = hf_offline() if local_files_only is None else local_files_only
    cache = Path(cache_dir) if cache_dir is not None else None
    repo = {"repo_id": AIENERGYSCORE_REPO_ID, "revision": AIENERGYSCORE_REVISION}
    try:
        try:  # the revision is a pinned commit: a cached snapshot is authoritative
            location = fetch(**repo, cache_dir=cache, local_files_only=True)
            if not _data_files(location):
                raise FileNotFoundError(f"no data file in cached snapshot {location}")
        except Exception:
            if offline:
                raise
            location = fetch(**repo, cache_dir=cache, local_files_only=False)
    except ConfigError:
        raise
    except Exception as err:  # the hub client raises many unrelated types for "no network"
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}:
            raise ConfigError(
                f"dataset '{AIENERGYSCORE}' could not be fetched from the HF hub "
                f"({AIENERGYSCORE_REPO_ID}@{AIENERGYSCORE_REVISION}): {err}",
                hint=OFFLINE_HINT,
            ) from err
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        why = "HF_HUB_OFFLINE is set" if offline else detail
        raise ConfigError(
            f"dataset '{AIENERGYSCORE}' is not cached and the HF hub is unreachable ({why})",
            hint=OFFLINE_HINT,
        ) from err
    files = _data_files(location)
    if not files:
        raise ConfigError(
            f"dataset '{AIENERGYSCORE}': no data file ({', '.join(DATA_PATTERNS)}) in {location}"
        )
    return files


def _data_files(location: Path) -> list[Path]:
    return [location] if location.is_file() else pick_data_files(location)


def pick_data_files(folder: Path) -> list[Path]:
    """The data files of a snapshot folder, in the order their rows are read.

    The most preferred format present wins (parquet, then jsonl, then csv); among its files, those
    with ``train`` in their path are kept if any; the rest are sorted by relative path (shards
    concatenate in order).
    """
    for pattern in DATA_PATTERNS:
        found = sorted(
            (p for p in folder.rglob(pattern) if p.is_file() and ".cache" not in p.parts),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
        if found:
            train = [p for p in found if "train" in p.relative_to(folder).as_posix().lower()]
            return train or found
    return []


def read_prompt_column(path: Path) -> list[str]:
    """The prompt texts of one csv/parquet/jsonl file, in row order (nulls and blanks dropped)."""
    table = _read_table(path)
    names = list(table.column_names)
    column = next((c for c in TEXT_COLUMNS if c in names), None)
    if column is None:
        import pyarrow as pa

        strings = [
            f.name
            for f in table.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        if len(strings) != 1:
            raise ConfigError(
                f"dataset '{AIENERGYSCORE}': cannot find the prompt column in {path.name} "
                f"(looked for {', '.join(TEXT_COLUMNS)}; columns: {', '.join(names)})"
            )
        column = strings[0]
    values: list[Any] = table.column(column).to_pylist()
    return [v for v in values if isinstance(v, str) and v.strip()]


def load_aienergyscore(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    downloader: Downloader | None = None,
) -> list[Prompt]:
    """Every prompt of the pinned ``aienergyscore`` revision, in dataset order."""
    texts: list[str] = []
    for path in fetch_aienergyscore(cache_dir=cache_dir, downloader=downloader):
        texts.extend(read_prompt_column(path))
    return [Prompt(text, index=i) for i, text in enumerate(texts)]


def _read_table(path: Path) -> Any:
    """Read a parquet, jsonl or csv file into a ``pyarrow.Table``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix in {".jsonl", ".json"}:
            import pyarrow.json as pj

            return pj.read_json(path)
        if suffix == ".csv":
            import pyarrow.csv as pc

            return pc.read_csv(path, parse_options=pc.ParseOptions(newlines_in_values=True))
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"dataset '{AIENERGYSCORE}': cannot parse {path}: {err}") from err
    raise ConfigError(f"dataset '{AIENERGYSCORE}': unsupported data file {path.name}")
