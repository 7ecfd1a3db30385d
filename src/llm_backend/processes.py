"""Our processes: find them (by pid and start time, process group, session, and the marker
every launched process carries), and stop a tree of them with escalation.

The marker is an environment variable naming the state dir that launched the process; it is
inherited by every descendant, also one that double-forked into a session of its own, and
it is read back from /proc/PID/environ. So a server whose `start` was killed before the
record named it can still be found and stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MARKER_ENV = "LLM_BACKEND_LAUNCHED_BY"
"""Set in the environment of every process a runtime launches: the state dir's real path."""

CREATE_TIME_TOLERANCE_S = 0.05
KILL_WAIT_S = 5.0


def marker_value(state_root: Path) -> str:
    """The marker's value for a state dir (its resolved path)."""
    return str(Path(state_root).resolve())


def marker_env(state_root: Path) -> dict[str, str]:
    """The environment entry a runtime adds to what it launches."""
    return {MARKER_ENV: marker_value(state_root)}


def process_matches(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live process `pid` if it is still the one that was recorded (not a reused pid).

    Both must be known and match: a record without a start time (damaged or forged) names
    no process, so nothing is ever signalled on a PID alone.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return None
    if not isinstance(create_time, int | float) or isinstance(create_time, bool):
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie's reaping is up to its parent, often init)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marked_processes(state_root: Path) -> list[psutil.Process]:
    """Every live process launched from this state dir (its marker names the dir).

    Reads /proc/PID/environ (the environment a process started with) of every process:
    tens of milliseconds for a few hundred processes.
    """
    entry = f"{MARKER_ENV}={marker_value(state_root)}".encode() + b"\0"
    me = os.getpid()
    found = []
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if environ.startswith(entry) or b"\0" + entry in environ:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if running(process):
                    found.append(process)
    return found


def tree(
    *,
    leader: psutil.Process | None = None,
    group: int | None = None,
    born_after: float | None = None,
    state_root: Path | None = None,
) -> list[psutil.Process]:
    """The leader, its descendants, the members of its process group and session, and (with
    `state_root`) every process carrying this state dir's marker; never this process.

    Group and session members count only if they started after the recorded leader did
    (`born_after`, its start time), and, when the leader is gone, only if no process holds
    the group's id any more (it may have been reused by an unrelated session). Without a
    start time no group is swept at all.
    """
    found: dict[int, psutil.Process] = {}
    if leader is not None and running(leader):
        found[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for child in leader.children(recursive=True):
                found[child.pid] = child
    orphaned = leader is not None or (group is not None and not psutil.pid_exists(group))
    if (group is not None and group > 1 and orphaned
            and isinstance(born_after, int | float) and not isinstance(born_after, bool)):
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                pid = process.pid
                if pid in found or not (os.getpgid(pid) == group or os.getsid(pid) == group):
                    continue
                if process.create_time() >= born_after - CREATE_TIME_TOLERANCE_S:
                    found[pid] = process
    if state_root is not None:
        for process in marked_processes(state_root):
            found.setdefault(process.pid, process)
    me = os.getpid()
    return sorted(
        (process for process in found.values() if process.pid != me and running(process)),
        key=lambda process: process.pid,
    )


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} ({process.name()})"
    except psutil.Error:
        return f"pid {process.pid} (gone)"


@dataclass(frozen=True)
class TreeStop:
    """How a tree stop went: whether SIGKILL was needed and what (if anything) is left."""

    stopped: list[str]
    killed: bool
    duration_s: float
    leftovers: list[str] = field(default_factory=list)


def signal_all(processes: Iterable[psutil.Process], signum: int, *, group: int | None = None
               ) -> None:
    """Send `signum` to each process by pid, and to the process group when one of them is
    still in it (a group id alone could have been reused)."""
    processes = list(processes)
    reached: set[int] = set()
    if group is not None and group > 1 and any(_in_group(p, group) for p in processes):
        members = {p.pid for p in processes if _in_group(p, group)}
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
            reached = members
    # Each process gets the signal once: llama-server takes a second SIGTERM as "terminate
    # immediately" (tools/server: "Received second interrupt") and would skip its clean-up.
    for process in processes:
        if process.pid in reached:
            continue
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except OSError:
        return False


def wait_gone(processes: list[psutil.Process], *, timeout_s: float) -> list[psutil.Process]:
    """Wait (with psutil.wait_procs) until each has exited; a zombie counts as exited.
    Returns those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [process for process in processes if running(process)]
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        _, alive = psutil.wait_procs(alive, timeout=min(0.1, remaining))
        alive = [process for process in alive if running(process)]
    return alive


def stop_tree(
    processes: list[psutil.Process],
    *,
    grace_s: float,
    force: bool = False,
    group: int | None = None,
    rescan: Callable[[], list[psutil.Process]] | None = None,
) -> TreeStop:
    """SIGTERM (and SIGCONT, so a frozen process can act on it), wait `grace_s`, SIGKILL what
    is left, wait; with `force` SIGKILL at once. `rescan()` finds the tree again afterwards
    (children forked during the grace period); what it still finds is `leftovers`."""
    started = time.monotonic()
    names = [describe(process) for process in processes]
    alive = [process for process in processes if running(process)]
    killed = False
    if alive and not force:
        signal_all(alive, signal.SIGTERM, group=group)
        signal_all(alive, signal.SIGCONT, group=group)
        alive = wait_gone(alive, timeout_s=grace_s)
    again = rescan() if rescan is not None else []
    alive = [*alive, *[p for p in again if p.pid not in {a.pid for a in alive}]]
    if alive:
        killed = True
        signal_all(alive, signal.SIGKILL, group=group)
        alive = wait_gone(alive, timeout_s=KILL_WAIT_S)
    left = rescan() if rescan is not None else alive
    return TreeStop(
        stopped=names,
        killed=killed,
        duration_s=time.monotonic() - started,
        leftovers=[describe(process) for process in left if running(process)],
    )
