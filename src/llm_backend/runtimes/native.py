"""The native runtime: the server in a session and process group of its own, detached from
the CLI, marked with the state dir that launched it (`llm_backend.processes`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from llm_backend.errors import BackendError, FailureClass
from llm_backend.processes import marker_env, process_matches, stop_tree, tree
from llm_backend.runtimes.base import Launched, LaunchSpec, Runtime, StopResult
from llm_backend.state import InstanceRecord, open_log

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription


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
        env = {**os.environ, **home_expanded(spec.env)}
        if spec.state_dir is not None:
            env.update(marker_env(spec.state_dir))
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
                    remedy="check the profile's `binary` (llm-backend profiles show "
                    f"{spec.profile.name})",
                    failure_class=FailureClass.EXITED,
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
        """SIGTERM and SIGCONT to the tree (leader, descendants, process group, session),
        `grace_s`, then SIGKILL; afterwards nothing of the tree is left, or `leftovers` says
        what is."""
        # The server leads its own session, so its group id is its pid; a different "pgid"
        # in the record is not one this runtime made.
        group = record.pid if isinstance(record.pid, int) else None
        leader = process_matches(record.pid, record.pid_create_time)

        def find() -> list[psutil.Process]:
            return tree(leader=leader, group=group, born_after=record.pid_create_time)

        members = find()
        if not members:
            self._reap(record)
            return StopResult(was_running=False, killed=False, duration_s=0.0)
        result = stop_tree(members, grace_s=grace_s, force=force, group=group, rescan=find)
        self._reap(record)
        return StopResult(
            was_running=True,
            killed=result.killed,
            duration_s=result.duration_s,
            leftovers=result.leftovers,
        )

    def _reap(self, record: InstanceRecord) -> None:
        child = self._children.get(record.pid or -1)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.1)


def home_expanded(env: dict[str, str]) -> dict[str, str]:
    """`env` with a leading `~` or `~/` of each value expanded to the running user's home.

    A shell would expand `TIKTOKEN_ENCODINGS_BASE=~/enc`; `Popen(env=...)` does not, and the
    server would read `~/enc` relative to its working directory while `pull` and `doctor`
    (through `Runtime.host_path`) use the expanded folder. `~user` forms are left as written.
    """
    return {
        name: os.path.expanduser(value) if value == "~" or value.startswith("~/") else value
        for name, value in env.items()
    }


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
    leader = process_matches(pid, create_time)
    if leader is None:
        _reap_spawned(pid)
        return StopResult(was_running=False, killed=False, duration_s=0.0)
    group = int(pid or 0) or None

    def find() -> list[psutil.Process]:
        return tree(leader=leader, group=group, born_after=create_time)

    result = stop_tree(find(), grace_s=grace_s, force=force, group=group, rescan=find)
    _reap_spawned(pid)
    return StopResult(
        was_running=True, killed=result.killed, duration_s=result.duration_s,
        leftovers=result.leftovers,
    )


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def _reap_spawned(pid: int | None) -> None:
    child = _SPAWNED.pop(pid or -1, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
