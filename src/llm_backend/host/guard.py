"""Step 4: the memory guard, the host's only protection while the OOM daemon is paused.

Unified-memory hosts (DGX Spark) tend to freeze instead of OOM-killing, so while the model
loads we sample MemAvailable and SwapFree from /proc/meminfo: under the soft floor drop
caches again; under the hard floor for two samples in a row, fail the load with
`out_of_memory` so the lifecycle stops the engine and restores the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_backend.engines.base import Failure
from llm_backend.host.meminfo import MemInfo, format_bytes, read_meminfo

HARD_FLOOR_SAMPLES = 2
SOFT_DROP_MIN_INTERVAL_S = 5.0


@dataclass
class MemoryGuard:
    """Samples at most every `interval_s`; `check()` returns a Failure once the hard floor holds."""

    soft_floor: int
    hard_floor: int
    interval_s: float
    drop_caches: Callable[[], None] | None = None
    read: Callable[[], MemInfo] = read_meminfo
    samples: int = 0
    below_hard: int = 0
    soft_drops: int = 0
    min_available: int | None = None
    _next_sample: float = 0.0
    _last_drop: float = field(default=-1e9)

    def check(self) -> Failure | None:
        now = time.monotonic()
        if now < self._next_sample:
            return None
        self._next_sample = now + self.interval_s
        info = self.read()
        self.samples += 1
        available = info.usable
        if self.min_available is None or available < self.min_available:
            self.min_available = available
        if available < self.hard_floor:
            self.below_hard += 1
            if self.below_hard >= HARD_FLOOR_SAMPLES:
                return Failure(
                    "out_of_memory",
                    f"memory guard: MemAvailable {format_bytes(available)} stayed under the "
                    f"hard floor {format_bytes(self.hard_floor)} for {self.below_hard} samples "
                    f"(SwapFree {format_bytes(info.swap_free)}); the load was stopped before "
                    "the host ran out of memory",
                    "free memory (stop other programs), add swap with a larger "
                    "host_prep.swap_size, or lower host_prep.guard_hard_floor if the host "
                    "copes with less",
                )
        else:
            self.below_hard = 0
        if (
            available < self.soft_floor
            and self.drop_caches is not None
            and now - self._last_drop >= SOFT_DROP_MIN_INTERVAL_S
        ):
            self._last_drop = now
            self.soft_drops += 1
            self.drop_caches()
        return None
