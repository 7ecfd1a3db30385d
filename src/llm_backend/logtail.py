"""Reading the server's log file: its last lines, and the lines appended since last time."""

from __future__ import annotations

import os
import re
from pathlib import Path

LINE_END = re.compile(rb"\r\n|\r|\n")


def log_tail(path: str | Path, lines: int) -> list[str]:
    """The last `lines` lines of a log file ([] when it does not exist, or for 0)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(4096, lines * 400))
            handle.seek(size - block)
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-lines:]


class LogFollower:
    """Reads whole lines appended to a file since the last call, from byte `offset` on."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        # A carriage return ends a line too: progress bars (tqdm, huggingface_hub) redraw
        # themselves with "\r" and no "\n" for as long as a download runs.
        *complete, self._partial = LINE_END.split(data)
        return [line.decode("utf-8", errors="replace") for line in complete if line]

    def flush(self) -> list[str]:
        """The remaining lines, the last one even without its newline."""
        lines = self.read_lines()
        if self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        return lines
