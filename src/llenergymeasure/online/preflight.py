"""Online mode's pre-flight: what must hold before an online run starts anything.

``online_preflight`` lists every problem of an experiment (server program, transformers'
serving extra, API key variable, energy backend); ``check_endpoint`` asks a server, started or
given, whether it answers and serves the model; ``online_api_key`` reads the key to send.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from llenergymeasure.config.catalogue import engine_spec
from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.energy.base import EnergyBackend
from llenergymeasure.exceptions import BackendError, ConfigError
from llenergymeasure.online.http import EndpointAuthError, EndpointError, served_models

__all__ = [
    "api_key_problems",
    "check_endpoint",
    "online_api_key",
    "online_preflight",
]


def _program_found(name: str) -> bool:
    return shutil.which(name) is not None or (Path(sys.executable).parent / name).exists()


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def online_preflight(config: ExperimentConfig, energy: EnergyBackend | None) -> list[str]:
    """Every problem that would stop an online run, found before anything starts.

    A started server needs its program and the modules it needs besides the engine (the
    catalogue's ``server_program`` and ``server_extra``: ``transformers serve`` needs
    transformers' ``serving`` extra); the variable named by ``online.api_key_env`` must be set.
    """
    online = config.online
    assert online is not None
    problems = api_key_problems(online)
    if online.starts_server:
        spec = engine_spec(config.backend)
        program = spec.server_program
        if program is None:
            problems.append(
                f"the {config.backend} engine has no server of its own that llem can start "
                "(set online.endpoint to a running server)"
            )
        elif not _program_found(program):
            problems.append(
                f"the {config.backend} server program {program!r} is not installed here "
                "(online mode starts it; or set online.endpoint to a running server)"
            )
        extra = spec.server_extra
        if program is not None and extra is not None:
            missing = [name for name in extra.modules if not _module_found(name)]
            if missing:
                problems.append(
                    f"{extra.problem} (missing: {', '.join(missing)}); install it with: "
                    f"{extra.install}"
                )
    # the dataset is read and checked by measure_online's pre-flight (_prepare_dataset)
    if energy is not None and not energy.is_available():
        problems.append(f"energy backend '{energy.name}' is not available on this machine")
    return problems


def online_api_key(online: OnlineConfig) -> str | None:
    """The API key named by ``online.api_key_env``; ``ConfigError`` when that variable is unset."""
    try:
        return online.api_key()
    except ValueError as exc:
        raise ConfigError(
            str(exc), hint=f"export the key first: export {online.api_key_env}=..."
        ) from None


def api_key_problems(online: OnlineConfig | None) -> list[str]:
    """Pre-flight problems of ``online.api_key_env`` (empty when fine or unset)."""
    if online is None:
        return []
    try:
        online.api_key()
    except ValueError as exc:
        return [f"{exc}: export the key in {online.api_key_env} first"]
    return []


def check_endpoint(
    endpoint: str, model: str, *, timeout_s: float = 30.0, api_key: str | None = None
) -> list[str]:
    """Make sure ``endpoint`` answers and serves ``model``; returns notes for the result.

    One deadline, ``timeout_s``, covers the whole call. ``BackendError`` when the server cannot
    be reached or does not answer in time; ``ConfigError`` when ``/v1/models`` lists other
    models only or the server refuses the (missing) API key. A server without a model list is
    accepted with a note.
    """
    try:
        ids = served_models(endpoint, timeout_s=timeout_s, api_key=api_key)
    except EndpointAuthError as exc:
        raise ConfigError(
            f"endpoint {endpoint} refused the request: {exc}",
            hint="set online.api_key_env to the environment variable that holds the key",
        ) from None
    except EndpointError as exc:
        raise BackendError(
            f"endpoint {endpoint} is unreachable or not answering: {exc}",
            hint="is the server running and listening there? check online.endpoint "
            "(online.preflight_timeout_s is the deadline of this check)",
        ) from None
    if ids is None:
        return [f"{endpoint} lists no models at /v1/models; requests name {model!r}"]
    if ids and model not in ids:
        raise ConfigError(
            f"{endpoint} serves {ids[:20]}, not {model!r}",
            hint="set online.served_model_name to the name the server uses",
        )
    return []
