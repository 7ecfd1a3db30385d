"""The door's own record, `serve.json` in the state dir, written only by a running `serve`.

The instance record stays the lifecycle's; this one says that a door runs, where, what it
holds and why the backend is down. `status`, `stop` and `restart` read it to reach the door.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llm_backend.processes import process_matches
from llm_backend.state import StateStore, atomic_write_json, read_json

SERVE_FILE = "serve.json"


@dataclass(frozen=True)
class ServeRecord:
    """A running door: its process, address, backend view and counters."""

    pid: int
    pid_create_time: float | None
    profile: str
    door: str  # http://host:port clients use
    backend: str  # http://127.0.0.1:port of the backend behind it
    started_at: float
    state: str = "stopped"  # the door's view of the backend: see metrics.BACKEND_STATES
    phase: str | None = None
    requests: int = 0
    held: int = 0
    failed: int = 0  # 503s the door answered because the backend was not ready in time
    fallback: int = 0
    loads: int = 0  # successful loads since the door started
    restarts: int = 0
    last_restart: dict[str, Any] | None = None  # at, reason, failure, duration_s
    last_failure: dict[str, Any] | None = None
    gave_up: bool = False  # restart cap reached: the door answers 503 until restarted
    idle_stopped: bool = False
    stopping: bool = False
    api_keys: bool = False  # whether keys are checked (never the keys)
    fallback_url: str | None = None
    model: str | None = None  # the served model name clients ask for
    max_wait_s: float | None = None  # how long the door holds a request while not ready
    extra: dict[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> ServeRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServeRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def save(store: StateStore, record: ServeRecord) -> None:
    atomic_write_json(store.root / SERVE_FILE, record.to_json())


def clear(store: StateStore) -> None:
    with contextlib.suppress(FileNotFoundError):
        (store.root / SERVE_FILE).unlink()


def load(store: StateStore) -> ServeRecord | None:
    """The record of a door that still runs; None when there is none or its process is gone."""
    data = read_json(store.root / SERVE_FILE)
    if not isinstance(data, dict):
        return None
    try:
        record = ServeRecord.from_json(data)
    except TypeError:
        return None
    if process_matches(record.pid, record.pid_create_time) is None:
        return None
    return record


def summary(record: ServeRecord) -> dict[str, Any]:
    """What `status --json` shows under "serve"."""
    return {
        "pid": record.pid,
        "door": record.door,
        "backend": record.backend,
        "model": record.model,
        "state": record.state,
        "phase": record.phase,
        "requests": record.requests,
        "held": record.held,
        "failed": record.failed,
        "fallback": record.fallback,
        "loads": record.loads,
        "restarts": record.restarts,
        "last_restart": record.last_restart,
        "last_failure": record.last_failure,
        "gave_up": record.gave_up,
        "idle_stopped": record.idle_stopped,
        "api_keys": record.api_keys,
        "fallback_url": record.fallback_url,
    }
