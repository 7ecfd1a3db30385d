"""What `stop`, `restart` and `status` do when a `serve` owns the backend: ask the door.

`stop` sends SIGTERM (the door drains, stops the backend, restores the host, exits);
`restart` sends SIGHUP (the door holds or falls back while the backend reloads).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from llm_backend.errors import BackendError
from llm_backend.processes import process_matches
from llm_backend.serve import record as serve_record
from llm_backend.state import StateStore

POLL_S = 0.1


@dataclass(frozen=True)
class ServeStop:
    """What stopping a door did."""

    pid: int
    profile: str
    door: str
    duration_s: float


@dataclass(frozen=True)
class ServeRestart:
    """How a restart through the door ended."""

    profile: str
    door: str
    state: str
    duration_s: float
    failure: dict[str, object] | None


def running(store: StateStore) -> serve_record.ServeRecord | None:
    return serve_record.load(store)


def stop(store: StateStore, door: serve_record.ServeRecord, *, timeout_s: float) -> ServeStop:
    """SIGTERM to the door, then wait until its process is gone."""
    started = time.monotonic()
    try:
        os.kill(door.pid, signal.SIGTERM)
    except ProcessLookupError:
        return ServeStop(door.pid, door.profile, door.door, 0.0)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if process_matches(door.pid, door.pid_create_time) is None:
            return ServeStop(door.pid, door.profile, door.door, time.monotonic() - started)
        time.sleep(POLL_S)
    raise BackendError(
        f"serve (pid {door.pid}) did not stop within {timeout_s:g} s",
        remedy=f"wait for its drain to end, or `kill -TERM {door.pid}` again; "
        "`llm-backend logs` shows the backend",
    )


def restart(
    store: StateStore, door: serve_record.ServeRecord, *, timeout_s: float
) -> ServeRestart:
    """SIGHUP to the door, then wait until its backend is ready again (or failed)."""
    started = time.monotonic()
    loads_before = door.loads
    restarts_before = door.restarts
    os.kill(door.pid, signal.SIGHUP)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        now = serve_record.load(store)
        if now is None:
            raise BackendError(
                f"serve (pid {door.pid}) exited during the restart",
                remedy="read its output (journalctl -u llm-backend, or the terminal), then "
                "llm-backend serve",
            )
        if now.loads > loads_before and now.state == "ready":
            return ServeRestart(now.profile, now.door, now.state,
                                time.monotonic() - started, None)
        if now.gave_up and now.restarts > restarts_before:
            return ServeRestart(now.profile, now.door, "failed",
                                time.monotonic() - started, now.last_failure)
    raise BackendError(
        f"the backend behind serve was not ready again within {timeout_s:g} s",
        remedy="follow it with `llm-backend status --watch`",
    )
