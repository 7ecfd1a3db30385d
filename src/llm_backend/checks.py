"""What a preflight check is: a name, a function of the profile under check, and its result.

`doctor` runs the general checks (GPU, memory, disk, port, privileges, OOM daemons) and
asks the profile's runtime and engine for theirs (`Runtime.checks()`, `Engine.checks()`).
Checks only look; none changes the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from llm_backend.config import Profile

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.gpu import GpuReport
    from llm_backend.runtimes.base import Runtime

Status = Literal["pass", "warn", "fail", "skipped"]
F = TypeVar("F")


@dataclass(frozen=True)
class CheckResult:
    """One check: `pass`, `warn`, `fail` or `skipped` (a failure overridden by --skip-checks).

    `fix` is the command or setting that fixes a warn or fail; `details` holds the figures
    (bytes, paths, pids) behind the summary. `to_json` is part of `doctor --json`.
    """

    name: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """`{name, status, summary, fix, details}`: one entry of `doctor --json`'s `checks`."""
        return asdict(self)


def result(
    name: str, status: Status, summary: str, fix: str | None = None, **details: Any
) -> CheckResult:
    """A CheckResult with `details` given as keyword arguments."""
    return CheckResult(name=name, status=status, summary=summary, fix=fix, details=details)


class Context:
    """The profile under check, its engine and runtime, and machine facts read at most once."""

    def __init__(self, profile: Profile, *, host_prep: bool, probe_binaries: bool) -> None:
        from llm_backend.engines import get_engine
        from llm_backend.runtimes import get_runtime

        self.profile = profile
        self.host_prep = host_prep and profile.host_prep.enabled
        # `doctor` runs `llama-server --version`; `start` does not run anything it checks.
        self.probe_binaries = probe_binaries
        self.engine: Engine = get_engine(profile.engine)
        self.runtime: Runtime = get_runtime(profile.runtime)
        self._facts: dict[Callable[[], Any], Any] = {}

    @property
    def in_container(self) -> bool:
        """The engine runs inside the runtime's container (paths and binaries are the image's)."""
        return self.runtime.in_container

    @cached_property
    def gpus(self) -> GpuReport:
        """NVML's answer (read once; a finding, never an exception, without NVML)."""
        from llm_backend.gpu import read_gpus

        return read_gpus()

    @property
    def needs_gpu(self) -> bool:
        """The engine needs a GPU and the runtime gives it one (Docker: `docker.gpus` set)."""
        return self.engine.profile_needs_gpu(profile=self.profile) and self.runtime.exposes_gpus(
            profile=self.profile
        )

    def fact(self, reader: Callable[[], F]) -> F:
        """`reader()`, called once per check run (e.g. what Docker here can do)."""
        if reader not in self._facts:
            self._facts[reader] = reader()
        value: F = self._facts[reader]
        return value


@dataclass(frozen=True)
class Check:
    """One named preflight check; `failure_class` is what `start` reports when it fails."""

    name: str
    run: Callable[[Context], CheckResult | None]
    failure_class: str | None = None
