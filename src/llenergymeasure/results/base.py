"""The base of the result models: strict fields and JSON file round trips."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = "1.0"

FORBID = ConfigDict(extra="forbid", protected_namespaces=())
_M = TypeVar("_M", bound="JsonFileModel")


class JsonFileModel(BaseModel):
    """A result model with JSON file round trips (atomic writes)."""

    def to_json(
        self, path: str | Path | None = None, *, indent: int = 2, base: Path | None = None
    ) -> str:
        """Serialise to JSON, redacted (``llenergymeasure.redaction``); with ``path``, also
        write it through the one write path (atomic, never through a link or over an input;
        ``base``: see ``llenergymeasure.files``)."""
        from llenergymeasure.redaction import redact_json

        text = redact_json(self, indent=indent)
        if path is not None:
            from llenergymeasure.files import write_bytes

            write_bytes(Path(path), (text + "\n").encode("utf-8"), base=base)
        return text

    @classmethod
    def from_json(cls: type[_M], source: str | Path) -> _M:
        """Load from a JSON string or a file path (registered as an input of this process)."""
        if isinstance(source, Path) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            from llenergymeasure.files import register_input

            register_input(source)
            source = Path(source).read_text(encoding="utf-8")
        return cls.model_validate_json(source)
