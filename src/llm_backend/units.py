"""Sizes: parsing `50G`-style settings and printing byte counts for people."""

from __future__ import annotations

import re

GIB = 1024**3
SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Turn '50G', '256M', '512MiB' or a plain byte count into bytes (K, M, G, T are 1024^n).

    Raises ValueError naming the text when it is not a size.
    """
    match = SIZE_PATTERN.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size; use a number with K, M, G or T, like '50G'")
    number = float(match.group(1))
    unit = (match.group(2) or "B").upper().rstrip("B").rstrip("I")
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    return int(number * 1024**power)


def format_bytes(size: int | float | None, unknown: str = "?") -> str:
    """A short human size: 512 B, 256.0 MiB, 1.5 GiB (1024-based); `unknown` for None."""
    if size is None:
        return unknown
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
