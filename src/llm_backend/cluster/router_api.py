"""A small client for sglang-router 0.3.2's runtime API (the worker registry).

Endpoints, as 0.3.2 answers them (tried against the real router):
- `POST /workers {"url", "model_id"}` -> 202 `{"status": "accepted", "worker_id", "url", ...}`;
  posting a URL that is already registered returns the same `worker_id` (idempotent).
- `GET /workers` -> `{"workers": [{"id", "url", "model_id", "is_healthy", "load", ...}],
  "total", "stats"}`; `load` is the router's own count of requests in flight to that worker.
- `DELETE /workers/{id}` -> the worker leaves the routing table at once.
- `GET /get_loads` -> `{"workers": [{"worker": url, "load": n}]}` (-1 when the worker has no
  load endpoint the router understands, such as llama-server).
- `GET /readiness` -> 200 `{"status": "ready", "healthy_workers", "total_workers"}`, or 503
  `{"status": "not ready", "reason": "insufficient healthy workers"}`; `GET /liveness` -> "OK".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from llm_backend.errors import BackendError


@dataclass(frozen=True)
class Worker:
    """One worker as the router sees it."""

    worker_id: str
    url: str
    model_id: str | None
    healthy: bool
    load: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.worker_id,
            "url": self.url,
            "model_id": self.model_id,
            "healthy": self.healthy,
            "load": self.load,
        }


class RouterClient:
    """Talks to one router at `base_url` (like http://127.0.0.1:30080)."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return httpx.request(
                method, self.base_url + path, timeout=self.timeout_s, **kwargs
            )
        except httpx.HTTPError as error:
            raise BackendError(
                f"the router at {self.base_url} did not answer {method} {path}: {error}",
                remedy="start it with `llm-backend router start`, or correct `router_url` "
                "in the profile",
            ) from None

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status of `/readiness` and its JSON body ({} when it is not JSON)."""
        response = self._request("GET", "/readiness")
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def workers(self) -> list[Worker]:
        response = self._request("GET", "/workers")
        if response.status_code != 200:
            raise BackendError(
                f"the router at {self.base_url} answered GET /workers with "
                f"{response.status_code}: {response.text[:200]}",
                remedy="read `llm-backend router logs`",
            )
        found = []
        for item in response.json().get("workers", []):
            if not isinstance(item, dict):
                continue
            load = item.get("load")
            found.append(
                Worker(
                    worker_id=str(item.get("id", "")),
                    url=str(item.get("url", "")),
                    model_id=item.get("model_id"),
                    healthy=bool(item.get("is_healthy")),
                    load=int(load) if isinstance(load, int) else None,
                )
            )
        return found

    def loads(self) -> dict[str, int]:
        """`/get_loads`: the load each worker reported to the router (-1: unknown)."""
        response = self._request("GET", "/get_loads")
        if response.status_code != 200:
            return {}
        return {
            str(item.get("worker")): int(item.get("load", -1))
            for item in response.json().get("workers", [])
            if isinstance(item, dict)
        }

    def register(self, *, url: str, model_id: str, api_key: str | None = None) -> str:
        """Add a worker; returns its id. The router checks the worker in the background.

        `api_key`: the worker's own key; 0.3.2 then sends `Authorization: Bearer KEY` on
        every call to that worker except /health, and never shows the key in `GET /workers`
        (tried against the real router)."""
        body = {"url": url, "model_id": model_id}
        if api_key:
            body["api_key"] = api_key
        response = self._request("POST", "/workers", json=body)
        if response.status_code not in (200, 201, 202):
            raise BackendError(
                f"the router at {self.base_url} refused worker {url}: "
                f"{response.status_code} {response.text[:200]}",
                remedy="read `llm-backend router logs`",
            )
        return str(response.json().get("worker_id", ""))

    def find(self, url: str) -> Worker | None:
        wanted = url.rstrip("/")
        return next((w for w in self.workers() if w.url.rstrip("/") == wanted), None)

    def deregister(self, *, url: str) -> Worker | None:
        """Remove the worker with this URL; returns what was removed (None if not there)."""
        worker = self.find(url)
        if worker is None:
            return None
        response = self._request("DELETE", f"/workers/{worker.worker_id}")
        if response.status_code not in (200, 202, 204, 404):
            raise BackendError(
                f"the router at {self.base_url} refused to remove worker {url}: "
                f"{response.status_code} {response.text[:200]}",
                remedy="read `llm-backend router logs`",
            )
        return worker

    def wait_healthy(self, url: str, *, timeout_s: float) -> Worker | None:
        """Poll `/workers` until the worker with `url` is healthy, or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            worker = self.find(url)
            if worker is not None and worker.healthy:
                return worker
            if time.monotonic() >= deadline:
                return worker
            time.sleep(0.2)
