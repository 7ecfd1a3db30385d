"""What `stop`, `restart`, `status`, `chat` and `bench` do when a `serve` owns the backend.

`stop` sends SIGTERM (the door drains, stops the backend, restores the host, exits);
`restart` sends SIGHUP (the door holds or falls back while the backend reloads);
`chat` and `bench` talk to the door (its API keys, holding and metrics), not around it.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm_backend.errors import BackendError
from llm_backend.processes import process_matches
from llm_backend.serve import record as serve_record
from llm_backend.state import StateStore

POLL_S = 0.1
# A key the door accepts besides the configured ones, for llm-backend's own clients (`chat`,
# `bench`): written by `serve` (0600, in a 0700 folder of the state dir), removed when it exits.
CLIENT_KEY_DIR = "serve-secrets"
CLIENT_KEY_FILE = "client-key"


@dataclass(frozen=True)
class DoorClient:
    """How llm-backend's own clients reach a running door: its URL, model and headers."""

    endpoint: str
    model: str | None
    profile: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    hold_s: float = 0.0  # the door may hold a request this long before it answers


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


def client_key_path(store: StateStore) -> Path:
    return store.root / CLIENT_KEY_DIR / CLIENT_KEY_FILE


def make_client_key(store: StateStore) -> str:
    """A fresh key for our own clients, written 0600; `serve` adds it to the door's keys."""
    from llm_backend.credentials import write_secret_file

    key = secrets.token_urlsafe(32)
    write_secret_file(client_key_path(store), key + "\n")
    return key


def remove_client_key(store: StateStore) -> None:
    path = client_key_path(store)
    if path.is_file() and not path.is_symlink():
        path.unlink()


def door_client(store: StateStore) -> DoorClient | None:
    """The running door as a client target; None when no `serve` runs.

    Headers: the door's client key when the door checks keys (never printed), else the
    backend's own key when it has one (the door passes it through unchanged).
    """
    door = running(store)
    if door is None:
        return None
    from llm_backend.credentials import client_headers

    headers: dict[str, str] = {}
    if door.api_keys:
        try:
            descriptor = os.open(client_key_path(store), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            descriptor = -1
        if descriptor >= 0:
            with os.fdopen(descriptor, encoding="utf-8") as handle:
                key = handle.read().strip()
            if key:
                headers = {"Authorization": f"Bearer {key}"}
    else:
        headers = client_headers(store.root)
    return DoorClient(door.door, door.model, door.profile, headers, door.max_wait_s or 0.0)


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
