"""The one error type the CLI catches: a message with the value, and a remedy."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FailureClass(StrEnum):
    """Why a backend failed to start or stopped serving; the value is what `--json` prints.

    The classes and their meaning are listed in docs/cli.md ("Phases and failure classes").
    """

    OUT_OF_MEMORY = "out_of_memory"
    PORT_IN_USE = "port_in_use"
    GATED_MODEL = "gated_model"
    MODEL_NOT_FOUND = "model_not_found"
    OFFLINE_ENCODING = "offline_encoding"
    BAD_FLAG = "bad_flag"
    KERNEL_COMPILE = "kernel_compile"
    NCCL = "nccl"
    CHILD_CRASH = "child_crash"
    RANK_NOT_LOADED = "rank_not_loaded"
    STALLED = "stalled"
    TIMEOUT = "timeout"
    EXITED = "exited"


class BackendError(Exception):
    """Something the user must fix; `remedy` is the command or setting that fixes it."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        remedy: str,
        failure_class: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.failure_class = failure_class
        self.details: dict[str, Any] = details or {}


class ConfigError(BackendError):
    """A profile or config file is wrong: names the key, the value and what is allowed."""

    exit_code = 2


class UsageError(BackendError):
    """A command-line value is wrong: out of its range, not one of the names allowed, a file
    or folder that is not there (names the option, the value and what is allowed)."""

    exit_code = 2


class NotRunningError(BackendError):
    """The command needs a running backend and there is none."""

    exit_code = 3


class AlreadyStartingError(BackendError):
    """Another `start` (or `restart`, or `stop`) holds the start lock."""

    exit_code = 4


class StartFailed(BackendError):
    """The backend did not become ready: carries the failure class and the log tail."""

    exit_code = 5


class HostPrepError(BackendError):
    """A host-preparation step could not be planned, made or undone."""

    exit_code = 6


class NotOurs(BackendError):
    """A record names something (a container) that this state dir did not launch: refused,
    left untouched. Only this proves a record forged or stale; a runtime that cannot be
    asked (its engine down) raises another BackendError."""


class CommandFailed(BackendError):
    """A subprocess failed: carries argv, exit code and the tail of stderr."""

    def __init__(
        self, argv: list[str], returncode: int, stderr: str, *, remedy: str
    ) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-10:])
        super().__init__(
            f"command {' '.join(argv)!s} exited with {returncode}: {tail}",
            remedy=remedy,
            details={"argv": argv, "returncode": returncode, "stderr_tail": tail},
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = tail
