"""Step 2: pause the userspace OOM killers that are active, and bring back exactly those.

Under systemd: `systemctl --no-ask-password stop` and later `start` of exactly the units
that were active (runtime changes only: nothing is disabled or masked).

Without systemd as PID 1 (containers, plain VMs) the daemon is a plain process with no
supervisor to restart it. We pause it with SIGSTOP and resume it with SIGCONT: the very
same process (PID, command line, environment, user, cgroup) runs again afterwards, which
killing and relaunching it could not guarantee; a crash of ours leaves it stopped, not
gone, and the journal lets the next command resume it; a reboot restarts it anyway.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import psutil

from llm_backend.host.privileges import Command, Privileges, tool

SYSTEMD_UNITS: dict[str, tuple[str, ...]] = {
    "earlyoom": ("earlyoom.service",),
    "systemd-oomd": ("systemd-oomd.service",),
    "nohang": ("nohang.service", "nohang-desktop.service"),
}
PROCESS_NAMES: dict[str, tuple[str, ...]] = {
    "earlyoom": ("earlyoom",),
    "systemd-oomd": ("systemd-oomd",),
    "nohang": ("nohang", "nohang-desktop"),
}
CREATE_TIME_TOLERANCE_S = 0.05


def systemd_running() -> bool:
    """sd_booted(): true when systemd is PID 1 and manages units."""
    return os.path.isdir("/run/systemd/system")


@dataclass(frozen=True)
class DaemonProcess:
    """One OOM-daemon process found without systemd; create_time guards against PID reuse."""

    daemon: str
    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "daemon": self.daemon,
            "pid": self.pid,
            "create_time": self.create_time,
            "cmdline": list(self.cmdline),
            "status": self.status,
        }


@dataclass(frozen=True)
class OomPlan:
    """Which daemons are active now, and the exact commands that pause them."""

    mode: str  # "systemd" | "process"
    active_units: tuple[str, ...]
    processes: tuple[DaemonProcess, ...]
    already_stopped: tuple[DaemonProcess, ...]
    inactive: tuple[str, ...]

    def pause_commands(self) -> list[Command]:
        if self.mode == "systemd":
            return [
                Command((tool("systemctl"), "--no-ask-password", "stop", unit))
                for unit in self.active_units
            ]
        return [Command((tool("kill"), "-STOP", str(p.pid))) for p in self.processes]

    def resume_commands(self) -> list[Command]:
        return resume_commands(self.journal_data())

    def journal_data(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "units": list(self.active_units),
            "processes": [process.to_json() for process in self.processes],
        }


def _unit_state(unit: str) -> tuple[str, str]:
    completed = subprocess.run(
        [tool("systemctl"), "show", unit, "-p", "LoadState", "-p", "ActiveState"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    values = dict(
        line.partition("=")[::2] for line in completed.stdout.splitlines() if "=" in line
    )
    return values.get("LoadState", "not-found"), values.get("ActiveState", "inactive")


def find_processes(daemon: str) -> list[DaemonProcess]:
    """Live processes of one daemon, by process name or executable name (never by pattern)."""
    names = PROCESS_NAMES[daemon]
    found: list[DaemonProcess] = []
    for process in psutil.process_iter(["pid", "name", "exe", "cmdline", "create_time", "status"]):
        info = process.info
        exe_name = os.path.basename(info.get("exe") or "")
        if info.get("name") not in names and exe_name not in names:
            continue
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        found.append(
            DaemonProcess(
                daemon=daemon,
                pid=int(info["pid"]),
                create_time=float(info.get("create_time") or 0.0),
                cmdline=tuple(info.get("cmdline") or ()),
                status=str(info.get("status")),
            )
        )
    return found


def plan_oom(daemons: list[str]) -> OomPlan:
    """Record which of the configured daemons are active right now."""
    if systemd_running():
        active: list[str] = []
        inactive: list[str] = []
        for daemon in daemons:
            for unit in SYSTEMD_UNITS[daemon]:
                load, state = _unit_state(unit)
                if load == "loaded" and state in ("active", "activating", "reloading"):
                    active.append(unit)
                elif load == "loaded":
                    inactive.append(f"{unit} ({state})")
        return OomPlan("systemd", tuple(active), (), (), tuple(inactive))
    running: list[DaemonProcess] = []
    stopped: list[DaemonProcess] = []
    missing: list[str] = []
    for daemon in daemons:
        processes = find_processes(daemon)
        if not processes:
            missing.append(daemon)
        for process in processes:
            (stopped if process.status == psutil.STATUS_STOPPED else running).append(process)
    return OomPlan("process", (), tuple(running), tuple(stopped), tuple(missing))


KNOWN_UNITS = frozenset(unit for units in SYSTEMD_UNITS.values() for unit in units)
KNOWN_PROCESS_NAMES = frozenset(name for names in PROCESS_NAMES.values() for name in names)


def recorded_units(data: dict[str, Any]) -> list[str]:
    """The journal's units, keeping only the OOM daemons' own (a journal entry is a hint)."""
    units = data.get("units")
    return [u for u in units if isinstance(u, str) and u in KNOWN_UNITS] if isinstance(
        units, list) else []


def recorded_processes(data: dict[str, Any]) -> list[dict[str, Any]]:
    processes = data.get("processes")
    return [p for p in processes if isinstance(p, dict)] if isinstance(processes, list) else []


def resume_commands(data: dict[str, Any]) -> list[Command]:
    if data.get("mode") == "systemd":
        return [
            Command((tool("systemctl"), "--no-ask-password", "start", unit))
            for unit in recorded_units(data)
        ]
    return [
        Command((tool("kill"), "-CONT", str(int(item["pid"]))))
        for item in recorded_processes(data)
        if isinstance(item.get("pid"), int)
    ]


def same_process(item: dict[str, Any]) -> psutil.Process | None:
    """The recorded daemon process if it still lives: same PID and start time, and an OOM
    daemon's name (so a forged journal entry cannot make root signal any other process)."""
    try:
        pid = item["pid"]
        created = item["create_time"]
        if not isinstance(pid, int) or not isinstance(created, int | float) or pid <= 1:
            return None
        process = psutil.Process(pid)
        if abs(process.create_time() - float(created)) > CREATE_TIME_TOLERANCE_S:
            return None
        exe_name = os.path.basename(process.exe() or "")
        if process.name() not in KNOWN_PROCESS_NAMES and exe_name not in KNOWN_PROCESS_NAMES:
            return None
        return process
    except (psutil.Error, KeyError, ValueError, TypeError, OSError):
        return None


