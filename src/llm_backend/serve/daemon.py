"""`llm-backend serve`: run the door (uvicorn) and the supervisor until SIGTERM or SIGINT.

SIGTERM/SIGINT (also sent by `llm-backend stop`): stop accepting, let in-flight requests finish
(up to serve.drain_grace_s), stop the backend through the lifecycle, exit 0.
SIGHUP (sent by `llm-backend restart`): restart the backend behind the door.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from llm_backend.config import Profile
from llm_backend.errors import BackendError, ConfigError
from llm_backend.lifecycle import Lifecycle
from llm_backend.net import connect_url
from llm_backend.probes import check_port_free
from llm_backend.serve import control as serve_control
from llm_backend.serve import record as serve_record
from llm_backend.serve.door import Door
from llm_backend.serve.metrics import DoorMetrics
from llm_backend.serve.supervisor import Supervisor
from llm_backend.state import ACTIVE_STATES
from llm_backend.toml_names import profile_table

API_KEYS_ENV = "LLM_BACKEND_API_KEYS"  # comma-separated keys, instead of serve.api_keys_file
RECORD_FLUSH_S = 1.0


@dataclass(frozen=True)
class ServePlan:
    """Where the door listens and where the backend goes, decided before anything starts."""

    profile: Profile
    door_host: str
    door_port: int
    backend_port: int
    backend_overrides: dict[str, Any]

    @property
    def door_url(self) -> str:
        return connect_url(self.door_host, self.door_port)

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def plan(lifecycle: Lifecycle, profile_name: str, port: int | None) -> ServePlan:
    """Check that serve can run here and decide its ports; changes nothing."""
    overrides = {"port": port} if port is not None else None
    profile = lifecycle.resolve(profile_name, overrides).profile
    running = serve_record.load(lifecycle.store)
    if running is not None:
        raise BackendError(
            f"serve already runs (pid {running.pid}, door {running.door})",
            remedy="use it, or stop it first: llm-backend stop",
        )
    current = lifecycle.refresh()
    if current is not None and current.state in ACTIVE_STATES:
        raise BackendError(
            f"a backend started without serve is {current.state} ({current.profile}, "
            f"pid {current.pid})",
            remedy="stop it first (llm-backend stop), then run llm-backend serve",
        )
    backend_port = profile.serve.backend_port or free_loopback_port()
    if backend_port == profile.port:
        raise ConfigError(
            f"profile {profile.name!r}: serve.backend_port = {backend_port} is the door's own "
            "port",
            remedy="set serve.backend_port to another port in "
            f"{profile_table(profile.name, 'serve')}",
        )
    check_port_free(profile.host, profile.port,
                    elsewhere="serve on another port: llm-backend serve --port {port}")
    check_port_free("127.0.0.1", backend_port,
                    elsewhere="set serve.backend_port = {port} in "
                    f"{profile_table(profile.name, 'serve')}")
    # The backend listens on loopback only; a Docker runtime publishes it on loopback only.
    backend_overrides = {
        **(overrides or {}),
        "host": "127.0.0.1",
        "port": backend_port,
        "docker.publish_host": "127.0.0.1",
    }
    return ServePlan(profile, profile.host, profile.port, backend_port, backend_overrides)


def read_api_keys(profile: Profile, environ: dict[str, str] | None = None) -> frozenset[str]:
    """Keys from serve.api_keys_file (one a line, # comments) or LLM_BACKEND_API_KEYS."""
    environ = dict(os.environ if environ is None else environ)
    keys: set[str] = set()
    path_text = profile.serve.api_keys_file
    if path_text:
        path = Path(path_text).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"profile {profile.name!r}: serve.api_keys_file = {path_text!r} cannot be read "
                f"({error.strerror})",
                remedy=f"create it with one key a line and `chmod 600 {path}`, or remove "
                "serve.api_keys_file",
            ) from None
        if mode & (stat.S_IRWXO):
            raise ConfigError(
                f"profile {profile.name!r}: serve.api_keys_file {path} is readable by every "
                "user",
                remedy=f"chmod 600 {path}",
            )
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.add(line)
        if not keys:
            raise ConfigError(
                f"profile {profile.name!r}: serve.api_keys_file {path} holds no key",
                remedy=f"write one key a line into {path}, or remove serve.api_keys_file",
            )
    for item in environ.get(API_KEYS_ENV, "").split(","):
        if item.strip():
            keys.add(item.strip())
    return frozenset(keys)


def fallback_key(profile: Profile, environ: dict[str, str] | None = None) -> str | None:
    name = profile.serve.fallback_api_key_env
    if not name:
        return None
    environ = dict(os.environ if environ is None else environ)
    value = environ.get(name)
    if not value:
        raise ConfigError(
            f"profile {profile.name!r}: serve.fallback_api_key_env = {name!r} but ${name} is "
            "empty or unset",
            remedy=f"export {name}=KEY before `llm-backend serve`, or remove "
            "serve.fallback_api_key_env",
        )
    return value


