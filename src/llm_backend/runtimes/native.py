"""The native runtime: the server in a process group of its own, detached from the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from llm_backend.errors import BackendError
from llm_backend.runtimes.base import Launched, LaunchSpec, Runtime, StopResult
from llm_backend.state import InstanceRecord, open_log

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription

CREATE_TIME_TOLERANCE_S = 0.05


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


def group_members(pgid: int) -> list[psutil.Process]:
    """Every live process whose process group is `pgid`."""
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied, PermissionError):
            continue
    return members


class NativeRuntime(Runtime):
    """Runs the argv with `start_new_session`, so the server leads its own process group."""

    name = "native"
    in_container = False

    def gpu_readiness(self, *, hardware: HardwareDescription, engine: Engine) -> tuple[bool, str]:
        """A native run needs the engine installed on the host."""
        return engine.native_readiness(hardware=hardware)

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def launch(self, *, spec: LaunchSpec) -> Launched:
        env = {**os.environ, **spec.env}
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_log(spec.log_path), "ab") as log:
            try:
                child = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as error:
                raise BackendError(
                    f"could not run {spec.argv[0]}: {error}",
                    remedy="check the profile's `binary` (llm-backend profiles show NAME)",
                    failure_class="exited",
                ) from None
        self._children[child.pid] = child
        try:
            create_time = psutil.Process(child.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = None
        return Launched(
            pid=child.pid, pid_create_time=create_time, runtime_info={"pgid": child.pid}
        )

    def is_alive(self, *, record: InstanceRecord) -> bool:
        child = self._children.get(record.pid or -1)
        if child is not None:
            return child.poll() is None
        return process_matches(record.pid, record.pid_create_time) is not None

    def exit_code(self, *, record: InstanceRecord) -> int | None:
        child = self._children.get(record.pid or -1)
        return child.poll() if child is not None else None

    def stop(self, *, record: InstanceRecord, grace_s: float, force: bool = False) -> StopResult:
        started = time.monotonic()
        # The server leads its own session, so its group id is its pid; a different "pgid"
        # in the record is not one this runtime made.
        pgid = record.pid if isinstance(record.pid, int) else 0
        leader = process_matches(record.pid, record.pid_create_time)
        members = self._tree(leader, pgid, born_after=record.pid_create_time)
        if not members:
            self._reap(record)
            return StopResult(was_running=False, killed=False, duration_s=0.0)
        killed = False
        if not force:
            self._signal(pgid, members, signal.SIGTERM)
            members = _wait_gone(members, timeout_s=grace_s)
            self._reap(record)
        if members or force:
            killed = True
            self._signal(pgid, members, signal.SIGKILL)
            _wait_gone(members, timeout_s=5)
        self._reap(record)
        leftovers = [
            f"pid {process.pid} ({_name(process)})"
            for process in self._tree(None, pgid, born_after=record.pid_create_time)
        ]
        return StopResult(
            was_running=True,
            killed=killed,
            duration_s=time.monotonic() - started,
            leftovers=leftovers,
        )

    @staticmethod
    def _tree(
        leader: psutil.Process | None, pgid: int, *, born_after: float | None
    ) -> list[psutil.Process]:
        """The leader, its descendants and everything else in its process group.

        Group members count only if they started after the recorded leader did
        (`born_after`, its start time), and, when the leader does not match, only if no
        process holds the group's id any more: a group id may be reused by an unrelated
        session. Without a start time no group is swept at all.
        """
        found: dict[int, psutil.Process] = {}
        if leader is not None:
            found[leader.pid] = leader
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in leader.children(recursive=True):
                    found[child.pid] = child
        # A group whose leader is gone: only if no process now has its pid (a pid reused
        # by another session leader would make the group that one's).
        orphaned = leader is not None or not psutil.pid_exists(pgid)
        if pgid > 1 and isinstance(born_after, int | float) and orphaned:
            for member in group_members(pgid):
                with contextlib.suppress(psutil.Error):
                    if member.create_time() >= born_after - CREATE_TIME_TOLERANCE_S:
                        found.setdefault(member.pid, member)
        return [p for p in found.values() if p.pid != os.getpid()]

    @staticmethod
    def _signal(pgid: int, members: list[psutil.Process], signum: signal.Signals) -> None:
        if pgid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signum)
        for process in members:  # descendants that left the group still get the signal
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process.send_signal(signum)

    def _reap(self, record: InstanceRecord) -> None:
        child = self._children.get(record.pid or -1)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.1)


def _wait_gone(members: list[psutil.Process], *, timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; a zombie counts as exited, since its reaping
    is up to its parent (often init, which may take its time)."""
    deadline = time.monotonic() + timeout_s
    alive = members
    while True:
        alive = [process for process in alive if _running(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return "gone"


def spawn_group(*, argv: list[str], env: dict[str, str], log_path: Path) -> Launched:
    """Run `argv` as the leader of a new process group, stdout and stderr into `log_path`.

    For helper processes that are not a profile's server (the router): the same detached,
    owned process group as `NativeRuntime.launch`, recorded by PID and start time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(open_log(log_path), "ab") as log:
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise BackendError(
                f"could not run {argv[0]}: {error}",
                remedy=f"install it, or point the setting that names {argv[0]!r} elsewhere",
            ) from None
    _SPAWNED[child.pid] = child
    try:
        create_time: float | None = psutil.Process(child.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = None
    return Launched(pid=child.pid, pid_create_time=create_time, runtime_info={"pgid": child.pid})


def stop_group(
    *, pid: int | None, create_time: float | None, grace_s: float, force: bool = False
) -> StopResult:
    """SIGTERM to the group that `spawn_group` made, `grace_s` to exit, then SIGKILL.

    Only the recorded leader (PID and start time both match) and its group are signalled.
    """
    started = time.monotonic()
    leader = process_matches(pid, create_time)
    if leader is None:
        _reap_spawned(pid)
        return StopResult(was_running=False, killed=False, duration_s=0.0)
    pgid = int(pid or 0)
    members = NativeRuntime._tree(leader, pgid, born_after=create_time)
    killed = False
    if not force:
        NativeRuntime._signal(pgid, members, signal.SIGTERM)
        members = _wait_gone(members, timeout_s=grace_s)
    if members or force:
        killed = True
        NativeRuntime._signal(pgid, members, signal.SIGKILL)
        _wait_gone(members, timeout_s=5)
    _reap_spawned(pid)
    leftovers = [
        f"pid {p.pid} ({_name(p)})"
        for p in NativeRuntime._tree(None, pgid, born_after=create_time)
    ]
    return StopResult(
        was_running=True, killed=killed, duration_s=time.monotonic() - started,
        leftovers=leftovers,
    )


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def _reap_spawned(pid: int | None) -> None:
    child = _SPAWNED.pop(pid or -1, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
