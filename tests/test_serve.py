"""`llm-backend serve` end to end: a real llama-server behind the real door, on loopback.

Every test starts `llm-backend serve` as a subprocess, talks to it with httpx in bounded
client loops, and ends it by SIGTERM (the fixture stops whatever is left, by PID).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Env, free_port, port_is_free, wait_for

CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 8,
    "temperature": 0,
    "seed": 1,
}
LOOP_CHAT = {**CHAT, "max_tokens": 2}  # client loops: many short requests
# Short probe and backoff times so crashes and hangs are seen within a second or two.
FAST = """
[profiles.t]
extends = "smollm2-cpu"
stop_grace_s = 2
[profiles.t.serve]
probe_interval_s = 0.2
probe_timeout_s = 1
probe_failures = 2
restart_backoff_s = 0.3
restart_backoff_max_s = 2
max_wait_s = 60
drain_grace_s = 20
"""


def door_url(world: Env) -> str:
    return f"http://127.0.0.1:{world.port}"


class Served:
    """A running `llm-backend serve` and what it printed."""

    def __init__(self, world: Env, *args: str) -> None:
        self.world = world
        self.process = world.popen("serve", "--profile", "t", *args)
        self.url = door_url(world)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.output()}")
            try:
                return httpx.get(self.url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, timeout=timeout), "the door never became ready"

    def backend_pid(self) -> int:
        data = json.loads((self.world.state_dir / "instance.json").read_text())
        return int(data["pid"])

    def serve_record(self) -> dict[str, object]:
        return json.loads((self.world.state_dir / "serve.json").read_text())  # type: ignore

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        stdout, stderr = self.process.communicate(timeout=5)
        return stdout + stderr


@pytest.fixture
def served(world: Env) -> Iterator[list[Served]]:
    """Serves started by the test; each one gets SIGTERM (then SIGKILL) at the end."""
    started: list[Served] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.send_signal(signal.SIGTERM)
            try:
                one.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                one.process.kill()


def start_serve(world: Env, served: list[Served], config: str = FAST) -> Served:
    world.write_config(config)
    one = Served(world)
    served.append(one)
    one.wait_ready()
    return one


class ClientLoop:
    """Sequential chat requests in a thread until stopped; records every status."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.statuses: list[int] = []
        self.routes: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=90) as client:
            while not self._stop.is_set() and len(self.statuses) + len(self.errors) < 2000:
                try:
                    answer = client.post(self.url + "/v1/chat/completions", json=LOOP_CHAT,
                                         headers=self.headers)
                    self.statuses.append(answer.status_code)
                    self.routes.append(answer.headers.get("x-llm-backend-route", "backend"))
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def test_chat_streaming_and_any_path_pass_through_unchanged(
    world: Env, served: list[Served]
) -> None:
    door = start_serve(world, served)
    instance = json.loads((world.state_dir / "instance.json").read_text())
    backend = f"http://127.0.0.1:{instance['port']}"
    assert backend != door.url
    with httpx.Client(timeout=60) as client:
        # Deterministic endpoints: the bytes and the content type are the backend's own.
        for method, path, body in [
            ("POST", "/tokenize", b'{"content": "Hello door"}'),
            ("POST", "/detokenize", b'{"tokens": [19556, 3128]}'),
            ("GET", "/nonexistent?x=1", b""),
        ]:
            direct = client.request(method, backend + path, content=body)
            through = client.request(method, door.url + path, content=body)
            assert (through.status_code, through.content) == (direct.status_code, direct.content)
            assert through.headers.get("content-type") == direct.headers.get("content-type")
        # llama.cpp-only fields (n_probs, cache_prompt) reach the backend: probs come back.
        chat = {**CHAT, "n_probs": 2, "cache_prompt": False}
        direct_chat = client.post(backend + "/v1/chat/completions", json=chat).json()
        door_chat = client.post(door.url + "/v1/chat/completions", json=chat).json()
        volatile = ("id", "created", "timings")
        assert {k: v for k, v in door_chat.items() if k not in volatile} == {
            k: v for k, v in direct_chat.items() if k not in volatile
        }
        assert door_chat["choices"][0]["logprobs"] is not None
        # Streaming: the same events, and they arrive as separate chunks, not one buffer.
        stream = {**CHAT, "stream": True, "max_tokens": 16}

        def events(url: str) -> tuple[list[str], int]:
            chunks = 0
            with client.stream("POST", url + "/v1/chat/completions", json=stream) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/event-stream")
                text = ""
                for chunk in answer.iter_raw():
                    chunks += 1
                    text += chunk.decode()
            lines = [line for line in text.split("\n") if line.startswith("data: ")]
            contents = []
            for line in lines:
                if line == "data: [DONE]":
                    contents.append("[DONE]")
                    continue
                for choice in json.loads(line[6:])["choices"]:
                    contents.append(json.dumps(choice.get("delta"), sort_keys=True))
            return contents, chunks

        direct_events, _ = events(backend)
        door_events, door_chunks = events(door.url)
        assert door_events == direct_events
        assert door_chunks >= 5  # forwarded as they came, not buffered into one body
    assert door.terminate() == 0


