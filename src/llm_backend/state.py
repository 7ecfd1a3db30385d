"""The state dir: the instance record, start history, locks and atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_backend.errors import AlreadyStartingError
from llm_backend.net import connect_url, http_url

INSTANCE_FILE = "instance.json"
HISTORY_FILE = "history.json"
START_LOCK = "start.lock"
STATE_LOCK = "state.lock"
HOST_JOURNAL_FILE = "host-prep.json"  # written by llm_backend.host.journal


def state_dir() -> Path:
    """$LLM_BACKEND_STATE_DIR, else $XDG_STATE_HOME/llm-backend, else ~/.local/state/llm-backend."""
    explicit = os.environ.get("LLM_BACKEND_STATE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "llm-backend"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_json(path: Path, data: Any) -> None:
    """Write, fsync, rename, fsync the directory: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None


@dataclass(frozen=True)
class InstanceRecord:
    """One backend as recorded by `start`; later commands adopt it from here."""

    profile: str
    engine: str
    runtime: str
    state: str
    host: str
    port: int
    served_model_name: str
    argv: list[str]
    log_path: str
    created_at: float
    pid: int | None = None
    pid_create_time: float | None = None
    owner_pid: int | None = None
    owner_create_time: float | None = None
    ready_at: float | None = None
    start_duration_s: float | None = None
    phase: str | None = None
    failure: dict[str, Any] | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def endpoint(self) -> str:
        """The URL as configured (`http://[::]:40000` for an IPv6 wildcard bind)."""
        return http_url(self.host, self.port)

    @property
    def client_endpoint(self) -> str:
        """The URL a client on this machine uses (a wildcard bind is polled at loopback)."""
        return connect_url(self.host, self.port)

    def evolve(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


class StateStore:
    """Reads and writes the files of one state dir."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_dir()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def instance_path(self) -> Path:
        return self.root / INSTANCE_FILE

    def logs_dir(self) -> Path:
        path = self.root / "logs"
        path.mkdir(exist_ok=True)
        return path

    def load_instance(self) -> InstanceRecord | None:
        data = read_json(self.instance_path)
        if not isinstance(data, dict):
            return None
        try:
            return InstanceRecord.from_json(data)
        except TypeError:
            return None

    def save_instance(self, record: InstanceRecord) -> None:
        with self.locked(STATE_LOCK):
            atomic_write_json(self.instance_path, record.to_json())

    def clear_instance(self) -> None:
        with self.locked(STATE_LOCK), contextlib.suppress(FileNotFoundError):
            self.instance_path.unlink()

    def last_start_duration(self, profile: str) -> float | None:
        history = read_json(self.root / HISTORY_FILE) or {}
        entry = history.get(profile) if isinstance(history, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("start_duration_s"), int | float):
            return float(entry["start_duration_s"])
        return None

    def phase_offsets(self, profile: str) -> dict[str, float]:
        """Seconds from launch to each phase in the last successful start (for the ETA)."""
        history = read_json(self.root / HISTORY_FILE) or {}
        entry = history.get(profile) if isinstance(history, dict) else None
        offsets = entry.get("phase_offsets") if isinstance(entry, dict) else None
        return dict(offsets) if isinstance(offsets, dict) else {}

    def record_start(
        self, profile: str, duration_s: float, phase_offsets: dict[str, float]
    ) -> None:
        with self.locked(STATE_LOCK):
            path = self.root / HISTORY_FILE
            history = read_json(path) or {}
            if not isinstance(history, dict):
                history = {}
            history[profile] = {
                "start_duration_s": round(duration_s, 3),
                "phase_offsets": {k: round(v, 3) for k, v in phase_offsets.items()},
                "at": time.time(),
            }
            atomic_write_json(path, history)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """A blocking flock on a file in the state dir."""
        with open(self.root / name, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def start_lock(self) -> Iterator[None]:
        """Exactly one `start` at a time; a second one fails at once instead of waiting."""
        with open(self.root / START_LOCK, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyStartingError(
                    "the backend is already starting (another `llm-backend start` holds "
                    f"{self.root / START_LOCK})",
                    remedy="wait for it, or follow it with `llm-backend status --watch`",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def start_lock_held(self) -> bool:
        """True while some process holds the start lock."""
        with open(self.root / START_LOCK, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
