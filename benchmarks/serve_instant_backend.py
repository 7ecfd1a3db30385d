"""A tiny HTTP server that answers at once, so a proxy's own cost is what a benchmark sees.

Takes llama-server's `--host`/`--port` (and ignores its other flags), so `llm-backend serve`
can launch it as a profile's `binary`. Routes:
- GET /health, /health_generate -> 200 `{"status":"ok"}`
- POST /v1/chat/completions -> a fixed chat completion at once; with `"stream": true`,
  `STREAM_CHUNKS` server-sent events `STREAM_GAP_S` apart, then `data: [DONE]`.
- anything else -> 404.
Written on asyncio.Protocol (uvloop when present) with HTTP/1.1 keep-alive; request bodies
are read by Content-Length. Not a general server: only what the benchmark sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json

STREAM_CHUNKS = 20
STREAM_GAP_S = 0.02

CHAT = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": "instant",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Paris."}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}).encode()
OK = b'{"status":"ok"}'


def response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n".encode()
        + b"content-type: " + content_type + b"\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


CHAT_RESPONSE = response("200 OK", CHAT)
OK_RESPONSE = response("200 OK", OK)
NOT_FOUND = response("404 Not Found", b'{"error":"not found"}')


def sse_chunk(index: int) -> bytes:
    event = json.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": f"t{index}"}}]})
    data = f"data: {event}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Instant(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streams: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[head_end + 4:total]
            self.buffer = self.buffer[total:]
            method, path, _ = head.split(" ", 2)
            self.answer(method, path, body)

    def answer(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if path in ("/health", "/health_generate"):
            self.transport.write(OK_RESPONSE)
        elif method == "POST" and path == "/v1/chat/completions":
            if b'"stream": true' in body or b'"stream":true' in body:
                task = asyncio.ensure_future(self.stream())
                self.streams.add(task)
                task.add_done_callback(self.streams.discard)
            else:
                self.transport.write(CHAT_RESPONSE)
        else:
            self.transport.write(NOT_FOUND)

    async def stream(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for index in range(STREAM_CHUNKS):
            if index:
                await asyncio.sleep(STREAM_GAP_S)
            self.transport.write(sse_chunk(index))
        done = b"data: [DONE]\n\n"
        self.transport.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Instant, host, port, backlog=4096)
    print(f"instant server listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    known, _ = parser.parse_known_args()
    try:
        import uvloop

        uvloop.run(main(known.host, known.port))
    except ImportError:
        asyncio.run(main(known.host, known.port))
