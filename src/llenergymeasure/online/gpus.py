"""Which GPUs an online run meters: the server's (``online.gpus``), else every visible one.

The server runs in processes of its own, so its GPUs are named in ``online.gpus`` (NVML indices
or UUIDs); ``metered_gpu_indices`` turns them into NVML indices for the NVML sensor (and so the
idle baseline), ``zeus_gpu_indices`` into this process's CUDA ordinals for Zeus.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from llenergymeasure.config.models import ExperimentConfig
from llenergymeasure.config.online import OnlineConfig
from llenergymeasure.energy.base import EnergyBackend
from llenergymeasure.energy.sensors import GpuSensor, visible_nvml_indices
from llenergymeasure.energy.zeus_backend import ZeusEnergyBackend
from llenergymeasure.exceptions import BackendError

__all__ = [
    "default_sensor",
    "meter_server_gpus",
    "metered_gpu_indices",
    "nvml_uuids",
    "zeus_gpu_indices",
]


def metered_gpu_indices(
    online: OnlineConfig, uuids_by_index: Sequence[str] | Mapping[int, str]
) -> list[int] | None:
    """NVML indices of ``online.gpus`` (indices or UUID prefixes); ``None`` = all visible.

    Pass the result as ``NvmlSensor(devices=...)`` for the energy backend and the baseline.
    Unknown, ambiguous or repeated GPUs raise ``BackendError`` naming them.
    """
    if online.gpus is None:
        return None
    return visible_nvml_indices(",".join(str(g) for g in online.gpus), uuids_by_index)


def nvml_uuids() -> list[str]:
    """The UUID of every GPU NVML sees, by NVML index."""
    from llenergymeasure.energy.devices import import_pynvml, nvml_str

    lib = import_pynvml()
    lib.nvmlInit()
    try:
        count = int(lib.nvmlDeviceGetCount())
        return [
            nvml_str(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(i))) for i in range(count)
        ]
    finally:
        with contextlib.suppress(Exception):
            lib.nvmlShutdown()


def zeus_gpu_indices(
    online: OnlineConfig,
    uuids_by_index: Sequence[str],
    cuda_visible_devices: str | None,
) -> list[int] | None:
    """What Zeus meters for ``online.gpus``: their CUDA ordinals in this process; None = all.

    Zeus counts GPUs after this process's ``CUDA_VISIBLE_DEVICES`` (``cuda_visible_devices``),
    while ``online.gpus`` names the server's GPUs by NVML index or UUID. ``BackendError`` when
    one of them is hidden from this process (Zeus cannot meter it; the NVML backend can).
    """
    from llenergymeasure.energy.devices import visible_nvml_indices

    metered = metered_gpu_indices(online, uuids_by_index)
    if metered is None:
        return None
    visible = visible_nvml_indices(cuda_visible_devices, uuids_by_index)
    hidden = [i for i in metered if i not in visible]
    if hidden:
        raise BackendError(
            f"online.gpus {hidden} (NVML indices) are not visible to this process "
            f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices}), so Zeus cannot meter them",
            hint="unset CUDA_VISIBLE_DEVICES for llem or set measurement.energy_backend: nvml",
        )
    return [visible.index(i) for i in metered]


def default_sensor(config: ExperimentConfig) -> GpuSensor | None:
    """NVML over the GPUs to meter (``online.gpus``; all visible when unset), or None."""
    from llenergymeasure.energy.devices import nvml_available
    from llenergymeasure.energy.sensors import NvmlSensor

    if not nvml_available():
        return None
    assert config.online is not None
    indices = metered_gpu_indices(config.online, nvml_uuids())
    return NvmlSensor(devices=indices)


def meter_server_gpus(energy: EnergyBackend, online: OnlineConfig) -> None:
    """Point a Zeus backend at ``online.gpus`` (their CUDA ordinals here), as the sensor is."""
    if (
        isinstance(energy, ZeusEnergyBackend)
        and energy.gpu_indices is None
        and online.gpus is not None
    ):
        # Zeus meters every GPU this process sees unless told: meter the server's, as the
        # sensor (and so the idle baseline) does
        from llenergymeasure.energy.devices import effective_cuda_visible_devices

        energy.gpu_indices = zeus_gpu_indices(
            online, nvml_uuids(), effective_cuda_visible_devices()
        )
