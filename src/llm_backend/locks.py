"""The one file-lock helper: an exclusive `flock` on a file in the state dir.

The kernel drops a `flock` when its holder dies, so a lock never outlives a killed command.
The holder names itself (pid, start time, command) in a sibling file, `<lock>.holder`,
replaced by rename so that a reader sees a whole line or none, and removed on release; a
line whose process is gone (a holder killed with -9) is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from llm_backend.processes import process_matches


def _start_time() -> str:
    """This process's start time, as psutil reports it (written with the pid)."""
    import psutil

    return f"{psutil.Process().create_time():.3f}"


def _open_no_follow(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


HOLDER_READ_TRIES = 10  # 0.2 s at most for a new holder to write its line
HOLDER_SUFFIX = ".holder"


def _write_atomically(path: Path, line: str) -> None:
    """Replace `path` with `line` by rename (a reader never sees half of it); never follows
    a symlink: the temporary file is new (O_EXCL) and rename replaces a link itself."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        os.replace(temp, path)  # a directory in its place: refused, and the temp file goes
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


class FileLock:
    """An exclusive lock on `path`, taken blocking, without waiting, or with a deadline.

    `open_fd` opens the lock file (read-write) and returns its descriptor; by default it is
    created 0600 and a symlink in its place is refused (ELOOP).
    """

    def __init__(self, path: Path, *, open_fd: Callable[[], int] | None = None) -> None:
        self.path = path
        self._open_fd = open_fd or (lambda: _open_no_follow(path))
        self.holder_path = path.with_name(path.name + HOLDER_SUFFIX)
        self._handle: IO[str] | None = None
        self._owner: int | None = None  # the thread that holds it
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        """True while the calling thread holds the lock through this object."""
        return self._handle is not None and self._owner == threading.get_ident()

    def _held_by_another_thread(self) -> bool:
        return self._handle is not None and self._owner != threading.get_ident()

    def acquire(self, *, blocking: bool = True, timeout_s: float | None = None,
                holder: str = "") -> bool:
        """Take the lock; False when it is held elsewhere and we may not (or no longer) wait.

        `timeout_s` bounds a blocking wait (polled, at most every 50 ms); `holder` is written
        into the file after the pid (for example the command name) for `holder_info`.
        """
        if self.held:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = 0.001  # doubles up to 50 ms: short waits stay short
        while True:
            # Another thread of this process (serve's loader, say) counts as another holder.
            with self._guard:
                if self._handle is None:
                    handle = os.fdopen(self._open_fd(), "r+", encoding="utf-8")
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        handle.close()
                    else:
                        self._handle = handle
                        self._owner = threading.get_ident()
                        break
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        with contextlib.suppress(OSError):
            self._remove_stale_temporaries()
            _write_atomically(
                self.holder_path, f"{os.getpid()} {_start_time()} {holder}".rstrip() + "\n"
            )
        return True

    def _remove_stale_temporaries(self) -> None:
        """Temporary holder files of holders killed between writing and renaming: only the
        holder writes one, and we hold the lock now, so every one there is stale."""
        prefix = self.holder_path.name + "."
        with os.scandir(self.holder_path.parent) as entries:
            stale = [entry.name for entry in entries
                     if entry.name.startswith(prefix) and entry.name.endswith(".tmp")]
        for name in stale:
            with contextlib.suppress(OSError):
                (self.holder_path.parent / name).unlink()  # a link itself, never its target

    def release(self) -> None:
        """Let go (only the holding thread can)."""
        with self._guard:
            if self._handle is not None and self._owner == threading.get_ident():
                with contextlib.suppress(OSError):
                    self.holder_path.unlink()  # while still held: never the next one's line
                with contextlib.suppress(OSError):
                    fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
                self._handle.close()
                self._handle = None
                self._owner = None

    def held_by_other(self) -> bool:
        """True while another process, FileLock object or thread holds the lock."""
        if self._handle is not None:
            return self._held_by_another_thread()
        if self.acquire(blocking=False):
            self.release()
            return False
        return True

    def holder_info(self) -> tuple[int | None, str]:
        """(pid, command) of the live process that holds the lock; (None, "") if unknown
        (no holder, one that has not yet named itself after 0.2 s, or one that is gone)."""
        pid, _, command = self._holder_line()
        return pid, command

    def holder_start_time(self) -> float | None:
        """The start time (s since the epoch) of the process that wrote `holder_info`, so
        that a pid reused since is never taken for the holder."""
        return self._holder_line()[1]

    def _holder_line(self) -> tuple[int | None, float | None, str]:
        for attempt in range(HOLDER_READ_TRIES):  # a new holder names itself just after flock
            if attempt:
                time.sleep(0.02)
            try:
                # O_NONBLOCK: a FIFO in its place must not hang the reader; only a regular
                # file is read (a link is refused by O_NOFOLLOW).
                fd = os.open(self.holder_path,
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                with os.fdopen(fd, "r", encoding="utf-8") as handle:
                    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                        return None, None, ""
                    text = handle.read(300)
            except (OSError, ValueError):
                continue
            if not text.endswith("\n"):
                continue
            parts = text.strip().split(" ", 2)
            if len(parts) < 2 or not parts[0].isdigit():
                continue
            try:
                pid, started = int(parts[0]), float(parts[1])
            except ValueError:
                continue
            if process_matches(pid, started) is None:
                continue  # a holder killed with -9 left its line; the next one replaces it
            return pid, started, parts[2] if len(parts) > 2 else ""
        return None, None, ""

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
