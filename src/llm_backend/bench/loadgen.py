"""The load generator: streamed chat completions at a fixed concurrency, timed per request.

Each request is measured from the client side (first token, gaps between tokens, end to end)
and the engine's own figures (`usage`, llama.cpp `timings`) are kept beside them so the report
can show that the client's measurements agree with the engine's.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_backend.bench.workloads import BenchRequest
from llm_backend.client import stream_chunks
from llm_backend.credentials import client_headers

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it, and what the engine reported about it.

    `tokens_per_s` is (output tokens - 1) / (time of the final chunk - time of the first
    token): the first token comes with the prompt, so this is the decode rate, the same
    definition llama.cpp uses for `timings.predicted_per_second`. The final chunk (the one
    with `finish_reason`) marks the end because `usage` also counts the end-of-text token,
    which streams no text.
    """

    index: int
    kind: str
    ok: bool
    error: str | None
    start_s: float
    ttft_s: float | None
    e2e_s: float
    itl_s: tuple[float, ...]
    output_tokens: int | None
    prompt_tokens: int | None
    tokens_per_s: float | None
    text: str
    finish_reason: str | None = None
    engine_tokens_per_s: float | None = None
    engine_predicted_n: int | None = None
    draft_n: int | None = None
    draft_n_accepted: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "ok": self.ok,
            "error": self.error,
            "start_s": self.start_s,
            "ttft_s": self.ttft_s,
            "e2e_s": self.e2e_s,
            "itl_s": list(self.itl_s),
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "tokens_per_s": self.tokens_per_s,
            "finish_reason": self.finish_reason,
            "engine_tokens_per_s": self.engine_tokens_per_s,
            "engine_predicted_n": self.engine_predicted_n,
            "draft_n": self.draft_n,
            "draft_n_accepted": self.draft_n_accepted,
            "text": self.text,
        }


@dataclass(frozen=True)
class LevelRun:
    """All requests of one concurrency level, and the wall time they took together."""

    concurrency: int
    wall_s: float
    results: tuple[RequestResult, ...] = field(default_factory=tuple)


def request_payload(
    request: BenchRequest, *, model: str, temperature: float, extra_body: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAI chat-completions body for one bench request (streamed, with usage)."""
    return {
        "model": model,
        "messages": list(request.messages),
        "max_tokens": request.max_tokens,
        "temperature": temperature,
        "seed": request.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra_body,
    }


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def measure_request(
    client: httpx.Client,
    *,
    url: str,
    request: BenchRequest,
    payload: dict[str, Any],
    origin: float,
) -> RequestResult:
    """Send one streamed request and time every content chunk."""
    started = time.perf_counter()
    token_times: list[float] = []
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    finish_reason: str | None = None
    finished_at: float | None = None
    error: str | None = None
    try:
        for event in stream_chunks(client, url, payload):
            now = time.perf_counter()
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    token_times.append(now)
                    pieces.append(content)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
                    finished_at = now
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            if isinstance(event.get("timings"), dict):
                timings = event["timings"]
    except (httpx.HTTPError, json.JSONDecodeError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    ended = time.perf_counter()
    output_tokens = _as_int(usage.get("completion_tokens"))
    if error is None and output_tokens is None:
        error = "the response had no usage.completion_tokens"
    ttft = token_times[0] - started if token_times else None
    itl = tuple(later - earlier for earlier, later in itertools.pairwise(token_times))
    tokens_per_s = None
    if output_tokens is not None and output_tokens > 1 and token_times:
        decode_s = max(finished_at or token_times[-1], token_times[-1]) - token_times[0]
        if decode_s > 0:
            tokens_per_s = (output_tokens - 1) / decode_s
    engine_tps = timings.get("predicted_per_second")
    return RequestResult(
        index=request.index,
        kind=request.kind,
        ok=error is None,
        error=error,
        start_s=started - origin,
        ttft_s=ttft,
        e2e_s=ended - started,
        itl_s=itl,
        output_tokens=output_tokens,
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        tokens_per_s=tokens_per_s,
        text="".join(pieces),
        finish_reason=finish_reason,
        engine_tokens_per_s=float(engine_tps) if isinstance(engine_tps, int | float) else None,
        engine_predicted_n=_as_int(timings.get("predicted_n")),
        draft_n=_as_int(timings.get("draft_n")),
        draft_n_accepted=_as_int(timings.get("draft_n_accepted")),
    )


def run_level(
    *,
    endpoint: str,
    model: str,
    requests: tuple[BenchRequest, ...],
    concurrency: int,
    duration_s: float | None = None,
    temperature: float = 0.0,
    extra_body: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
    on_done: ProgressCallback = lambda count: None,
    headers: dict[str, str] | None = None,
) -> LevelRun:
    """Run `requests` with `concurrency` in flight; with `duration_s`, cycle them until it passes.

    Each worker sends its next request as soon as its previous one finished (closed loop).
    """
    url = f"{endpoint}/v1/chat/completions"
    lock = threading.Lock()
    results: list[RequestResult] = []
    cursor = [0]
    origin = time.perf_counter()
    deadline = origin + duration_s if duration_s is not None else None

    def next_request() -> BenchRequest | None:
        with lock:
            position = cursor[0]
            if deadline is None:
                if position >= len(requests):
                    return None
            elif time.perf_counter() >= deadline:
                return None
            cursor[0] += 1
        base = requests[position % len(requests)]
        return BenchRequest(position, base.kind, base.messages, base.max_tokens, base.seed)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=timeout_s, limits=limits, trust_env=False,
                      headers=client_headers() if headers is None else headers) as client:

        def worker() -> None:
            while (request := next_request()) is not None:
                payload = request_payload(
                    request, model=model, temperature=temperature, extra_body=extra_body or {}
                )
                result = measure_request(
                    client, url=url, request=request, payload=payload, origin=origin
                )
                with lock:
                    results.append(result)
                    done = len(results)
                on_done(done)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(worker) for _ in range(concurrency)]
            for future in futures:
                future.result()
    wall = time.perf_counter() - origin
    ordered = tuple(sorted(results, key=lambda result: result.index))
    return LevelRun(concurrency=concurrency, wall_s=wall, results=ordered)
