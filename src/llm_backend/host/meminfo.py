"""Read the host's memory and swap state from /proc (the only source that works on GB10 too)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MEMINFO_PATH = Path("/proc/meminfo")
SWAPS_PATH = Path("/proc/swaps")
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MemInfo:
    """The /proc/meminfo figures host preparation needs, in bytes."""

    mem_total: int
    mem_free: int
    mem_available: int
    swap_total: int
    swap_free: int
    hugepages_total: int
    hugepages_free: int
    hugepage_size: int

    @property
    def usable(self) -> int:
        """Memory a new allocation can get: hugetlb pages if configured, else MemAvailable."""
        if self.hugepages_total > 0:
            return self.hugepages_free * self.hugepage_size
        return self.mem_available


@dataclass(frozen=True)
class SwapArea:
    """One line of /proc/swaps; sizes in bytes."""

    path: str
    kind: str
    size: int
    used: int
    priority: int


def read_meminfo(path: Path = MEMINFO_PATH) -> MemInfo:
    values: dict[str, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if not fields:
            continue
        number = int(fields[0])
        values[key] = number * 1024 if len(fields) > 1 and fields[1] == "kB" else number
    return MemInfo(
        mem_total=values.get("MemTotal", 0),
        mem_free=values.get("MemFree", 0),
        mem_available=values.get("MemAvailable", values.get("MemFree", 0)),
        swap_total=values.get("SwapTotal", 0),
        swap_free=values.get("SwapFree", 0),
        hugepages_total=values.get("HugePages_Total", 0),
        hugepages_free=values.get("HugePages_Free", 0),
        hugepage_size=values.get("Hugepagesize", 0),
    )


def _unescape(field: str) -> str:
    """The kernel prints spaces, tabs, newlines and backslashes in paths as octal escapes."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def read_swaps(path: Path = SWAPS_PATH) -> list[SwapArea]:
    """Active swap areas; parsed from the right because the path may contain blanks."""
    areas: list[SwapArea] = []
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    for line in lines[1:]:
        parts = line.rsplit(None, 4)
        if len(parts) != 5:
            continue
        name, kind, size_kib, used_kib, priority = parts
        areas.append(
            SwapArea(
                path=_unescape(name.strip()),
                kind=kind,
                size=int(size_kib) * 1024,
                used=int(used_kib) * 1024,
                priority=int(priority),
            )
        )
    return areas


def swap_area(path: str) -> SwapArea | None:
    """The active swap area at `path`, or None."""
    for area in read_swaps():
        if area.path == path:
            return area
    return None


def boot_id() -> str:
    """Changes at every boot: tells a crash in this boot from one before a reboot."""
    return BOOT_ID_PATH.read_text(encoding="ascii").strip()


def format_bytes(size: int) -> str:
    """A short human size: 512 B, 256.0 MiB, 1.5 GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
