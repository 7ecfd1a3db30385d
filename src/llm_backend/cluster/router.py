"""sglang-router (PyPI `sglang-router`, pinned 0.3.2) as a process we own.

`llm-backend router start|stop|status|logs`: the router runs in a process group of its own
(the native runtime's `spawn_group`), is recorded by PID and start time in `router.json` in
the state dir (written only here), is ready once `/readiness` answers, logs into
`router/router.log`, and stops with SIGTERM, `stop_grace_s`, then SIGKILL.

Flags come from `python -m sglang_router.launch_router --help` at 0.3.2: its defaults bind
0.0.0.0 (`--host`, `--prometheus-host`) and wait 180 s for requests on shutdown
(`--shutdown-grace-period-secs`); we pass loopback and our own grace unless the `[router]`
table says otherwise.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_backend.cluster.router_api import RouterClient, Worker
from llm_backend.config import RouterConfig
from llm_backend.errors import BackendError
from llm_backend.logtail import log_tail
from llm_backend.net import url_host
from llm_backend.probes import check_port_free
from llm_backend.processes import process_matches
from llm_backend.runtimes.native import spawn_group, stop_group
from llm_backend.state import StateStore, atomic_write_json, read_json

ROUTER_FILE = "router.json"
WORKERS_FILE = "workers.json"  # in the router's folder: the members it had, for a restart
ROUTER_LOCK = "router.lock"
LAUNCH_MODULE = "sglang_router.launch_router"
PINNED_VERSION = "0.3.2"


# 0.3.2 refuses to start power_of_two without workers ("Power-of-two policy requires at least
# 2 workers"): those start with their members on the command line.
MIN_WORKERS_AT_START = {"power_of_two": 2}


def router_argv(config: RouterConfig, worker_urls: list[str] | None = None) -> list[str]:
    """The command that runs sglang-router 0.3.2 with this config (and initial workers)."""
    python = config.python or sys.executable
    initial = ["--worker-urls", *worker_urls] if worker_urls else []
    return [
        python, "-m", LAUNCH_MODULE,
        "--host", config.host,
        "--port", str(config.port),
        "--policy", config.policy,
        "--prometheus-host", config.prometheus_host,
        "--prometheus-port", str(config.prometheus_port),
        "--health-check-interval-secs", str(config.health_check_interval_s),
        "--health-check-timeout-secs", str(config.health_check_timeout_s),
        "--health-failure-threshold", str(config.health_failure_threshold),
        "--health-success-threshold", str(config.health_success_threshold),
        "--request-timeout-secs", str(config.request_timeout_s),
        "--shutdown-grace-period-secs", str(max(1, int(config.stop_grace_s))),
        "--log-level", config.log_level,
        *initial,
        *config.extra_args,
    ]


@dataclass(frozen=True)
class RouterRecord:
    """The router we started, as `router.json` keeps it."""

    state: str  # "starting" | "ready" | "failed"
    url: str
    host: str
    port: int
    prometheus: str
    policy: str
    argv: list[str]
    log_path: str
    started_at: float
    pid: int | None = None
    pid_create_time: float | None = None
    ready_at: float | None = None
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouterRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class RouterStartResult:
    outcome: str  # "started" | "already_running"
    url: str
    pid: int | None
    policy: str
    prometheus: str
    duration_s: float
    log_path: str
    reregistered: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RouterStopResult:
    was_running: bool
    killed: bool
    duration_s: float
    remembered: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RouterStatus:
    """`router status --json` renders exactly these fields."""

    state: str  # "stopped" | "starting" | "ready" | "failed"
    url: str | None = None
    pid: int | None = None
    policy: str | None = None
    prometheus: str | None = None
    uptime_s: float | None = None
    readiness: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    log_path: str | None = None
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RouterManager:
    """Start, stop and inspect the one router recorded in a state dir."""

    def __init__(self, *, store: StateStore, config: RouterConfig) -> None:
        self.store = store
        self.config = config

    @property
    def record_path(self) -> Path:
        return self.store.root / ROUTER_FILE

    @property
    def folder(self) -> Path:
        # Its own folder: `llm-backend logs` picks the newest file in logs/ for the server.
        path = self.store.root / "router"
        path.mkdir(exist_ok=True)
        return path

    @property
    def log_path(self) -> Path:
        return self.folder / "router.log"

    def remembered_workers(self) -> list[dict[str, str]]:
        """The members the router had when it was last stopped or inspected."""
        data = read_json(self.folder / WORKERS_FILE)
        if not isinstance(data, list):
            return []
        return [
            {"url": str(item["url"]), "model_id": str(item.get("model_id") or "")}
            for item in data
            if isinstance(item, dict) and isinstance(item.get("url"), str)
        ]

    def _remember(self, workers: list[Worker]) -> None:
        rows = [{"url": w.url, "model_id": w.model_id or ""} for w in workers]
        with self.store.locked(ROUTER_LOCK):
            atomic_write_json(self.folder / WORKERS_FILE, rows)

    def load(self) -> RouterRecord | None:
        data = read_json(self.record_path)
        if not isinstance(data, dict):
            return None
        try:
            return RouterRecord.from_json(data)
        except TypeError:
            return None

    def _save(self, record: RouterRecord) -> None:
        with self.store.locked(ROUTER_LOCK):
            atomic_write_json(self.record_path, record.to_json())

    def _clear(self) -> None:
        with self.store.locked(ROUTER_LOCK):
            self.record_path.unlink(missing_ok=True)

    def alive(self, record: RouterRecord) -> bool:
        return process_matches(record.pid, record.pid_create_time) is not None

    # --- start --------------------------------------------------------------------------

    def start(self) -> RouterStartResult:
        started = time.monotonic()
        current = self.load()
        if current is not None and self.alive(current):
            return RouterStartResult(
                outcome="already_running", url=current.url, pid=current.pid,
                policy=current.policy, prometheus=current.prometheus, duration_s=0.0,
                log_path=current.log_path,
            )
        config = self.config
        # Preflight: both ports must be free before anything starts.
        check_port_free(config.host, config.port, elsewhere="start the router on another "
                        "port: llm-backend router start --port {port}")
        if config.prometheus_port == config.port and config.prometheus_host == config.host:
            raise BackendError(
                f"the router and its Prometheus endpoint both want port {config.port}",
                remedy="set a different [router] prometheus_port in ./llm-backend.toml",
            )
        check_port_free(config.prometheus_host, config.prometheus_port,
                        elsewhere="set prometheus_port = {port} under [router] in "
                        "./llm-backend.toml")
        remembered = self.remembered_workers()
        needed = MIN_WORKERS_AT_START.get(config.policy, 0)
        initial: list[str] = []
        if needed:
            if len(remembered) < needed:
                raise BackendError(
                    f"sglang-router {PINNED_VERSION} cannot start the {config.policy} policy "
                    f"with {len(remembered)} known workers (it needs {needed} at start)",
                    remedy="start it with --policy cache_aware (or round_robin), let the "
                    f"members join, then `router stop` and `router start --policy "
                    f"{config.policy}`: a restarted router starts with the members it had",
                )
            initial = [worker["url"] for worker in remembered]
        argv = router_argv(config, initial)
        self.log_path.write_bytes(b"")
        launched = spawn_group(argv=argv, env={"NO_COLOR": "1"}, log_path=self.log_path)
        record = RouterRecord(
            state="starting",
            url=config.url,
            host=config.host,
            port=config.port,
            prometheus=f"{url_host(config.prometheus_host)}:{config.prometheus_port}",
            policy=config.policy,
            argv=argv,
            log_path=str(self.log_path),
            started_at=time.time(),
            pid=launched.pid,
            pid_create_time=launched.pid_create_time,
        )
        self._save(record)
        client = RouterClient(config.url, timeout_s=1.0)
        deadline = time.monotonic() + config.start_timeout_s
        while True:
            if not self.alive(record):
                tail = log_tail(self.log_path, 15)
                self._save(replace(record, state="failed", failure="exited while starting"))
                raise BackendError(
                    "sglang-router exited while starting: "
                    + (strip_ansi(tail[-1]) if tail else "no output"),
                    remedy="read `llm-backend router logs`; check the [router] table "
                    f"(its python needs sglang-router=={PINNED_VERSION})",
                    details={"log_tail": [strip_ansi(line) for line in tail]},
                )
            try:
                status, body = client.readiness()
            except BackendError:
                status, body = None, {}
            # 503 "insufficient healthy workers" is an up router without members yet.
            if status is not None and "status" in body:
                break
            if time.monotonic() >= deadline:
                stop_group(pid=record.pid, create_time=record.pid_create_time, grace_s=2)
                self._save(replace(record, state="failed", failure="no /readiness answer"))
                raise BackendError(
                    f"sglang-router did not answer /readiness at {config.url} within "
                    f"{config.start_timeout_s:.0f} s",
                    remedy="read `llm-backend router logs`, or raise [router] start_timeout_s",
                )
            time.sleep(0.1)
        self._save(replace(record, state="ready", ready_at=time.time()))
        # The router keeps its members in memory only: give it back the ones it had. It
        # checks each in the background and routes to it once healthy.
        reregistered = []
        for worker in remembered:
            if worker["url"] in initial:
                reregistered.append(worker["url"])
                continue
            try:
                client.register(url=worker["url"], model_id=worker["model_id"])
                reregistered.append(worker["url"])
            except BackendError:
                continue
        return RouterStartResult(
            outcome="started", url=record.url, pid=record.pid, policy=record.policy,
            prometheus=record.prometheus, duration_s=time.monotonic() - started,
            log_path=record.log_path, reregistered=reregistered,
        )

    # --- stop ---------------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> RouterStopResult:
        record = self.load()
        if record is None:
            return RouterStopResult(was_running=False, killed=False, duration_s=0.0)
        remembered: list[str] = []
        if self.alive(record):
            try:
                workers = RouterClient(record.url, timeout_s=2.0).workers()
                self._remember(workers)
                remembered = [w.url for w in workers]
            except BackendError:
                pass
        result = stop_group(
            pid=record.pid, create_time=record.pid_create_time,
            grace_s=self.config.stop_grace_s, force=force,
        )
        if result.leftovers:
            raise BackendError(
                f"router stop left processes running: {', '.join(result.leftovers)}",
                remedy="llm-backend router stop --force",
            )
        self._clear()
        return RouterStopResult(
            was_running=result.was_running, killed=result.killed, duration_s=result.duration_s,
            remembered=remembered,
        )

    # --- status -------------------------------------------------------------------------

    def status(self) -> RouterStatus:
        record = self.load()
        if record is None:
            return RouterStatus(state="stopped")
        base = RouterStatus(
            state=record.state, url=record.url, pid=record.pid, policy=record.policy,
            prometheus=record.prometheus, log_path=record.log_path, failure=record.failure,
        )
        if not self.alive(record):
            if record.state == "failed":
                return base
            return replace(base, state="failed", failure="the router process is gone")
        client = RouterClient(record.url, timeout_s=2.0)
        try:
            _, readiness = client.readiness()
            workers = client.workers()
            loads = client.loads()
        except BackendError as error:
            return replace(base, failure=error.message)
        if workers:
            self._remember(workers)
        return replace(
            base,
            uptime_s=round(time.time() - record.ready_at, 1) if record.ready_at else None,
            readiness=readiness,
            workers=[worker_row(worker, loads) for worker in workers],
        )

    def logs(self, lines: int) -> list[str]:
        record = self.load()
        path = record.log_path if record else self.log_path
        return [strip_ansi(line) for line in log_tail(path, lines)]


def worker_row(worker: Worker, loads: dict[str, int]) -> dict[str, Any]:
    """A worker's registry entry plus the load it last reported (`/get_loads`)."""
    row = worker.to_json()
    row["in_flight"] = row.pop("load")
    reported = loads.get(worker.url)
    row["reported_load"] = reported if reported is not None and reported >= 0 else None
    return row


def strip_ansi(text: str) -> str:
    """sglang-router colours its log even into a file."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
