"""Prompts from a Hugging Face dataset: ``dataset: {hf: NAME_OR_PATH, split, column, config}``.

Read with the ``datasets`` library (the ``datasets`` extra, imported only here and only when
such a dataset is used):

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read with
  ``load_from_disk``; any other local folder with ``load_dataset`` (data files);
- a hub name with ``load_dataset`` through the library's cache. Offline (``HF_HUB_OFFLINE`` or
  ``HF_DATASETS_OFFLINE``) only the cache is used; online, the hub is probed once first
  (``llenergymeasure.hub``), so that an unreachable hub fails in seconds, not after the
  client's retries.

The split must exist (the error lists the available ones; unset: the only split, else
``train``), the column must hold strings (unset: ``text``, then ``prompt``, then the only string
column), and the rows read must be non-empty strings. Only the first ``limit`` rows are taken.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure.exceptions import ConfigError
from llenergymeasure.hub import datasets_offline, probe_hub
from llenergymeasure.install import extra_install_hint

__all__ = ["HF", "HF_INSTALL_HINT", "HFDatasetScan", "HFSpec", "read_hf_dataset"]

HF = "hf"
"""The ``kind`` of an HF dataset in provenance records."""

HF_INSTALL_HINT = (
    f'install the datasets extra: {extra_install_hint("datasets")}'
)

PROMPT_COLUMNS: tuple[str, ...] = ("text", "prompt")
"""Column names tried in order when ``column`` is not given."""

_STRING_DTYPES = ("string", "large_string")

_OFFLINE_DATASET_HINT = (
    "without network access, HF_HUB_OFFLINE=1 reads the datasets cache (filled by one run with "
    "network access), or give a local folder (e.g. one written by save_to_disk) as dataset.hf"
)


class HFSpec(Protocol):
    """What an HF dataset needs (``config.models.HFDatasetConfig`` has it)."""

    @property
    def hf(self) -> str: ...

    @property
    def split(self) -> str | None: ...

    @property
    def column(self) -> str | None: ...

    @property
    def config(self) -> str | None: ...

    @property
    def revision(self) -> str | None: ...


@dataclass(frozen=True)
class HFDatasetScan:
    """The first ``limit`` prompt texts of an HF dataset split, and its provenance record."""

    texts: list[str]
    n_available: int
    record: dict[str, Any]


def is_hf_spec(value: Any) -> bool:
    """Whether ``value`` describes an HF dataset (has ``hf``, ``split`` and ``column``)."""
    return all(hasattr(value, a) for a in ("hf", "split", "column", "config", "revision"))


def describe_hf(spec: HFSpec) -> dict[str, Any]:
    """The provenance of ``spec`` from the config alone (no reading, no network)."""
    local = _local_folder(spec.hf)
    return {
        "kind": HF,
        "hf": spec.hf,
        "path": str(local.resolve()) if local is not None else None,
        "split": spec.split,
        "column": spec.column,
        "config": spec.config,
        "revision": spec.revision,
    }


def read_hf_dataset(spec: HFSpec, *, limit: int) -> HFDatasetScan:
    """Read and check the first ``limit`` rows of ``spec`` (``ConfigError`` on any problem)."""
    lib = _import_datasets()
    label = f"HF dataset {spec.hf!r}"
    local = _local_folder(spec.hf)
    if local is not None:
        data = _load_local(lib, local, spec, label)
    elif spec.hf.startswith(("/", "./", "../", "~", ".\\")):
        raise ConfigError(
            f"dataset.hf: the local folder {spec.hf!r} does not exist",
            hint="give an existing folder (e.g. one written by Dataset.save_to_disk) or a hub "
            "dataset name",
        )
    else:
        data = _load_hub(lib, spec, label)
    table, split = data
    column = _pick_column(table, spec.column, label, split)
    n_available = len(table)
    take = min(max(0, limit), n_available)
    texts = list(table[:take][column]) if take else []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                f"{label}: row {i} of column {column!r} (split {split!r}) is "
                f"{'empty' if isinstance(text, str) else repr(text)}, not a prompt",
                hint="filter the dataset (e.g. Dataset.filter) and save it with save_to_disk",
            )
    record = {
        **describe_hf(spec),
        "split": split,
        "column": column,
        "fingerprint": getattr(table, "_fingerprint", None),
        "n_available": n_available,
    }
    return HFDatasetScan(texts=texts, n_available=n_available, record=record)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "dataset {hf: ...} needs the 'datasets' library, which is not installed",
            hint=HF_INSTALL_HINT,
        ) from None
    with contextlib.suppress(Exception):  # llem prints its own progress
        datasets.disable_progress_bars()
    return datasets


def _local_folder(name: str) -> Path | None:
    path = Path(os.path.expanduser(name))
    return path if path.is_dir() else None


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _load_local(lib: Any, folder: Path, spec: HFSpec, label: str) -> tuple[Any, str | None]:
    try:
        if _saved_to_disk(folder):
            data = lib.load_from_disk(str(folder))
        else:
            data = lib.load_dataset(str(folder), spec.config)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"{label}: cannot be read: {_first_line(err)}") from err
    return _pick_split(data, spec.split, label)


def _load_hub(lib: Any, spec: HFSpec, label: str) -> tuple[Any, str | None]:
    offline = datasets_offline()
    if not offline:
        unreachable = probe_hub()
        if unreachable is not None:
            raise ConfigError(
                f"{label} is not a local folder and the HF hub is unreachable: {unreachable}",
                hint=_OFFLINE_DATASET_HINT,
            )
    kwargs: dict[str, Any] = {"revision": spec.revision} if spec.revision else {}
    split = spec.split
    try:
        with _library_offline(lib, offline):
            if split is None:
                names = list(lib.get_dataset_split_names(spec.hf, spec.config, **kwargs))
                split = _default_split(names, label)
            data = lib.load_dataset(spec.hf, spec.config, split=split, **kwargs)
    except ConfigError:
        raise
    except Exception as err:
        raise _hub_error(err, label, spec, offline) from err
    return data, str(split)


@contextlib.contextmanager
def _library_offline(lib: Any, offline: bool) -> Iterator[None]:
    """The libraries read ``HF_HUB_OFFLINE`` once, at import; llem reads it when it runs. Where
    it was set after ``datasets`` was imported, the libraries are told for this call too."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    switches = [
        (module, name)
        for module in (lib.config, hub_constants)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if hasattr(module, name)
    ]
    saved = [getattr(module, name) for module, name in switches]
    for module, name in switches:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(switches, saved, strict=True):
            setattr(module, name, value)


