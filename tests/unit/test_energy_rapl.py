"""Specification of the RAPL host-energy reader, against fake powercap sysfs trees.

The trees copy the kernel's layout: every zone is a directory at the top of
``/sys/class/powercap`` (``intel-rapl:0``, ``intel-rapl:0:0``, ...), sub-zones are also nested
inside their package's directory, each holds ``name``, ``energy_uj`` and
``max_energy_range_uj``. Unverified on real hardware (no machine here has RAPL).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llenergymeasure.energy.rapl import (
    RaplReader,
    discover_rapl_zones,
    rapl_wrap_delta_uj,
)

RANGE_UJ = 262_143_328_850  # a typical max_energy_range_uj


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def add_zone(
    root: Path, zone_id: str, name: str, energy_uj: int, max_range: int | None = RANGE_UJ
) -> Path:
    """A zone directory at the top of ``root``; sub-zones also nested in their parent."""
    d = root / zone_id
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    (d / "enabled").write_text("1\n")
    parts = zone_id.split(":")
    if len(parts) == 3:  # the kernel also links the sub-zone inside its package directory
        os.symlink(d, root / ":".join(parts[:2]) / zone_id)
    return d


def set_energy(zone_dir: Path, energy_uj: int) -> None:
    (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture()
def two_sockets(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    root.mkdir()
    (root / "intel-rapl").mkdir()  # the control-type directory, not a zone
    (root / "intel-rapl" / "enabled").write_text("1\n")
    zones = {
        "pkg0": add_zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": add_zone(root, "intel-rapl:0:0", "core", 500_000),
        "dram0": add_zone(root, "intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": add_zone(root, "intel-rapl:1", "package-1", 3_000_000),
        "dram1": add_zone(root, "intel-rapl:1:0", "dram", 4_000_000),
        "uncore1": add_zone(root, "intel-rapl:1:1", "uncore", 10),
        # a second view of package 0 on some Intel parts: must not be counted again
        "mmio": add_zone(root, "intel-rapl-mmio:0", "package-0", 7),
    }
    zones["root"] = root
    return zones


def test_discovery_finds_packages_and_sub_zones_once_each(two_sockets: dict[str, Path]) -> None:
    zones = discover_rapl_zones(two_sockets["root"])
    assert [(z.zone_id, z.name) for z in zones] == [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:0:0", "core"),
        ("intel-rapl:0:1", "dram"),
        ("intel-rapl:1", "package-1"),
        ("intel-rapl:1:0", "dram"),
        ("intel-rapl:1:1", "uncore"),
    ]
    assert [z.component for z in zones] == ["cpu", None, "dram", "cpu", "dram", None]
    assert zones[0].max_energy_range_uj == RANGE_UJ


def test_sub_zones_only_nested_inside_their_package_are_found(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 0)
    nested = pkg / "intel-rapl:0:0"
    nested.mkdir()
    (nested / "name").write_text("dram\n")
    (nested / "energy_uj").write_text("0\n")
    assert [z.name for z in discover_rapl_zones(root)] == ["package-0", "dram"]


def test_two_packages_and_their_dram_are_summed_per_component(
    two_sockets: dict[str, Path],
) -> None:
    clock = FakeClock()
    reader = RaplReader(root=two_sockets["root"], clock=clock)
    assert reader.available() == (True, None)
    reader.begin()
    clock.t += 2.0
    set_energy(two_sockets["pkg0"], 1_000_000 + 150_000_000)  # 150 J
    set_energy(two_sockets["pkg1"], 3_000_000 + 90_000_000)  # 90 J
    set_energy(two_sockets["core0"], 500_000 + 120_000_000)  # inside package 0: not added
    set_energy(two_sockets["dram0"], 2_000_000 + 20_000_000)  # 20 J
    set_energy(two_sockets["dram1"], 4_000_000 + 25_500_000)  # 25.5 J
    m = reader.end()

    assert m.available and m.reason is None
    assert m.duration_s == pytest.approx(2.0)
    cpu, dram = m.component("cpu"), m.component("dram")
    assert cpu is not None and dram is not None
    assert cpu.energy_j == pytest.approx(240.0)
    assert cpu.method == "rapl_sysfs"
    assert cpu.zones == ["intel-rapl:0 (package-0)", "intel-rapl:1 (package-1)"]
    assert dram.energy_j == pytest.approx(45.5)
    assert dram.zones == ["intel-rapl:0:1 (dram)", "intel-rapl:1:0 (dram)"]
    assert m.total_energy_j == pytest.approx(285.5)
    assert any("core" in n and "uncore" in n for n in m.notes)


def test_a_machine_without_dram_zones_reports_only_the_cpu(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 0)
    add_zone(root, "intel-rapl:1", "psys", 0)  # whole platform: never added
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    clock.t += 1.0
    set_energy(pkg, 42_000_000)
    m = reader.end()
    assert [c.component for c in m.components] == ["cpu"]
    assert m.component("dram") is None
    assert m.total_energy_j == pytest.approx(42.0)


def test_amd_rapl_tree_is_read_the_same_way(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "amd-rapl:0", "package-0", 5)
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    clock.t += 1.0
    set_energy(pkg, 5 + 80_000_000)
    cpu = reader.end().component("cpu")
    assert cpu is not None and cpu.energy_j == pytest.approx(80.0)


def test_wrap_delta_arithmetic() -> None:
    assert rapl_wrap_delta_uj(100, 250, RANGE_UJ) == 150
    assert rapl_wrap_delta_uj(RANGE_UJ - 1_000, 500, RANGE_UJ) == 1_500
    assert rapl_wrap_delta_uj(RANGE_UJ - 1_000, 500, None) is None


def test_counter_wrap_around_during_the_window_is_unwrapped(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", RANGE_UJ - 30_000_000)
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    clock.t += 1.0
    set_energy(pkg, 20_000_000)  # wrapped: 30 J to the top of the range, then 20 J
    cpu = reader.end().component("cpu")
    assert cpu is not None
    assert cpu.energy_j == pytest.approx(50.0)


def test_polling_catches_more_than_one_wrap_in_a_long_window(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    small_range = 100_000_000  # 100 J range, so a long window wraps twice
    pkg = add_zone(root, "intel-rapl:0", "package-0", 90_000_000, max_range=small_range)
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    for value in (40_000_000, 95_000_000, 10_000_000):
        clock.t += 1.0
        set_energy(pkg, value)
        reader.poll()
    clock.t += 1.0
    set_energy(pkg, 30_000_000)
    cpu = reader.end().component("cpu")
    assert cpu is not None
    # 90->100->40 (50 J), 40->95 (55 J), 95->100->10 (15 J), 10->30 (20 J)
    assert cpu.energy_j == pytest.approx(140.0)


def test_a_counter_reset_mid_window_is_reported_not_taken_for_a_wrap(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 50_000_000_000)  # 50 kJ so far
    dram = add_zone(root, "intel-rapl:0:0", "dram", 1_000)
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    clock.t += 1.0
    set_energy(pkg, 3_000_000)  # back near zero after 1 s: a wrap would mean ~212 kJ in 1 s
    set_energy(dram, 1_000 + 7_000_000)
    m = reader.end()
    cpu = m.component("cpu")
    assert cpu is not None
    assert cpu.energy_j is None
    assert cpu.method == "unavailable"
    assert any("reset" in n for n in cpu.notes)
    dram_reading = m.component("dram")
    assert dram_reading is not None and dram_reading.energy_j == pytest.approx(7.0)
    assert m.total_energy_j == pytest.approx(7.0)


def test_a_backwards_counter_without_a_known_range_is_not_guessed(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 5_000, max_range=None)
    clock = FakeClock()
    reader = RaplReader(root=root, clock=clock)
    reader.begin()
    clock.t += 1.0
    set_energy(pkg, 1_000)
    cpu = reader.end().component("cpu")
    assert cpu is not None and cpu.energy_j is None
    assert "max_energy_range_uj is unknown" in cpu.notes[0]


def test_root_only_energy_uj_is_unavailable_with_the_reason_and_how_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 0)
    counter = pkg / "energy_uj"
    counter.chmod(0o400)
    if os.geteuid() == 0:  # root reads anything: make the read fail as the kernel would
        original = Path.read_text

        def denied(self: Path, *args: object, **kwargs: object) -> str:
            if self == counter:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", denied)
    reader = RaplReader(root=root)
    ok, reason = reader.available()
    assert not ok
    assert reason is not None
    assert "permission denied" in reason
    assert "root" in reason and "chmod" in reason
    reader.begin()
    m = reader.end()
    assert not m.available
    assert m.reason == reason
    assert m.components == [] and m.total_energy_j is None


def test_a_missing_powercap_tree_is_unavailable(tmp_path: Path) -> None:
    reader = RaplReader(root=tmp_path / "nowhere")
    ok, reason = reader.available()
    assert not ok and reason is not None and "no powercap tree" in reason
    reader.begin()
    m = reader.end()
    assert not m.available and m.reason == reason


def test_a_powercap_tree_without_rapl_zones_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    (root / "dtpm").mkdir(parents=True)
    ok, reason = RaplReader(root=root).available()
    assert not ok and reason is not None and "no RAPL package zone" in reason


def test_a_zone_that_disappears_mid_window_makes_its_component_unavailable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "powercap"
    pkg = add_zone(root, "intel-rapl:0", "package-0", 0)
    reader = RaplReader(root=root, clock=FakeClock())
    reader.begin()
    (pkg / "energy_uj").unlink()
    cpu = reader.end().component("cpu")
    assert cpu is not None and cpu.energy_j is None
    assert "disappeared" in cpu.notes[0]


def test_end_before_begin_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before begin"):
        RaplReader(root=tmp_path).end()
