"""The door's Prometheus metrics (prometheus-client), on a registry of its own.

Names follow Prometheus' conventions: `_total` counters, `_seconds` histograms.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Routes get their own label value; every other path counts as "other" (bounded labels).
KNOWN_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
    "/generate",
    "/health",
    "/ready",
    "/metrics",
)
BACKEND_STATES = ("stopped", "loading", "ready", "restarting", "failed", "stopping")
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
    300, 600,
)
LOAD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
# `"completion_tokens": N` in an OpenAI usage object (the last one in the body wins).
COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def route_of(path: str) -> str:
    return path if path in KNOWN_ROUTES else "other"


class DoorMetrics:
    """Counters, gauges and histograms the door and the supervisor update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llm_backend_requests", "Requests answered by the door, by route and status.",
            ["route", "status"], registry=r,
        )
        self.ttfb = Histogram(
            "llm_backend_time_to_first_byte_seconds",
            "From request arrival to the first response byte sent, holding included.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.latency = Histogram(
            "llm_backend_request_duration_seconds",
            "From request arrival to the last response byte sent.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.output_tokens = Counter(
            "llm_backend_output_tokens", "completion_tokens from responses that report usage.",
            registry=r,
        )
        self.held = Counter(
            "llm_backend_held_requests", "Requests held while the backend was not ready.",
            registry=r,
        )
        self.holding = Gauge(
            "llm_backend_requests_holding", "Requests being held right now.", registry=r
        )
        self.unavailable = Counter(
            "llm_backend_unavailable_responses",
            "503 answers the door gave because the backend was not ready in time.", registry=r,
        )
        self.fallback = Counter(
            "llm_backend_fallback_requests", "Requests sent to serve.fallback_url.", registry=r
        )
        self.backend_state = Gauge(
            "llm_backend_backend_state", "1 for the backend's current state, 0 for the others.",
            ["state"], registry=r,
        )
        self.loads = Counter(
            "llm_backend_loads", "Backend loads, by outcome (ready or failed).", ["outcome"],
            registry=r,
        )
        self.load_duration = Histogram(
            "llm_backend_load_duration_seconds", "How long each successful load took.",
            buckets=LOAD_BUCKETS, registry=r,
        )
        self.restarts = Counter(
            "llm_backend_restarts", "Backend restarts, by reason (crash, hang, command, ...).",
            ["reason"], registry=r,
        )
        self.restart_duration = Histogram(
            "llm_backend_restart_duration_seconds",
            "From the failure (or restart command) until ready again.",
            buckets=LOAD_BUCKETS, registry=r,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._ttfb_children: dict[str, Any] = {}
        self.set_backend_state("stopped")

    def count_request(self, route: str, status: int, duration_s: float) -> None:
        """One answered request (label lookups are cached: this runs for every request)."""
        key = (route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(
                route=route, status=str(status))
        counter.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self.latency.labels(route=route)
        latency.observe(duration_s)

    def ttfb_of(self, route: str) -> Any:
        child = self._ttfb_children.get(route)
        if child is None:
            child = self._ttfb_children[route] = self.ttfb.labels(route=route)
        return child

    def set_backend_state(self, state: str) -> None:
        for name in BACKEND_STATES:
            self.backend_state.labels(state=name).set(1 if name == state else 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def count_tokens(self, body_tail: bytes) -> None:
        matches = COMPLETION_TOKENS.findall(body_tail)
        if matches:
            self.output_tokens.inc(int(matches[-1]))
