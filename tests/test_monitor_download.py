"""A download inside the load is progress, not a stall, and does not count against the cap.

The "server" here is a small script that writes SGLang's own download lines around a REAL
huggingface_hub download (its real tqdm bars, redrawn with carriage returns, from the Hub
stand-in in tests/hub_standin.py), then answers /health like a ready server. The monitor
watching it is the product's own, with a stall timeout and an overall cap both shorter than
the download.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_backend.engines.sglang import SGLangEngine
from llm_backend.monitor import Monitor, MonitorEvent
from tests.conftest import free_port
from tests.hub_standin import HubStandin, Repo

SERVER = textwrap.dedent("""
    import http.server, sys, time
    from huggingface_hub import hf_hub_download
    port, cache = int(sys.argv[1]), sys.argv[2]
    # SGLang's weight loader (python/sglang/srt/model_loader/weight_utils.py) logs these two.
    print("[2026-11-30 10:00:00] Using model weights format ['*.safetensors']", flush=True)
    start = time.monotonic()
    hf_hub_download("acme/slow", "model.safetensors", cache_dir=cache)
    print(f"[2026-11-30 10:00:05] Time spent downloading weights for acme/slow: "
          f"{time.monotonic() - start:.6f} seconds", flush=True)
    print("[2026-11-30 10:00:06] The server is fired up and ready to roll!", flush=True)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
""")


SIZE = 80_000_000


@pytest.fixture
def slow_hub() -> Iterator[HubStandin]:
    # huggingface_hub writes in 10 MiB pieces (DOWNLOAD_CHUNK_SIZE): 80 MB in about 8 s gives
    # the cache a new piece every second or so, well inside the 3 s stall timeout even on a
    # busy machine, while the whole download outlasts the 4 s cap.
    data = os.urandom(SIZE)
    standin = HubStandin({"acme/slow": Repo({"model.safetensors": data})},
                         delay_per_chunk_s=8.0 / (SIZE / 65536)).start()
    yield standin
    standin.stop()


def run_server(tmp_path: Path, hub: HubStandin, *, bars: bool,
               download_paths: list[Path]) -> tuple[object, list[MonitorEvent], bytes]:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("TQDM_POSITION", None)
    if bars:
        env["TQDM_POSITION"] = "-1"  # huggingface_hub draws its bars without a terminal
    else:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # as SGLang's loader does (DisabledTqdm)
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), str(tmp_path / "hub")],
            stdout=log, stderr=log, env=env,
        )
    events: list[MonitorEvent] = []
    try:
        monitor = Monitor(
            engine=SGLangEngine(), base_url=f"http://127.0.0.1:{port}", log_path=log_path,
            is_alive=lambda: server.poll() is None, exit_code=server.poll,
            load_timeout_s=4.0, stall_timeout_s=3.0, on_event=events.append,
            download_paths=download_paths, download_check_interval_s=0.25,
        )
        result = monitor.run()
    finally:
        server.kill()
        server.wait(timeout=10)
    return result, events, log_path.read_bytes()


def test_silent_download_counts_by_the_bytes_landing_in_the_cache(
    tmp_path: Path, slow_hub: HubStandin
) -> None:
    cache = tmp_path / "hub" / "models--acme--slow"
    result, events, log = run_server(tmp_path, slow_hub, bars=False, download_paths=[cache])
    assert b"\r" not in log, "bars were meant to be off, as in SGLang"
    assert result.ready, (result.failure, log[-2000:])  # type: ignore[attr-defined]
    assert result.duration_s > 4.0, "the download was meant to outlast the cap"  # type: ignore[attr-defined]
    sizes = [event.download_bytes for event in events if event.download_bytes]
    assert sizes and sizes == sorted(sizes) and sizes[-1] <= SIZE


def test_without_the_cache_to_watch_the_same_silent_download_stalls(
    tmp_path: Path, slow_hub: HubStandin
) -> None:
    result, _, log = run_server(tmp_path, slow_hub, bars=False, download_paths=[])
    assert not result.ready  # type: ignore[attr-defined]
    assert result.failure.failure_class == "stalled", log[-2000:]  # type: ignore[attr-defined]


def test_progress_bars_are_download_progress_in_bytes(
    tmp_path: Path, slow_hub: HubStandin
) -> None:
    result, events, log = run_server(tmp_path, slow_hub, bars=True, download_paths=[])
    assert b"\r" in log, "huggingface_hub drew no progress bar"
    assert result.ready, (result.failure, log[-2000:])  # type: ignore[attr-defined]
    assert result.duration_s > 4.0  # type: ignore[attr-defined]
    downloads = [event for event in events if event.kind == "phase" and event.phase == "download"]
    with_bytes = [event.progress for event in downloads if event.progress]
    assert with_bytes, [event.line for event in downloads]
    assert all(done <= total for done, total in with_bytes)
    assert with_bytes[-1][1] == pytest.approx(SIZE, rel=0.01)  # tqdm prints 40.0M