def pause(plan: OomPlan, privileges: Privileges) -> list[str]:
    """Stop the active units or SIGSTOP the daemon processes; verify they are paused."""
    done: list[str] = []
    for command in plan.pause_commands():
        privileges.run(
            command,
            remedy="check the OOM daemon (`systemctl status earlyoom`), or remove it from "
            "host_prep.pause_oom_daemons",
        )
        done.append(privileges.describe(command))
    for item in plan.processes:
        process = same_process(item.to_json())
        if process is not None:
            _wait_stopped(process, stopped=True)
    return done


def _wait_stopped(process: psutil.Process, stopped: bool, timeout: float = 2.0) -> bool:
    """Signals are asynchronous: wait until the process shows the state we asked for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (process.status() == psutil.STATUS_STOPPED) == stopped:
                return True
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.01)
    return False


def resume(data: dict[str, Any], privileges: Privileges, *, same_boot: bool) -> list[str]:
    """Bring back exactly the daemons we paused; idempotent (start and SIGCONT of a running one
    change nothing)."""
    lines: list[str] = []
    if not same_boot:
        return ["oom daemons: nothing to resume after a reboot"] if _recorded(data) else []
    if data.get("mode") == "systemd":
        ignored = [u for u in data.get("units") or [] if u not in recorded_units(data)]
        if ignored:
            lines.append(f"oom daemons: the journal names {ignored!r}, not OOM daemon units; "
                         "left alone")
        for command in resume_commands(data):
            privileges.run(
                command,
                remedy=f"run `systemctl start {command.argv[-1]}` by hand",
            )
            lines.append(f"oom daemon: {privileges.describe(command)}")
        return lines
    for item in recorded_processes(data):
        process = same_process(item)
        if process is None:
            lines.append(
                f"oom daemon: {item.get('daemon')} (pid {item.get('pid')}) is gone (no OOM "
                "daemon with that pid and start time); nothing to resume"
            )
            continue
        command = Command((tool("kill"), "-CONT", str(process.pid)))
        privileges.run(command, remedy=f"run `kill -CONT {process.pid}` as root")
        _wait_stopped(process, stopped=False)
        lines.append(
            f"oom daemon: {item.get('daemon')} (pid {item.get('pid')}) resumed "
            f"({privileges.describe(command)})"
        )
    return lines


def _recorded(data: dict[str, Any]) -> bool:
    return bool(data.get("units") or data.get("processes"))
