"""What a runtime is: launch, inspect, signal and stop a server; it knows nothing of LLMs."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.config import Profile
from llm_backend.state import InstanceRecord

if TYPE_CHECKING:
    from llm_backend.checks import Check
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription
    from llm_backend.pull import Source


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runtime needs to start one server; the log always lands in `log_path`."""

    profile: Profile
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_path: str = "/health"
    state_dir: Path | None = None  # where a runtime keeps its own files (the compose file)
    secret_dir: Path | None = None  # our 0600 files for the server (its API key), if any
    instance_id: str | None = None  # the record's `instance_id`, marked on what is launched


@dataclass(frozen=True)
class Launched:
    """What the runtime started, to be kept in the instance record."""

    pid: int | None
    pid_create_time: float | None
    runtime_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    """How a stop went: whether SIGKILL was needed and whether anything is left."""

    was_running: bool
    killed: bool
    duration_s: float
    leftovers: list[str] = field(default_factory=list)


class Runtime(ABC):
    """How a server runs: a process group we own, or a Docker Compose service.

    Subclasses set `name` (the profile's `runtime` value) and `in_container`, and implement
    launch, liveness, exit code and stop; the rest has defaults for a runtime that runs the
    engine's argv directly on this host. Methods take keyword arguments only. Register a new
    runtime in `runtimes/__init__.py` (or as a plugin, see `llm_backend.registry`).
    """

    name: str
    # True when the server runs inside a container: the engine builds its argv with the
    # image's binary and paths (`Engine.build_argv(for_container=True)`), and host-side
    # binaries are not needed.
    in_container: bool = False
    # systemd units a service running this runtime must start after (and needs).
    systemd_after: tuple[str, ...] = ()
    # The state dir this runtime acts for (the lifecycle sets it): what it launches is marked
    # with it, and it acts only on what carries that mark. None: the default state dir.
    state_dir: Path | None = None

    @abstractmethod
    def launch(self, *, spec: LaunchSpec) -> Launched:
        """Start the server detached from the caller, output into `spec.log_path`."""

    @abstractmethod
    def is_alive(self, *, record: InstanceRecord) -> bool:
        """True while the recorded server (not a reused pid) is running."""

    @abstractmethod
    def exit_code(self, *, record: InstanceRecord) -> int | None:
        """The server's exit code once it has exited, if it can be known."""

    @abstractmethod
    def stop(self, *, record: InstanceRecord, grace_s: float, force: bool = False) -> StopResult:
        """Graceful stop with escalation; afterwards nothing of the server is left."""

    def check(self, *, profile: Profile) -> None:
        """Raise a BackendError if this runtime cannot run the profile here (at `start`)."""

    def verify(self, *, record: InstanceRecord) -> None:
        """Raise `errors.NotOurs` when `record` names something this runtime did not launch
        from this state dir (a forged or stale record); another BackendError when it cannot
        tell (its engine does not answer). Nothing is touched either way."""

    def differences(self, *, record: InstanceRecord, profile: Profile) -> list[str]:
        """How the running `record` differs from what `profile` would run, in this runtime's
        terms (another container, another image); empty when it is the same."""
        return []

    def find_launched(self, *, record: InstanceRecord) -> Launched | None:
        """What the `start` of `record` launched, found from the system by its marks, for a
        record that does not name it yet (that start died in between); None if nothing."""
        return None

    def unrecorded(self, *, record: InstanceRecord | None) -> list[str]:
        """What runs from this state dir (found by its marks, not by the record) that an
        active `record` does not name: one description each, e.g. 'container NAME (running)'.
        """
        return []

    def stop_unrecorded(self, *, grace_s: float, force: bool = False) -> StopResult:
        """Stop and remove everything of this state dir that `unrecorded(record=None)` finds
        (and what is launched but no longer running); `leftovers` names what is left."""
        return StopResult(was_running=False, killed=False, duration_s=0.0)

    def checks(self) -> tuple[Check, ...]:
        """The runtime's own preflight checks for `doctor` (engine daemon, image, ...)."""
        return ()

    def gpu_readiness(self, *, hardware: HardwareDescription, engine: Engine) -> tuple[bool, str]:
        """Whether `engine` can run on the GPUs of the described machine through this runtime,
        and the words that say why (for `--profile auto`)."""
        return False, f"runtime {self.name} cannot run {engine.name} on GPUs"

    def exposes_gpus(self, *, profile: Profile) -> bool:
        """Whether the server sees this host's GPUs (a container only when given them)."""
        return True

    def describe(self, *, profile: Profile, argv: list[str]) -> list[str]:
        """What `start --dry-run` shows this runtime would do."""
        return [" ".join(argv)]

    def will_adopt(self, *, profile: Profile) -> bool:
        """True when a server of this profile already runs (not recorded) and `launch` adopts it.

        The caller then skips its port-free check: the adopted server holds the port.
        """
        return False

    def details(self, *, record: InstanceRecord) -> dict[str, Any]:
        """Runtime facts for `status` (container, image, health); empty when there are none."""
        return {}

    def artifacts(self, *, profile: Profile) -> list[Source]:
        """What this runtime needs before it can run the profile (a container image)."""
        return []

    def listen_host(self, *, profile: Profile) -> str:
        """The address clients reach the server on: the profile's host by default."""
        return profile.host

    def secret_path(self, *, profile: Profile, host_dir: Path) -> str:
        """Where the server sees `host_dir`, the folder of our 0600 files for it."""
        return str(host_dir)

    def host_path(self, *, profile: Profile, path: str) -> Path | None:
        """Where a path the server sees lives on this machine; None when it is not reachable.

        A process of ours sees the host's own files, so the default is the path itself
        (with `~` expanded).
        """
        return Path(os.path.expanduser(path))
