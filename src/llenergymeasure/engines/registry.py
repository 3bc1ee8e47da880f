"""Which inference engines are installed, found without importing them (from the catalogue)."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from llenergymeasure.config.catalogue import engine_names, engine_spec


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
    """The only installed engine, else pytorch (SPEC 2)."""
    found = installed_engines()
    return found[0] if len(found) == 1 else "pytorch"


def module_version(distribution: str, module: str) -> str:
    """Version of an installed engine: distribution metadata, else the module's ``__version__``.

    "not installed" when neither exists (a bare module without metadata, e.g. a test fake, gives
    its ``__version__`` or "unknown").
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec(module) is None:
            return "not installed"
        import importlib as _importlib

        return str(getattr(_importlib.import_module(module), "__version__", "unknown"))
