"""Host (CPU package and DRAM) energy from RAPL counters in the Linux powercap sysfs.

Unverified on real hardware: no machine llem was developed on exposes RAPL; the reader is
tested against fake sysfs trees with the kernel's file layout.

Layout read (``root`` defaults to ``/sys/class/powercap``)::

    intel-rapl:0/            name = "package-0"   energy_uj, max_energy_range_uj
    intel-rapl:0:0/          name = "dram"        (sub-zone of package 0; also "core", "uncore")
    intel-rapl:1/            name = "package-1"   (second socket)
    intel-rapl:1:0/          name = "dram"

Every zone directory is listed at the top of ``root`` (the kernel also nests each sub-zone
inside its parent's directory; both places are searched, each zone counted once). AMD CPUs
use the same driver and the same ``intel-rapl`` names; a tree named ``amd-rapl`` is read the
same way. ``intel-rapl-mmio`` zones (a second view of the same package on some Intel client
parts) are ignored, so a package is never counted twice.

Components:

- ``cpu``  = sum of the zones named ``package-N`` (the whole socket: cores, uncore, caches).
- ``dram`` = sum of the zones named ``dram``.
- ``core``/``uncore`` lie inside their package and ``psys`` covers the whole platform: they
  are read for the record but never added to a component, so nothing is counted twice.

Counters: ``energy_uj`` counts microjoules and wraps to 0 at ``max_energy_range_uj``. A
reading lower than the previous one is taken as one wrap (delta = range - previous + new)
unless that delta implies more than ``max_plausible_power_w`` over the elapsed time, in which
case the counter was reset (module reload, CPU hot-plug): the component is reported
unavailable with that reason instead of a wrong number. A window longer than one wrap period
(about 262 kJ / package power: tens of minutes) needs ``poll()`` in between so that no wrap is
missed.

Permissions: since Linux 5.10 ``energy_uj`` is readable only by root (CVE-2020-8694). Then
the reading is "unavailable" with a reason that says how to allow it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "DEFAULT_POWERCAP_ROOT",
    "HostComponent",
    "HostEnergyMeasurement",
    "HostEnergyMethod",
    "HostEnergyReading",
    "RaplReader",
    "RaplZone",
    "discover_rapl_zones",
    "rapl_wrap_delta_uj",
]

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")

HostComponent = Literal["cpu", "dram"]
# rapl_sysfs: this reader; zeus / codecarbon: what those backends report for the host
HostEnergyMethod = Literal["rapl_sysfs", "zeus", "codecarbon", "unavailable"]

# intel-rapl:0  /  intel-rapl:0:1  /  amd-rapl:0 ; never intel-rapl-mmio:0
_ZONE_DIR = re.compile(r"^(?P<prefix>intel-rapl|amd-rapl):(?P<package>\d+)(?::(?P<sub>\d+))?$")

PERMISSION_HINT = (
    "energy_uj is readable only by root on Linux >= 5.10; run as root, or allow reading it "
    "until the next boot with `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj` (or a udev rule / systemd-tmpfiles entry "
    "to make that permanent)"
)


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone: its directory, ``name`` file and counter range.

    ``kind`` is the name without its socket number: ``package``, ``dram``, ``core``,
    ``uncore``, ``psys`` or the raw name for anything else. ``component`` is the host
    component the zone is added to (``None`` for zones that lie inside another).
    """

    zone_id: str
    path: Path
    name: str
    max_energy_range_uj: int | None

    @property
    def kind(self) -> str:
        if re.fullmatch(r"package-\d+", self.name):
            return "package"
        return self.name

    @property
    def component(self) -> HostComponent | None:
        if self.kind == "package":
            return "cpu"
        if self.kind == "dram":
            return "dram"
        return None


