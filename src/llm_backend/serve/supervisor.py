"""The supervisor: loads the backend through the lifecycle, watches it after ready, restarts it.

Runs as one asyncio task beside the door. Lifecycle calls block (a load polls for minutes),
so they run in a worker thread; the door only reads `state`, `ready` and `changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from llm_backend.config import Profile, ServeConfig
from llm_backend.credentials import client_headers
from llm_backend.engines import get_engine
from llm_backend.engines.base import Failure
from llm_backend.errors import BackendError
from llm_backend.host.meminfo import read_meminfo
from llm_backend.lifecycle import Lifecycle
from llm_backend.logtail import log_tail
from llm_backend.monitor import MonitorEvent
from llm_backend.serve.metrics import DoorMetrics

MEMORY_POLL_S = 0.5


@dataclass(frozen=True)
class LoadView:
    """What a held request's 503 says about the load in progress."""

    state: str
    phase: str | None
    progress: tuple[int, int] | None
    eta_s: float | None
    failure: dict[str, Any] | None


class Supervisor:
    """Owns the backend for the door's lifetime: start, liveness, restarts, idle stop."""

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        profile: Profile,
        backend_overrides: dict[str, Any],
        backend_url: str,
        metrics: DoorMetrics,
        on_line: Callable[[str], None] = lambda text: None,
        ensure_binary: Callable[[Profile], None] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.lifecycle = lifecycle
        self.profile = profile
        self.settings: ServeConfig = profile.serve
        self.engine = get_engine(profile.engine)
        self.backend_overrides = backend_overrides
        self.backend_url = backend_url
        self.metrics = metrics
        self.on_line = on_line
        self.ensure_binary = ensure_binary
        self.on_change = on_change
        self.state = "stopped"
        self.phase: str | None = None
        self.progress: tuple[int, int] | None = None
        self.eta_s: float | None = None
        self.failure: dict[str, Any] | None = None
        self.gave_up = False
        self.idle_stopped = False
        self.stopping = False
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.inflight = 0
        self.last_activity = time.monotonic()
        # When the backend last sent response bytes (set by the door on every chunk).
        self.backend_progress = 0.0
        # `Authorization` for the backend's own API key (None without one), read after a load.
        self.backend_authorization: str | None = None
        self.loads = 0
        self.restarts = 0
        self.last_restart: dict[str, Any] | None = None
        self._restart_times: deque[float] = deque()
        self._wake = asyncio.Event()
        self._restart_requested = False
        self._start_requested = False
        self._suspect = False
        self._loading_thread: asyncio.Future[Any] | None = None
        self._memory_before_load: int | None = None
        self._memory_taken: int = 0
        self._session: aiohttp.ClientSession | None = None

    # --- what the door calls ---------------------------------------------------------------

    def view(self) -> LoadView:
        return LoadView(self.state, self.phase, self.progress, self.eta_s, self.failure)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def request_start(self) -> None:
        """A request arrived while the backend is stopped by idle: start it (start_on_request)."""
        if self.idle_stopped or (self.state == "stopped" and self.loads == 0):
            self._start_requested = True
            self._wake.set()

    def request_restart(self) -> None:
        """`llm-backend restart` (SIGHUP): hold new requests, drain, stop, load again."""
        self._restart_requested = True
        self._wake.set()

    def suspect(self) -> None:
        """The door could not reach a backend it believed ready: check it now."""
        if self.state == "ready":
            self.ready.clear()
            self._suspect = True
            self._wake.set()

    # --- state ---------------------------------------------------------------------------

    def _set(self, state: str, **changes: Any) -> None:
        self.state = state
        for key, value in changes.items():
            setattr(self, key, value)
        if state == "ready":
            self.ready.set()
        else:
            self.ready.clear()
        self.metrics.set_backend_state(state if state != "idle" else "stopped")
        previous, self.changed = self.changed, asyncio.Event()
        previous.set()
        self.on_change()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early for a restart, a start request, a suspicion or a stop."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.probe_timeout_s),
            trust_env=False,
        )
        try:
            if self.settings.start_on_request:
                self._set("stopped", idle_stopped=True)
                self.on_line("backend: starts on the first request (serve.start_on_request)")
            else:
                await self._load(reason="start")
            while not self.stopping:
                await self._step()
        finally:
            await self._session.close()

    async def _step(self) -> None:
        if self._restart_requested:
            self._restart_requested = False
            await self._restart(reason="command", failure=None, drain=True)
            return
        if self.state == "ready":
            await self._watch_once()
            return
        if self._start_requested and self.idle_stopped:
            self._start_requested = False
            self.idle_stopped = False
            await self._load(reason="request")
            return
        await self._sleep(3600)

    async def _watch_once(self) -> None:
        """One liveness round after ready: process alive, then the engine's probe."""
        failures = 0
        while self.state == "ready" and not self.stopping and not self._restart_requested:
            died = await asyncio.to_thread(self._exited)
            if died is not None:
                self.on_line(f"backend: {died.failure_class}: {died.message}")
                await self._restart(reason="crash", failure=died, drain=False)
                return
            ok = await self._probe() or self._busy_not_hung()
            failures = 0 if ok else failures + 1
            if ok and self._suspect:
                self._suspect = False
                self.ready.set()
            if failures >= self.settings.probe_failures:
                hang = Failure(
                    "stalled",
                    f"the backend did not answer {self.engine.liveness_path} "
                    f"{failures} times in a row (timeout {self.settings.probe_timeout_s:g} s)",
                    "read `llm-backend logs`; raise serve.probe_timeout_s or "
                    "serve.probe_failures if the server is only slow under load",
                )
                self.on_line(f"backend: stalled: {hang.message}")
                await self._restart(reason="hang", failure=hang, drain=False)
                return
            if self._idle_due():
                await self._idle_stop()
                return
            interval = self.settings.probe_interval_s
            if failures or self._suspect:
                interval = min(interval, 0.2)
            await self._sleep(interval)

    def _busy_not_hung(self) -> bool:
        """A failed probe while responses still flow is load, not a hang.

        llama-server serves each request on one of its HTTP threads until the generation
        ends, so with many requests queued its /health waits too (seen here at 64 concurrent
        requests on 2 cores: three 30 s probes timed out while completions kept arriving).
        """
        return (
            self.inflight > 0
            and time.monotonic() - self.backend_progress < self.settings.probe_timeout_s
        )

    def _idle_due(self) -> bool:
        idle = self.settings.idle_stop_s
        return (
            idle is not None
            and self.inflight == 0
            and time.monotonic() - self.last_activity >= idle
        )

    async def _probe(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.backend_url + self.engine.liveness_path) as answer:
                await answer.read()
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _exited(self) -> Failure | None:
        """Why the backend is gone, in the engine's words; None while it runs."""
        record = self.lifecycle.store.load_instance()
        if record is None:
            return Failure(
                "exited", "the backend's record is gone (stopped outside `serve`?)",
                "use `llm-backend restart` or `llm-backend stop` while serve runs",
            )
        runtime = self.lifecycle.runtime(record.runtime)
        if runtime.is_alive(record=record):
            return None
        code = runtime.exit_code(record=record)
        tail = log_tail(record.log_path, 80)
        reader = self.engine.log_reader()
        # It was ready: what the log says now is a crash while serving (the tail may no
        # longer hold the ready line itself).
        reader.reading.ready = True
        for line in tail:
            reader.feed(line)
        said = reader.reading.failure
        if said is not None:
            return said
        generic = self.engine.exit_failure(exit_code=code, log_tail=tail)
        shown = "unknown" if code is None else str(code)
        return Failure(
            generic.failure_class,
            f"the backend exited after it was ready (exit code {shown})",
            generic.remedy,
            generic.line,
            after_ready=True,
        )

    # --- load, stop, restart ---------------------------------------------------------------

    async def _load(self, *, reason: str) -> bool:
        """Start the backend through the lifecycle (host preparation included)."""
        loop = asyncio.get_running_loop()
        self._set("loading", phase=None, progress=None, eta_s=None)
        self.on_line(f"backend: loading ({reason})")

        def on_event(event: MonitorEvent) -> None:
            if event.kind in ("phase", "tick"):
                loop.call_soon_threadsafe(self._on_progress, event)

        self._memory_before_load = _mem_available()
        started = time.monotonic()
        try:
            self._loading_thread = asyncio.ensure_future(asyncio.to_thread(
                self.lifecycle.start,
                profile_name=self.profile.name,
                overrides=self.backend_overrides,
                on_event=on_event,
                on_notice=self.on_line,
                ensure_binary=self.ensure_binary,
            ))
            result = await self._loading_thread
        except BackendError as error:
            failure = {
                "class": error.failure_class or "exited",
                "message": error.message,
                "remedy": error.remedy,
                "at": time.time(),
            }
            self.metrics.loads.labels(outcome="failed").inc()
            self.on_line(f"backend: load failed: {error.message}")
            self._set("failed", failure=failure)
            if not self.stopping:
                await self._restart(reason="load_failed", failure=None, drain=False,
                                    already_down=True)
            return False
        finally:
            self._loading_thread = None
        if self.stopping:
            return False
        duration = time.monotonic() - started
        available = _mem_available()
        if self._memory_before_load is not None and available is not None:
            self._memory_taken = max(0, self._memory_before_load - available)
        self.loads += 1
        self.backend_authorization = client_headers(self.lifecycle.store.root).get(
            "Authorization")
        self.metrics.loads.labels(outcome="ready").inc()
        self.metrics.load_duration.observe(duration)
        # `status` says "last start took" the launch-to-ready time; this line counts the
        # preflight and pull too, so it names both.
        load = (f", the load {result.duration_s:.1f} s" if result.duration_s is not None
                else "")
        self.on_line(
            f"backend: ready in {duration:.1f} s{load} (pid {result.pid}, {self.backend_url})"
        )
        self._set("ready", phase="ready", eta_s=0.0, failure=None)
        self.touch()
        return True

    def _on_progress(self, event: MonitorEvent) -> None:
        if self.state != "loading":
            return
        if event.phase:
            self.phase = event.phase
        if event.progress:
            self.progress = event.progress
        self.eta_s = event.eta_s

    async def _stop_backend(self, *, grace_s: float | None = None) -> None:
        def stop() -> None:
            try:
                self.lifecycle.stop(grace_s=grace_s)
            except BackendError as error:
                self.on_line(f"backend: stop: {error.message}")

        await asyncio.to_thread(stop)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_grace_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _restart(
        self,
        *,
        reason: str,
        failure: Failure | None,
        drain: bool,
        already_down: bool = False,
    ) -> None:
        """Stop what is left, back off, wait for memory, load again; give up past the cap."""
        began = time.monotonic()
        if failure is not None:
            self.failure = {**failure.to_json(), "at": time.time()}
        now = time.monotonic()
        window = self.settings.restart_window_s
        while self._restart_times and now - self._restart_times[0] > window:
            self._restart_times.popleft()
        if reason != "command" and len(self._restart_times) >= self.settings.max_restarts:
            self.gave_up = True
            self.on_line(
                f"backend: gave up after {len(self._restart_times)} restarts within "
                f"{window:g} s; the door answers 503 until `llm-backend restart`"
            )
            if not already_down:
                await self._stop_backend(grace_s=min(self.profile.stop_grace_s, 10))
            self._set("failed")
            return
        self._set("restarting")
        if drain:
            await self._drain()
        if not already_down:
            # A hung server gets a short grace: it will not drain anything.
            grace = self.profile.stop_grace_s if reason == "command" else min(
                self.profile.stop_grace_s, 5)
            await self._stop_backend(grace_s=grace)
        if reason != "command":
            self._restart_times.append(time.monotonic())
            delay = min(
                self.settings.restart_backoff_s * 2 ** (len(self._restart_times) - 1),
                self.settings.restart_backoff_max_s,
            )
            self.on_line(f"backend: restarting in {delay:g} s ({reason})")
            await self._sleep(delay)
            if self._restart_requested:
                self._restart_requested = False
        if self.stopping:
            return
        await self._wait_for_memory()
        if self.stopping:
            return
        self.gave_up = False
        self.restarts += 1
        self.metrics.restarts.labels(reason=reason).inc()
        ready = await self._load(reason=f"restart: {reason}")
        if ready:
            duration = time.monotonic() - began
            self.metrics.restart_duration.observe(duration)
            self.last_restart = {
                "at": time.time(),
                "reason": reason,
                "failure": failure.to_json() if failure else None,
                "duration_s": round(duration, 3),
            }
            self.on_change()

    async def _wait_for_memory(self) -> None:
        """Before a load: wait until as much memory is available as the last load took.

        On unified-memory machines (GB10) memory comes back slowly after a stop, and a load
        that starts at once can be killed (exit 137); see docs/serve.md. "What the last load
        took" is MemAvailable before it minus MemAvailable at ready, so GPU allocations on
        unified memory count too; other programs' use of memory does not move the target.
        """
        needed = self._memory_taken
        if needed <= 0 or self.settings.memory_wait_s <= 0:
            return
        deadline = time.monotonic() + self.settings.memory_wait_s
        announced = False
        while not self.stopping:
            available = _mem_available()
            if available is None or available >= needed:
                return
            if time.monotonic() >= deadline:
                self.on_line(
                    f"backend: memory still not back after {self.settings.memory_wait_s:g} s "
                    f"({available >> 20} MiB available, the last load took {needed >> 20} "
                    "MiB); loading anyway"
                )
                return
            if not announced:
                self.on_line(
                    f"backend: waiting for memory to come back ({available >> 20} MiB "
                    f"available, the last load took {needed >> 20} MiB)"
                )
                announced = True
            await asyncio.sleep(MEMORY_POLL_S)

    async def _idle_stop(self) -> None:
        self.on_line(
            f"backend: no request for {self.settings.idle_stop_s:g} s: stopping it "
            "(the next request starts it)"
        )
        self._set("stopping")
        await self._stop_backend()
        self._set("stopped", idle_stopped=True, phase=None)

    async def shutdown(self) -> None:
        """Stop supervising, end a load in progress, stop the backend."""
        self.stopping = True
        self._wake.set()
        self._set("stopping")
        loading = self._loading_thread
        await self._stop_backend()
        if loading is not None:
            with contextlib.suppress(BaseException):
                await loading
            await self._stop_backend()
        self._set("stopped")


def _mem_available() -> int | None:
    try:
        return read_meminfo().mem_available
    except OSError:
        return None
