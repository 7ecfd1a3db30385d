"""Probes of a running server and of its port: health, models, speculative figures, who
holds a port. Standard library HTTP only, so that `status` stays fast."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import time
from typing import Any

import psutil

from llm_backend.engines.base import Engine, http_get
from llm_backend.errors import BackendError, FailureClass
from llm_backend.logtail import log_tail
from llm_backend.net import bind_error


def health(endpoint: str, engine: Engine) -> tuple[int | None, float | None]:
    """(HTTP status, milliseconds) of the engine's health path; (None, None) when nothing
    answered within 2 s (a frozen or dead server)."""
    started = time.perf_counter()
    try:
        status, _ = http_get(endpoint + engine.health_path)
    except (OSError, http.client.HTTPException):
        return None, None
    return status, round((time.perf_counter() - started) * 1000, 1)


def models(endpoint: str, engine: Engine,
           headers: dict[str, str] | None = None) -> list[str]:
    """The model ids the OpenAI-compatible models path lists ([] when it does not answer)."""
    try:
        status, body = http_get(endpoint + engine.models_path, headers=headers)
        data = json.loads(body).get("data", []) if status == 200 else []
        return [str(item.get("id")) for item in data if isinstance(item, dict)]
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return []


def spec_figures(endpoint: str, log_path: str, engine: Engine,
                 headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Speculative-decoding figures (the engine's reader: info endpoint, else its log)."""
    stats = engine.read_spec_stats(endpoint=endpoint, log_lines=lambda: log_tail(log_path, 400),
                                   headers=headers)
    return stats.to_json() if stats is not None else None


def port_holder(host: str, port: int) -> str | None:
    """Who listens on host:port (pid and name when the OS tells us), or None if it is free.

    Raises BackendError (error + fix) when the port cannot be bound for another reason than
    a listener: `host` is no address of this machine (EADDRNOTAVAIL), a name that does not
    resolve, or a port below 1024 for a user without the right (EACCES).
    """
    error = bind_error(host, port)
    if error is None:
        return None
    if error.errno == errno.EACCES:
        raise BackendError(
            f"cannot listen on port {port} of {host}: {error.strerror} (ports below 1024 "
            "need root)",
            remedy="use a port above 1023: llm-backend start --port 30000",
        )
    if error.errno != errno.EADDRINUSE:
        raise BackendError(
            f"cannot listen on {host} port {port}: {error.strerror or error} "
            f"(host = {host!r} is not an address of this machine)",
            remedy="set host to 127.0.0.1 (this machine only), 0.0.0.0 or :: (every "
            "interface), or an address `ip addr` lists",
        )
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


START_ELSEWHERE = "start on another port: llm-backend start --port {port}"


def check_port_free(host: str, port: int, *, elsewhere: str = START_ELSEWHERE) -> None:
    """Raise a port_in_use BackendError naming the holder when host:port is taken.

    `elsewhere` is the second half of the fix, the command that was run on another port
    (`{port}` becomes port + 1): `serve` suggests `serve --port`, not `start --port`.
    """
    holder = port_holder(host, port)
    if holder is not None:
        raise BackendError(
            f"port {port} on {host} is already in use by {holder}",
            remedy=f"stop {holder}, or {elsewhere.format(port=port + 1)}",
            failure_class=FailureClass.PORT_IN_USE,
        )
