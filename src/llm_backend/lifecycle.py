"""start / stop / restart / status: the state machine and the one owner of the instance record.

stopped -> preparing_host -> launching -> loading -> ready -> stopping -> stopped,
and failed from any step (`state.TRANSITIONS`). Every change goes through the state
store's locked read-modify-write, checked against the state on disk.

One command at a time acts on the backend: `start`, `restart` and `stop` hold the instance
lock (`StateStore.instance_lock`). A `stop` that finds a `start` holding it cancels that
start (marks the record `stopping`, SIGTERM to the start, which stops its server, undoes
its host changes and lets go) and then makes sure nothing is left. Every command first
reconciles the record with what runs (`Lifecycle.refresh`): a load whose `start` died is
adopted (with its time limits), a `stop` that died is finished or reported, and a server
launched from this state dir that the record does not name is found by its marker.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import psutil

from llm_backend.config import ConfigSet, Profile, ResolvedProfile, load_config
from llm_backend.credentials import client_headers
from llm_backend.engines import get_engine
from llm_backend.engines.base import Engine, Failure
from llm_backend.errors import (
    BackendError,
    ConfigError,
    FailureClass,
    NotOurs,
    NotRunningError,
    StartFailed,
)
from llm_backend.monitor import Monitor, MonitorEvent, MonitorResult
from llm_backend.net import connect_url, http_url
from llm_backend.probes import health, models, spec_figures
from llm_backend.processes import (
    marked_processes,
    process_matches,
    stop_tree,
)
from llm_backend.runtimes import get_runtime, runtime_names
from llm_backend.runtimes.base import LaunchSpec, Runtime
from llm_backend.signals import Interrupted, signals_deferred, signals_raise
from llm_backend.state import (
    ACTIVE_STATES,
    STARTING_STATES,
    TRANSITIONS,
    UP_STATES,
    InstanceRecord,
    State,
    StateConflict,
    StateDirError,
    StateStore,
    open_log,
)

if TYPE_CHECKING:
    from llm_backend.doctor import CheckResult, DoctorReport
    from llm_backend.pull import LocalReport, ProgressEvent, Source

__all__ = [
    "ACTIVE_STATES",
    "TRANSITIONS",
    "UP_STATES",
    "HostPreparation",
    "Interrupted",
    "Lifecycle",
    "OtherBackendRunning",
    "StartCancelled",
    "StartOptions",
    "StartResult",
    "State",
    "Status",
    "StopOutcome",
    "describe_leave",
    "launch_env",
]

CANCEL_WAIT_S = 120.0
"""How long `stop` waits, beyond the grace period, for a cancelled `start` to let go (it
stops its server and undoes its host changes: swapoff can take a while)."""

DEFAULT_STOP_GRACE_S = 10.0
UNHEALTHY = "unhealthy"
"""`status`'s state for a server recorded ready whose health probe fails (a frozen server)."""


class HostPreparation(Protocol):
    """Reversible host changes around a load (implemented in `llm_backend.host.HostPrep`).

    Order of calls in `start`: `check` (before anything changes), `apply`, `guard` on every
    monitor loop while loading, `restore` always (ready, failed, interrupted). Every method
    raises only `HostPrepError` (exit 6) or `CommandFailed` (a privileged command failed:
    argv, exit code, stderr tail); both carry `message` and `remedy`.
    """

    def plan(self) -> list[str]:
        """Lines for `start --dry-run`: each step with its exact commands; changes nothing."""
        ...

    def check(self) -> None:
        """Refuse bad values, missing root/sudo rights, an unfinished earlier transaction, or
        too little memory, before anything on the host changes."""
        ...

    def apply(self) -> None:
        """Journal each step, then make it (swap on, OOM daemons paused, caches dropped)."""
        ...

    def guard(self) -> Failure | None:
        """One memory sample: a `Failure` (class out_of_memory) when MemAvailable stayed under
        host_prep.guard_hard_floor (bytes) for two samples; under the soft floor it drops the
        page cache again (at most every 5 s). Samples at most every host_prep.guard_interval_s."""
        ...

    def restore(self) -> list[str]:
        """Undo every applied step in reverse order; returns one line per undo. A swap file
        whose used pages do not fit in RAM, or whose swapoff passes its deadline, stays on and
        is shown by `status`; a failed undo stays in the journal for `recover`."""
        ...


HostPrepFactory = Callable[[Profile, StateStore], HostPreparation]


class StartCancelled(StartFailed):
    """`llm-backend stop` cancelled this start; its server was stopped and its host changes
    undone (exit code 5, like any start that did not become ready)."""


class OtherBackendRunning(BackendError):
    """`start` asked for one backend while another (profile, port or runtime) runs."""


@dataclass(frozen=True)
class StartOptions:
    """How a start was asked for; kept in the record so that `restart` repeats it."""

    profile: str
    overrides: dict[str, Any] = field(default_factory=dict)
    host_prep: bool = True
    skip_checks: tuple[str, ...] = ()
    config_dir: str | None = None  # the directory whose llm-backend.toml was read
    pull: bool = True  # bring in missing artifacts first; False refuses to start without them

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "overrides": dict(self.overrides),
            "host_prep": self.host_prep,
            "skip_checks": list(self.skip_checks),
            "config_dir": self.config_dir,
            "pull": self.pull,
        }

    @classmethod
    def from_record(cls, record: InstanceRecord) -> StartOptions:
        data = record.options or {}
        overrides = data.get("overrides", record.runtime_info.get("overrides")) or {}
        return cls(
            profile=str(data.get("profile") or record.profile),
            overrides=dict(overrides),
            host_prep=bool(data.get("host_prep", True)),
            skip_checks=tuple(str(name) for name in data.get("skip_checks") or ()),
            config_dir=data.get("config_dir"),
            pull=bool(data.get("pull", True)),
        )


@dataclass(frozen=True)
class StartResult:
    """What `start` did: "started", "already_running" (`state` says how far it is) or
    "dry_run" (`plan` and `checks` say what it would do)."""

    outcome: str  # "started" | "already_running" | "dry_run"
    profile: str
    engine: str
    runtime: str
    endpoint: str
    served_model_name: str
    pid: int | None = None
    duration_s: float | None = None  # seconds from launch to ready
    argv: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    host_restored: list[str] = field(default_factory=list)
    state: str = State.READY
    checks: tuple[CheckResult, ...] = ()
    # The 0600 copy of the API key our own requests send (None: the server takes no key),
    # so the curl line shown can read it instead of failing with 401.
    client_key_file: str | None = None
    # A dry run: the error a real start would stop with at its preflight (None: it would go on).
    refusal: BackendError | None = None

    @classmethod
    def of(cls, outcome: str, source: Profile | InstanceRecord, **fields: Any) -> StartResult:
        """The one place a StartResult is made, from the profile or from the record."""
        if isinstance(source, InstanceRecord):
            names = {
                "profile": source.profile,
                "engine": source.engine,
                "runtime": source.runtime,
                "endpoint": source.endpoint,
                "served_model_name": source.served_model_name,
                "pid": source.pid,
            }
        else:
            names = {
                "profile": source.name,
                "engine": source.engine,
                "runtime": source.runtime,
                "endpoint": source.endpoint,
                "served_model_name": source.model_name,
            }
        return cls(outcome=outcome, **{**names, **fields})


@dataclass(frozen=True)
class StopOutcome:
    """What `stop` did: whether anything ran, whether SIGKILL was needed, how long it took
    (seconds), and what it found besides the record (processes launched from this state
    dir that no record named)."""

    was_running: bool
    profile: str | None
    killed: bool
    duration_s: float
    leftovers: list[str] = field(default_factory=list)
    host_restored: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    cancelled_start: bool = False
    router: dict[str, Any] | None = None  # left the router: removed, drained, waited_s


