"""Environment snapshot: the machine and software an experiment ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from llenergymeasure._version import __version__
from llenergymeasure.config.catalogue import ENGINES
from llenergymeasure.config.installed import engine_version
from llenergymeasure.energy.devices import effective_cuda_visible_devices
from llenergymeasure.energy.sensors import GpuSensor
from llenergymeasure.results.models import EnvironmentSnapshot

#: Libraries whose versions every result records, besides each catalogue engine's distribution.
_KEY_LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "bitsandbytes",
    "flash-attn",
    "nvidia-ml-py",
    "zeus",
    "zeus-ml",
    "codecarbon",
    "pydantic",
    "numpy",
)


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or None)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    engines = [spec.distribution for spec in ENGINES.values()]
    for name in dict.fromkeys([*_KEY_LIBRARIES, *engines]):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def pip_freeze_digest() -> str | None:
    """SHA-256 of the sorted ``name==version`` list of installed distributions."""
    try:
        items = sorted(
            f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions()
        )
    except Exception:
        return None
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def cuda_version() -> tuple[str | None, str | None]:
    """CUDA version and where it came from: torch, then version.json, then nvcc."""
    if "torch" in sys.modules:
        version = getattr(sys.modules["torch"].version, "cuda", None)
        if version:
            return str(version), "torch.version.cuda"
    for candidate in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            text = Path(candidate).read_text()
        except OSError:
            continue
        match = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', text) or re.search(
            r"CUDA Version\s+([\d.]+)", text
        )
        if match:
            return match.group(1), candidate
    try:
        out = subprocess.run(
            ["nvcc", "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        match = re.search(r"release ([\d.]+)", out)
        if match:
            return match.group(1), "nvcc --version"
    except (OSError, subprocess.SubprocessError):
        pass
    return None, None


def _driver_version() -> str | None:
    try:
        import pynvml

        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def capture_environment(backend: str, sensor: GpuSensor | None) -> EnvironmentSnapshot:
    """Snapshot of this machine and its software for the result."""
    gpus: list[dict[str, Any]] = []
    persistence: list[bool | None] = []
    if sensor is not None:
        for i in range(sensor.device_count()):
            info = sensor.device_info(i)
            gpus.append(
                {
                    "index": info.index,
                    "uuid": info.uuid,
                    "name": info.name,
                    "total_memory_bytes": info.total_memory_bytes,
                    "power_limit_w": info.power_limit_w,
                    "supports_energy_counter": info.supports_energy_counter,
                }
            )
            persistence.append(info.persistence_mode)
    cuda, cuda_source = cuda_version()
    return EnvironmentSnapshot(
        python_version=sys.version.split()[0],
        os=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        gpus=gpus,
        driver_version=_driver_version() if gpus else None,
        cuda_version=cuda,
        cuda_version_source=cuda_source,
        persistence_mode=persistence,
        engine=backend,
        engine_version=engine_version(backend),
        library_versions=_versions(),
        pip_freeze_sha256=pip_freeze_digest(),
        llem_version=__version__,
        hostname=socket.gethostname(),
        cuda_visible_devices=effective_cuda_visible_devices(),
    )
