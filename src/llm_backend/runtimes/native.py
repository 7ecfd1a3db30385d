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
from llm_backend.state import InstanceRecord

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription

CREATE_TIME_TOLERANCE_S = 0.05


def process_matches(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live process `pid` if it is still the one that was recorded (not a reused pid)."""
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > (
            CREATE_TIME_TOLERANCE_S
        ):
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
        with open(spec.log_path, "ab") as log:
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
        pgid = int(record.runtime_info.get("pgid") or record.pid or 0)
        leader = process_matches(record.pid, record.pid_create_time)
        members = self._tree(leader, pgid)
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
            for process in self._tree(None, pgid)
        ]
        return StopResult(
            was_running=True,
            killed=killed,
            duration_s=time.monotonic() - started,
            leftovers=leftovers,
        )

    @staticmethod
    def _tree(leader: psutil.Process | None, pgid: int) -> list[psutil.Process]:
        """The leader, its descendants and everything else in its process group."""
        found: dict[int, psutil.Process] = {}
        if leader is not None:
            found[leader.pid] = leader
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in leader.children(recursive=True):
                    found[child.pid] = child
        if pgid > 1:
            for member in group_members(pgid):
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
    with open(log_path, "ab") as log:
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
    members = NativeRuntime._tree(leader, pgid)
    killed = False
    if not force:
        NativeRuntime._signal(pgid, members, signal.SIGTERM)
        members = _wait_gone(members, timeout_s=grace_s)
    if members or force:
        killed = True
        NativeRuntime._signal(pgid, members, signal.SIGKILL)
        _wait_gone(members, timeout_s=5)
    _reap_spawned(pid)
    leftovers = [f"pid {p.pid} ({_name(p)})" for p in NativeRuntime._tree(None, pgid)]
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