class HostEnergyReading(BaseModel):
    """Energy of one host component (``cpu`` or ``dram``) over a window.

    ``method`` says where it came from (``rapl_sysfs``: this reader; ``zeus``/``codecarbon``:
    kept from those backends, see ``energy.components``). ``energy_j`` is ``None`` when the
    component could not be measured (``method`` ``"unavailable"``; ``notes`` say why).
    ``zones`` names the zones summed, e.g.
    ``["intel-rapl:0 (package-0)", "intel-rapl:1 (package-1)"]``.
    """

    model_config = {"extra": "forbid"}

    component: HostComponent
    energy_j: float | None
    method: HostEnergyMethod
    zones: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class HostEnergyMeasurement(BaseModel):
    """What the RAPL reader measured between ``begin()`` and ``end()``.

    ``available`` is False when nothing could be read (``reason`` says why: no powercap tree,
    no RAPL zone, permission denied). ``components`` holds one reading per component the
    machine exposes (cpu, and dram where present). ``total_energy_j`` sums the measured
    components (``None`` when none was measured).
    """

    model_config = {"extra": "forbid"}

    available: bool
    reason: str | None = None
    duration_s: float = 0.0
    components: list[HostEnergyReading] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def total_energy_j(self) -> float | None:
        values = [c.energy_j for c in self.components if c.energy_j is not None]
        return sum(values) if values else None

    def component(self, name: HostComponent) -> HostEnergyReading | None:
        """The reading of ``name``, or ``None`` when the machine does not expose it."""
        for c in self.components:
            if c.component == name:
                return c
        return None


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def _zone_dirs(root: Path) -> list[Path]:
    """Zone directories at the top of ``root`` and nested one level inside package zones."""
    found: dict[str, Path] = {}
    try:
        top = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in top:
        if _ZONE_DIR.match(entry.name) and entry.is_dir():
            found.setdefault(entry.name, entry)
    for entry in list(found.values()):
        try:
            children = sorted(entry.iterdir())
        except OSError:
            continue
        for child in children:
            if _ZONE_DIR.match(child.name) and child.is_dir():
                found.setdefault(child.name, child)
    return [found[k] for k in sorted(found, key=_zone_sort_key)]


def _zone_sort_key(zone_id: str) -> tuple[str, int, int]:
    m = _ZONE_DIR.match(zone_id)
    assert m is not None
    sub = m.group("sub")
    return (m.group("prefix"), int(m.group("package")), -1 if sub is None else int(sub))


def discover_rapl_zones(root: Path | str = DEFAULT_POWERCAP_ROOT) -> list[RaplZone]:
    """Every RAPL zone under ``root`` with a ``name`` and an ``energy_uj`` file.

    Reads only ``name`` and ``max_energy_range_uj`` (world-readable); ``energy_uj`` is not
    opened here. Returns ``[]`` when the tree is absent.
    """
    zones: list[RaplZone] = []
    for d in _zone_dirs(Path(root)):
        if not (d / "energy_uj").exists():
            continue
        try:
            name = _read_text(d / "name")
        except OSError:
            continue
        try:
            max_range: int | None = int(_read_text(d / "max_energy_range_uj"))
        except (OSError, ValueError):
            max_range = None
        zones.append(RaplZone(zone_id=d.name, path=d, name=name, max_energy_range_uj=max_range))
    return zones


def rapl_wrap_delta_uj(start_uj: int, end_uj: int, max_energy_range_uj: int | None) -> int | None:
    """Counter increase from ``start_uj`` to ``end_uj``, wrapping at ``max_energy_range_uj``.

    ``None`` when the counter went backwards and no range is known (cannot be unwrapped).
    """
    if end_uj >= start_uj:
        return end_uj - start_uj
    if max_energy_range_uj is None or max_energy_range_uj <= 0:
        return None
    return (max_energy_range_uj - start_uj) + end_uj


@dataclass
class _ZoneState:
    zone: RaplZone
    last_uj: int
    last_t: float
    total_uj: int = 0
    broken: str | None = None