def test_kill9_under_a_client_loop_restarts_with_backoff_and_fails_nothing(
    world: Env, served: list[Served]
) -> None:
    door = start_serve(world, served)
    first = door.backend_pid()
    with ClientLoop(door.url) as loop:
        assert wait_for(lambda: len(loop.statuses) >= 3, timeout=120)
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: door.serve_record().get("restarts") == 1, timeout=30)
        restarted_after = time.monotonic() - killed_at
        count = len(loop.statuses)
        assert wait_for(lambda: len(loop.statuses) >= count + 3, timeout=120)
    assert loop.errors == []
    assert set(loop.statuses) == {200}, loop.statuses
    assert door.backend_pid() != first
    assert restarted_after >= 0.3  # restart_backoff_s
    # The door records the restart's outcome once the new backend is up.
    assert wait_for(lambda: bool(door.serve_record().get("last_restart")), timeout=60)
    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "ready"
    assert status["serve"]["last_restart"]["reason"] == "crash"
    # A SIGKILL with nothing in the log to explain it reads as the kernel's OOM killer.
    assert status["serve"]["last_restart"]["failure"]["class"] == "out_of_memory"
    assert door.terminate() == 0
    assert "restarting in 0.3 s (crash)" in door.output()


def test_sigstop_hang_is_detected_and_replaced(world: Env, served: list[Served]) -> None:
    door = start_serve(world, served)
    hung = door.backend_pid()
    os.kill(hung, signal.SIGSTOP)
    try:
        answer = httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=60)
        assert answer.status_code == 200
        # The door writes its record as the restart goes on: wait for the restart's outcome.
        assert wait_for(lambda: door.serve_record().get("restarts") == 1
                        and bool(door.serve_record().get("last_restart")), timeout=30)
        assert door.backend_pid() != hung
        assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == "zombie"
        record = door.serve_record()
        assert record["last_restart"]["reason"] == "hang"  # type: ignore[index]
        assert record["last_restart"]["failure"]["class"] == "stalled"  # type: ignore[index]
    finally:
        if psutil.pid_exists(hung):
            os.kill(hung, signal.SIGCONT)
    assert door.terminate() == 0


def test_idle_stop_then_start_on_request(world: Env, served: list[Served]) -> None:
    config = FAST + "idle_stop_s = 1\nstart_on_request = true\n"
    world.write_config(config)
    door = Served(world)
    served.append(door)
    assert wait_for(lambda: (world.state_dir / "serve.json").exists(), timeout=30)
    assert wait_for(lambda: httpx.get(door.url + "/health", timeout=2).status_code == 200
                    if not port_is_free(world.port) else False, timeout=30)
    assert not (world.state_dir / "instance.json").exists()  # nothing started yet
    assert httpx.get(door.url + "/ready", timeout=5).status_code == 503
    first = httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert first.status_code == 200
    pid = door.backend_pid()
    assert wait_for(lambda: not (world.state_dir / "instance.json").exists(), timeout=15)
    assert wait_for(lambda: not psutil.pid_exists(pid), timeout=15)
    assert wait_for(lambda: door.serve_record()["idle_stopped"] is True, timeout=10)
    again = httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert again.status_code == 200
    assert door.backend_pid() != pid
    assert wait_for(lambda: door.serve_record()["held"] == 2, timeout=10)
    assert door.terminate() == 0


def second_backend(world: Env) -> tuple[str, Env]:
    """A second real llama-server, started by `llm-backend start` in a world of its own."""
    root = world.root / "second"
    for name in ("state", "config", "cwd"):
        (root / name).mkdir(parents=True)
    port = free_port()
    env = {**world.env, "LLM_BACKEND_STATE_DIR": str(root / "state"),
           "XDG_CONFIG_HOME": str(root / "config"), "LLM_BACKEND_PORT": str(port)}
    other = Env(root, root / "state", root / "config", root / "cwd", port, env)
    other.run("start", check=True)
    return f"http://127.0.0.1:{port}", other


