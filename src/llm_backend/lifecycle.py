"""start / stop / restart / status: the state machine and its one owner of the instance record.

stopped -> preparing_host -> launching -> loading -> ready -> stopping -> stopped,
and failed from any step.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psutil

from llm_backend.config import ConfigSet, Profile, ResolvedProfile, load_config
from llm_backend.engines import get_engine
from llm_backend.engines.base import Engine, Failure
from llm_backend.engines.base import http_get as _get
from llm_backend.errors import BackendError, NotRunningError, StartFailed
from llm_backend.monitor import Monitor, MonitorEvent, MonitorResult
from llm_backend.net import can_bind
from llm_backend.runtimes import get_runtime
from llm_backend.runtimes.base import LaunchSpec, Runtime
from llm_backend.runtimes.native import process_matches
from llm_backend.state import InstanceRecord, StateStore, open_log

# "alive": a member that serves no API of its own and is up (a multi-node follower rank whose
# health endpoint answers once its weights are in); it never becomes "ready".
STATES = (
    "stopped", "preparing_host", "launching", "loading", "ready", "alive", "stopping", "failed",
)

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "stopped": frozenset({"preparing_host", "launching"}),
    "preparing_host": frozenset({"launching", "failed", "stopping"}),
    "launching": frozenset({"loading", "failed", "stopping"}),
    "loading": frozenset({"ready", "alive", "failed", "stopping"}),
    "ready": frozenset({"stopping", "failed"}),
    "alive": frozenset({"stopping", "failed"}),
    "stopping": frozenset({"stopped", "failed"}),
    "failed": frozenset({"stopping", "stopped", "preparing_host", "launching"}),
}

ACTIVE_STATES = frozenset({"preparing_host", "launching", "loading", "ready", "alive"})
UP_STATES = frozenset({"ready", "alive"})


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


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while `start` was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class StartResult:
    """What `start` did: started, already running, or (dry run) what it would do."""

    outcome: str  # "started" | "already_running" | "dry_run"
    profile: str
    engine: str
    runtime: str
    endpoint: str
    served_model_name: str
    pid: int | None = None
    duration_s: float | None = None
    argv: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    host_restored: list[str] = field(default_factory=list)
    state: str = "ready"


@dataclass(frozen=True)
class StopOutcome:
    """What `stop` did."""

    was_running: bool
    profile: str | None
    killed: bool
    duration_s: float
    leftovers: list[str] = field(default_factory=list)
    host_restored: list[str] = field(default_factory=list)
    router: dict[str, Any] | None = None  # left the router: removed, drained, waited_s


@dataclass(frozen=True)
class Status:
    """The backend as seen now; `status --json` renders exactly these fields."""

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

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "extra"}
        data.update(self.extra)
        return data


def port_holder(host: str, port: int) -> str | None:
    """Who listens on host:port (pid and name when the OS tells us), or None if it is free."""
    if can_bind(host, port):
        return None
    with contextlib.suppress(psutil.AccessDenied, OSError):
        for connection in psutil.net_connections(kind="inet"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
            ):
                if connection.pid:
                    try:
                        name = psutil.Process(connection.pid).name()
                    except psutil.NoSuchProcess:
                        name = "?"
                    return f"pid {connection.pid} ({name})"
                return "another process"
    return "another process"


def check_port_free(host: str, port: int) -> None:
    holder = port_holder(host, port)
    if holder is not None:
        raise BackendError(
            f"port {port} on {host} is already in use by {holder}",
            remedy=f"stop {holder}, or start on another port: llm-backend start --port {port + 1}",
            failure_class="port_in_use",
        )


class Lifecycle:
    """Start, stop and inspect the one backend recorded in a state dir."""

    def __init__(
        self,
        *,
        store: StateStore | None = None,
        config: ConfigSet | None = None,
        host_prep_factory: HostPrepFactory | None = None,
        host_status: Callable[[StateStore], dict[str, Any] | None] | None = None,
    ) -> None:
        self.store = store or StateStore()
        self._config = config
        self.host_prep_factory = host_prep_factory
        self.host_status = host_status
        self._runtimes: dict[str, Runtime] = {}

    @property
    def config(self) -> ConfigSet:
        if self._config is None:
            self._config = load_config()
        return self._config

    def runtime(self, name: str) -> Runtime:
        if name not in self._runtimes:
            self._runtimes[name] = get_runtime(name)
        return self._runtimes[name]

    def resolve(self, name: str, overrides: dict[str, Any] | None = None) -> ResolvedProfile:
        return self.config.resolve(name, overrides)

    # --- the state machine -------------------------------------------------------------

    def transition(self, record: InstanceRecord, state: str, **changes: Any) -> InstanceRecord:
        """Move the record to `state` if the table allows it, and persist it."""
        if state not in ALLOWED_TRANSITIONS.get(record.state, frozenset()):
            raise BackendError(
                f"internal: transition {record.state} -> {state} is not allowed",
                remedy="report this as a bug, with `llm-backend status --json`",
            )
        updated = record.evolve(state=state, **changes)
        self.store.save_instance(updated)
        return updated

    # --- start -------------------------------------------------------------------------

    def start(
        self,
        *,
        profile_name: str,
        overrides: dict[str, Any] | None = None,
        dry_run: bool = False,
        host_prep: bool = True,
        on_event: Callable[[MonitorEvent], None] = lambda event: None,
        on_notice: Callable[[str], None] = lambda text: None,
        ensure_binary: Callable[[Profile], None] | None = None,
    ) -> StartResult:
        resolved = self.resolve(profile_name, overrides)
        profile = resolved.profile
        engine = get_engine(profile.engine)
        runtime = self.runtime(profile.runtime)
        for_container = runtime.in_container
        preparation = (
            self.host_prep_factory(profile, self.store)
            if host_prep and profile.host_prep.enabled and self.host_prep_factory
            else None
        )
        if dry_run:
            engine.check_profile(profile=profile, for_container=for_container)
            flag_note = check_engine_flags(profile, engine, for_container=for_container)
            argv = engine.build_argv(profile=profile, for_container=for_container)
            plan = [f"launch ({profile.runtime}): {line}" for line in runtime.describe(
                profile=profile, argv=argv)]
            if flag_note:
                plan.insert(0, flag_note)
            if profile.client_endpoint != profile.endpoint:
                plan.append(
                    f"health polled at {profile.client_endpoint}{engine.health_path} "
                    f"(the server binds {profile.host})"
                )
            host_plan = preparation.plan() if preparation else []
            return StartResult(
                outcome="dry_run",
                profile=profile.name,
                engine=profile.engine,
                runtime=profile.runtime,
                endpoint=profile.endpoint,
                served_model_name=profile.model_name,
                argv=argv,
                plan=[*host_plan, *plan],
                state="stopped",
            )

        with self.store.start_lock():
            current = self.refresh()
            if current is not None and current.state in ACTIVE_STATES:
                return StartResult(
                    outcome="already_running",
                    profile=current.profile,
                    engine=current.engine,
                    runtime=current.runtime,
                    endpoint=current.endpoint,
                    served_model_name=current.served_model_name,
                    pid=current.pid,
                    state=current.state,
                )
            # Preflight: nothing on the host changes until every check passed.
            if ensure_binary is not None and not for_container:
                ensure_binary(profile)
            engine.check_profile(profile=profile, for_container=for_container)
            flag_note = check_engine_flags(profile, engine, for_container=for_container)
            if flag_note:
                on_notice(flag_note)
            runtime.check(profile=profile)
            if not runtime.will_adopt(profile=profile):  # an adopted server holds the port
                check_port_free(profile.host, profile.port)
            if preparation:
                preparation.check()
            argv = engine.build_argv(profile=profile, for_container=for_container)
            env = launch_env(profile, engine)  # a missing fast interface fails here
            return self._launch_and_watch(
                profile=profile,
                engine=engine,
                runtime=runtime,
                argv=argv,
                env=env,
                overrides=overrides or {},
                preparation=preparation,
                on_event=on_event,
                on_notice=on_notice,
            )

    def _launch_and_watch(
        self,
        *,
        profile: Profile,
        engine: Engine,
        runtime: Runtime,
        argv: list[str],
        env: dict[str, str],
        overrides: dict[str, Any],
        preparation: HostPreparation | None,
        on_event: Callable[[MonitorEvent], None],
        on_notice: Callable[[str], None],
    ) -> StartResult:
        log_path = self.store.logs_dir() / f"{profile.name}.log"
        os.close(open_log(log_path, truncate=True))  # never through a symlink
        me = psutil.Process()
        record = InstanceRecord(
            profile=profile.name,
            engine=profile.engine,
            runtime=profile.runtime,
            state="stopped",
            host=profile.host,
            port=profile.port,
            served_model_name=profile.model_name,
            argv=argv,
            log_path=str(log_path),
            created_at=time.time(),
            owner_pid=me.pid,
            owner_create_time=me.create_time(),
            runtime_info={"overrides": overrides},
        )
        restored: list[str] = []
        with _signals_raise():
            try:
                if preparation:
                    record = self.transition(record, "preparing_host")
                    preparation.apply()
                record = self.transition(record, "launching")
                # Signals wait until the record names what was launched, so an interrupt
                # can always find the server to stop.
                with _signals_deferred():
                    launched = runtime.launch(
                        spec=LaunchSpec(
                            profile=profile,
                            argv=argv,
                            env=env,
                            log_path=log_path,
                            health_path=engine.health_path,
                            state_dir=self.store.root,
                        )
                    )
                    record = record.evolve(
                        pid=launched.pid,
                        pid_create_time=launched.pid_create_time,
                        runtime_info={**record.runtime_info, **launched.runtime_info},
                    )
                    record = self.transition(record, "loading")
                monitor = Monitor(
                    engine=engine,
                    base_url=profile.client_endpoint,
                    log_path=log_path,
                    is_alive=lambda: runtime.is_alive(record=record),
                    exit_code=lambda: runtime.exit_code(record=record),
                    load_timeout_s=profile.load_timeout_s,
                    stall_timeout_s=profile.stall_timeout_s,
                    expected_total_s=self.store.last_start_duration(profile.name)
                    or profile.expected_load_s,
                    on_event=_phase_recorder(self, on_event),
                    checks=[preparation.guard] if preparation else [],
                    download_paths=_download_paths(engine, profile, runtime),
                )
                result = monitor.run()
            except BaseException as error:
                self._abort(record, runtime, profile, preparation, error)
                raise
            if not result.ready:
                self._fail(record, runtime, profile, result, preparation)
            if preparation:
                restored = preparation.restore()
            role = engine.health_role(profile=profile)
            record = self.transition(
                self.store.load_instance() or record,
                role,
                ready_at=time.time(),
                start_duration_s=round(result.duration_s, 3),
                phase=role,
            )
            self.store.record_start(profile.name, result.duration_s, result.phase_offsets)
            if profile.router_url and role == "ready":
                record = self._join_router(record, profile, on_notice)
        return StartResult(
            outcome="started",
            profile=profile.name,
            engine=profile.engine,
            runtime=profile.runtime,
            endpoint=profile.endpoint,
            served_model_name=profile.model_name,
            pid=record.pid,
            duration_s=result.duration_s,
            argv=argv,
            host_restored=restored,
            state=record.state,
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
        updated = record.evolve(
            runtime_info={**record.runtime_info, "router": membership.to_json()}
        )
        self.store.save_instance(updated)
        return updated

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

    def _fail(
        self,
        record: InstanceRecord,
        runtime: Runtime,
        profile: Profile,
        result: MonitorResult,
        preparation: HostPreparation | None,
    ) -> None:
        """Stop the server, undo the host changes, record the failure and raise it."""
        failure = result.failure or Failure("exited", "the server did not become ready", "")
        latest = self.store.load_instance() or record
        if latest.state in ("stopping", "stopped"):
            failure = Failure(
                "exited", "the server was stopped by `llm-backend stop` while loading", "",
            )
        stop = runtime.stop(record=latest, grace_s=profile.stop_grace_s)
        if preparation:
            preparation.restore()
        if latest.state not in ("stopped",):
            with contextlib.suppress(BackendError):
                self.transition(
                    latest,
                    "failed",
                    failure=failure.to_json(),
                    exit_code=result.exit_code,
                )
        raise StartFailed(
            f"{profile.name} did not become ready: {failure.message}",
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
        profile: Profile,
        preparation: HostPreparation | None,
        error: BaseException,
    ) -> None:
        """Interrupted or errored mid-start: stop what started and undo the host changes."""
        with contextlib.suppress(Exception):
            if record.pid is not None or record.runtime_info.get("container"):
                runtime.stop(record=record, grace_s=min(profile.stop_grace_s, 10))
        if preparation:
            with contextlib.suppress(Exception):
                preparation.restore()
        reason = (
            f"interrupted by {error}" if isinstance(error, Interrupted | KeyboardInterrupt)
            else str(error)
        )
        with contextlib.suppress(Exception):
            self.store.save_instance(
                record.evolve(
                    state="failed",
                    failure=Failure("exited", f"start aborted: {reason}", "").to_json(),
                )
            )

    # --- status ------------------------------------------------------------------------

    def refresh(self) -> InstanceRecord | None:
        """The record, brought up to date: adopt a server whose `start` died, notice exits."""
        record = self.store.load_instance()
        if record is None or record.state not in ACTIVE_STATES:
            return record
        runtime = self.runtime(record.runtime)
        alive = runtime.is_alive(record=record)
        owner_alive = process_matches(record.owner_pid, record.owner_create_time) is not None
        if record.state in UP_STATES and not alive:
            return self.transition(
                record,
                "failed",
                failure=Failure(
                    "exited",
                    "the server exited after it was ready",
                    "read `llm-backend logs`, then `llm-backend start`",
                ).to_json(),
            )
        if record.state in ("preparing_host", "launching", "loading") and not owner_alive:
            # Its `start` is gone (killed): nobody else watches this load, so we adopt it.
            if not alive:
                return self.transition(
                    record,
                    "failed",
                    failure=Failure(
                        "exited",
                        "the server is gone and the `start` that launched it was killed",
                        "llm-backend start",
                    ).to_json(),
                )
            engine = get_engine(record.engine)
            if record.state == "loading" and _health(record.client_endpoint, engine)[0] == 200:
                role = self._role(record, engine)
                return self.transition(record, role, ready_at=time.time(), phase=role)
        return record

    def _role(self, record: InstanceRecord, engine: Engine) -> str:
        try:
            return engine.health_role(profile=self.resolve(record.profile).profile)
        except BackendError:
            return "ready"

    def status(self) -> Status:
        record = self.refresh()
        if record is None:
            return Status(state="stopped", host_prep=self._host_prep_status())
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
        health_status, health_ms = _health(record.client_endpoint, engine)
        models = _models(record.client_endpoint, engine) if health_status == 200 else []
        uptime = time.time() - record.ready_at if record.ready_at else None
        return Status(
            **{
                **base.__dict__,
                "uptime_s": round(uptime, 1) if uptime is not None else None,
                "health_ms": health_ms,
                "health_status": health_status,
                "models": models,
                "spec": _spec(record, engine) if health_status == 200 else None,
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
        record = self.store.load_instance()
        if record is None or record.state == "stopped":
            return StopOutcome(was_running=False, profile=None, killed=False, duration_s=0.0)
        runtime = self.runtime(record.runtime)
        if grace_s is None:
            try:
                grace_s = self.resolve(record.profile).profile.stop_grace_s
            except BackendError:
                grace_s = 10.0
        router: dict[str, Any] | None = None
        if record.runtime_info.get("router") and not force:
            try:
                drain_s = self.resolve(record.profile).profile.drain_timeout_s
            except BackendError:
                drain_s = 30.0
            router = self._leave_router(record, drain_s)
        if record.state != "stopping":
            record = self.transition(record, "stopping")
        result = runtime.stop(record=record, grace_s=grace_s, force=force)
        if result.leftovers:
            self.store.save_instance(
                record.evolve(
                    state="failed",
                    failure=Failure(
                        "exited",
                        f"processes left after stop: {', '.join(result.leftovers)}",
                        "llm-backend stop --force",
                    ).to_json(),
                )
            )
            raise BackendError(
                f"stop left processes running: {', '.join(result.leftovers)}",
                remedy="llm-backend stop --force",
            )
        self.transition(record, "stopped")
        self.store.clear_instance()
        return StopOutcome(
            was_running=result.was_running,
            profile=record.profile,
            killed=result.killed,
            duration_s=result.duration_s,
            router=router,
        )

    def restart(
        self,
        *,
        before_start: Callable[[str, dict[str, Any]], None] | None = None,
        **start_kwargs: Any,
    ) -> StartResult:
        """Stop, then start the same profile with the same overrides; `before_start` runs in
        between (the preflight checks, which need the port the old server held)."""
        record = self.store.load_instance()
        if record is None:
            raise NotRunningError(
                "nothing to restart: no backend is recorded",
                remedy="llm-backend start",
            )
        overrides = record.runtime_info.get("overrides") or {}
        stopped = self.stop()
        notice = start_kwargs.get("on_notice")
        if stopped.router and notice is not None:
            notice(describe_leave(stopped.router))
        if before_start is not None:
            before_start(record.profile, overrides)
        return self.start(profile_name=record.profile, overrides=overrides, **start_kwargs)

    def running_record(self) -> InstanceRecord:
        """The ready backend, or a NotRunningError with the `start` fix."""
        record = self.refresh()
        if record is None or record.state != "ready":
            state = record.state if record else "stopped"
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


def _phase_recorder(
    lifecycle: Lifecycle, on_event: Callable[[MonitorEvent], None]
) -> Callable[[MonitorEvent], None]:
    """Keep the record's `phase` current for `status` while forwarding events to the display."""

    def handle(event: MonitorEvent) -> None:
        if event.kind == "phase" and event.phase:
            record = lifecycle.store.load_instance()
            if record is not None and record.state == "loading":
                lifecycle.store.save_instance(record.evolve(phase=event.phase))
        on_event(event)

    return handle


