"""Which inference engines are installed, found from package metadata without importing them.

This sits on the config floor because choosing the default ``backend`` of a config needs it, and
finding a package's spec or version imports nothing heavy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from llenergymeasure.config.catalogue import DEFAULT_ENGINE, engine_names, engine_spec

__all__ = ["default_backend", "engine_installed", "engine_version", "installed_engines"]


def engine_installed(backend: str) -> bool:
    """True when the engine's Python package can be imported (checked without importing it)."""
    module = engine_spec(backend).import_module
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_engines() -> list[str]:
    """Installed engines, in the canonical order."""
    return [b for b in engine_names() if engine_installed(b)]


def engine_version(backend: str) -> str | None:
    """Installed version of the engine's distribution, or None."""
    try:
        return importlib.metadata.version(engine_spec(backend).distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_backend() -> str:
    """The backend of a config that names none: the only installed engine, else the
    catalogue's ``DEFAULT_ENGINE`` (pytorch)."""
    found = installed_engines()
    return found[0] if len(found) == 1 else DEFAULT_ENGINE