def test_fallback_during_restart_fails_no_request(world: Env, served: list[Served]) -> None:
    fallback, other = second_backend(world)
    try:
        door = start_serve(world, served, FAST + f'fallback_url = "{fallback}"\n')
        with ClientLoop(door.url) as loop:
            assert wait_for(lambda: len(loop.statuses) >= 3, timeout=120)
            restarted = world.run("restart", timeout=120)
            assert restarted.returncode == 0, restarted.stderr
            assert "behind serve" in restarted.stdout
            count = len(loop.statuses)
            assert wait_for(lambda: len(loop.statuses) >= count + 3, timeout=120)
        assert loop.errors == []
        assert set(loop.statuses) == {200}
        assert "fallback" in loop.routes and loop.routes[-1] == "backend"
        record = door.serve_record()
        assert int(record["fallback"]) >= 1  # type: ignore[call-overload]
        assert record["last_restart"]["reason"] == "command"  # type: ignore[index]
        assert door.terminate() == 0
    finally:
        other.run("stop")


def test_sigterm_drains_an_inflight_stream_then_stops_everything(
    world: Env, served: list[Served]
) -> None:
    door = start_serve(world, served, FAST.replace("drain_grace_s = 20", "drain_grace_s = 120"))
    backend_pid = door.backend_pid()
    long_stream = {**CHAT, "stream": True, "max_tokens": 48, "ignore_eos": True}
    received: list[bytes] = []
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", door.url + "/v1/chat/completions", json=long_stream
    ) as answer:
        chunks = answer.iter_raw()
        received.append(next(chunks))
        door.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New connections are refused while the stream still flows.
        with pytest.raises(httpx.ConnectError):
            httpx.get(door.url + "/health", timeout=2)
        received.extend(chunks)
    text = b"".join(received).decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert text.count("data: ") >= 48
    assert door.process.wait(timeout=60) == 0
    assert not psutil.pid_exists(backend_pid)
    assert not (world.state_dir / "instance.json").exists()
    assert not (world.state_dir / "serve.json").exists()
    assert "draining requests" in door.output()


def test_api_keys_are_checked_at_the_door(world: Env, served: list[Served]) -> None:
    keys = world.root / "keys"
    keys.write_text("# door keys\nsecret-one\nsecret-two\n")
    keys.chmod(0o644)
    world.write_config(FAST + f'api_keys_file = "{keys}"\n')
    refused = world.run("serve", "--profile", "t", timeout=60)
    assert refused.returncode == 2
    assert "error:" in refused.stderr and f"fix: chmod 600 {keys}" in refused.stderr
    keys.chmod(0o600)
    door = start_serve(world, served, FAST + f'api_keys_file = "{keys}"\n')
    chat = door.url + "/v1/chat/completions"
    assert httpx.post(chat, json=CHAT, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer secret-three"}
    assert httpx.post(chat, json=CHAT, headers=wrong, timeout=60).status_code == 401
    for key in ("secret-one", "secret-two"):
        answer = httpx.post(chat, json=CHAT, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)
        assert answer.status_code == 200
    assert httpx.get(door.url + "/metrics", timeout=5).status_code == 401
    assert httpx.get(door.url + "/health", timeout=5).status_code == 200
    status = world.run("status", "--json")
    assert "secret-one" not in status.stdout + status.stderr
    assert door.terminate() == 0
    assert "secret" not in door.output()


def test_metrics_parse_and_count(world: Env, served: list[Served]) -> None:
    door = start_serve(world, served)
    for _ in range(3):
        assert httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=60
                          ).status_code == 200
    assert httpx.get(door.url + "/nonexistent", timeout=10).status_code == 404
    text = httpx.get(door.url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    chat = (("route", "/v1/chat/completions"), ("status", "200"))
    assert samples[("llm_backend_requests_total", chat)] == 3
    assert samples[("llm_backend_requests_total", (("route", "other"), ("status", "404")))] == 1
    assert samples[("llm_backend_output_tokens_total", ())] == 3 * CHAT["max_tokens"]
    route = (("route", "/v1/chat/completions"),)
    assert samples[("llm_backend_time_to_first_byte_seconds_count", route)] == 3
    assert samples[("llm_backend_request_duration_seconds_count", route)] == 3
    assert samples[("llm_backend_backend_state", (("state", "ready"),))] == 1
    assert samples[("llm_backend_loads_total", (("outcome", "ready"),))] == 1
    assert door.terminate() == 0


def test_gave_up_after_the_cap_answers_503_and_status_says_why(
    world: Env, served: list[Served]
) -> None:
    door = start_serve(world, served, FAST + "max_restarts = 0\n")
    os.kill(door.backend_pid(), signal.SIGKILL)
    assert wait_for(lambda: door.serve_record().get("gave_up") is True, timeout=30)
    answer = httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1
    body = answer.json()
    assert body["error"]["type"] == "backend_unavailable"
    # A SIGKILL with nothing in the log to explain it reads as the kernel's OOM killer.
    assert body["failure"]["class"] == "out_of_memory" and body["gave_up"] is True
    models = httpx.get(door.url + "/v1/models", timeout=10).json()  # from the profile
    assert [model["id"] for model in models["data"]] == ["smollm2-135m-instruct"]
    status = world.run("status")
    assert ("gave up restarting: out_of_memory: the backend exited after it was ready "
            "(exit code -9)") in status.stdout
    restarted = world.run("restart", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert httpx.post(door.url + "/v1/chat/completions", json=CHAT, timeout=60
                      ).status_code == 200
    assert door.terminate() == 0


def test_stop_command_stops_serve_and_backend(world: Env, served: list[Served]) -> None:
    door = start_serve(world, served)
    pid = door.backend_pid()
    refused = world.run("start")  # a second backend beside serve's is refused
    assert refused.returncode == 1 and "owns the backend" in refused.stderr
    assert "\nfix: " in refused.stderr
    stopped = world.run("stop", timeout=120)
    assert stopped.returncode == 0 and "stopped serve" in stopped.stdout
    assert door.process.wait(timeout=30) == 0
    assert not psutil.pid_exists(pid)
    assert port_is_free(world.port)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("max_wait_s = -1", "serve.max_wait_s"),
        ('fallback_url = "ftp://elsewhere"', "serve.fallback_url"),
        ("probe_failures = 0", "serve.probe_failures"),
        ("restart_backoff_s = 10\nrestart_backoff_max_s = 1", "restart_backoff_max_s"),
        ("idle_stop_s = 60", "start_on_request"),
        ('api_keys_file = "keys.txt"', "serve.api_keys_file"),
        ("no_such_key = 1", "serve.no_such_key"),
        ('fallback_api_key_env = "NOT_SET_ANYWHERE_42"', "NOT_SET_ANYWHERE_42"),
    ],
)
def test_bad_serve_values_are_refused_before_anything_starts(
    world: Env, setting: str, expected: str
) -> None:
    world.write_config(f"[profiles.t]\nextends = \"smollm2-cpu\"\n[profiles.t.serve]\n{setting}\n")
    refused = world.run("serve", "--profile", "t", timeout=60)
    assert refused.returncode != 0
    assert refused.stderr.startswith("error:") and expected in refused.stderr
    assert "\nfix: " in refused.stderr
    assert not (world.state_dir / "instance.json").exists()
    assert port_is_free(world.port)