@dataclass(frozen=True)
class Status:
    """The backend as seen now; `status --json` renders exactly these fields (docs/cli.md).

    `state` is the record's state, except "unhealthy" for a server recorded ready whose
    health probe does not answer 200 (within 2 s): not ready.
    """

    state: str
    profile: str | None = None
    engine: str | None = None
    runtime: str | None = None
    endpoint: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    models: list[str] = field(default_factory=list)
    health_ms: float | None = None
    health_status: int | None = None
    last_start_s: float | None = None
    phase: str | None = None
    failure: dict[str, Any] | None = None
    log_path: str | None = None
    host_prep: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # What the profile has on this machine (`Lifecycle.pulled`), when the caller asked.
    artifacts: LocalReport | None = None

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in self.__dataclass_fields__
                if key not in ("extra", "artifacts")}
        data["state"] = str(self.state)
        data["artifacts"] = self.artifacts.to_json() if self.artifacts is not None else None
        data.update(self.extra)
        return data


def _failure(failure_class: FailureClass, message: str, remedy: str) -> dict[str, Any]:
    return Failure(failure_class, message, remedy).to_json()


def _me() -> tuple[int, float]:
    me = psutil.Process()
    return me.pid, me.create_time()


class Lifecycle:
    """Start, stop and inspect the one backend recorded in a state dir."""

    def __init__(
        self,
        *,
        store: StateStore | None = None,
        config: ConfigSet | None = None,
        config_dir: Path | None = None,
        host_prep_factory: HostPrepFactory | None = None,
        host_status: Callable[[StateStore], dict[str, Any] | None] | None = None,
    ) -> None:
        self.store = store or StateStore()
        self._config = config
        self.config_dir = (config_dir or Path.cwd()).resolve()
        self.host_prep_factory = host_prep_factory
        self.host_status = host_status
        self._runtimes: dict[str, Runtime] = {}

    @property
    def config(self) -> ConfigSet:
        if self._config is None:
            self._config = load_config(self.config_dir)
        return self._config

    def runtime(self, name: str) -> Runtime:
        """The runtime called `name`, acting for this lifecycle's state dir."""
        if name not in self._runtimes:
            runtime = get_runtime(name)
            runtime.state_dir = self.store.root
            self._runtimes[name] = runtime
        return self._runtimes[name]

    def _all_runtimes(self) -> list[Runtime]:
        """Every registered runtime that loads (a broken plugin is skipped here)."""
        found = []
        for name in runtime_names():
            with contextlib.suppress(BackendError):
                found.append(self.runtime(name))
        return found

    def resolve(self, name: str, overrides: dict[str, Any] | None = None) -> ResolvedProfile:
        """The profile `name` with `overrides`, from this lifecycle's config (ConfigError)."""
        return self.config.resolve(name, overrides)

    # --- start -------------------------------------------------------------------------

    def start(
        self,
        *,
        profile_name: str,
        overrides: dict[str, Any] | None = None,
        dry_run: bool = False,
        host_prep: bool = True,
        skip_checks: Collection[str] = (),
        on_event: Callable[[MonitorEvent], None] = lambda event: None,
        on_notice: Callable[[str], None] = lambda text: None,
        ensure_binary: Callable[[Profile], None] | None = None,
        pull: bool = True,
        on_pull: Callable[[ProgressEvent], None] | None = None,
    ) -> StartResult:
        """Start profile `profile_name` (with `overrides`) and wait until it is ready.

        After the preflight checks and before host preparation, whatever the profile needs
        and is missing (image, weights, draft model, encoding; `llm_backend.pull`) is pulled,
        with `on_pull` getting the progress, so no load timer and no host change waits on a
        download; with `pull=False` a missing artifact is a PullError (exit 7) instead.

        Order: resolve the profile; take the instance lock; if this backend already runs,
        say so (outcome "already_running"; a load whose `start` died is watched to its end
        here); preflight - the `doctor` checks (`skip_checks` names those whose failure is
        ignored, as does LLM_BACKEND_SKIP_CHECKS), the engine's and runtime's checks - with
        nothing on the host changed until all passed; host preparation (when `host_prep` and
        the profile enables it); launch; watch log phases and health until ready, exit,
        stall (`stall_timeout_s` without progress) or `load_timeout_s`; restore the host
        steps that were only for the load. `on_event` gets every monitor event, `on_notice`
        each preflight warning line. A dry run changes nothing and returns the plan and the
        check results.

        Raises ConfigError (exit 2: unknown profile or bad value), AlreadyStartingError
        (exit 4: another start, restart or stop holds the lock), OtherBackendRunning (exit 1:
        a different profile, port or runtime runs), BackendError for a failed preflight
        check, HostPrepError (exit 6), StartFailed (exit 5: the server did not become ready;
        `failure_class`, exit code and log tail in `details`), StartCancelled (exit 5:
        `llm-backend stop` cancelled it), Interrupted (SIGTERM, SIGHUP or SIGINT: the server
        was stopped and host changes undone).
        """
        options = StartOptions(
            profile=profile_name,
            overrides=dict(overrides or {}),
            host_prep=host_prep,
            skip_checks=tuple(skip_checks),
            config_dir=str(self.config_dir),
            pull=pull,
        )
        if dry_run:
            return self._dry_run(options)
        self.resolve(options.profile, options.overrides)  # exit 2 before taking the lock
        with self.store.start_lock("start"), signals_raise():
            try:
                return self._start_locked(
                    options, on_event=on_event, on_notice=on_notice, ensure_binary=ensure_binary,
                    on_pull=on_pull,
                )
            except Interrupted as interrupt:
                self._raise_if_cancelled(options.profile, interrupt)
                raise

    def _skip(self, options: StartOptions) -> frozenset[str]:
        from llm_backend.doctor import validate_skip

        return validate_skip([*options.skip_checks, os.environ.get("LLM_BACKEND_SKIP_CHECKS", "")])

    def _preparation(self, profile: Profile, options: StartOptions) -> HostPreparation | None:
        if options.host_prep and profile.host_prep.enabled and self.host_prep_factory:
            return self.host_prep_factory(profile, self.store)
        return None

    def _dry_run(self, options: StartOptions) -> StartResult:
        from llm_backend.doctor import run_checks

        profile = self.resolve(options.profile, options.overrides).profile
        engine = get_engine(profile.engine)
        runtime = self.runtime(profile.runtime)
        for_container = runtime.in_container
        report = run_checks(profile, host_prep=options.host_prep, skip=self._skip(options),
                            probe_binaries=False)
        refusal = self._dry_run_refusal(profile, options, report)
        engine.check_profile(profile=profile, for_container=for_container)
        flag_note = check_engine_flags(profile, engine, for_container=for_container)
        argv = engine.build_argv(profile=profile, for_container=for_container)
        try:
            key_folder, key_args = self.api_key_setup(profile, engine, runtime, write=False)
        except ConfigError:  # an unsafe key file: doctor's `access` check reports it above
            key_folder, key_args = None, []
        argv = [*argv, *key_args]  # as a start passes them (the files are written then)
        plan = [f"launch ({profile.runtime}): {line}"
                for line in runtime.describe(profile=profile, argv=argv)]
        if key_folder is not None:
            plan.append(f"API key: handed to the server in 0600 files under {key_folder} "
                        "(written at start; the key is never on the command line)")
        if flag_note:
            plan.insert(0, flag_note)
        reached_at = connect_url(runtime.listen_host(profile=profile), profile.port)
        if reached_at != profile.endpoint:
            plan.append(
                f"health polled at {reached_at}{engine.health_path} "
                f"(the server binds {profile.host}"
                + (f"; the port is published on {runtime.listen_host(profile=profile)}"
                   if runtime.listen_host(profile=profile) != profile.host else "")
                + ")"
            )
        preparation = self._preparation(profile, options)
        host_plan = preparation.plan() if preparation else []
        return StartResult.of(
            "dry_run", profile, argv=argv, plan=[*host_plan, *plan], state=State.STOPPED,
            checks=report.checks, refusal=refusal,
            endpoint=http_url(runtime.listen_host(profile=profile), profile.port),
        )

    def _dry_run_refusal(self, profile: Profile, options: StartOptions,
                         report: DoctorReport) -> BackendError | None:
        """The preflight error a real start would raise now, as `_start_locked` judges it:
        none while a backend runs (start reports that instead), and a failed check of what
        the pull would bring in first does not count."""
        from llm_backend.doctor import preflight_error
        from llm_backend.pull import sources_for

        recorded = self.store.load_instance()
        if recorded is not None and recorded.state in ACTIVE_STATES:
            return None
        pulled = frozenset(source.check for source in sources_for(profile)
                           if source.check and source.fetchable()) if options.pull else frozenset()
        return preflight_error(profile.name, report, ignore=pulled)

    def _preflight(self, profile: Profile, options: StartOptions,
                   on_notice: Callable[[str], None], *,
                   deferred: frozenset[str] = frozenset(),
                   only: frozenset[str] | None = None,
                   sources: list[Source] | None = None) -> None:
        """The `doctor` checks for this profile; a failure raises before the host changes.

        `deferred` checks are left for later (what a pull brings in); `only` runs just those.
        `sources`: the ones the pull is planned with (the checks judge what is there by them).
        """
        from llm_backend.doctor import check_names, preflight

        skip = set(self._skip(options)) | set(deferred)
        if only is not None:
            skip |= set(check_names()) - set(only)
        report = preflight(profile, host_prep=options.host_prep, skip=frozenset(skip),
                           sources=sources)
        needs_gpu = get_engine(profile.engine).profile_needs_gpu(profile=profile)
        for check in report.warnings:
            if check.name == "gpu" and not needs_gpu:
                continue  # a CPU profile does not care
            on_notice(f"warning: {check.name}: {check.summary}")
            if check.fix:
                on_notice(f"  fix: {check.fix}")
        if any(check.name == "port" and check.status == "skipped" for check in report.checks):
            self._port_guard(profile)

    @staticmethod
    def _pending_pull(profile: Profile, sources: list[Source]) -> list[Source]:
        """The sources a pull would fetch now: missing and fetchable."""
        from llm_backend import pull as pulling

        planned = pulling.plan(profile.name, sources)
        return [source for source, artifact in zip(sources, planned.artifacts, strict=True)
                if not artifact.present and source.fetchable()]

    def _pull(self, profile: Profile, sources: list[Source], options: StartOptions,
              on_notice: Callable[[str], None],
              on_pull: Callable[[ProgressEvent], None] | None) -> None:
        """Bring in what the profile needs and lacks (or refuse, with `pull=False`).

        `sources` are the ones the preflight planned with: a Hub repository asks the Hub for
        its listing once, however often it is probed.
        """
        from llm_backend import pull as pulling

        if not sources:
            return
        planned = pulling.plan(profile.name, sources)  # again: ensure_binary may have built
        missing = planned.missing
        if not missing:
            return
        names = ", ".join(f"{artifact.kind} {artifact.name}" for artifact in missing)
        if not options.pull:
            raise pulling.PullError(
                f"{profile.name} needs what is not on this machine yet: {names}; nothing on "
                "the host was changed",
                remedy=f"llm-backend pull --profile {profile.name} (or start without --no-pull)",
            )
        on_notice(f"pulling what {profile.name} needs first: {names}")
        pulling.pull(profile.name, sources, progress=on_pull or (lambda event: None),
                     lock=self.store.root / pulling.PULL_LOCK, planned=planned)

    @staticmethod
    def _port_guard(profile: Profile) -> None:
        """Never launch onto a taken port, even with `--skip-checks port` (the server would
        only fail to bind): the doctor's port check, enforced."""
        from llm_backend.doctor import Context, check_port

        result = check_port(Context(profile, host_prep=False, probe_binaries=False))
        if result.status == "fail":
            raise BackendError(
                result.summary, remedy=result.fix or "llm-backend doctor",
                failure_class=FailureClass.PORT_IN_USE,
            )

    def _start_locked(
        self,
        options: StartOptions,
        *,
        on_event: Callable[[MonitorEvent], None],
        on_notice: Callable[[str], None],
        ensure_binary: Callable[[Profile], None] | None,
        config: ConfigSet | None = None,
        on_pull: Callable[[ProgressEvent], None] | None = None,
    ) -> StartResult:
        profile = (config or self.config).resolve(options.profile, options.overrides).profile
        current = self.refresh()
        if current is not None and current.state in ACTIVE_STATES:
            self._check_same_backend(current, profile)
            if current.state in STARTING_STATES and not _owner_alive(current):
                current = self._adopt_and_watch(current, on_event=on_event)
            return StartResult.of("already_running", current, state=current.state)
        # What a pull will bring in is checked after the pull, not refused before it.
        from llm_backend.pull import sources_for

        sources = sources_for(profile)
        pending = self._pending_pull(profile, sources) if options.pull else []
        deferred = frozenset(source.check for source in pending if source.check)
        self._preflight(profile, options, on_notice, deferred=deferred, sources=sources)
        engine = get_engine(profile.engine)
        runtime = self.runtime(profile.runtime)
        for_container = runtime.in_container
        if ensure_binary is not None and not for_container:
            ensure_binary(profile)
        self._pull(profile, sources, options, on_notice, on_pull)
        if deferred:
            self._preflight(profile, options, on_notice, only=deferred, sources=sources)
        engine.check_profile(profile=profile, for_container=for_container)
        flag_note = check_engine_flags(profile, engine, for_container=for_container)
        if flag_note:
            on_notice(flag_note)
        runtime.check(profile=profile)
        preparation = self._preparation(profile, options)
        if preparation:
            preparation.check()
        argv = engine.build_argv(profile=profile, for_container=for_container)
        secret_dir, key_args = self._api_key(profile, engine, runtime)
        argv = [*argv, *key_args]
        env = launch_env(profile, engine)  # a missing fast interface fails here
        return self._launch_and_watch(
            profile=profile,
            engine=engine,
            runtime=runtime,
            argv=argv,
            env=env,
            options=options,
            preparation=preparation,
            on_event=on_event,
            on_notice=on_notice,
            secret_dir=secret_dir,
        )

    def api_key_setup(self, profile: Profile, engine: Engine, runtime: Runtime, *,
                      write: bool = True) -> tuple[Path | None, list[str]]:
        """The key files' folder and the engine's flags that hand the profile's API key to
        the server (None, [] without a key); `write`: also write the files. For `start
        --dry-run` (nothing written) and `compose` (the file run by hand needs them too).

        Raises ConfigError when the key file is unsafe or the engine cannot take a key.
        """
        if not write:
            from llm_backend import credentials

            key = credentials.read_api_key(profile)
            if key is None:
                return None, []
            folder = self.store.root / credentials.SECRETS_DIR
            files = engine.api_key_files(profile=profile, api_key=key)
            seen_at = runtime.secret_path(profile=profile, host_dir=folder)
            paths = {name: f"{seen_at.rstrip('/')}/{name}" for name in files}
            return (folder, engine.api_key_args(profile=profile, paths=paths)) if files else (
                None, [])
        return self._api_key(profile, engine, runtime, remove_stale=False)

    def _api_key(self, profile: Profile, engine: Engine, runtime: Runtime, *,
                 remove_stale: bool = True) -> tuple[Path | None, list[str]]:
        """Hand the profile's API key to the server through 0600 files of ours (never its
        command line), and keep a copy for our own requests; (folder, the engine's flags).

        Without a key, the files of an earlier keyed start are removed (`remove_stale`).
        Raises ConfigError when the key file is unsafe or the engine cannot take a key.
        """
        from llm_backend import credentials

        folder = self.store.root / credentials.SECRETS_DIR
        key = credentials.read_api_key(profile)
        if key is None:
            if remove_stale and folder.is_dir() and not folder.is_symlink():
                for stale in folder.iterdir():
                    if stale.is_file() and not stale.is_symlink():
                        stale.unlink()
            return None, []
        files = engine.api_key_files(profile=profile, api_key=key)
        if not files:
            raise ConfigError(
                f"profile {profile.name!r} has an API key, but engine {engine.name!r} cannot "
                "take one",
                remedy="remove api_key_file from the profile (and unset "
                f"{credentials.API_KEY_ENV})",
            )
        for name, content in {**files, credentials.CLIENT_KEY_FILE: key + "\n"}.items():
            credentials.write_secret_file(folder / name, content)
        seen_at = runtime.secret_path(profile=profile, host_dir=folder)
        paths = {name: f"{seen_at.rstrip('/')}/{name}" for name in files}
        return folder, engine.api_key_args(profile=profile, paths=paths)

    def _check_same_backend(self, current: InstanceRecord, profile: Profile) -> None:
        runtime = self.runtime(profile.runtime)
        listen = runtime.listen_host(profile=profile)
        wanted = (profile.name, profile.runtime, listen, profile.port)
        running = (current.profile, current.runtime, current.host, current.port)
        # The runtime's own terms: another container or image is another backend too.
        differences = (
            runtime.differences(record=current, profile=profile) if wanted == running else []
        )
        if wanted != running or differences:
            raise OtherBackendRunning(
                f"another backend is {current.state}: {current.profile} ({current.engine}, "
                f"{current.runtime}) at {current.endpoint}; you asked for {profile.name} "
                f"({profile.engine}, {profile.runtime}) at {profile.endpoint}"
                + "".join(f"; it runs {difference}" for difference in differences),
                remedy="llm-backend stop, then start again (or use a state dir of its own: "
                "LLM_BACKEND_STATE_DIR)",
            )

    def _launch_and_watch(
        self,
        *,
        profile: Profile,
        engine: Engine,
        runtime: Runtime,
        argv: list[str],
        env: dict[str, str],
        options: StartOptions,
        preparation: HostPreparation | None,
        on_event: Callable[[MonitorEvent], None],
        on_notice: Callable[[str], None],
        secret_dir: Path | None = None,
    ) -> StartResult:
        from llm_backend.host.journal import fault_point

        log_path = self.store.logs_dir() / f"{profile.name}.log"
        os.close(open_log(log_path, truncate=True))  # never through a symlink
        owner_pid, owner_create_time = _me()
        record = InstanceRecord(
            profile=profile.name,
            engine=profile.engine,
            runtime=profile.runtime,
            state=State.PREPARING_HOST if preparation else State.LAUNCHING,
            # Where clients reach it (Docker: the published address), which status, chat and
            # the health polls use; the bind address is in the argv.
            host=runtime.listen_host(profile=profile),
            port=profile.port,
            served_model_name=profile.model_name,
            argv=argv,
            log_path=str(log_path),
            created_at=time.time(),
            owner_pid=owner_pid,
            owner_create_time=owner_create_time,
            runtime_info={"overrides": dict(options.overrides)},  # read by bench --ab
            options=options.to_json(),
            load_timeout_s=profile.load_timeout_s,
            stall_timeout_s=profile.stall_timeout_s,
            stop_grace_s=profile.stop_grace_s,
        )
        restored: list[str] = []
        try:
            record = self.store.begin(record)
            if preparation:
                preparation.apply()
                record = self.store.transition(
                    record, State.LAUNCHING, expect={State.PREPARING_HOST}
                )
            # Signals wait until the record names what was launched, so an interrupt
            # can always find the server to stop.
            with signals_deferred():
                launched = runtime.launch(
                    spec=LaunchSpec(
                        profile=profile,
                        argv=argv,
                        env=env,
                        log_path=log_path,
                        health_path=engine.health_path,
                        state_dir=self.store.root,
                        secret_dir=secret_dir,
                        instance_id=record.instance_id,
                    )
                )
                record = record.evolve(
                    pid=launched.pid,
                    pid_create_time=launched.pid_create_time,
                    runtime_info={**record.runtime_info, **launched.runtime_info},
                    launched_at=time.time(),
                )
                fault_point("launch.done")  # a test kills `start` here, before the record
                record = self.store.transition(
                    record,
                    State.LOADING,
                    expect={State.LAUNCHING},
                    pid=record.pid,
                    pid_create_time=record.pid_create_time,
                    runtime_info=record.runtime_info,
                    launched_at=record.launched_at,
                )
            result = self._monitor(
                record, engine, runtime, on_event, preparation, profile=profile
            ).run()
        except BaseException as error:
            self._abort(record, runtime, profile, preparation, error)
        if not result.ready:
            self._fail(record, runtime, profile, result, preparation)
        if preparation:
            restored = preparation.restore()
        role = State(engine.health_role(profile=profile))
        try:
            record = self.store.transition(
                record,
                role,
                expect={State.LOADING},
                ready_at=time.time(),
                start_duration_s=round(result.duration_s, 3),
                phase=str(role),
            )
        except StateConflict:
            # `stop` marked it stopping just as it became ready: it is cancelled.
            self._finish_cancelled(record, runtime, profile, None)
        self.store.record_start(profile.name, result.duration_s, result.phase_offsets)
        if profile.router_url and role == State.READY:
            record = self._join_router(record, profile, on_notice)
        from llm_backend import credentials

        key_copy = self.store.root / credentials.SECRETS_DIR / credentials.CLIENT_KEY_FILE
        return StartResult.of(
            "started", profile, pid=record.pid, duration_s=result.duration_s, argv=argv,
            host_restored=restored, state=record.state,
            client_key_file=str(key_copy) if key_copy.is_file() else None,
        )

    def _join_router(
        self, record: InstanceRecord, profile: Profile, on_notice: Callable[[str], None]
    ) -> InstanceRecord:
        """Register the ready server with its router; a refusal is a notice, the server stays."""
        from llm_backend.cluster.membership import join

        try:
            membership = join(profile)
        except BackendError as error:
            on_notice(f"not registered with the router: {error.message} ({error.remedy})")
            return record
        on_notice(f"registered {membership.worker_url} with the router at {membership.router_url}")
        updated = self.store.update(
            record, states=UP_STATES,
            runtime_info={**record.runtime_info, "router": membership.to_json()},
        )
        return updated or record

    def _leave_router(self, record: InstanceRecord, drain_timeout_s: float) -> dict[str, Any]:
        """Deregister and wait for in-flight requests to finish, before the server stops."""
        from llm_backend.cluster.membership import Membership, leave

        membership = Membership.from_json(record.runtime_info.get("router"))
        if membership is None:
            return {}
        api_key = None
        try:
            from llm_backend.credentials import read_api_key

            api_key = read_api_key(self.resolve(record.profile).profile)
        except BackendError:
            api_key = None  # the drain then counts nothing and the stop goes on
        result = leave(
            membership,
            engine=get_engine(record.engine),
            endpoint=record.client_endpoint,
            drain_timeout_s=drain_timeout_s,
            api_key=api_key,
        )
        return {
            "router_url": membership.router_url,
            "removed": result.removed,
            "drained": result.drained,
            "in_flight_left": result.in_flight_left,
            "waited_s": result.waited_s,
            "note": result.note,
        }

    def _monitor(
        self,
        record: InstanceRecord,
        engine: Engine,
        runtime: Runtime,
        on_event: Callable[[MonitorEvent], None],
        preparation: HostPreparation | None = None,
        *,
        log_offset: int = 0,
        profile: Profile | None = None,
    ) -> Monitor:
        """The watch over one load, with the limits the record carries; for an adopted
        load the overall limit counts from its launch."""
        launched_at = record.launched_at or time.time()
        load_timeout_s = record.load_timeout_s or 600.0
        return Monitor(
            engine=engine,
            base_url=record.client_endpoint,
            log_path=Path(record.log_path),
            is_alive=lambda: runtime.is_alive(record=record),
            exit_code=lambda: runtime.exit_code(record=record),
            load_timeout_s=max(0.0, launched_at + load_timeout_s - time.time()),
            stall_timeout_s=record.stall_timeout_s or 120.0,
            log_offset=log_offset,
            expected_total_s=self.store.last_start_duration(record.profile),
            on_event=_phase_recorder(self.store, record, on_event),
            checks=[_stop_requested_check(self.store, record),
                    *([preparation.guard] if preparation else [])],
            download_paths=_download_paths(engine, profile, runtime) if profile else [],
        )

    def _adopt_and_watch(
        self, record: InstanceRecord, *, on_event: Callable[[MonitorEvent], None]
    ) -> InstanceRecord:
        """A load whose `start` died: become its watcher, under the limits it was started
        with, until it is ready or failed (then StartFailed, as for our own load)."""
        owner_pid, owner_create_time = _me()
        adopted = self.store.update(record, states=STARTING_STATES, owner_pid=owner_pid,
                                    owner_create_time=owner_create_time)
        if adopted is None or adopted.state != State.LOADING:
            return self.store.load_instance() or record
        runtime = self.runtime(adopted.runtime)
        engine = get_engine(adopted.engine)
        size = Path(adopted.log_path).stat().st_size if Path(adopted.log_path).exists() else 0
        try:
            result = self._monitor(adopted, engine, runtime, on_event, log_offset=size).run()
        except BaseException as error:
            self._abort(adopted, runtime, None, None, error)
        if not result.ready:
            self._fail(adopted, runtime, None, result, None)
        role = self._role(adopted, engine)
        return self.store.transition(adopted, role, expect={State.LOADING},
                                     ready_at=time.time(), phase=str(role))

    def _role(self, record: InstanceRecord, engine: Engine) -> State:
        """READY, or ALIVE for a member that serves no API (the engine says which)."""
        try:
            return State(engine.health_role(profile=self.resolve(record.profile).profile))
        except BackendError:
            return State.READY

    def _stop_requested(self) -> bool:
        request = self.store.stop_request()
        return request is not None and process_matches(*request) is not None

    def _raise_if_cancelled(self, profile_name: str, interrupt: Interrupted) -> None:
        if self._stop_requested():
            raise _cancelled(profile_name) from interrupt

    def _finish_cancelled(
        self, record: InstanceRecord, runtime: Runtime, profile: Profile | None,
        preparation: HostPreparation | None,
    ) -> None:
        """`stop` marked the record stopping while we loaded: stop the server, undo the host
        changes, finish the stop (the record goes) and say so, the same way every time."""
        with signals_deferred(raise_after=False):
            stop = runtime.stop(record=record, grace_s=_grace(record, profile))
            if preparation:
                preparation.restore()
            if not stop.leftovers:
                with contextlib.suppress(StateConflict):
                    self.store.transition(record, State.STOPPED)
        raise _cancelled(record.profile, leftovers=stop.leftovers, log_path=record.log_path)

    def _fail(
        self,
        record: InstanceRecord,
        runtime: Runtime,
        profile: Profile | None,
        result: MonitorResult,
        preparation: HostPreparation | None,
    ) -> None:
        """Stop the server, undo the host changes, record the failure and raise it."""
        latest = self.store.load_instance()
        if latest is None or not record.same_instance(latest) or latest.state == State.STOPPING:
            self._finish_cancelled(record, runtime, profile, preparation)
        failure = result.failure or Failure(
            FailureClass.EXITED, "the server did not become ready", ""
        )
        stop = runtime.stop(record=record, grace_s=_grace(record, profile))
        if preparation:
            preparation.restore()
        try:
            self.store.transition(
                record, State.FAILED, expect=STARTING_STATES, failure=failure.to_json(),
                exit_code=result.exit_code,
            )
        except StateConflict as conflict:
            if conflict.current is not None and conflict.current.state == State.STOPPING:
                self._finish_cancelled(record, runtime, profile, None)
        raise StartFailed(
            f"{record.profile} did not become ready: {failure.message}",
            remedy=failure.remedy or "read `llm-backend logs -n 200`",
            failure_class=failure.failure_class,
            details={
                "exit_code": result.exit_code,
                "log_tail": result.log_tail,
                "line": failure.line,
                "leftovers": stop.leftovers,
                "log_path": record.log_path,
            },
        )

    def _abort(
        self,
        record: InstanceRecord,
        runtime: Runtime,
        profile: Profile | None,
        preparation: HostPreparation | None,
        error: BaseException,
    ) -> NoReturn:
        """Interrupted or errored mid-start: stop what started and undo the host changes.
        When `stop` asked for it (the record on disk is `stopping`), finish that stop and
        raise StartCancelled; otherwise record the failure and raise `error` again."""
        with signals_deferred(raise_after=False):
            latest = self.store.load_instance()
            cancelled = isinstance(error, StartCancelled) or (
                latest is not None and record.same_instance(latest)
                and latest.state == State.STOPPING
            ) or (latest is None and self._stop_requested())
            with contextlib.suppress(Exception):
                if record.pid is not None or record.runtime_info.get("container"):
                    grace = _grace(record, profile)
                    runtime.stop(record=record, grace_s=grace if cancelled else min(grace, 10))
            if preparation:
                with contextlib.suppress(Exception):
                    preparation.restore()
            if cancelled:
                with contextlib.suppress(Exception):
                    self.store.transition(record, State.STOPPED)
                raise _cancelled(record.profile) from None
            reason = (
                f"interrupted by {error}" if isinstance(error, Interrupted | KeyboardInterrupt)
                else str(error)
            )
            try:
                self.store.transition(
                    record, State.FAILED, expect=STARTING_STATES,
                    failure=_failure(FailureClass.EXITED, f"start aborted: {reason}", ""),
                )
            except StateConflict as conflict:
                current = conflict.current
                if current is not None and current.state == State.STOPPING:
                    with contextlib.suppress(Exception):
                        self.store.transition(record, State.STOPPED)
                    # `stop` came in between: it is a cancellation after all
                    raise _cancelled(record.profile) from None
            except Exception:
                pass
        raise error

    # --- status ------------------------------------------------------------------------

    def refresh(self) -> InstanceRecord | None:
        """The record, reconciled with what runs: a load whose `start` died is adopted
        (ready once healthy; failed when its server is gone or its limits passed); a server
        whose `start` died between launch and record is found by its marker; a `stop` that
        died is finished (server gone) or reported (failed, server still up)."""
        record = self.store.load_instance()
        if record is None or record.state in (State.STOPPED, State.FAILED):
            return record
        if _owner_alive(record) and record.state not in UP_STATES:
            return record  # its start or stop is at work
        runtime = self.runtime(record.runtime)
        if record.state == State.LAUNCHING and record.pid is None:
            record = self._find_launched(record, runtime)
        try:
            runtime.verify(record=record)
        except NotOurs as error:
            # The record names what this state dir did not launch (forged or stale): say so,
            # touch nothing; `stop` refuses it with the same words. A runtime that cannot be
            # asked (its engine down) proves nothing: that error goes up, the record stays.
            with contextlib.suppress(StateConflict):
                return self.store.transition(
                    record, State.FAILED,
                    failure=_failure(FailureClass.EXITED, error.message, error.remedy),
                )
            return self.store.load_instance()
        alive = runtime.is_alive(record=record)
        try:
            if record.state in UP_STATES:
                if not alive:
                    return self.store.transition(
                        record, State.FAILED,
                        failure=_failure(FailureClass.EXITED,
                                         "the server exited after it was ready",
                                         "read `llm-backend logs`, then `llm-backend start`"),
                    )
                return record
            if record.state == State.STOPPING:
                if alive or self._unrecorded(record) or self._unrecorded_elsewhere(record):
                    return self.store.transition(
                        record, State.FAILED,
                        failure=_failure(FailureClass.EXITED,
                                         "a `stop` was interrupted and the server still runs",
                                         "llm-backend stop"),
                    )
                self.store.transition(record, State.STOPPED)
                return None
            # preparing_host, launching or loading, and its start is gone
            if not alive:
                return self.store.transition(
                    record, State.FAILED,
                    failure=_failure(
                        FailureClass.EXITED,
                        f"the `start` was killed while {record.state.replace('_', ' ')} and "
                        "no server of it runs",
                        "llm-backend recover (undoes host changes), then llm-backend start",
                    ),
                )
            if record.state == State.LOADING:
                return self._check_adopted_load(record, runtime)
        except StateConflict:
            return self.store.load_instance()
        return record

    def _find_launched(self, record: InstanceRecord, runtime: Runtime) -> InstanceRecord:
        """A `start` died between launch and record: name its server from the runtime's
        marks (a container's labels), else from the process marker."""
        try:
            launched = runtime.find_launched(record=record)
        except BackendError:
            launched = None
        if launched is not None:
            try:
                return self.store.transition(
                    record, State.LOADING, pid=launched.pid,
                    pid_create_time=launched.pid_create_time,
                    runtime_info={**record.runtime_info, **launched.runtime_info},
                    launched_at=record.launched_at or record.created_at,
                )
            except StateConflict:
                return record
        found = [process for process in marked_processes(self.store.root)
                 if process.pid == _session_of(process)]
        if not found:
            return record
        leader = min(found, key=lambda process: process.create_time())
        try:
            return self.store.transition(
                record, State.LOADING, pid=leader.pid, pid_create_time=leader.create_time(),
                runtime_info={**record.runtime_info, "pgid": leader.pid},
                launched_at=record.launched_at or leader.create_time(),
            )
        except (StateConflict, psutil.Error):
            return record

    def _check_adopted_load(self, record: InstanceRecord, runtime: Runtime) -> InstanceRecord:
        """An orphaned load: ready when healthy; stopped and failed when it stalled (no log
        output for `stall_timeout_s`) or ran past `load_timeout_s` since launch."""
        engine = get_engine(record.engine)
        if health(record.client_endpoint, engine)[0] == 200:
            role = self._role(record, engine)
            return self.store.transition(record, role, ready_at=time.time(), phase=str(role))
        now = time.time()
        launched_at = record.launched_at or record.created_at
        try:
            last_output = Path(record.log_path).stat().st_mtime
        except OSError:
            last_output = launched_at
        last_progress = max(last_output, launched_at)
        failure: dict[str, Any] | None = None
        if record.load_timeout_s is not None and now - launched_at > record.load_timeout_s:
            failure = _failure(
                FailureClass.TIMEOUT,
                f"not ready after {record.load_timeout_s:.0f} s (its `start` was gone; "
                f"last phase: {record.phase or 'none'})",
                "raise `load_timeout_s` in the profile or pass --timeout S",
            )
        elif record.stall_timeout_s is not None and now - last_progress > record.stall_timeout_s:
            failure = _failure(
                FailureClass.STALLED,
                f"no progress for {record.stall_timeout_s:.0f} s (its `start` was gone; "
                f"last phase: {record.phase or 'none'})",
                "raise `stall_timeout_s` in the profile if this load is just slow, "
                "or read `llm-backend logs`",
            )
        if failure is None:
            return record
        lock = self.store.instance_lock
        held_here = lock.held  # by this start, restart or stop
        if not held_here and not lock.acquire(blocking=False, holder="status"):
            return record  # a start or stop is about to deal with it
        try:
            runtime.stop(record=record, grace_s=_grace(record, None))
            return self.store.transition(record, State.FAILED, failure=failure)
        finally:
            if not held_here:
                lock.release()

    def _unrecorded_elsewhere(self, record: InstanceRecord | None) -> list[str]:
        """What runtimes find running from this state dir by their own marks (containers'
        labels) that an active `record` does not name; nothing while its owner works."""
        if record is not None and record.state in ACTIVE_STATES and _owner_alive(record):
            return []
        active = record if record is not None and record.state in ACTIVE_STATES else None
        found: list[str] = []
        for runtime in self._all_runtimes():
            with contextlib.suppress(BackendError):
                found += runtime.unrecorded(record=active)
        return found

    def _unrecorded(self, record: InstanceRecord | None) -> list[psutil.Process]:
        """Processes launched from this state dir that the record does not name as running."""
        if record is not None and record.state in ACTIVE_STATES and _owner_alive(record):
            return []
        found = marked_processes(self.store.root)
        if record is not None and record.state in ACTIVE_STATES and record.pid is not None:
            found = [process for process in found if _session_of(process) != record.pid]
        return found

    def status(self) -> Status:
        """The backend as seen now (the record reconciled with what runs, `refresh`), with
        health (HTTP status, ms), models, uptime (s) and speculative figures when it
        answers. Never raises for a missing or stopped backend: state "stopped". A server
        recorded ready that does not answer its health probe is "unhealthy"; processes
        launched from this state dir that no record names make the state "failed"."""
        record = self.refresh()
        if record is None:
            orphans = [f"pid {p.pid}" for p in self._unrecorded(None)]
            orphans += self._unrecorded_elsewhere(None)
            if orphans:
                return Status(
                    state=State.FAILED,
                    failure=_failure(
                        FailureClass.EXITED,
                        "processes launched from this state dir run without a record: "
                        + ", ".join(orphans),
                        "llm-backend stop",
                    ),
                    host_prep=self._host_prep_status(),
                )
            return Status(state=State.STOPPED, host_prep=self._host_prep_status())
        base = Status(
            state=record.state,
            profile=record.profile,
            engine=record.engine,
            runtime=record.runtime,
            endpoint=record.endpoint,
            pid=record.pid,
            phase=record.phase,
            failure=record.failure,
            log_path=record.log_path,
            last_start_s=record.start_duration_s
            or self.store.last_start_duration(record.profile),
            host_prep=self._host_prep_status(),
            # The runtime's view (a docker container's state) also after a failure.
            extra={**self._runtime_details(record), **_router_membership(record)},
        )
        if record.state not in ACTIVE_STATES:
            return base
        engine = get_engine(record.engine)
        health_status, health_ms = health(record.client_endpoint, engine)
        healthy = health_status == 200
        uptime = time.time() - record.ready_at if record.ready_at else None
        return Status(
            **{
                **base.__dict__,
                "state": UNHEALTHY if record.state in UP_STATES and not healthy
                else record.state,
                "uptime_s": round(uptime, 1) if uptime is not None else None,
                "health_ms": health_ms,
                "health_status": health_status,
                "models": models(record.client_endpoint, engine,
                                 client_headers(self.store.root)) if healthy else [],
                "spec": spec_figures(record.client_endpoint, record.log_path, engine,
                                     client_headers(self.store.root))
                if healthy else None,
            }
        )

    def _runtime_details(self, record: InstanceRecord) -> dict[str, Any]:
        try:
            return self.runtime(record.runtime).details(record=record)
        except BackendError as error:
            return {record.runtime: {"error": error.message}}

    def _host_prep_status(self) -> dict[str, Any] | None:
        """The journaled host changes in effect (or left on), from `llm_backend.host`."""
        return self.host_status(self.store) if self.host_status else None

    # --- stop --------------------------------------------------------------------------

    def stop(self, *, force: bool = False, grace_s: float | None = None) -> StopOutcome:
        """Stop the backend: SIGTERM (and SIGCONT) to its process tree, group and session
        (or `docker compose stop`), `grace_s` seconds (default the profile's
        `stop_grace_s`), then SIGKILL; `force` kills at once. A `start` in progress is
        cancelled: the record is marked stopping, that start is sent SIGTERM and stops its
        server and undoes its host changes; this waits for it. Afterwards processes launched
        from this state dir (found by their marker) are swept too.

        Returns a StopOutcome (`was_running` False when there was nothing). Raises
        BackendError when processes are left (the record is then `failed`, with the fix
        `llm-backend stop --force`) or when a cancelled start did not let go in time.
        """
        started = time.monotonic()
        lock = self.store.instance_lock
        cancelled = False
        marked: InstanceRecord | None = None
        if not lock.acquire(blocking=False, holder="stop"):
            cancelled, marked = self._cancel_holder(force=force, grace_s=grace_s)
        try:
            outcome = self._stop_locked(force=force, grace_s=grace_s)
        finally:
            lock.release()
            self.store.clear_stop_request()
        if cancelled:
            return StopOutcome(
                was_running=True,
                profile=outcome.profile or (marked.profile if marked else None),
                killed=outcome.killed, duration_s=time.monotonic() - started,
                unrecorded=outcome.unrecorded, cancelled_start=True, router=outcome.router,
            )
        return outcome

    def _cancel_holder(
        self, *, force: bool, grace_s: float | None
    ) -> tuple[bool, InstanceRecord | None]:
        """Another command holds the instance lock: cancel it when it is a start (or
        restart), then wait for the lock. Returns whether a start was cancelled and the
        record it marked stopping (None when the start had not recorded one yet)."""
        lock = self.store.instance_lock
        holder_pid, command = lock.holder_info()
        me_pid, me_create = _me()
        marked: InstanceRecord | None = None
        cancelling = command in ("start", "restart", "")
        if cancelling:
            self.store.request_stop(pid=me_pid, create_time=me_create)

            def mark(current: InstanceRecord | None) -> InstanceRecord | None:
                if current is None or current.state not in ACTIVE_STATES:
                    raise StateConflict("nothing to mark", current=current)
                return current.evolve(state=State.STOPPING)

            with contextlib.suppress(StateConflict):
                marked = self.store.modify(mark)
            if force and marked is not None:
                with contextlib.suppress(BackendError):
                    self.runtime(marked.runtime).stop(record=marked, grace_s=0, force=True)
            if holder_pid is not None and holder_pid != me_pid:
                holder = process_matches(holder_pid, lock.holder_start_time())
                if holder is not None and _is_our_command(holder):
                    with contextlib.suppress(psutil.Error):
                        holder.terminate()
                        holder.resume()  # a stopped (SIGSTOP) start must see it too
        grace = grace_s if grace_s is not None else (
            marked.stop_grace_s if marked is not None and marked.stop_grace_s is not None
            else DEFAULT_STOP_GRACE_S
        )
        wait_s = grace + CANCEL_WAIT_S
        if not lock.acquire(timeout_s=wait_s, holder="stop"):
            self.store.clear_stop_request()
            raise BackendError(
                f"`llm-backend {command or 'start'}` (pid {holder_pid}) did not let go of "
                f"{lock.path} within {wait_s:.0f} s",
                remedy=f"wait for it and run `llm-backend stop` again (or kill {holder_pid})",
            )
        return cancelling, marked

    def _stop_locked(self, *, force: bool, grace_s: float | None) -> StopOutcome:
        record = self.refresh()
        if record is None or record.state == State.STOPPED:
            return self._sweep_unrecorded(force=force, grace_s=grace_s, profile=None)
        runtime = self.runtime(record.runtime)
        runtime.verify(record=record)  # a record naming what is not ours: refused, untouched
        if grace_s is None:
            grace_s = _grace(record, None, resolve=self._resolve_quietly)
        router: dict[str, Any] | None = None
        if record.runtime_info.get("router") and not force:
            drained = self._resolve_quietly(record.profile)
            router = self._leave_router(
                record, drained.drain_timeout_s if drained is not None else 30.0
            )
        me_pid, me_create = _me()
        unwritten = False
        try:
            if record.state != State.STOPPING:
                record = self.store.transition(
                    record, State.STOPPING, owner_pid=me_pid, owner_create_time=me_create
                )
            else:
                record = self.store.update(record, owner_pid=me_pid,
                                           owner_create_time=me_create) or record
        except StateDirError:
            # A full or read-only state dir: stop the server anyway (a stale record is
            # better than a server out of reach); the record is removed afterwards.
            unwritten = True
        result = runtime.stop(record=record, grace_s=grace_s, force=force)
        swept = self._sweep_unrecorded(force=force, grace_s=grace_s, profile=record.profile)
        leftovers = [*result.leftovers, *swept.leftovers]
        if leftovers:
            with contextlib.suppress(StateConflict):
                self.store.transition(
                    record, State.FAILED,
                    failure=_failure(FailureClass.EXITED,
                                     f"processes left after stop: {', '.join(leftovers)}",
                                     "llm-backend stop --force"),
                )
            raise BackendError(
                f"stop left processes running: {', '.join(leftovers)}",
                remedy="llm-backend stop --force",
            )
        with contextlib.suppress(StateConflict):
            if unwritten:  # removing the file needs no free space
                self.store.modify(lambda current: None if record.same_instance(current)
                                  else current)
            else:
                self.store.transition(record, State.STOPPED)
        return StopOutcome(
            was_running=result.was_running or swept.was_running,
            profile=record.profile,
            killed=result.killed or swept.killed,
            duration_s=result.duration_s + swept.duration_s,
            unrecorded=swept.unrecorded,
            router=router,
        )

    def _sweep_unrecorded(self, *, force: bool, grace_s: float | None,
                          profile: str | None) -> StopOutcome:
        """Stop what was launched from this state dir and is left: processes (by their
        marker) and what runtimes find by their own marks (containers, by their labels)."""
        grace = grace_s if grace_s is not None else DEFAULT_STOP_GRACE_S
        names: list[str] = []
        leftovers: list[str] = []
        killed = was_running = False
        duration_s = 0.0
        for runtime in self._all_runtimes():
            try:
                described = runtime.unrecorded(record=None)
                swept = runtime.stop_unrecorded(grace_s=grace, force=force)
            except BackendError as error:
                leftovers.append(f"{runtime.name}: {error.message}")
                continue
            names += described
            leftovers += swept.leftovers
            killed = killed or swept.killed
            was_running = was_running or swept.was_running or bool(described)
            duration_s += swept.duration_s
        found = marked_processes(self.store.root)
        if found:
            names += [f"pid {process.pid}" for process in found]
            result = stop_tree(
                found, grace_s=grace, force=force,
                rescan=lambda: marked_processes(self.store.root),
            )
            leftovers += result.leftovers
            killed = killed or result.killed
            was_running = True
            duration_s += result.duration_s
        return StopOutcome(
            was_running=was_running, profile=profile, killed=killed,
            duration_s=duration_s, leftovers=leftovers, unrecorded=names,
        )

    def _resolve_quietly(self, name: str) -> Profile | None:
        try:
            return self.resolve(name).profile
        except BackendError:
            return None

    # --- restart -----------------------------------------------------------------------

    def restart(
        self,
        *,
        on_event: Callable[[MonitorEvent], None] = lambda event: None,
        on_notice: Callable[[str], None] = lambda text: None,
        ensure_binary: Callable[[Profile], None] | None = None,
    ) -> StartResult:
        """Stop the backend, then start it as it was started: same profile, overrides,
        host-preparation choice, skipped checks, and the config of the directory that
        start ran in. Everything is resolved before anything is stopped, so a restart that
        cannot start leaves the backend running. Raises what `start` raises, and
        NotRunningError (exit 3) when no backend is recorded."""
        with self.store.start_lock("restart"), signals_raise():
            record = self.refresh()
            if record is None:
                raise NotRunningError(
                    "nothing to restart: no backend is recorded", remedy="llm-backend start"
                )
            options = StartOptions.from_record(record)
            try:
                config = self._config_of(options)
                profile = config.resolve(options.profile, options.overrides).profile
                self._skip(options)
                engine = get_engine(profile.engine)
                runtime = self.runtime(profile.runtime)
                for_container = runtime.in_container
                engine.check_profile(profile=profile, for_container=for_container)
                check_engine_flags(profile, engine, for_container=for_container)
                runtime.check(profile=profile)
            except BackendError as error:
                error.message = (
                    f"{error.message}; nothing was stopped ({record.profile} is still "
                    f"{record.state})"
                )
                error.args = (error.message,)
                raise
            try:
                stopped = self._stop_locked(force=False, grace_s=None)
                if stopped.router:
                    on_notice(describe_leave(stopped.router))
                return self._start_locked(
                    options, on_event=on_event, on_notice=on_notice,
                    ensure_binary=ensure_binary, config=config,
                )
            except Interrupted as interrupt:
                self._raise_if_cancelled(options.profile, interrupt)
                raise

    def _config_of(self, options: StartOptions) -> ConfigSet:
        """The config a recorded start read: its directory's, else this lifecycle's."""
        if options.config_dir and Path(options.config_dir).is_dir():
            return load_config(Path(options.config_dir))
        return self.config

    def pulled(self, *, otherwise: Callable[[], tuple[str, dict[str, Any] | None]]) -> LocalReport:
        """What the profile `status` is about has on this machine, judged from the local cache
        alone (`pull.local_report`: no network, quick enough for every `status`).

        The profile is the recorded backend's, resolved as its start resolved it (profile,
        overrides, config directory); with no record, the one `otherwise()` names (the one
        `start` would use, with its overrides). Never raises for a profile that does not
        resolve: the report carries the error.
        """
        from llm_backend.pull import LocalReport, local_report

        record = self.store.load_instance()
        name: str | None = record.profile if record is not None else None
        try:
            if record is not None:
                options = StartOptions.from_record(record)
                overrides: dict[str, Any] | None = options.overrides
                profile = self._config_of(options).resolve(options.profile, overrides).profile
            else:
                name, overrides = otherwise()
                profile = self.resolve(name, overrides).profile
        except BackendError as error:
            return LocalReport(name, record.runtime if record else None, error=error.message,
                               remedy=error.remedy)
        return local_report(profile, runtime_chosen=bool(overrides and "runtime" in overrides))

    def running_record(self) -> InstanceRecord:
        """The ready backend, or a NotRunningError with the `start` fix."""
        record = self.refresh()
        if record is None or record.state != State.READY:
            state = record.state if record else State.STOPPED
            raise NotRunningError(
                f"the backend is not running (state: {state})",
                remedy="llm-backend start",
            )
        return record


