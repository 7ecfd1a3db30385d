"""The write-ahead journal of host changes: one JSON file in the state dir, under a lock.

Every entry is written before its step runs (write, fsync, rename, fsync the directory),
so a crash at any point leaves a record of what may have changed. The owner of a
transaction holds an exclusive `flock` on the lock file from the first entry until the
journal is gone; the kernel drops that lock when the owner dies, which is how other
commands tell an orphaned journal from one whose `start` is still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_backend.locks import FileLock
from llm_backend.state import (
    HOST_JOURNAL_FILE,
    DamagedFile,
    StateDirError,
    atomic_write_json,
    load_state_json,
    move_aside,
    open_state_file,
)

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
    def from_json(cls, raw: Any) -> JournalStep:
        """Raises ValueError for an entry that is not what `to_json` writes."""
        if not isinstance(raw, dict):
            raise ValueError(f"a step is {raw!r:.40}, not an object")
        name, status, data = raw.get("name"), raw.get("status"), raw.get("data") or {}
        if not isinstance(name, str) or not isinstance(status, str) or not isinstance(data, dict):
            raise ValueError(f"step {name!r:.40} has a name, status or data of the wrong type")
        return cls(name=name, status=status, data=data, at=_number(raw.get("at"), "at"))


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
        """Raises ValueError for a journal that is not what `to_json` writes (hand-edited,
        forged or damaged): it is then moved aside, never half-trusted."""
        owner_pid = raw.get("owner_pid", 0)
        if isinstance(owner_pid, bool) or not isinstance(owner_pid, int):
            raise ValueError(f"owner_pid = {owner_pid!r:.40} is not a number")
        texts = {key: raw.get(key, default) for key, default in
                 (("boot_id", ""), ("profile", ""), ("phase", APPLYING))}
        for key, value in texts.items():
            if not isinstance(value, str):
                raise ValueError(f"{key} = {value!r:.40} is not text")
        snapshot, steps, notes = raw.get("snapshot") or {}, raw.get("steps") or [], raw.get(
            "notes") or []
        if not isinstance(snapshot, dict) or not isinstance(steps, list) or not isinstance(
                notes, list):
            raise ValueError("snapshot, steps or notes has the wrong type")
        return cls(
            boot_id=texts["boot_id"],
            profile=texts["profile"],
            owner_pid=owner_pid,
            phase=texts["phase"],
            created_at=_number(raw.get("created_at"), "created_at"),
            snapshot=snapshot,
            steps=[JournalStep.from_json(item) for item in steps],
            notes=[str(note) for note in notes],
        )


def _number(value: Any, key: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} = {value!r:.40} is not a number")
    return float(value)


class Journal:
    """The journal file and its lock in one state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL_FILE
        self.lock_path = root / JOURNAL_LOCK
        self._lock = FileLock(self.lock_path, open_fd=self._open_lock)
        # Set when `read` found the journal damaged (and moved it aside).
        self.damage: DamagedFile | None = None

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def read(self) -> Transaction | None:
        """The transaction, or None if there is none or it is damaged (see `self.damage`)."""
        raw, damage = load_state_json(self.path)
        if damage is not None:
            self.damage = damage
            return None
        if raw is None:
            return None
        try:
            return Transaction.from_json(raw)
        except ValueError as error:
            self.damage = DamagedFile(str(self.path), move_aside(self.path), str(error))
            return None

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
        return self._lock.held

    def try_lock(self) -> bool:
        """Take the transaction lock without waiting; False if another process holds it."""
        return self._lock.acquire(blocking=False, holder="host-prep")

    def _open_lock(self) -> int:
        flags = os.O_RDWR | os.O_CREAT
        try:
            return open_state_file(self.lock_path, flags)
        except StateDirError:
            if not (self.lock_path.is_dir() or self.lock_path.is_symlink()):
                raise
            move_aside(self.lock_path)
            return open_state_file(self.lock_path, flags)

    def unlock(self) -> None:
        self._lock.release()

    def locked_by_other(self) -> bool:
        """True while another live process owns a transaction here."""
        return self._lock.held_by_other()
