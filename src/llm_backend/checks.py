"""What a preflight check is: a name, a function of the profile under check, and its result.

`doctor` runs the general checks (GPU, memory, disk, port, privileges, OOM daemons) and
asks the profile's runtime and engine for theirs (`Runtime.checks()`, `Engine.checks()`).
Checks only look; none changes the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from llm_backend.config import Profile
from llm_backend.errors import BackendError

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.gpu import GpuReport
    from llm_backend.pull import Artifact, Source
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

    def __init__(self, profile: Profile, *, host_prep: bool, probe_binaries: bool,
                 sources: Sequence[Source] | None = None) -> None:
        from llm_backend.engines import get_engine
        from llm_backend.runtimes import get_runtime

        self.profile = profile
        self.host_prep = host_prep and profile.host_prep.enabled
        # `doctor` runs `llama-server --version`; `start` does not run anything it checks.
        self.probe_binaries = probe_binaries
        self.engine: Engine = get_engine(profile.engine)
        self.runtime: Runtime = get_runtime(profile.runtime)
        self._facts: dict[Callable[[], Any], Any] = {}
        # What a pull would fetch: `start` passes the sources it plans its pull with, so a
        # Hub repository is asked for its listing once.
        self._sources = list(sources) if sources is not None else None

    @property
    def pull_command(self) -> str:
        """`llm-backend pull --profile NAME`: the pull that fetches what this profile lacks
        (a bare `llm-backend pull` would pull the default profile)."""
        return f"llm-backend pull --profile {self.profile.name}"

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

    def sources(self) -> list[Source]:
        """What a pull would fetch for the profile (`llm_backend.pull.sources_for`).

        Never raises for a folder that cannot be resolved (a Docker volume not mounted): the
        check that owns it reports that; the rest (the runtime's image, the engine's Hub
        repositories) are still answered.
        """
        if self._sources is None:
            from llm_backend.pull import sources_for

            try:
                self._sources = sources_for(self.profile)
            except BackendError:
                self._sources = self._resolvable_sources()
        return self._sources

    def _resolvable_sources(self) -> list[Source]:
        from llm_backend.engines.hub import hub_sources
        from llm_backend.pull import sources_in_order

        groups: list[list[Source]] = []
        makers: tuple[Callable[[], list[Source]], ...] = (
            lambda: self.runtime.artifacts(profile=self.profile),
            lambda: list(hub_sources(self.profile, self.runtime,
                                     self.engine.hub_models(profile=self.profile))),
        )
        for make in makers:
            try:
                groups.append(make())
            except BackendError:
                continue
        return sources_in_order(groups)

    @cached_property
    def _plan(self) -> list[tuple[Source, Artifact]]:
        from llm_backend.pull import plan

        sources = self.sources()
        return list(zip(sources, plan(self.profile.name, sources).artifacts, strict=True))

    def plan(self) -> list[tuple[Source, Artifact]]:
        """Each source with what is on this machine now (`llm_backend.pull.plan`), probed once
        per check run: the one answer to "is it there" for doctor, start and pull."""
        return self._plan

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
