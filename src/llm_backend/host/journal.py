"""The write-ahead journal of host changes: one JSON file in the state dir, under a lock.

Every entry is written before its step runs (write, fsync, rename, fsync the directory),
so a crash at any point leaves a record of what may have changed. The owner of a
transaction holds an exclusive `flock` on the lock file from the first entry until the
journal is gone; the kernel drops that lock when the owner dies, which is how other
commands tell an orphaned journal from one whose `start` is still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llm_backend.state import HOST_JOURNAL_FILE, atomic_write_json, read_json

JOURNAL_FILE = HOST_JOURNAL_FILE
JOURNAL_LOCK = "host-prep.lock"
JOURNAL_VERSION = 1
FAULT_POINT_ENV = "LLM_BACKEND_FAULT_POINT"

# Phases of a transaction. Anything but "left_on" means the transaction did not finish.
APPLYING = "applying"
APPLIED = "applied"
RESTORING = "restoring"
LEFT_ON = "left_on"


def fault_point(name: str) -> None:
    """Test hook: stop this process (SIGSTOP) right after `name`, so a test can kill it there.

    Set LLM_BACKEND_FAULT_POINT=swap.done (for example); the fault-injection tests use it
    to SIGKILL the CLI at an exact step instead of racing a fast load.
    """
    if os.environ.get(FAULT_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class JournalStep:
    """One step: `intent` before it runs, `done` after, then `undone` / `left_on` on restore."""

    name: str
    status: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "data": self.data, "at": self.at}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JournalStep:
        return cls(
            name=str(raw.get("name")),
            status=str(raw.get("status")),
            data=dict(raw.get("data") or {}),
            at=float(raw.get("at") or 0.0),
        )


@dataclass
class Transaction:
    """What one `start` changed on the host, as recorded in the journal."""

    boot_id: str
    profile: str
    owner_pid: int
    phase: str
    created_at: float
    snapshot: dict[str, Any] = field(default_factory=dict)
    steps: list[JournalStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(self, name: str) -> JournalStep | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "boot_id": self.boot_id,
            "profile": self.profile,
            "owner_pid": self.owner_pid,
            "phase": self.phase,
            "created_at": self.created_at,
            "snapshot": self.snapshot,
            "steps": [step.to_json() for step in self.steps],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Transaction:
        return cls(
            boot_id=str(raw.get("boot_id", "")),
            profile=str(raw.get("profile", "")),
            owner_pid=int(raw.get("owner_pid") or 0),
            phase=str(raw.get("phase", APPLYING)),
            created_at=float(raw.get("created_at") or 0.0),
            snapshot=dict(raw.get("snapshot") or {}),
            steps=[JournalStep.from_json(item) for item in raw.get("steps") or []],
            notes=[str(note) for note in raw.get("notes") or []],
        )


class Journal:
    """The journal file and its lock in one state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL_FILE
        self.lock_path = root / JOURNAL_LOCK
        self._lock_handle: IO[str] | None = None

    def read(self) -> Transaction | None:
        raw = read_json(self.path)
        if not isinstance(raw, dict):
            return None
        return Transaction.from_json(raw)

    def write(self, transaction: Transaction, *, point: str | None = None) -> None:
        """Persist the transaction durably, then pass the fault-injection point, if any."""
        atomic_write_json(self.path, transaction.to_json())
        if point is not None:
            fault_point(point)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @property
    def holding_lock(self) -> bool:
        return self._lock_handle is not None

    def try_lock(self) -> bool:
        """Take the transaction lock without waiting; False if another process holds it."""
        if self._lock_handle is not None:
            return True
        handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held across calls
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_handle = handle
        return True

    def unlock(self) -> None:
        if self._lock_handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def locked_by_other(self) -> bool:
        """True while another live process owns a transaction here."""
        if self._lock_handle is not None:
            return False
        if self.try_lock():
            self.unlock()
            return False
        return True