def _router_membership(record: InstanceRecord) -> dict[str, Any]:
    """`router`: where this server is registered ({} when it joined none)."""
    joined = record.runtime_info.get("router")
    if not isinstance(joined, dict):
        return {}
    return {"router": {key: joined.get(key) for key in ("router_url", "worker_url", "model_id")}}


def describe_leave(left: dict[str, Any]) -> str:
    """One line on how a server left its router (StopOutcome.router)."""
    drained = "drained" if left.get("drained") else f"{left.get('in_flight_left')} still in flight"
    removed = "removed" if left.get("removed") else "was not registered"
    return (
        f"left the router at {left.get('router_url')} ({removed}; {drained} "
        f"after {float(left.get('waited_s') or 0):.1f}s)"
    )


def launch_env(profile: Profile, engine: Engine) -> dict[str, str]:
    """The engine's environment for this profile (multi-node interface settings), then the
    profile's own `env`, which wins."""
    host_ip = None
    if profile.distributed.interface:
        from llm_backend.cluster.network import interface_ipv4

        host_ip = interface_ipv4(profile.distributed.interface)
    return {**engine.launch_env(profile=profile, host_ip=host_ip), **profile.env}


def _cancelled(profile_name: str, **details: Any) -> StartCancelled:
    """The one message of a start that `stop` cancelled, whichever step it was at."""
    return StartCancelled(
        f"the start of {profile_name} was cancelled by `llm-backend stop`; "
        "its server (if any) was stopped and its host changes undone",
        remedy="llm-backend start",
        details=details,
    )


