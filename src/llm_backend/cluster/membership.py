"""A server joins its router once ready and leaves it, drained, before it stops.

Join: `POST /workers {"url", "model_id"}` to the profile's `router_url` (sglang-router 0.3.2
checks the worker in the background: `/health`, then `/server_info` and `/model_info`, whose
404s from llama-server only warn). Leave: `DELETE /workers/{id}` so no new request is routed
to it, then wait until the server itself reports no request in flight (the engine's
`load_path`), at most `drain_timeout_s`, so a member restarts without failing requests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from llm_backend.cluster.router_api import RouterClient
from llm_backend.config import Profile
from llm_backend.engines.base import Engine
from llm_backend.errors import BackendError
from llm_backend.net import connect_host
from llm_backend.toml_names import profile_table

JOIN_HEALTHY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Membership:
    """Where this server is registered; kept in the instance record's `runtime_info`."""

    router_url: str
    worker_url: str
    worker_id: str
    model_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "router_url": self.router_url,
            "worker_url": self.worker_url,
            "worker_id": self.worker_id,
            "model_id": self.model_id,
        }

    @classmethod
    def from_json(cls, data: Any) -> Membership | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                router_url=str(data["router_url"]),
                worker_url=str(data["worker_url"]),
                worker_id=str(data.get("worker_id", "")),
                model_id=str(data.get("model_id", "")),
            )
        except KeyError:
            return None


@dataclass(frozen=True)
class LeaveResult:
    """How leaving went: removed from the router, and how the drain ended."""

    removed: bool
    drained: bool
    in_flight_left: int | None
    waited_s: float
    note: str | None = None


def join(profile: Profile, *, healthy_timeout_s: float = JOIN_HEALTHY_TIMEOUT_S) -> Membership:
    """Register the ready server with its router; wait (bounded) until the router calls it
    healthy. Raises BackendError when the router cannot be reached or refuses."""
    if profile.router_url is None:
        raise BackendError(
            f"profile {profile.name!r} names no router",
            remedy=f'set router_url = "http://127.0.0.1:30080" in {profile_table(profile.name)}',
        )
    if profile.router_worker_url is None and connect_host(profile.host) != profile.host:
        raise BackendError(
            f"profile {profile.name!r} binds {profile.host}, which the router cannot dial",
            remedy=f'set router_worker_url = "http://THIS-HOST-ADDRESS:{profile.port}" in '
            f"{profile_table(profile.name)}",
        )
    from llm_backend.credentials import read_api_key

    client = RouterClient(profile.router_url)
    worker_id = client.register(
        url=profile.worker_url, model_id=profile.model_name, api_key=read_api_key(profile)
    )
    client.wait_healthy(profile.worker_url, timeout_s=healthy_timeout_s)
    return Membership(
        router_url=profile.router_url,
        worker_url=profile.worker_url,
        worker_id=worker_id,
        model_id=profile.model_name,
    )


def leave(
    membership: Membership,
    *,
    engine: Engine,
    endpoint: str,
    drain_timeout_s: float,
    api_key: str | None = None,
) -> LeaveResult:
    """Deregister, then wait for the server's in-flight requests to finish."""
    started = time.monotonic()
    note = None
    removed = False
    try:
        client = RouterClient(membership.router_url)
        removed = client.deregister(url=membership.worker_url) is not None
    except BackendError as error:
        # The router is down or unreachable: it routes nothing to us either way.
        note = error.message
    in_flight = wait_drained(
        engine=engine, endpoint=endpoint, timeout_s=drain_timeout_s, api_key=api_key
    )
    return LeaveResult(
        removed=removed,
        drained=in_flight == 0,
        in_flight_left=in_flight,
        waited_s=round(time.monotonic() - started, 3),
        note=note,
    )


def in_flight(engine: Engine, endpoint: str, api_key: str | None = None) -> int | None:
    """Requests the server is working on now, by its own account; None if it cannot tell."""
    if engine.load_path is None:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(endpoint + engine.load_path, timeout=2.0, headers=headers)
        if response.status_code != 200:
            return None
        return engine.in_flight_requests(body=response.json())
    except (httpx.HTTPError, json.JSONDecodeError, ValueError):
        return None


def wait_drained(
    *, engine: Engine, endpoint: str, timeout_s: float, api_key: str | None = None
) -> int | None:
    """Poll until nothing is in flight (0) or `timeout_s` passes; the last count seen."""
    deadline = time.monotonic() + timeout_s
    # A request the router sent just before the DELETE may still be on its way in.
    time.sleep(min(0.2, timeout_s))
    while True:
        count = in_flight(engine, endpoint, api_key)
        if count is None or count == 0 or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)
