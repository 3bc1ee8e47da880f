"""Which GPUs this process sees: NVML availability, ``CUDA_VISIBLE_DEVICES`` mapping, device slots.

The one place that turns ``CUDA_VISIBLE_DEVICES`` into physical NVML devices. The energy sensors
use it to pick the devices to measure; the data-parallel engine and the parallel study executor
use ``DeviceSlot`` to pin a child process to one GPU.

CUDA numbers the visible devices ``0 .. n-1`` (CUDA ordinals); NVML numbers every physical device
(NVML index). ``visible_nvml_indices`` maps the former to the latter, by UUID where the variable
names UUIDs. ``pynvml`` (package ``nvidia-ml-py``) is imported lazily, inside functions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llenergymeasure.exceptions import BackendError

__all__ = [
    "DeviceSlot",
    "cpu_slots",
    "effective_cuda_visible_devices",
    "import_pynvml",
    "nvml_available",
    "nvml_str",
    "visible_gpu_slots",
    "visible_nvml_indices",
]


@dataclass(frozen=True)
class DeviceSlot:
    """The device one child process runs on.

    ``device`` is what the child's engine uses; ``label`` is how results name it (the parent's
    CUDA ordinal); ``visible_devices``, when set, becomes the child's ``CUDA_VISIBLE_DEVICES``.
    """

    device: str
    label: str
    uuid: str | None = None
    nvml_index: int | None = None
    visible_devices: str | None = None

    @property
    def is_cpu(self) -> bool:
        """True for a CPU slot (allowed only in tests)."""
        return self.device == "cpu"


def effective_cuda_visible_devices(value: str | None = None, *, use_env: bool = True) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value in effect: ``value`` if given, else the environment's.

    None means the variable is unset (every device visible); ``use_env=False`` ignores the
    environment (tests, or a caller that passes the value of another process).
    """
    if value is None and use_env:
        return os.environ.get("CUDA_VISIBLE_DEVICES")
    return value


def visible_nvml_indices(
    cuda_visible_devices: str | None,
    uuids_by_index: Sequence[str] | Mapping[int, str],
) -> list[int]:
    """Map a ``CUDA_VISIBLE_DEVICES`` value to NVML indices, in CUDA ordinal order.

    ``uuids_by_index`` gives each NVML index's UUID (``"GPU-..."``). Accepted tokens:
    integers (NVML index; assumes ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or a homogeneous machine,
    where CUDA's default order coincides with NVML's), full UUIDs and unique UUID prefixes
    (``GPU-8f3a``). ``None`` means every device; ``""`` means none. As CUDA does, a negative
    integer hides itself and every device after it (``-1`` hides all). ``MIG-`` devices,
    unknown or ambiguous UUIDs, out-of-range indices and duplicates raise ``BackendError``.
    """
    mapping: dict[int, str] = (
        dict(uuids_by_index)
        if isinstance(uuids_by_index, Mapping)
        else dict(enumerate(uuids_by_index))
    )
    all_indices = sorted(mapping)
    if cuda_visible_devices is None:
        return all_indices
    value = cuda_visible_devices.strip()
    if value == "":
        return []

    result: list[int] = []
    for raw in value.split(","):
        token = raw.strip()
        if token.upper().startswith("MIG-"):
            raise BackendError(
                f"CUDA_VISIBLE_DEVICES contains a MIG device ({token!r}); "
                "energy measurement of MIG instances is not supported",
                hint="NVML reports energy per physical GPU, not per MIG slice; "
                "measure on a whole GPU",
            )
        index = _resolve_token(token, mapping, all_indices)
        if index is None:  # negative integer: CUDA stops enumerating here
            break
        if index in result:
            raise BackendError(f"CUDA_VISIBLE_DEVICES lists device {token!r} twice")
        result.append(index)
    return result


def _resolve_token(token: str, mapping: dict[int, str], all_indices: list[int]) -> int | None:
    try:
        number = int(token)
    except ValueError:
        number = None
    if number is not None:
        if number < 0:
            return None
        if number not in mapping:
            raise BackendError(
                f"CUDA_VISIBLE_DEVICES names device {number}, but NVML sees "
                f"{len(all_indices)} device(s) (indices {all_indices})"
            )
        return number
    if not token.upper().startswith("GPU-"):
        raise BackendError(
            f"cannot interpret CUDA_VISIBLE_DEVICES entry {token!r}: "
            "expected an integer index or a GPU-<uuid> (prefix)"
        )
    wanted = token.lower()
    matches = [i for i in all_indices if mapping[i].lower().startswith(wanted)]
    if not matches:
        raise BackendError(f"CUDA_VISIBLE_DEVICES names {token!r}, which matches no visible GPU")
    if len(matches) > 1:
        raise BackendError(
            f"CUDA_VISIBLE_DEVICES entry {token!r} is ambiguous: it matches NVML devices {matches}"
        )
    return matches[0]


def import_pynvml() -> Any:
    """The ``pynvml`` module (imported on first use)."""
    import pynvml

    return pynvml


def nvml_available(nvml: Any | None = None) -> bool:
    """True when pynvml imports, ``nvmlInit`` succeeds and at least one GPU is visible."""
    try:
        lib = nvml if nvml is not None else import_pynvml()
        lib.nvmlInit()
    except Exception:
        return False
    try:
        return int(lib.nvmlDeviceGetCount()) >= 1
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            lib.nvmlShutdown()


def nvml_str(value: object) -> str:
    """An NVML string (bytes in older bindings) as ``str``."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def visible_gpu_slots(
    *, nvml: Any | None = None, cuda_visible_devices: str | None = None, use_env: bool = True
) -> list[DeviceSlot]:
    """One slot per GPU visible to this process, in CUDA ordinal order ([] without NVML).

    ``CUDA_VISIBLE_DEVICES`` (or ``cuda_visible_devices``) is mapped to NVML devices by UUID;
    each slot pins its child to that UUID. Raises ``BackendError`` for values NVML cannot map.
    """
    if not nvml_available(nvml):
        return []
    lib = nvml if nvml is not None else import_pynvml()
    try:
        lib.nvmlInit()
    except Exception as exc:
        raise BackendError(
            f"NVML initialisation failed: {exc}",
            hint="no NVIDIA GPU/driver visible; check `nvidia-smi`",
        ) from exc
    try:
        count = int(lib.nvmlDeviceGetCount())
        uuids = [
            nvml_str(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(i))) for i in range(count)
        ]
        env = effective_cuda_visible_devices(cuda_visible_devices, use_env=use_env)
        slots = []
        for k, index in enumerate(visible_nvml_indices(env, uuids)):
            uuid = uuids[index]
            pin = uuid if uuid.upper().startswith("GPU-") else str(index)
            slots.append(
                DeviceSlot(
                    device="cuda:0",
                    label=f"cuda:{k}",
                    uuid=uuid,
                    nvml_index=index,
                    visible_devices=pin,
                )
            )
        return slots
    finally:
        with contextlib.suppress(Exception):
            lib.nvmlShutdown()


def cpu_slots(n: int) -> list[DeviceSlot]:
    """``n`` CPU slots: runs the multi-process path without GPUs (tests only)."""
    return [DeviceSlot(device="cpu", label=f"cpu/{k}") for k in range(n)]
