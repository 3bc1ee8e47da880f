"""The software versions a report shows for the engine that ran, each labelled with its package.

``environment.engine_version`` holds the version of the engine's distribution in the catalogue
(for the PyTorch engine that is transformers, not torch), so a bare "pytorch 5.17.0" would
mislead; the report names every version with its package: "pytorch (torch 2.11.0, transformers
5.17.0)".
"""

from __future__ import annotations

from llenergymeasure.results.environment import EnvironmentSnapshot

#: Shown first for every engine that has it installed: the built-in engines all run on torch.
BASE_LIBRARY = "torch"


def engine_distribution(engine: str) -> str | None:
    """The distribution whose version ``engine_version`` records (None for an unknown engine)."""
    from llenergymeasure.config.catalogue import engine_spec

    try:
        return engine_spec(engine).distribution
    except KeyError:  # an engine registered by a program that is not running now
        return None


def engine_versions(env: EnvironmentSnapshot) -> list[tuple[str, str]]:
    """``(package, version)`` pairs of the engine's software: torch, then the engine's package."""
    versions = env.library_versions
    pairs: list[tuple[str, str]] = []
    distribution = engine_distribution(env.engine)
    base = versions.get(BASE_LIBRARY)
    if base and distribution != BASE_LIBRARY:
        pairs.append((BASE_LIBRARY, base))
    own = env.engine_version or (versions.get(distribution) if distribution else None)
    if own:
        pairs.append((distribution or env.engine, own))
    return pairs


def engine_text(env: EnvironmentSnapshot) -> str:
    """``"pytorch (torch 2.11.0, transformers 5.17.0)"``; the engine alone when none is known."""
    pairs = engine_versions(env)
    if not pairs:
        return f"{env.engine} (version not recorded)"
    return f"{env.engine} ({', '.join(f'{name} {version}' for name, version in pairs)})"
