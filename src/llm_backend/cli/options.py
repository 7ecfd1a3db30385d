"""Range checks of command-line values that go straight to the library (not through a
profile, whose values pydantic checks): a bad one is a UsageError naming the option, the value
and the allowed range, raised before the command changes anything."""

from __future__ import annotations

import math

from llm_backend.errors import UsageError


def check_number(
    option: str, value: float | None, *, low: float, high: float, command: str,
    low_open: bool = False,
) -> None:
    """`value` (when given) is finite and in [low, high] (or (low, high] with `low_open`)."""
    if value is None:
        return
    below = value <= low if low_open else value < low
    if math.isfinite(value) and not below and value <= high:
        return
    bracket = "(" if low_open else "["
    raise UsageError(
        f"{option} {value:g} is out of range: allowed {bracket}{low:g}, {high:g}]",
        remedy=f"llm-backend {command} {option} N with N in that range "
        f"(see `llm-backend {command} --help`)",
    )
