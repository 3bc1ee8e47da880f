"""Which inference engines are installed (from ``config.installed``) and their versions."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from llenergymeasure.config.installed import (
    default_backend,
    engine_installed,
    engine_version,
    installed_engines,
)

__all__ = [
    "default_backend",
    "engine_installed",
    "engine_version",
    "installed_engines",
    "module_version",
]


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
