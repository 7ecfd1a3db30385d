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
    """One streamed reply and its speed: `completion_tokens` as the server's usage counts
    them (None when it sent no usage), `duration_s` from the request to the end of the
    stream, `time_to_first_token_s` to the first text (None when no text came)."""

    text: str
    completion_tokens: int | None
    duration_s: float
    time_to_first_token_s: float | None
    model: str | None

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens over the whole reply's seconds, so it cannot contradict "N tokens in Xs".

        Not over the time after the first token: a server that sends the tokens in one
        burst (speculative decoding, a busy machine) made that thousands of tokens/s. None
        for fewer than 2 tokens (one token is a latency, not a rate) or no token count.
        """
        if self.completion_tokens is None or self.completion_tokens < 2 or self.duration_s <= 0:
            return None
        return self.completion_tokens / self.duration_s


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
    return ChatResult(
        text="".join(pieces),
        completion_tokens=usage_tokens,
        duration_s=duration,
        time_to_first_token_s=first,
        model=model_name,
    )
