"""A small OpenAI-compatible client for `chat`: stream one reply and measure it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class ChatResult:
    """One streamed reply and its speed."""

    text: str
    completion_tokens: int | None
    duration_s: float
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    model: str | None


def stream_chunks(
    client: httpx.Client, url: str, payload: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, until [DONE]."""
    with client.stream("POST", url, json=payload) as response:
        if response.status_code != 200:
            response.read()
            raise httpx.HTTPStatusError(
                f"{url} answered {response.status_code}: {response.text[:300]}",
                request=response.request,
                response=response,
            )
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if isinstance(event, dict):
                yield event


def chat(
    *,
    endpoint: str,
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float = 0.0,
    on_text: Callable[[str], None] = lambda text: None,
    timeout_s: float = 300.0,
    headers: dict[str, str] | None = None,
) -> ChatResult:
    """Stream one chat completion, calling `on_text` for each piece as it arrives."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces: list[str] = []
    usage_tokens: int | None = None
    model_name: str | None = None
    first: float | None = None
    started = time.perf_counter()
    with httpx.Client(timeout=timeout_s, trust_env=False, headers=headers) as client:
        for chunk in stream_chunks(client, f"{endpoint}/v1/chat/completions", payload):
            model_name = chunk.get("model", model_name)
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    pieces.append(text)
                    on_text(text)
            usage = chunk.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
    duration = time.perf_counter() - started
    # Decode speed: the tokens after the first over the time after the first. With one token
    # (or none, or no text seen) there is no interval to measure: None, not a huge number.
    generation_s = duration - first if first is not None else 0.0
    tokens_per_s = (
        (usage_tokens - 1) / generation_s
        if usage_tokens is not None and usage_tokens > 1 and generation_s > 0 else None
    )
    return ChatResult(
        text="".join(pieces),
        completion_tokens=usage_tokens,
        duration_s=duration,
        time_to_first_token_s=first,
        tokens_per_s=tokens_per_s,
        model=model_name,
    )