def _hub_error(err: Exception, label: str, spec: HFSpec, offline: bool) -> ConfigError:
    names = {cls.__name__ for cls in type(err).__mro__}
    text = _first_line(err)
    if "DatasetNotFoundError" in names or "RepositoryNotFoundError" in names:
        return ConfigError(
            f"{label} was not found on the HF hub ({text})",
            hint="check the name (org/name), or give a local folder",
        )
    if "unknown split" in text.lower():
        return ConfigError(f"{label}: {text}", hint="set dataset.split to one of them")
    if "config name is missing" in text.lower() or "BuilderConfig" in text:
        return ConfigError(f"{label}: {text}", hint="set dataset.config to one of them")
    if offline or isinstance(err, (ConnectionError, OSError)):
        why = "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if offline else text
        return ConfigError(
            f"{label} could not be read from the datasets cache or the hub ({why})",
            hint=_OFFLINE_DATASET_HINT,
        )
    return ConfigError(f"{label}: {text}")


def _pick_split(data: Any, split: str | None, label: str) -> tuple[Any, str | None]:
    """The table of ``split`` in a loaded ``Dataset`` or ``DatasetDict``."""
    if isinstance(data, dict):  # a DatasetDict (a dict of split name -> Dataset)
        names = [str(k) for k in data]
        chosen = split if split is not None else _default_split(names, label)
        if chosen not in names:
            raise ConfigError(
                f"{label} has no split {chosen!r}; available splits: {', '.join(names)}",
                hint="set dataset.split to one of them",
            )
        return data[chosen], chosen
    own = str(data.split) if getattr(data, "split", None) is not None else None
    if split is not None and own is not None and split != own:
        raise ConfigError(
            f"{label} has no split {split!r}; available splits: {own}",
            hint=f"set dataset.split: {own}, or leave it out",
        )
    # a single Dataset: its own split name, the one given for it, or None (unnamed)
    return data, split if split is not None else own


def _default_split(names: list[str], label: str) -> str:
    if len(names) == 1:
        return names[0]
    if "train" in names:
        return "train"
    raise ConfigError(
        f"{label} has several splits and none is named 'train'; available splits: "
        f"{', '.join(names)}",
        hint="set dataset.split to one of them",
    )


def _pick_column(table: Any, column: str | None, label: str, split: str | None) -> str:
    features = dict(table.features)
    strings = [name for name, f in features.items() if _is_string(f)]
    shown = ", ".join(f"{name} ({_dtype(f)})" for name, f in features.items())
    if column is None:
        column = next((c for c in PROMPT_COLUMNS if c in strings), None)
        if column is None and len(strings) == 1:
            column = strings[0]
        if column is None:
            raise ConfigError(
                f"{label} (split {split!r}): cannot tell which column holds the prompts "
                f"(looked for {', '.join(PROMPT_COLUMNS)}); columns: {shown}",
                hint="set dataset.column",
            )
        return column
    if column not in features:
        raise ConfigError(
            f"{label} (split {split!r}) has no column {column!r}; columns: {shown}",
            hint="set dataset.column to a column of strings",
        )
    if column not in strings:
        raise ConfigError(
            f"{label} (split {split!r}): column {column!r} holds {_dtype(features[column])}, "
            f"not strings; string columns: {', '.join(strings) or 'none'}",
            hint="set dataset.column to a column of strings",
        )
    return column


def _is_string(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in _STRING_DTYPES


def _dtype(feature: Any) -> str:
    return str(getattr(feature, "dtype", None) or type(feature).__name__)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
