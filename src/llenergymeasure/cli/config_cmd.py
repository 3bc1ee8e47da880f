"""``llem config``: what this machine has, what llem will use, and what to do next."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from typing import Any

import typer

from llenergymeasure.config.catalogue import DEFAULT_ENGINE, engine_names, engine_spec
from llenergymeasure.config.installed import engine_version
from llenergymeasure.config.user_config import effective_settings, user_config_path
from llenergymeasure.text_table import render_table


def _gpus() -> tuple[list[str], str | None]:
    """One line per NVIDIA GPU via NVML, or an explanation of why none are visible."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"NVML unavailable ({exc}); no NVIDIA driver visible"
    try:
        lines = []
        driver = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 1024**3
            try:
                limit = f"{pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000:.0f} W limit"
            except pynvml.NVMLError:
                limit = "power limit n/a"
            lines.append(f"[{i}] {name}, {mem:.0f} GiB, {limit}, driver {driver}")
        return lines, None if lines else "NVML found no GPUs"
    finally:
        pynvml.nvmlShutdown()


def config_report() -> dict[str, Any]:
    """What ``llem config`` reports, as plain data (``llem config --json``)."""
    from llenergymeasure._version import __version__

    gpus, why = _gpus()
    path = user_config_path()
    return {
        "llem_version": __version__,
        "python": {"version": sys.version.split()[0], "executable": sys.executable},
        "os": platform.platform(),
        "gpus": gpus,
        "gpus_note": why,
        "engines": {b: engine_version(b) for b in engine_names()},
        "energy_backends": {
            "nvml": bool(gpus),
            "zeus": importlib.util.find_spec("zeus") is not None,
            "codecarbon": importlib.util.find_spec("codecarbon") is not None,
        },
        "user_config": {"path": str(path), "found": path.exists()},
        "settings": {
            key: {"value": s.value, "source": s.source}
            for key, s in sorted(effective_settings().items())
        },
    }


def show_config(*, verbose: bool, as_json: bool = False) -> int:
    """Print the environment report; returns the exit code."""
    from llenergymeasure._version import __version__

    if as_json:
        typer.echo(json.dumps(config_report(), default=str))
        return 0
    echo = typer.echo
    echo(f"llem {__version__}")
    echo(f"Python   {sys.version.split()[0]} ({sys.executable})")
    echo(f"OS       {platform.platform()}")

    echo("\nGPUs")
    gpus, why = _gpus()
    for line in gpus:
        echo(f"  {line}")
    if why:
        echo(f"  none: {why}. Runs will work on CPU but GPU energy is not measured.")

    echo("\nEngines")
    engines = {b: engine_version(b) for b in engine_names()}
    echo(
        render_table(
            None,
            [
                [backend, version or f"not installed  ({engine_spec(backend).install_hint})"]
                for backend, version in engines.items()
            ],
        )
    )

    echo("\nEnergy backends")
    zeus = importlib.util.find_spec("zeus") is not None
    codecarbon = importlib.util.find_spec("codecarbon") is not None
    echo(
        render_table(
            None,
            [
                ["nvml", "available" if gpus else "unavailable (no GPU)"],
                ["zeus", "installed" if zeus else "not installed"],
                ["codecarbon", "installed" if codecarbon else "not installed"],
            ],
        )
    )

    settings = effective_settings()
    path = user_config_path()
    echo(f"\nUser config  {path} ({'found' if path.exists() else 'not found: using defaults'})")
    keys = (
        sorted(settings)
        if verbose
        else [
            "output.results_dir",
            "measurement.energy_backend",
            "measurement.carbon_intensity_gco2_kwh",
            "measurement.datacenter_pue",
            "measurement.sampling_interval_ms",
            f"runners.{DEFAULT_ENGINE}",
        ]
    )
    echo(
        render_table(
            None, [[key, settings[key].value, f"[{settings[key].source}]"] for key in keys]
        )
    )

    echo("\nNext steps")
    if not engines[DEFAULT_ENGINE]:
        echo(f"  - install the {DEFAULT_ENGINE} engine: {engine_spec(DEFAULT_ENGINE).install_hint}")
    if not gpus:
        echo("  - no GPU: energy will be labelled unavailable; use a machine with an NVIDIA GPU")
    if settings["measurement.carbon_intensity_gco2_kwh"].value is None:
        echo(
            "  - set measurement.carbon_intensity_gco2_kwh in the user config "
            "(or LLEM_CARBON_INTENSITY) to get CO2 figures"
        )
    echo("  - try it: llem run --model builtin:tiny --dataset synthetic -n 20")
    return 0
