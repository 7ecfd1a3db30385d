"""The front door: a raw ASGI app that passes every request through to the backend unchanged.

Bodies, statuses and headers go through byte for byte (only hop-by-hop headers, which HTTP
says belong to one connection, are left out); responses are forwarded chunk by chunk as they
arrive, so server-sent events keep their timing; a client that disconnects cancels the
upstream request. While the backend is not ready a request is held (up to serve.max_wait_s),
sent to serve.fallback_url, or answered 503 with the load's phase, progress and ETA.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from llm_backend.config import Profile
from llm_backend.serve.metrics import DoorMetrics, route_of
from llm_backend.serve.supervisor import Supervisor

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward; `host` and
# `content-length` are set again by the client library for the upstream connection.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
REQUEST_SKIP = HOP_BY_HOP | {"host", "content-length"}
# The same names as bytes, as ASGI (request, lower case) and aiohttp (response) give them.
REQUEST_SKIP_BYTES = frozenset(name.encode() for name in REQUEST_SKIP)
HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
ROUTE_HEADER = b"x-llm-backend-route"  # "fallback" when the fallback answered
TOKEN_TAIL_BYTES = 4096
RETRY_PAUSE_S = 0.05
WATCH_AFTER_S = 0.05  # a client that leaves is noticed within this (then at once)
URL_CACHE_SIZE = 1024  # distinct (base, path, query) kept parsed; cleared when full


class BackendUnreachable(Exception):
    """The backend took no request: connection refused or closed before a response began."""


class Door:
    """The ASGI application; `supervisor` owns the backend, `metrics` counts everything."""

    def __init__(
        self,
        *,
        profile: Profile,
        supervisor: Supervisor,
        metrics: DoorMetrics,
        api_keys: frozenset[str] = frozenset(),
        fallback_api_key: str | None = None,
    ) -> None:
        self.profile = profile
        self.settings = profile.serve
        self.supervisor = supervisor
        self.metrics = metrics
        self.api_keys = tuple(key.encode() for key in sorted(api_keys))
        self.fallback_authorization = (
            f"Bearer {fallback_api_key}" if fallback_api_key else None
        )
        self.backend = supervisor.backend_url
        self.session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.held = 0
        self.failed = 0
        self.fallback = 0
        self.draining = False
        self._urls: dict[tuple[str, bytes, bytes], URL] = {}  # parsed upstream URLs

    async def open(self) -> None:
        # No pool limit (the backend does its own admission); no decompression, so bodies
        # pass as they came; no total timeout: a long generation is not an error.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.perf_counter()
        path: str = scope["path"]
        route = route_of(path)
        self.requests += 1
        status = await self._handle(scope, receive, send, path, arrived, route)
        self.metrics.count_request(route, status, time.perf_counter() - arrived)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, path: str, arrived: float, route: str
    ) -> int:
        method: str = scope["method"]
        if method == "GET" and path == "/health":
            return await self._json(send, 200, {"status": "ok", "door": "up"}, arrived, route)
        if method == "GET" and path == "/ready":
            view = self.supervisor.view()
            answer = {"ready": view.state == "ready", **self._load_body(view)}
            return await self._json(send, 200 if answer["ready"] else 503, answer, arrived,
                                    route)
        if self.api_keys and not self._authorized(scope):
            return await self._json(
                send, 401,
                {"error": {"message": "missing or wrong API key (Authorization: Bearer KEY)",
                           "type": "invalid_api_key", "code": 401}},
                arrived, route,
            )
        if method == "GET" and path == "/metrics" and self.settings.metrics:
            payload, content_type = self.metrics.render()
            return await self._send_whole(
                send, 200, [(b"content-type", content_type.encode())], payload, arrived, route
            )
        body = await _read_body(receive)
        supervisor = self.supervisor
        supervisor.touch()
        deadline = arrived + self.settings.max_wait_s
        held = False
        while True:
            if supervisor.ready.is_set() and not self.draining:
                supervisor.inflight += 1
                try:
                    return await self._forward(
                        scope, receive, send, self.backend, body, arrived, route,
                        fallback=False,
                    )
                except BackendUnreachable:
                    supervisor.suspect()
                    await asyncio.sleep(RETRY_PAUSE_S)
                finally:
                    supervisor.inflight -= 1
                    supervisor.touch()
                continue
            # Not ready: loading, restarting, stopped by idle, or given up.
            if method == "GET" and path == "/v1/models":
                return await self._json(send, 200, self._models(), arrived, route)
            if self.settings.fallback_url and not self.draining:
                self.fallback += 1
                self.metrics.fallback.inc()
                try:
                    return await self._forward(
                        scope, receive, send, self.settings.fallback_url, body, arrived, route,
                        fallback=True,
                    )
                except BackendUnreachable:
                    pass  # the fallback is down too: hold like without one
            supervisor.request_start()
            remaining = deadline - time.perf_counter()
            if supervisor.gave_up or self.draining or supervisor.stopping or remaining <= 0:
                return await self._unavailable(send, arrived, route)
            if not held:
                held = True
                self.held += 1
                self.metrics.held.inc()
            self.metrics.holding.inc()
            changed = supervisor.changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                pass
            finally:
                self.metrics.holding.dec()

    # --- forwarding ---------------------------------------------------------------------

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        base: str,
        body: bytes,
        arrived: float,
        route: str,
        *,
        fallback: bool,
    ) -> int:
        """One upstream exchange; BackendUnreachable if nothing of a response came back."""
        assert self.session is not None
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        key = (base, raw_path, query)
        url = self._urls.get(key)
        if url is None:
            target = base + raw_path.decode("latin-1")
            if query:
                target += "?" + query.decode("latin-1")
            url = URL(target, encoded=True)
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = url
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in REQUEST_SKIP_BYTES
        ]
        # A key the door checked stays at the door: the backend gets its own key (when it has
        # one), the fallback serve.fallback_api_key_env's. Without door keys the client's key
        # is the backend's and passes through.
        if fallback:
            replacement = self.fallback_authorization
        else:
            replacement = self.supervisor.backend_authorization if self.api_keys else None
        if replacement or self.api_keys:
            headers = [item for item in headers if item[0] not in ("authorization", "x-api-key")]
            if replacement:
                headers.append(("authorization", replacement))
        handler = asyncio.current_task()
        assert handler is not None
        disconnected = False
        finished = False

        async def watch_disconnect() -> None:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                disconnected = True
                handler.cancel()

        # Most exchanges end within WATCH_AFTER_S: a timer is far cheaper than a task each, so
        # the task that listens for the client going away starts only for the longer ones.
        watchers: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            WATCH_AFTER_S, lambda: watchers.append(asyncio.ensure_future(watch_disconnect())))
        started = False
        status = 502
        upstream: aiohttp.ClientResponse | None = None
        tail = b""
        try:
            try:
                upstream = await self.session.request(
                    scope["method"], url, headers=headers,
                    data=body or None, allow_redirects=False,
                )
            except (aiohttp.ClientConnectionError, OSError) as error:
                raise BackendUnreachable(str(error)) from None
            async with upstream:
                status = upstream.status
                lowered = [(name.lower(), value) for name, value in upstream.raw_headers]
                response_headers = [item for item in lowered if item[0] not in HOP_BY_HOP_BYTES]
                if fallback:
                    response_headers.append((ROUTE_HEADER, b"fallback"))
                first = True
                ended = False
                content = upstream.content
                try:
                    while chunk := await content.readany():
                        if first:
                            await send({"type": "http.response.start", "status": status,
                                        "headers": response_headers})
                            started = True
                            self.metrics.ttfb_of(route).observe(
                                time.perf_counter() - arrived)
                            first = False
                        if not fallback:
                            self.supervisor.backend_progress = time.monotonic()
                        tail = (tail + chunk)[-TOKEN_TAIL_BYTES:]
                        # The last chunk ends the response in the same send (one write less).
                        ended = content.at_eof()
                        finished = ended
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": not ended})
                        if ended:
                            break
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
                    if not started:
                        raise BackendUnreachable(str(error)) from None
                    raise
                if first:
                    await send({"type": "http.response.start", "status": status,
                                "headers": response_headers})
                    started = True
                    self.metrics.ttfb_of(route).observe(time.perf_counter() - arrived)
                finished = True
                if not ended:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                if tail:
                    self.metrics.count_tokens(tail)
            return status
        except asyncio.CancelledError:
            if disconnected:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                if started and _complete(upstream, tail):
                    # The client had it all: a stream's last event, or the whole body (an
                    # OpenAI client closes on `data: [DONE]`, before the final empty chunk).
                    self.metrics.count_tokens(tail)
                    return status
                return 499  # nginx's "client closed request": the upstream call was dropped
            raise
        except (aiohttp.ClientError, OSError):
            # The backend broke off a response that had begun: nothing can be resent.
            self.supervisor.suspect()
            if not started:
                raise BackendUnreachable("upstream failed") from None
            return 502
        finally:
            finished = True
            timer.cancel()
            for watcher in watchers:
                watcher.cancel()

    # --- answers of the door's own ------------------------------------------------------

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                offered = value[7:].strip()
                return any(hmac.compare_digest(offered, key) for key in self.api_keys)
            if name == b"x-api-key":
                return any(hmac.compare_digest(value.strip(), key) for key in self.api_keys)
        return False

    def _load_body(self, view: Any) -> dict[str, Any]:
        progress = (
            {"done": view.progress[0], "total": view.progress[1]} if view.progress else None
        )
        return {
            "state": view.state,
            "phase": view.phase,
            "progress": progress,
            "eta_s": None if view.eta_s is None else round(view.eta_s, 1),
            "failure": view.failure,
            "gave_up": self.supervisor.gave_up,
        }

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{
                "id": self.profile.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "llm-backend",
            }],
        }

    async def _unavailable(self, send: Send, arrived: float, route: str) -> int:
        view = self.supervisor.view()
        self.failed += 1
        self.metrics.unavailable.inc()
        if self.supervisor.gave_up:
            message = "the backend failed and serve stopped restarting it"
        elif self.draining or self.supervisor.stopping:
            message = "serve is stopping"
        else:
            message = f"the backend is not ready after {self.settings.max_wait_s:g} s"
        retry_after = 30 if self.supervisor.gave_up else max(1, round(view.eta_s or 5))
        body = {
            "error": {"message": message, "type": "backend_unavailable", "code": 503},
            **self._load_body(view),
        }
        return await self._json(
            send, 503, body, arrived, route, extra=[(b"retry-after", str(retry_after).encode())]
        )

    async def _json(
        self,
        send: Send,
        status: int,
        data: dict[str, Any],
        arrived: float,
        route: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        payload = json.dumps(data).encode()
        headers = [(b"content-type", b"application/json"), *(extra or [])]
        return await self._send_whole(send, status, headers, payload, arrived, route)

    async def _send_whole(
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        payload: bytes,
        arrived: float,
        route: str,
    ) -> int:
        headers = [*headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.metrics.ttfb_of(route).observe(time.perf_counter() - arrived)
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return status


SSE_END = b"data: [DONE]"  # OpenAI-compatible servers' last server-sent event


def _complete(upstream: aiohttp.ClientResponse | None, tail: bytes) -> bool:
    """Whether everything of the response was forwarded before the client went away."""
    if upstream is not None and upstream.content.is_eof():
        return True
    return tail.rstrip().endswith(SSE_END)


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (kept so a request the backend never took can be resent)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)
