"""Readiness: follow the log and poll health together; report phases, ETA, stalls and exits.

The load deadline resets whenever the server makes progress (a new phase or new log
output), so only a stalled load times out; `load_timeout_s` caps the whole load.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm_backend.engines.base import Engine, Failure, LogReader, PhaseEvent, SpecStats
from llm_backend.errors import FailureClass
from llm_backend.logtail import LogFollower

if TYPE_CHECKING:
    import httpx

LOG_TAIL_LINES = 30
FAILURE_EXIT_GRACE_S = 5.0


@dataclass(frozen=True)
class MonitorEvent:
    """One thing the display can show: a phase, a log line, a health answer, or the end."""

    kind: str  # "phase" | "log" | "health" | "ready" | "failed" | "tick"
    elapsed_s: float
    phase: str | None = None
    progress: tuple[int, int] | None = None
    eta_s: float | None = None
    line: str | None = None
    health_status: int | None = None
    download_bytes: int | None = None  # bytes in the model cache while a download runs


@dataclass(frozen=True)
class MonitorResult:
    """How the load ended."""

    ready: bool
    duration_s: float
    failure: Failure | None
    phase_offsets: dict[str, float]
    log_tail: list[str]
    exit_code: int | None
    spec: SpecStats | None = None


DOWNLOAD_PHASE = "download"


@dataclass
class Monitor:
    """Watches one load until ready, exit, failure line, stall, guard trip or deadline."""

    engine: Engine
    base_url: str
    log_path: Path
    is_alive: Callable[[], bool]
    exit_code: Callable[[], int | None]
    load_timeout_s: float
    stall_timeout_s: float
    log_offset: int = 0
    expected_total_s: float | None = None
    health_interval_s: float = 0.1
    poll_interval_s: float = 0.05
    on_event: Callable[[MonitorEvent], None] = lambda event: None
    checks: list[Callable[[], Failure | None]] = field(default_factory=list)
    reader: LogReader | None = None
    # Folders a download inside the load writes into: bytes landing there are progress.
    download_paths: list[Path] = field(default_factory=list)
    download_check_interval_s: float = 1.0

    def run(self) -> MonitorResult:
        import httpx  # imported here: `status` and friends should not pay for it

        reader = self.reader or self.engine.log_reader()
        follower = LogFollower(self.log_path, self.log_offset)
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        started = time.monotonic()
        last_progress = started
        next_health = started
        offsets: dict[str, float] = {}
        current_phase: str | None = None
        failure_seen_at: float | None = None
        download_s = 0.0  # time spent in the download phase, outside the overall cap
        last_tick = started
        download_bytes = -1  # bytes under download_paths at the last check
        downloading = False
        next_download_check = started
        health_url = self.base_url.rstrip("/") + self.engine.health_path

        def finish(ready: bool, failure: Failure | None, code: int | None) -> MonitorResult:
            for line in follower.flush():
                tail.append(line)
                reader.feed(line)
            if failure is None and not ready:
                failure = (
                    reader.reading.failure
                    or reader.unexplained_error()
                    or self.engine.exit_failure(exit_code=code, log_tail=list(tail))
                )
            elapsed = time.monotonic() - started
            self.on_event(
                MonitorEvent(
                    kind="ready" if ready else "failed", elapsed_s=elapsed, phase=current_phase
                )
            )
            return MonitorResult(
                ready=ready,
                duration_s=elapsed,
                failure=failure,
                phase_offsets=offsets,
                log_tail=list(tail),
                exit_code=code,
                spec=reader.reading.spec,
            )

        with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5), trust_env=False) as client:
            while True:
                now = time.monotonic()
                elapsed = now - started
                for line in follower.read_lines():
                    last_progress = time.monotonic()
                    tail.append(line)
                    self.on_event(MonitorEvent(kind="log", elapsed_s=elapsed, line=line))
                    for event in reader.feed(line):
                        if isinstance(event, PhaseEvent) and event.name != "ready":
                            if event.name != current_phase or event.progress:
                                current_phase = event.name
                                offsets.setdefault(event.name, elapsed)
                                self.on_event(
                                    MonitorEvent(
                                        kind="phase",
                                        elapsed_s=elapsed,
                                        phase=event.name,
                                        progress=event.progress,
                                        eta_s=self._eta(elapsed),
                                        line=event.line,
                                    )
                                )
                        elif isinstance(event, Failure) and failure_seen_at is None:
                            failure_seen_at = time.monotonic()

                if now >= next_health:
                    next_health = now + self.health_interval_s
                    status = _probe(client, health_url)
                    if status == 200:
                        offsets.setdefault("ready", time.monotonic() - started)
                        return finish(True, None, None)

                if not self.is_alive():
                    return finish(False, None, self.exit_code())

                if failure_seen_at is not None and (
                    time.monotonic() - failure_seen_at > FAILURE_EXIT_GRACE_S
                ):
                    return finish(False, reader.reading.failure, None)

                for check in self.checks:
                    tripped = check()
                    if tripped is not None:
                        return finish(False, tripped, None)

                now = time.monotonic()
                if self.download_paths and now >= next_download_check:
                    next_download_check = now + self.download_check_interval_s
                    size = _bytes_under(self.download_paths)
                    if size > download_bytes:
                        if download_bytes >= 0:  # the first reading is only the baseline
                            last_progress = now
                            downloading = True
                            self.on_event(MonitorEvent(
                                kind="phase", elapsed_s=now - started, phase=DOWNLOAD_PHASE,
                                line=f"{size} bytes in the model cache",
                                download_bytes=size,
                            ))
                        else:
                            downloading = False
                    else:
                        downloading = False
                    download_bytes = size
                if now - last_progress > self.stall_timeout_s:
                    return finish(
                        False,
                        Failure(
                            FailureClass.STALLED,
                            f"no progress for {self.stall_timeout_s:.0f} s "
                            f"(last phase: {current_phase or 'none'})",
                            "raise `stall_timeout_s` in the profile if this load is just slow, "
                            "or read `llm-backend logs`",
                        ),
                        None,
                    )
                if current_phase == DOWNLOAD_PHASE or downloading:  # the cap is for the load
                    download_s += now - last_tick
                last_tick = now
                if now - started - download_s > self.load_timeout_s:
                    return finish(
                        False,
                        Failure(
                            FailureClass.TIMEOUT,
                            f"not ready after {self.load_timeout_s:.0f} s "
                            f"(last phase: {current_phase or 'none'})",
                            "raise `load_timeout_s` in the profile or pass --timeout S",
                        ),
                        None,
                    )
                self.on_event(
                    MonitorEvent(
                        kind="tick",
                        elapsed_s=now - started,
                        phase=current_phase,
                        eta_s=self._eta(now - started),
                    )
                )
                time.sleep(self.poll_interval_s)

    def _eta(self, elapsed: float) -> float | None:
        if self.expected_total_s is None:
            return None
        return max(0.0, self.expected_total_s - elapsed)


def _probe(client: httpx.Client, url: str) -> int | None:
    import httpx

    try:
        return client.get(url).status_code
    except httpx.HTTPError:
        return None


def _bytes_under(folders: list[Path]) -> int:
    """Bytes of the files under `folders` (partial downloads included), without following links."""
    total = 0
    stack = [str(folder) for folder in folders]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total
