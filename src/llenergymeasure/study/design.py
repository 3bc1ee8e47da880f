"""A study's identity: expanding its YAML the same way every time, and checking it on resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from llenergymeasure.config.study import StudyConfig
from llenergymeasure.exceptions import ConfigError
from llenergymeasure.study.manifest import StudyManifest


def expand_study_file(
    path: Path,
    overrides: dict[str, Any] | None = None,
    *,
    data: dict[str, Any] | None = None,
    text: str | None = None,
    base_overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Expand a study YAML with command-line overrides (``backend``/``model`` replace the
    study's own; the other fields apply to every point). ``base_overrides`` (``--set``) are
    merged into the study's base, below the sweep and the ``experiments:`` entries; setting a
    key the sweep varies is a ``ConfigError``. ``data``/``text`` skip re-reading."""
    from llenergymeasure.config.loading import deep_merge, key_lines, read_yaml_mapping
    from llenergymeasure.config.study import expand_study

    if data is None or text is None:
        data, text = read_yaml_mapping(path)
    study_data = dict(data)
    if base_overrides:
        _check_not_swept(base_overrides, study_data.get("sweep"), path)
        inline = {k: v for k, v in study_data.items() if k not in _STUDY_ONLY}
        study_data.update(deep_merge(inline, base_overrides))
    rest = copy.deepcopy(overrides or {})
    for key in ("backend", "model"):
        if key in rest:
            study_data[key] = rest.pop(key)
    return expand_study(
        study_data,
        source=path,
        base_dir=path.parent,
        lines=key_lines(text),
        overrides=rest or None,
    )


#: Study keys that are not experiment fields (``--set`` cannot reach them).
_STUDY_ONLY = ("name", "base", "sweep", "experiments", "execution")


def _dotted_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.extend(_dotted_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def _check_not_swept(base_overrides: dict[str, Any], sweep: Any, path: Path) -> None:
    """``--set`` of a field the study sweeps would be replaced by the sweep: say so."""
    if not isinstance(sweep, dict):
        return
    # a scoped key (pytorch.batch_size) is also the field's path: engine sections are named
    # after their engine
    for swept in map(str, sweep):
        for key in _dotted_keys(base_overrides):
            if key == swept or key.startswith(swept + ".") or swept.startswith(key + "."):
                raise ConfigError(
                    f"--set {key}: {path} sweeps {swept}, which would replace the value",
                    hint="change the sweep in the study file, or drop this --set",
                )


def check_design(
    manifest: StudyManifest, study_dir: Path, study: StudyConfig | None = None
) -> str | None:
    """Refuse (``ConfigError``) to resume a study whose design changed.

    Compared: ``study`` when given; else the manifest's source YAML (with the stored
    overrides) when that file still exists. Returns a note for the user, or None.
    """
    from llenergymeasure.config.hashing import study_design_hash

    if study_design_hash(manifest.experiments) != manifest.study_design_hash:
        raise ConfigError(
            f"--resume: {study_dir}: the manifest's experiments do not match its design hash "
            f"{manifest.study_design_hash} (was the manifest edited?)",
            hint="restore study_manifest.json, or start a new study",
        )
    where = study.source_path or "the given study" if study is not None else ""
    if study is None:
        if manifest.source_path is None:
            return None
        source = Path(manifest.source_path)
        if not source.is_file():
            return (
                f"study file {source} no longer exists; continuing with the "
                "configs stored in the manifest"
            )
        where = str(source)
        try:
            study = expand_study_file(
                source, manifest.overrides, base_overrides=manifest.base_overrides
            )
        except ConfigError as exc:
            raise ConfigError(
                f"--resume: the study file {source} changed and no longer expands: {exc.message}",
                hint="restore the original study file, or start a new study",
            ) from None
    if study.study_design_hash != manifest.study_design_hash:
        raise ConfigError(
            f"--resume: study design mismatch: {where} expands to design hash "
            f"{study.study_design_hash} ({len(study.experiments)} experiment(s)), but {study_dir} "
            f"was started with design {manifest.study_design_hash} "
            f"({len(manifest.experiments)} experiment(s))",
            hint="resume with the original study file (and the same flags), or start a new "
            "study with llem run <study.yaml>",
        )
    return None