def check_engine_flags(profile: Profile, engine: Engine, *, for_container: bool) -> str | None:
    """Preflight of the engine's flags (its own parser or table): raises a bad_flag ConfigError
    before anything on the host changes; returns a line that says what checked them."""
    return engine.check_flags(profile=profile, for_container=for_container)


def _spec(record: InstanceRecord, engine: Engine) -> dict[str, Any] | None:
    """Speculative-decoding figures: the info endpoint first, else the latest decode log line."""
    stats = engine.read_spec_stats(
        endpoint=record.client_endpoint, log_lines=lambda: log_tail(record.log_path, 400)
    )
    return stats.to_json() if stats is not None else None


def _health(endpoint: str, engine: Engine) -> tuple[int | None, float | None]:
    started = time.perf_counter()
    try:
        status, _ = _get(endpoint + engine.health_path)
    except (OSError, http.client.HTTPException):
        return None, None
    return status, round((time.perf_counter() - started) * 1000, 1)


def _models(endpoint: str, engine: Engine) -> list[str]:
    try:
        status, body = _get(endpoint + engine.models_path)
        data = json.loads(body).get("data", []) if status == 200 else []
        return [str(item.get("id")) for item in data if isinstance(item, dict)]
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return []


# While a list, signals that `start` turns into exceptions are recorded here instead.
_pending_signals: list[int] | None = None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold interrupts back for a critical section; one that came is raised after it.

    Not done with a blocked signal mask: children would inherit it and ignore SIGTERM.
    """
    global _pending_signals
    _pending_signals = []
    try:
        yield
    finally:
        pending, _pending_signals = _pending_signals, None
    if pending:
        raise Interrupted(pending[0])


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM, SIGHUP and SIGINT into an exception so `start` can undo what it did."""

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        if _pending_signals is not None:
            _pending_signals.append(signum)
            return
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[signum] = signal.signal(signum, raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def log_tail(path: str | Path, lines: int) -> list[str]:
    """The last `lines` lines of a log file (none for 0)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(4096, lines * 400))
            handle.seek(size - block)
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-lines:]


def _download_paths(engine: Engine, profile: Profile, runtime: Runtime) -> list[Path]:
    """Folders whose growth shows a download inside the load (none when they cannot be known)."""
    try:
        return engine.download_paths(profile=profile, runtime=runtime)
    except BackendError:
        return []