def test_backend_port_equal_to_the_door_is_refused(world: Env) -> None:
    world.write_config(
        '[profiles.t]\nextends = "smollm2-cpu"\n[profiles.t.serve]\n'
        f"backend_port = {world.port}\n"
    )
    refused = world.run("serve", "--profile", "t", timeout=60)
    assert refused.returncode == 2
    assert "serve.backend_port" in refused.stderr and "fix:" in refused.stderr


def test_systemd_unit_is_written_verified_and_removed(world: Env, tmp_path: Path) -> None:
    units = tmp_path / "units"
    world.write_config(FAST)
    installed = world.run("service", "install", "--profile", "t", "--unit-dir", str(units))
    assert installed.returncode == 0, installed.stderr
    unit = units / "llm-backend.service"
    text = unit.read_text()
    assert "serve --profile t" in text and "KillMode=mixed" in text
    assert "Restart=on-failure" in text and "User=root" in text
    assert "TimeoutStopSec=52" in text  # drain 20 + stop grace 2 + 30
    assert "docker.service" not in text
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    # A Docker profile is ordered after the Docker engine.
    world.write_config(FAST.replace('extends = "smollm2-cpu"',
                                    'extends = "smollm2-cpu"\nruntime = "docker"'))
    world.run("service", "uninstall", "--unit-dir", str(units), check=True)
    world.run("service", "install", "--profile", "t", "--unit-dir", str(units), check=True)
    assert "After=network-online.target docker.service" in unit.read_text()
    world.run("service", "uninstall", "--unit-dir", str(units), check=True)
    assert not unit.exists()
    # A unit we did not write is left alone.
    unit.write_text("[Unit]\nDescription=someone else's\n")
    refused = world.run("service", "install", "--profile", "t", "--unit-dir", str(units))
    assert refused.returncode == 1 and "not written by llm-backend" in refused.stderr
    refused = world.run("service", "uninstall", "--unit-dir", str(units))
    assert refused.returncode == 1 and unit.exists()
    # A unit that cannot be verified (here: no systemd-analyze) never replaces the one before.
    unit.unlink()
    world.run("service", "install", "--profile", "t", "--unit-dir", str(units), check=True)
    before = unit.read_text()
    world.env["PATH"] = str(tmp_path / "no-tools")
    refused = world.run("service", "install", "--profile", "t", "--unit-dir", str(units))
    assert refused.returncode == 1 and "systemd-analyze is not installed" in refused.stderr
    assert unit.read_text() == before
    assert sorted(path.name for path in units.iterdir()) == ["llm-backend.service"]
