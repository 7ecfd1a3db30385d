"""Read the host's memory and swap state from /proc (the only source that works on GB10 too).

The one reader of /proc/meminfo: host preparation, the memory guard, `doctor`'s memory check,
the hardware description and the GPU report of unified-memory boxes all use `read_meminfo`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llm_backend.units import format_bytes

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

    def allocatable(self, extra_swap: int = 0) -> int:
        """What a new GPU allocation can get on unified memory (NVIDIA's DGX Spark guidance):
        with hugetlb pages configured only free huge pages (they do not swap), otherwise
        MemAvailable plus SwapFree plus `extra_swap` (a swap file about to be added), bytes."""
        if self.hugepages_total > 0:
            return self.usable
        return self.mem_available + self.swap_free + extra_swap


@dataclass(frozen=True)
class SwapArea:
    """One line of /proc/swaps; sizes in bytes."""

    path: str
    kind: str
    size: int
    used: int
    priority: int


def read_meminfo(path: Path = MEMINFO_PATH) -> MemInfo:
    """/proc/meminfo in bytes (its kB values times 1024); psutil's figures when unreadable."""
    values: dict[str, int] = {}
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        import psutil

        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        return MemInfo(
            mem_total=int(memory.total), mem_free=int(memory.free),
            mem_available=int(memory.available), swap_total=int(swap.total),
            swap_free=int(swap.free), hugepages_total=0, hugepages_free=0, hugepage_size=0,
        )
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if not fields:
            continue
        if not fields[0].isdigit():
            continue
        number = int(fields[0])
        values[key] = number * 1024 if len(fields) > 1 and fields[1] == "kB" else number
    return MemInfo(
        mem_total=values.get("MemTotal", 0),
        mem_free=values.get("MemFree", 0),
        mem_available=values.get("MemAvailable", values.get("MemFree", 0)),
        swap_total=values.get("SwapTotal", 0),
        swap_free=values.get("SwapFree", 0),
        hugepages_total=max(values.get("HugePages_Total", 0), 0),
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


__all__ = ["format_bytes"]  # re-exported for host preparation's messages
