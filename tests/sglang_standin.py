"""A stand-in for SGLang's `launch_server`, for machines without a big GPU. It is NOT SGLang.

It replays a REAL SGLang startup log (a file from tests/fixtures/sglang/, each cited in that
folder's README.md) line by line with a delay, and behaves like SGLang around it:

- it takes SGLang's own flags (`--model-path`, `--host`, `--port`, `--served-model-name`,
  anything else is kept for /server_info);
- the HTTP port opens only when the replay reaches uvicorn's "Started server process" /
  "Uvicorn running on" lines (SGLang binds it only after loading);
- `/health` answers 503 until the replay reaches "The server is fired up and ready to roll!",
  then 200, and 503 again while draining after SIGTERM;
- it serves `/v1/models`, `/model_info` (`/get_model_info`), `/server_info`
  (`/get_server_info`) and `/v1/chat/completions` (plain and streamed); after each chat
  request it logs a real EAGLE3 decode line (tests/fixtures/sglang/eagle3-decode-old-format.log)
  and reports its accept length and throughput in `/server_info`'s `internal_states`;
- it starts one child process, like SGLang's scheduler, that dies with its parent;
- SIGTERM after the server is up: logs "SIGTERM received ... Draining requests and shutting
  down...", drains for SGLANG_STANDIN_DRAIN_S, then kills its process tree including itself
  with SIGKILL, as SGLang's `kill_process_tree` does. SIGTERM while loading: the default
  action (SGLang installs its handler only once its event loop runs).
- a replayed log that ends without "fired up" ends the way SGLang does: exit 2 after an
  argparse error, otherwise SIGKILL of its own tree (the "Received sigquit" path).

Multi-node (`--nnodes N --node-rank R --dist-init-addr HOST:PORT`), as SGLang 0.5.23 does it:
- rank 0 listens on the dist-init address (where torch.distributed's store lives on rank 0)
  and otherwise behaves as above;
- rank >= 1 connects there, replays a real follower log (default
  tests/fixtures/sglang/multinode-rank1.log, see that folder's README), then serves the dummy
  health server of 0.5.23 `utils/common.py` (`/health`, `/health_generate`, `/ping` always
  200, nothing else) and logs its "Dummy health check server started" line; it ignores
  SIGTERM with 0.5.23 `entrypoints/engine.py`'s warning ("SIGTERM received on node_rank 1;
  waiting for the rank-0 ShutdownReq broadcast ...") and exits only when rank 0 goes away
  (its connection closes: the stand-in's form of the ShutdownReq broadcast). Those two log
  lines are the format strings of the 0.5.23 source, not captured output.

Environment (all optional):
    SGLANG_STANDIN_LOG          the log to replay (default: startup-old-format-ready.log)
    SGLANG_STANDIN_LINE_DELAY_S seconds between replayed lines (default 0.05)
    SGLANG_STANDIN_STALL_AFTER  stop writing after this many lines and hang (stall tests)
    SGLANG_STANDIN_DRAIN_S      drain time after SIGTERM (default 1; SGLang's first tick is 5 s)
    SGLANG_STANDIN_OLD_ENDPOINTS=1  only the 2025 names /get_server_info and /get_model_info
    SGLANG_STANDIN_VERSION      the `version` /server_info reports (default sglang-standin)

From a profile (native runtime): the engine appends SGLang's flags to `command`:

    [profiles.sglang-standin]
    extends = "gpt-oss-120b-eagle3"
    runtime = "native"
    command = ["python3", "tests/sglang_standin.py"]
    host_prep = { enabled = false }

In Docker (any image with python3; the stand-in needs only the standard library), mount
the tests folder and point `command` at it:

    runtime = "docker"
    command = ["python3", "/standin/sglang_standin.py"]
    docker = { image = "...", volumes = ["./tests:/standin:ro"] }
    env = { SGLANG_STANDIN_LOG = "/standin/fixtures/sglang/startup-old-format-ready.log" }
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "sglang"
DEFAULT_LOG = FIXTURES / "startup-old-format-ready.log"
FOLLOWER_LOG = FIXTURES / "multinode-rank1.log"
DECODE_LOG = FIXTURES / "eagle3-decode-old-format.log"
REPLY = "This is the SGLang stand-in: it replays a real SGLang log and runs no model."

UVICORN = re.compile(r"Started server process|Uvicorn running on")
READY = "The server is fired up and ready to roll!"
ACCEPT_LEN = re.compile(r"accept len: ([0-9.]+)")
GEN_THROUGHPUT = re.compile(r"gen throughput \(token/s\): ([0-9.]+)")


class State:
    """What the HTTP handlers answer from; one lock for the few fields that change."""

    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.extra = extra
        self.up = False
        self.draining = False
        self.lock = threading.Lock()
        self.decode_lines = [
            line for line in DECODE_LOG.read_text().splitlines() if "Decode batch" in line
        ]
        self.decode_index = 0
        self.accept_length: float | None = None
        self.gen_throughput = 0.0
        self.old_endpoints = os.environ.get("SGLANG_STANDIN_OLD_ENDPOINTS") == "1"

    @property
    def served_model(self) -> str:
        return str(self.args.served_model_name or self.args.model_path)

    def server_info(self) -> dict[str, Any]:
        internal: dict[str, Any] = {
            "last_gen_throughput": self.gen_throughput,
            "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": 46611, "graph": 0.0},
        }
        if self.accept_length is not None:
            internal["avg_spec_accept_length"] = self.accept_length
        return {
            "model_path": self.args.model_path,
            "served_model_name": self.served_model,
            "host": self.args.host,
            "port": self.args.port,
            "speculative_algorithm": self.args.speculative_algorithm,
            "extra_argv": self.extra,
            "status": "ready",
            "max_total_num_tokens": 46611,
            "internal_states": [internal],
            "version": os.environ.get("SGLANG_STANDIN_VERSION", "sglang-standin"),
        }

    def after_decode(self) -> None:
        """Log the next real decode line and take its figures, as SGLang's scheduler would."""
        with self.lock:
            line = self.decode_lines[self.decode_index % len(self.decode_lines)]
            self.decode_index += 1
            accept = ACCEPT_LEN.search(line)
            throughput = GEN_THROUGHPUT.search(line)
            if accept:
                self.accept_length = float(accept.group(1))
            if throughput:
                self.gen_throughput = float(throughput.group(1))
        emit(line)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            if self.path.startswith("/health"):
                return
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            emit(
                f'[{stamp}] INFO:     {self.client_address[0]}:{self.client_address[1]} - '
                f'"{self.command} {self.path} HTTP/1.1" {args[1] if len(args) > 1 else ""} OK'
            )

        def _send(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode())

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in ("/health", "/health_generate"):
                self._send(200 if state.up and not state.draining else 503)
            elif path == "/v1/models":
                self._json(
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": state.served_model,
                                "object": "model",
                                "created": int(time.time()),
                                "owned_by": "sglang",
                                "root": state.args.model_path,
                                "parent": None,
                                "max_model_len": 131072,
                            }
                        ],
                    }
                )
            elif path in ("/get_model_info",) or (
                path == "/model_info" and not state.old_endpoints
            ):
                self._json(
                    {
                        "model_path": state.args.model_path,
                        "tokenizer_path": state.args.model_path,
                        "is_generation": True,
                        "model_type": "stand-in",
                        "architectures": ["StandIn"],
                    }
                )
            elif path == "/get_server_info" or (
                path == "/server_info" and not state.old_endpoints
            ):
                self._json(state.server_info())
            else:
                self._json({"detail": "Not Found"}, 404)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json({"error": {"message": "invalid JSON"}}, 400)
                return
            if self.path not in ("/v1/chat/completions", "/generate"):
                self._json({"detail": "Not Found"}, 404)
                return
            if not state.up or state.draining:
                self._json({"error": {"message": "server is not ready"}}, 503)
                return
            words = REPLY.split(" ")
            created = int(time.time())
            usage = {
                "prompt_tokens": 8,
                "completion_tokens": len(words),
                "total_tokens": 8 + len(words),
            }
            if request.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for index, word in enumerate(words):
                    piece = word if index == 0 else " " + word
                    chunk = {
                        "id": "standin",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": state.served_model,
                        "choices": [{"index": 0, "delta": {"content": piece},
                                     "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.005)
                final = {
                    "id": "standin",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": state.served_model,
                    "choices": [],
                    "usage": usage,
                }
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True
            else:
                self._json(
                    {
                        "id": "standin",
                        "object": "chat.completion",
                        "created": created,
                        "model": state.served_model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": REPLY},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )
            state.after_decode()

    return Handler


def start_scheduler_child() -> subprocess.Popen[bytes]:
    """One child like SGLang's scheduler: it gets SIGKILL when the parent dies."""
    return subprocess.Popen(
        [sys.executable, __file__, "--standin-scheduler-child"],
        stdin=subprocess.DEVNULL,
    )


def scheduler_child() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, as SGLang's children do
    while True:
        time.sleep(3600)


def kill_tree_and_self(child: subprocess.Popen[bytes]) -> NoReturn:
    """SGLang's `kill_process_tree(os.getpid(), include_parent=True)`: children, then itself."""
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(137)  # not reached: SIGKILL cannot be caught


def follower(args: argparse.Namespace) -> None:
    """A node with --node-rank >= 1: scheduler lines, a dummy health server, no API."""
    child = start_scheduler_child()
    host, _, port = str(args.dist_init_addr).rpartition(":")
    deadline = time.monotonic() + 60
    while True:
        try:
            link = socket.create_connection((host, int(port)), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                kill_tree_and_self(child)
            time.sleep(0.1)
    replay = Path(os.environ.get("SGLANG_STANDIN_LOG") or FOLLOWER_LOG)
    delay = float(os.environ.get("SGLANG_STANDIN_LINE_DELAY_S", "0.05"))
    for line in replay.read_text(encoding="utf-8").splitlines():
        emit(line)
        time.sleep(delay)

    class Dummy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:
            return  # uvicorn runs at log_level="warning" there

        def do_GET(self) -> None:
            status = 200 if self.path.split("?")[0] in ("/health", "/health_generate", "/ping") \
                else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer((args.host, args.port), Dummy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    emit(f"[{stamp}] Dummy health check server started in background thread at "
         f"{args.host}:{args.port}")

    def on_sigterm(signum: int, frame: Any) -> None:
        emit(
            f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] SIGTERM received on node_rank "
            f"{args.node_rank}; waiting for the rank-0 ShutdownReq broadcast to stop the "
            "schedulers."
        )

    signal.signal(signal.SIGTERM, on_sigterm)
    link.settimeout(None)
    with contextlib.suppress(OSError):
        while link.recv(4096):
            pass
    # Rank 0 is gone: its schedulers stopped ours; the process exits.
    emit(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] Dummy health check server stopped at "
         f"{args.host}:{args.port}")
    kill_tree_and_self(child)


def main() -> None:
    if sys.argv[1:] == ["--standin-scheduler-child"]:
        scheduler_child()
        return
    parser = argparse.ArgumentParser(prog="sglang serve")
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--speculative-algorithm")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--dist-init-addr")
    args, extra = parser.parse_known_args()
    if args.nnodes > 1 and args.node_rank >= 1:
        follower(args)
        return
    if args.nnodes > 1:
        host, _, port = str(args.dist_init_addr).rpartition(":")
        rendezvous = socket.create_server((host, int(port)))
        peers: list[socket.socket] = []
        threading.Thread(
            target=lambda: [peers.append(rendezvous.accept()[0]) for _ in iter(int, 1)],
            daemon=True,
        ).start()
    state = State(args, extra)
    replay = Path(os.environ.get("SGLANG_STANDIN_LOG") or DEFAULT_LOG)
    delay = float(os.environ.get("SGLANG_STANDIN_LINE_DELAY_S", "0.05"))
    stall_after = int(os.environ.get("SGLANG_STANDIN_STALL_AFTER", "0") or 0)
    drain_s = float(os.environ.get("SGLANG_STANDIN_DRAIN_S", "1"))
    child = start_scheduler_child()
    server: ThreadingHTTPServer | None = None

    def on_sigterm(signum: int, frame: Any) -> None:
        emit(
            f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] SIGTERM received. signum={signum} "
            f"frame={frame}. Draining requests and shutting down..."
        )
        state.draining = True

    lines = replay.read_text(encoding="utf-8", errors="replace").splitlines()
    for count, line in enumerate(lines, start=1):
        if state.draining:
            break
        if stall_after and count > stall_after:
            while True:  # stopped writing, still alive: what a stalled load looks like
                time.sleep(3600)
        if UVICORN.search(line) and server is None:
            try:
                server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
            except OSError as error:
                # uvicorn's own words for this, then SGLang tears its tree down.
                emit(line)
                emit(
                    f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ERROR:    [Errno {error.errno}] "
                    f"error while attempting to bind on address ('{args.host}', {args.port}): "
                    f"{(error.strerror or str(error)).lower()}"
                )
                kill_tree_and_self(child)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            signal.signal(signal.SIGTERM, on_sigterm)
        if "Uvicorn running on" in line:
            # The one edit to the replayed text: the address this stand-in really listens on.
            line = re.sub(r"http://[^ ]+", f"http://{args.host}:{args.port}", line)
        if READY in line:
            state.up = True
        emit(line)
        time.sleep(delay)

    if not state.up:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        if any("error: unrecognized arguments" in line for line in lines):
            sys.exit(2)  # argparse's exit status
        kill_tree_and_self(child)

    while not state.draining:
        time.sleep(0.05)
    time.sleep(drain_s)
    emit(
        f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] Gracefully exiting... Remaining number of "
        "requests 0. Remaining requests remaining_rids=[]."
    )
    kill_tree_and_self(child)


if __name__ == "__main__":
    main()
