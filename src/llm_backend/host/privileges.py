"""Run the few privileged commands: directly as root, through `sudo -n` otherwise.

`sudo -n` never prompts: if the sudoers rules do not allow a command, it fails at once,
so `check()` can refuse before anything on the host changes.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from llm_backend.errors import CommandFailed, HostPrepError

SUDOERS_FIX = (
    "run as root, or install the rules printed by `llm-backend host sudoers` "
    "(as /etc/sudoers.d/llm-backend, mode 0440), or start with --no-host-prep"
)


@dataclass(frozen=True)
class Command:
    """One privileged command with its exact argv (and what it writes on stdin, if anything)."""

    argv: tuple[str, ...]
    stdin: str | None = None

    def describe(self, *, sudo: bool) -> str:
        text = shlex.join(self.argv)
        if sudo:
            text = "sudo -n " + text
        if self.stdin is not None:
            text = f"echo {self.stdin.strip()} | {text}"
        return text


def tool(name: str) -> str:
    """The absolute path of a system tool (sudoers rules need absolute paths)."""
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return found or name


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Privileges:
    """Runs host commands as root: directly when we are root, else via `sudo -n`."""

    def __init__(self, uid: int | None = None) -> None:
        self.uid = os.geteuid() if uid is None else uid

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def wrap(self, command: Command) -> list[str]:
        return list(command.argv) if self.is_root else ["sudo", "-n", *command.argv]

    def describe(self, command: Command) -> str:
        return command.describe(sudo=not self.is_root)

    def run(
        self,
        command: Command,
        *,
        remedy: str,
        timeout: float | None = 120,
        check: bool = True,
    ) -> CommandResult:
        """Run it; a non-zero exit raises CommandFailed with argv, code and stderr tail."""
        argv = self.wrap(command)
        try:
            completed = subprocess.run(
                argv,
                input=command.stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as error:
            raise HostPrepError(
                f"cannot run {argv[0]}: {error.strerror}",
                remedy=f"install {argv[0]} (util-linux / coreutils), or start with --no-host-prep",
            ) from None
        if check and completed.returncode != 0:
            raise CommandFailed(argv, completed.returncode, completed.stderr, remedy=remedy)
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)

    def check_allowed(self, commands: list[Command]) -> None:
        """Fail before any change if a command could not run with root rights."""
        if self.is_root:
            return
        who = f"uid {self.uid} ({user_name(self.uid)})"
        if shutil.which("sudo") is None:
            raise HostPrepError(
                f"host preparation needs root rights: running as {who}, and sudo is not "
                "installed",
                remedy=SUDOERS_FIX,
            )
        for command in commands:
            # `sudo -n -l CMD` says whether CMD may run without a password, and runs nothing.
            probe = subprocess.run(
                ["sudo", "-n", "-l", *command.argv],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if probe.returncode != 0:
                reason = (probe.stderr.strip().splitlines() or ["not allowed"])[-1]
                raise HostPrepError(
                    f"host preparation needs root rights: running as {who}, and "
                    f"`sudo -n {shlex.join(command.argv)}` is not allowed ({reason})",
                    remedy=SUDOERS_FIX,
                )


def run_with_deadline(
    privileges: Privileges, command: Command, *, deadline_s: float
) -> CommandResult | None:
    """Run a command that may block for long (swapoff); None if the deadline passed.

    On the deadline it gets SIGTERM, which `sudo` relays and which makes swapoff(2) return
    EINTR; the kernel then keeps the swap area active with its contents intact.
    """
    argv = privileges.wrap(command)
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        return None
    return CommandResult(process.returncode, stdout, stderr)