@dataclass
class RaplReader:
    """Read RAPL counters of the host around a measurement window.

    Usage: ``begin()``, optionally ``poll()`` now and then (long windows), ``end()`` ->
    ``HostEnergyMeasurement``. ``available()`` says beforehand whether counters can be read
    and, when not, why. ``root`` is the powercap directory (a fake tree in tests);
    ``clock`` the time source used for the plausibility check of wraps.
    """

    root: Path | str = DEFAULT_POWERCAP_ROOT
    max_plausible_power_w: float = 2000.0
    clock: Callable[[], float] = time.monotonic
    _zones: list[RaplZone] = field(default_factory=list, init=False)
    _states: list[_ZoneState] = field(default_factory=list, init=False)
    _begin_t: float | None = field(default=None, init=False)
    _unavailable: str | None = field(default=None, init=False)

    def available(self) -> tuple[bool, str | None]:
        """``(True, None)`` when every summed zone's counter can be read, else ``(False, why)``."""
        zones = discover_rapl_zones(self.root)
        reason = self._check(zones)
        return reason is None, reason

    def _check(self, zones: Sequence[RaplZone]) -> str | None:
        root = Path(self.root)
        if not root.is_dir():
            return f"no powercap tree at {root} (the kernel exposes no RAPL here)"
        counted = [z for z in zones if z.component is not None]
        if not counted:
            return f"no RAPL package zone under {root} (intel-rapl / amd-rapl)"
        for z in counted:
            try:
                int(_read_text(z.path / "energy_uj"))
            except PermissionError:
                return f"permission denied reading {z.path / 'energy_uj'}: {PERMISSION_HINT}"
            except (OSError, ValueError) as exc:
                return f"cannot read {z.path / 'energy_uj'}: {exc}"
        return None

    def begin(self) -> None:
        """Discover the zones and take the first reading of every counter."""
        self._zones = discover_rapl_zones(self.root)
        self._states = []
        self._begin_t = self.clock()
        self._unavailable = self._check(self._zones)
        if self._unavailable is not None:
            return
        t = self.clock()
        for z in self._zones:
            if z.component is None:
                continue
            self._states.append(
                _ZoneState(zone=z, last_uj=int(_read_text(z.path / "energy_uj")), last_t=t)
            )

    def poll(self) -> None:
        """Read every counter once more, accumulating the increase (catches every wrap)."""
        if self._unavailable is not None:
            return
        for s in self._states:
            if s.broken is not None:
                continue
            try:
                now_uj = int(_read_text(s.zone.path / "energy_uj"))
            except PermissionError:
                s.broken = f"permission denied reading {s.zone.path / 'energy_uj'}"
                continue
            except (OSError, ValueError) as exc:
                s.broken = f"{s.zone.zone_id} disappeared or became unreadable: {exc}"
                continue
            t = self.clock()
            delta = rapl_wrap_delta_uj(s.last_uj, now_uj, s.zone.max_energy_range_uj)
            elapsed = max(t - s.last_t, 0.0)
            if delta is None:
                s.broken = (
                    f"{s.zone.zone_id} counter went backwards ({s.last_uj} -> {now_uj} uJ) "
                    "and its max_energy_range_uj is unknown: cannot tell a wrap from a reset"
                )
                continue
            if now_uj < s.last_uj and delta > self.max_plausible_power_w * elapsed * 1e6:
                s.broken = (
                    f"{s.zone.zone_id} counter was reset during the window "
                    f"({s.last_uj} -> {now_uj} uJ; as a wrap that would be "
                    f"{delta / 1e6:.1f} J in {elapsed:.3f} s, over "
                    f"{self.max_plausible_power_w:.0f} W)"
                )
                continue
            s.total_uj += delta
            s.last_uj = now_uj
            s.last_t = t

    def end(self) -> HostEnergyMeasurement:
        """Take the last reading and return the energy per component since ``begin()``."""
        if self._begin_t is None:
            raise RuntimeError("RaplReader.end() called before begin()")
        self.poll()
        duration = max(self.clock() - self._begin_t, 0.0)
        if self._unavailable is not None:
            return HostEnergyMeasurement(
                available=False, reason=self._unavailable, duration_s=duration
            )
        components: list[HostEnergyReading] = []
        order: tuple[HostComponent, ...] = ("cpu", "dram")
        for comp in order:
            states = [s for s in self._states if s.zone.component == comp]
            if not states:
                continue
            labels = [f"{s.zone.zone_id} ({s.zone.name})" for s in states]
            broken = [s.broken for s in states if s.broken is not None]
            if broken:
                components.append(
                    HostEnergyReading(
                        component=comp,
                        energy_j=None,
                        method="unavailable",
                        zones=labels,
                        notes=broken,
                    )
                )
            else:
                components.append(
                    HostEnergyReading(
                        component=comp,
                        energy_j=sum(s.total_uj for s in states) / 1e6,
                        method="rapl_sysfs",
                        zones=labels,
                    )
                )
        ignored = [f"{z.zone_id} ({z.name})" for z in self._zones if z.component is None]
        notes = []
        if ignored:
            notes.append("not added (inside a package, or whole-platform): " + ", ".join(ignored))
        return HostEnergyMeasurement(
            available=True, duration_s=duration, components=components, notes=notes
        )