def _owner_alive(record: InstanceRecord) -> bool:
    """Whether the command that owns the record (its start, or its stop) still runs."""
    return process_matches(record.owner_pid, record.owner_create_time) is not None


def _session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def _is_our_command(process: psutil.Process) -> bool:
    """An llm-backend command (not an unrelated process that reused a pid)."""
    try:
        return any("llm_backend" in part or "llm-backend" in part for part in process.cmdline())
    except psutil.Error:
        return False


def _grace(record: InstanceRecord, profile: Profile | None,
           resolve: Callable[[str], Profile | None] | None = None) -> float:
    if profile is not None:
        return profile.stop_grace_s
    if record.stop_grace_s is not None:
        return record.stop_grace_s
    resolved = resolve(record.profile) if resolve is not None else None
    return resolved.stop_grace_s if resolved is not None else DEFAULT_STOP_GRACE_S


def _stop_requested_check(
    store: StateStore, record: InstanceRecord, interval_s: float = 0.25
) -> Callable[[], Failure | None]:
    """A monitor check: `stop` marked the record stopping (or it is gone), so the load ends
    now. Works also when `stop` runs in this process (serve), where no signal comes."""
    next_check = [0.0]

    def check() -> Failure | None:
        now = time.monotonic()
        if now < next_check[0]:
            return None
        next_check[0] = now + interval_s
        current = store.load_instance()
        if current is None or not record.same_instance(current) or (
            current.state == State.STOPPING
        ):
            return Failure(FailureClass.EXITED,
                           "stopped by `llm-backend stop` while loading", "llm-backend start")
        return None

    return check


def _phase_recorder(
    store: StateStore, record: InstanceRecord, on_event: Callable[[MonitorEvent], None]
) -> Callable[[MonitorEvent], None]:
    """Keep the record's `phase` current for `status` while forwarding events to the display."""

    def handle(event: MonitorEvent) -> None:
        if event.kind == "phase" and event.phase:
            store.update(record, states=frozenset({State.LOADING}), phase=event.phase)
        on_event(event)

    return handle


def check_engine_flags(profile: Profile, engine: Engine, *, for_container: bool) -> str | None:
    """Preflight of the engine's flags (its own parser or table): raises a bad_flag ConfigError
    before anything on the host changes; returns a line that says what checked them."""
    return engine.check_flags(profile=profile, for_container=for_container)


def _download_paths(engine: Engine, profile: Profile, runtime: Runtime) -> list[Path]:
    """Folders whose growth shows a download inside the load (none when they cannot be known)."""
    try:
        return engine.download_paths(profile=profile, runtime=runtime)
    except BackendError:
        return []
