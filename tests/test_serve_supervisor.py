"""The supervisor's decisions that need no server: the memory wait and busy-versus-hung.

The memory wait reads this machine's real /proc/meminfo; what the "last load took" is set
to a figure this machine cannot have free (to see the wait time out) or to one it has.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from llm_backend.config import ConfigSet, builtin_layer
from llm_backend.host.meminfo import read_meminfo
from llm_backend.lifecycle import Lifecycle
from llm_backend.serve.metrics import DoorMetrics
from llm_backend.serve.supervisor import Supervisor
from llm_backend.state import StateStore


def supervisor(tmp_path: Path, **serve: object) -> tuple[Supervisor, list[str]]:
    config = ConfigSet(layers=[builtin_layer()])
    profile = config.resolve("smollm2-cpu", {f"serve.{k}": v for k, v in serve.items()}).profile
    lines: list[str] = []
    lifecycle = Lifecycle(store=StateStore(tmp_path / "state"), config=config)
    return Supervisor(
        lifecycle=lifecycle, profile=profile, backend_overrides={},
        backend_url="http://127.0.0.1:9", metrics=DoorMetrics(), on_line=lines.append,
    ), lines


def test_memory_wait_gives_up_after_memory_wait_s_and_says_so(tmp_path: Path) -> None:
    waiting, lines = supervisor(tmp_path, memory_wait_s=0.6)
    waiting._memory_taken = read_meminfo().mem_total * 2  # more than this machine has
    started = time.monotonic()
    asyncio.run(waiting._wait_for_memory())
    took = time.monotonic() - started
    assert 0.6 <= took < 10  # gave up after memory_wait_s, not later
    assert lines[0].startswith("backend: waiting for memory to come back")
    assert "loading anyway" in lines[-1]


def test_memory_wait_returns_at_once_when_the_last_load_fits(tmp_path: Path) -> None:
    waiting, lines = supervisor(tmp_path, memory_wait_s=30)
    waiting._memory_taken = 64 * 2**20  # 64 MiB: available here
    started = time.monotonic()
    asyncio.run(waiting._wait_for_memory())
    assert time.monotonic() - started < 0.5
    assert lines == []


def test_a_failed_probe_is_load_while_responses_flow(tmp_path: Path) -> None:
    watching, _ = supervisor(tmp_path, probe_timeout_s=5)
    assert not watching._busy_not_hung()  # nothing in flight: a failed probe counts
    watching.inflight = 3
    watching.backend_progress = time.monotonic() - 1
    assert watching._busy_not_hung()  # bytes 1 s ago: busy
    watching.backend_progress = time.monotonic() - 10
    assert not watching._busy_not_hung()  # nothing for longer than a probe: hung
