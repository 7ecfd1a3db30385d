"""Reading the server's log file: which one, its last lines, and the lines appended since
last time (across truncation and rotation)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

from llm_backend.errors import NotRunningError
from llm_backend.state import HISTORY_FILE, StateStore

LINE_END = re.compile(rb"\r\n|\r|\n")


def find_log(store: StateStore) -> Path:
    """The log `llm-backend logs` shows: the instance record's, else the newest in `logs/`.

    A log deleted while its server runs is still open in the server: it is read through
    `/proc/PID/fd/N` (whose link reads "PATH (deleted)"). Raises NotRunningError when nothing
    was started, or when the recorded log is gone and no process of ours holds it.
    """
    record = store.load_instance()
    if record is None:
        candidates = sorted(store.logs_dir().glob("*.log"), key=lambda p: p.stat().st_mtime)
        if not candidates and (store.root / HISTORY_FILE).exists():
            raise NotRunningError(
                f"no log in {store.logs_dir()}: the log of the last start was deleted",
                remedy="llm-backend start (it writes a new log)",
            )
        if not candidates:
            raise NotRunningError("no log yet: nothing was started", remedy="llm-backend start")
        return candidates[-1]
    path = Path(record.log_path)
    if path.exists():
        return path
    held = _deleted_file_held(record.pid, path)
    if held is not None:
        return held
    raise NotRunningError(
        f"the log {path} of {record.profile} ({record.state}) was deleted"
        + (f", and pid {record.pid} does not hold it open" if record.pid else ""),
        remedy="llm-backend restart (or stop, then start) writes a new log",
    )


def _deleted_file_held(pid: int | None, path: Path) -> Path | None:
    """`/proc/PID/fd/N` of a process (or its children) that still has the deleted `path`."""
    if not pid:
        return None
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return None
    wanted = f"{path} (deleted)"
    for process in processes:
        fd_dir = Path(f"/proc/{process.pid}/fd")
        try:
            for entry in fd_dir.iterdir():
                if os.readlink(entry) == wanted:
                    return entry
        except OSError:
            continue
    return None


TAIL_MAX_BYTES = 16 << 20  # a tail reads at most this much; a longer line is cut and says so


def log_tail(path: str | Path, lines: int, *, end: int | None = None) -> list[str]:
    """The last `lines` lines of a log file (none for 0), each whole: the file is read back
    from its end until `lines` line breaks are found. A line longer than TAIL_MAX_BYTES keeps
    its end, after a `[cut: N bytes before this]` mark, instead of being cut silently.
    `end`: read as if the file ended at this byte (where a follower will start)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            size = size if end is None else min(size, end)
            start, breaks, step = size, 0, max(65536, lines * 400)
            chunks: list[bytes] = []
            while start > 0 and breaks <= lines and size - start < TAIL_MAX_BYTES:
                step = min(start, step, TAIL_MAX_BYTES - (size - start))
                start -= step
                handle.seek(start)
                chunks.append(handle.read(step))
                breaks += chunks[-1].count(b"\n")
                step *= 2
    except FileNotFoundError:
        return []
    data = b"".join(reversed(chunks))
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        if breaks > lines:
            text = text[1:]  # the first piece is the end of an older line: not shown
        else:  # stopped at TAIL_MAX_BYTES inside one long line: show its end, and say so
            text[0] = (f"[cut: this line starts before byte {start} of the log; only its "
                       f"last {len(text[0].encode())} bytes are shown] {text[0]}")
    return text[-lines:]


class LogFollower:
    """Reads whole lines appended to a file since the last call, across truncation and
    rotation: a restart empties the log (same file, shorter or with other first bytes) or a
    new file takes the path (another inode); either way reading starts again at byte 0."""

    HEAD_BYTES = 256  # compared on each read: a rewritten log starts with other bytes
    # A line is kept whole up to this many bytes; the rest of a longer one (output without
    # line breaks) is dropped and counted, so memory and copying stay bounded. Its start is
    # kept: that is where a line says what it is (a client's request line, say).
    LINE_MAX_BYTES = 1 << 20

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""
        self._dropped = 0  # bytes of the current line beyond LINE_MAX_BYTES, not kept
        self._identity: tuple[int, int] | None = None
        self._head = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                identity = (info.st_dev, info.st_ino)
                head = handle.read(self.HEAD_BYTES)
                known = self._head[: len(head)]
                if (self._identity is not None and identity != self._identity) or (
                    info.st_size < self.offset or (self._head and head[: len(known)] != known)
                ):
                    self.offset, self._partial, self._dropped = 0, b"", 0  # rotated
                self._identity = identity
                if len(head) > len(self._head) or self.offset == 0:
                    self._head = head
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        # A carriage return ends a line too: progress bars (tqdm, huggingface_hub) redraw
        # themselves with "\r" and no "\n" for as long as a download runs.
        if self._dropped:
            # Still inside an over-long line: its next bytes up to a line break go too.
            found = LINE_END.search(data)
            if found is None:
                self._dropped += len(data)
                return []
            self._dropped += found.start()
            data = self._partial + b"\n" + data[found.end():]  # its kept start, ended
        else:
            data = self._partial + data
        *complete, partial = LINE_END.split(data)
        lines = [self._decode(line, self._dropped if index == 0 else 0)
                 for index, line in enumerate(complete) if line]
        if complete:
            self._dropped = 0
        if len(partial) > self.LINE_MAX_BYTES:
            self._dropped = len(partial) - self.LINE_MAX_BYTES
            partial = partial[: self.LINE_MAX_BYTES]
        self._partial = partial
        return lines

    @staticmethod
    def _decode(line: bytes, dropped: int) -> str:
        text = line.decode("utf-8", errors="replace")
        return f"{text} [cut: {dropped} more bytes of this line]" if dropped else text

    def flush(self) -> list[str]:
        """The remaining lines, the last one even without its newline."""
        lines = self.read_lines()
        if self._partial:
            lines.append(self._decode(self._partial, self._dropped))
            self._partial, self._dropped = b"", 0
        return lines
