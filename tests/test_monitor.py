"""The monitor's decisions without a real server: stall, overall timeout, exit, failure line,
ready. The log lines are real llama-server output (tests/fixtures/llamacpp, see its README),
written into a log file by a thread as a loading server would; health is a real HTTP server
on loopback (or a port where nothing listens)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_backend.engines.llamacpp import LlamaCppEngine
from llm_backend.monitor import Monitor, MonitorEvent
from tests.conftest import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "llamacpp"


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def monitor(log: Path, port: int, *, alive: list[bool], stall_s: float, load_s: float,
            events: list[MonitorEvent] | None = None, exit_code: int | None = None) -> Monitor:
    return Monitor(
        engine=LlamaCppEngine(),
        base_url=f"http://127.0.0.1:{port}",
        log_path=log,
        is_alive=lambda: alive[0],
        exit_code=lambda: exit_code,
        load_timeout_s=load_s,
        stall_timeout_s=stall_s,
        on_event=(events.append if events is not None else lambda event: None),
    )


def write_slowly(log: Path, lines: list[str], interval_s: float,
                 then: threading.Event | None = None) -> threading.Thread:
    """Append `lines` to `log` one every `interval_s` seconds (a server printing its load)."""

    def run() -> None:
        for line in lines:
            with open(log, "a") as handle:
                handle.write(line + "\n")
            time.sleep(interval_s)
        if then is not None:
            then.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Health(http.server.BaseHTTPRequestHandler):
    ready = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200 if self.ready.is_set() else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, threading.Event]]:
    ready = threading.Event()
    handler = type("Handler", (Health,), {"ready": ready})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], ready
    server.shutdown()


def test_silence_is_a_stall(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    started = time.monotonic()
    result = monitor(log, free_port(), alive=[True], stall_s=0.6, load_s=30).run()
    assert not result.ready
    assert result.failure is not None and result.failure.failure_class == "stalled"
    assert "no progress for 1 s (last phase: none)" in result.failure.message
    assert 0.6 <= time.monotonic() - started < 5


def test_output_resets_the_stall_clock_and_the_overall_cap_still_ends_it(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    chatter = ["still loading"] * 100  # a line every 0.1 s for 10 s: never 0.5 s of silence
    write_slowly(log, fixture_lines("ready.log")[:4] + chatter, 0.1)
    started = time.monotonic()
    result = monitor(log, free_port(), alive=[True], stall_s=0.5, load_s=1.5).run()
    elapsed = time.monotonic() - started
    assert result.failure is not None and result.failure.failure_class == "timeout", result
    assert "not ready after 2 s (last phase: load_weights)" in result.failure.message
    assert 1.5 <= elapsed < 8  # the cap ended it, not the end of the chatter (10 s)


def test_a_load_that_stops_talking_stalls_after_its_last_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    done = threading.Event()
    write_slowly(log, fixture_lines("ready.log")[:6], 0.2, then=done)
    started = time.monotonic()
    result = monitor(log, free_port(), alive=[True], stall_s=0.8, load_s=30).run()
    assert done.is_set()
    assert result.failure is not None and result.failure.failure_class == "stalled"
    assert "last phase: kv_cache" in result.failure.message
    assert time.monotonic() - started >= 1.0 + 0.8  # six lines 0.2 s apart, then the stall


@pytest.mark.parametrize(
    ("fixture", "failure_class", "words"),
    [
        ("corrupt-model.log", "exited", "could not load the model file"),
        ("missing-model.log", "model_not_found", "does not exist"),
        ("port-in-use.log", "port_in_use", "already in use"),
    ],
)
def test_an_exit_is_explained_by_the_log(
    tmp_path: Path, fixture: str, failure_class: str, words: str
) -> None:
    log = tmp_path / "server.log"
    log.write_text("\n".join(fixture_lines(fixture)) + "\n")
    alive = [False]  # the server already exited with code 1
    result = monitor(log, free_port(), alive=alive, stall_s=5, load_s=30, exit_code=1).run()
    assert not result.ready and result.exit_code == 1
    assert result.failure is not None
    assert result.failure.failure_class == failure_class
    assert words in result.failure.message
    assert result.log_tail[-1] == fixture_lines(fixture)[-1]


def test_ready_when_health_answers_200_with_the_phases_in_order(
    tmp_path: Path, health_server: tuple[int, threading.Event]
) -> None:
    port, ready = health_server
    log = tmp_path / "server.log"
    log.write_text("")
    write_slowly(log, fixture_lines("ready.log")[:8], 0.05, then=ready)
    events: list[MonitorEvent] = []
    result = monitor(log, port, alive=[True], stall_s=5, load_s=30, events=events).run()
    assert result.ready and result.failure is None
    phases = [event.phase for event in events if event.kind == "phase"]
    # `model loaded` is llama-server's ready line; the `listening on` after it adds nothing.
    assert phases == ["init", "load_weights", "kv_cache"]
    assert list(result.phase_offsets)[:2] == ["init", "load_weights"]
    assert "ready" in result.phase_offsets
    assert events[-1].kind == "ready"


def test_a_503_is_not_ready(tmp_path: Path, health_server: tuple[int, threading.Event]) -> None:
    port, _ = health_server  # answers 503, as llama-server does while it loads
    log = tmp_path / "server.log"
    log.write_text("\n".join(fixture_lines("ready.log")[:4]) + "\n")
    result = monitor(log, port, alive=[True], stall_s=0.5, load_s=30).run()
    assert not result.ready
    assert result.failure is not None and result.failure.failure_class == "stalled"


def test_the_log_follower_keeps_a_line_without_breaks_bounded(tmp_path: Path) -> None:
    """Output with no line break (binary, a runaway print) keeps its first LINE_MAX_BYTES,
    says how much was cut, and the lines after it are read whole; memory stays bounded."""
    from llm_backend.logtail import LogFollower

    log = tmp_path / "server.log"
    follower = LogFollower(log)
    limit = LogFollower.LINE_MAX_BYTES
    with log.open("wb") as handle:
        handle.write(b"Receive: obj=" + b"x" * (limit // 2))
        handle.flush()
        assert follower.read_lines() == []
        for _ in range(3):
            handle.write(b"y" * limit)
            handle.flush()
            assert follower.read_lines() == []
            assert len(follower._partial) <= limit  # never grows with the line
        handle.write(b"z" * 10 + b"\nnext line\nlast")
    lines = follower.flush()
    assert len(lines) == 3
    first = lines[0]
    assert first.startswith("Receive: obj=x")  # its start: what the line is
    assert first.endswith(f" [cut: {limit // 2 + 2 * limit + 10 + 13} more bytes of this line]")
    assert len(first) < limit + 100
    assert lines[1:] == ["next line", "last"]