def run(
    lifecycle: Lifecycle,
    serve_plan: ServePlan,
    *,
    on_line: Callable[[str], None],
    ensure_binary: Callable[[Profile], None] | None = None,
) -> int:
    """Run until stopped; returns the exit code (0 after a graceful stop)."""
    keys = read_api_keys(serve_plan.profile)
    fallback_api_key = fallback_key(serve_plan.profile)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        runner = asyncio.run
    return int(runner(_main(lifecycle, serve_plan, keys, fallback_api_key, on_line,
                            ensure_binary)))


async def _main(
    lifecycle: Lifecycle,
    serve_plan: ServePlan,
    keys: frozenset[str],
    fallback_api_key: str | None,
    on_line: Callable[[str], None],
    ensure_binary: Callable[[Profile], None] | None,
) -> int:
    import uvicorn

    profile = serve_plan.profile
    settings = profile.serve
    metrics = DoorMetrics()
    me = psutil.Process()
    base = serve_record.ServeRecord(
        pid=me.pid,
        pid_create_time=me.create_time(),
        profile=profile.name,
        door=serve_plan.door_url,
        backend=serve_plan.backend_url,
        started_at=time.time(),
        api_keys=bool(keys),
        fallback_url=settings.fallback_url,
        model=profile.model_name,
        max_wait_s=settings.max_wait_s,
    )
    if keys:  # llm-backend's own clients (chat, bench) get a key of their own
        keys = keys | {serve_control.make_client_key(lifecycle.store)}
    dirty = asyncio.Event()
    supervisor = Supervisor(
        lifecycle=lifecycle,
        profile=profile,
        backend_overrides=serve_plan.backend_overrides,
        backend_url=serve_plan.backend_url,
        metrics=metrics,
        on_line=on_line,
        ensure_binary=ensure_binary,
        on_change=dirty.set,
    )
    door = Door(profile=profile, supervisor=supervisor, metrics=metrics, api_keys=keys,
                fallback_api_key=fallback_api_key)

    def snapshot(**changes: Any) -> serve_record.ServeRecord:
        now: dict[str, Any] = {
            "state": "failed" if supervisor.gave_up else supervisor.state,
            "phase": supervisor.phase,
            "requests": door.requests,
            "held": door.held,
            "failed": door.failed,
            "fallback": door.fallback,
            "loads": supervisor.loads,
            "restarts": supervisor.restarts,
            "last_restart": supervisor.last_restart,
            "last_failure": supervisor.failure,
            "gave_up": supervisor.gave_up,
            "idle_stopped": supervisor.idle_stopped,
            "stopping": supervisor.stopping,
        }
        return base.evolve(**{**now, **changes})

    config = uvicorn.Config(
        door,
        host=serve_plan.door_host,
        port=serve_plan.door_port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,  # the backend's own Server and Date headers pass through
        date_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_grace_s),
        timeout_keep_alive=30,
        backlog=4096,
        proxy_headers=False,  # the door reads no X-Forwarded-*: one middleware less a request
    )
    server = _DoorServer(config)
    loop = asyncio.get_running_loop()

    def begin_stop(signum: int) -> None:
        if supervisor.stopping or door.draining:
            server.force_exit = signum == signal.SIGINT and door.draining
            return
        on_line(f"serve: {signal.Signals(signum).name}: draining requests, then stopping")
        door.draining = True
        supervisor.stopping = True
        supervisor._wake.set()
        dirty.set()
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, begin_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, supervisor.request_restart)

    await door.open()
    serve_record.save(lifecycle.store, snapshot())
    on_line(f"serve: door on {serve_plan.door_url}, backend on {serve_plan.backend_url} "
            f"(profile {profile.name})")

    async def flush() -> None:
        while True:
            await dirty.wait()
            dirty.clear()
            serve_record.save(lifecycle.store, snapshot())
            await asyncio.sleep(RECORD_FLUSH_S)

    async def count_requests() -> None:
        seen = 0
        while True:
            await asyncio.sleep(RECORD_FLUSH_S)
            if door.requests != seen:
                seen = door.requests
                dirty.set()

    flusher = asyncio.ensure_future(flush())
    counter = asyncio.ensure_future(count_requests())
    supervising = asyncio.ensure_future(supervisor.run())
    code = 0
    try:
        await server.serve()
        if not server.started:
            code = 1
    finally:
        # In-flight requests have finished (or the drain grace ran out): stop the backend.
        await supervisor.shutdown()
        supervising.cancel()
        with contextlib.suppress(BaseException):
            await supervising
        flusher.cancel()
        counter.cancel()
        await door.close()
        serve_record.save(lifecycle.store, snapshot(state="stopped", stopping=True))
        serve_record.clear(lifecycle.store)
        serve_control.remove_client_key(lifecycle.store)
        on_line("serve: stopped")
    return code


class _DoorServer:
    """uvicorn's Server with our own signal handling (uvicorn re-raises signals it caught)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)
