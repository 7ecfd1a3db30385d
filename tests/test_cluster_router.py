"""Replicas behind the real sglang-router 0.3.2, each member a real llama-server in its own
network namespace ("box"), started with `llm-backend start` and a `router_url`.

Bounded everywhere: every wait has a deadline, every client loop a request budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import llama_server_binary, wait_for
from tests.netboxes import Boxes, make_boxes

pytest.importorskip("sglang_router", reason="sglang-router is installed by setup.sh --test")

ROUTER_PORT = 30080
MEMBER_PORT = 8080
CLI = [sys.executable, "-m", "llm_backend"]
SRC = str(Path(__file__).resolve().parent.parent / "src")


@dataclass
class Node:
    """One namespace with its own llm-backend state dir and config."""

    namespace: str
    root: Path
    config: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sub in ("state", "cfg", "cwd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "cwd" / "llm-backend.toml").write_text(self.config)
        self.env = {
            **os.environ,
            "PYTHONPATH": SRC,
            "LLM_BACKEND_STATE_DIR": str(self.root / "state"),
            "XDG_CONFIG_HOME": str(self.root / "cfg"),
            "LLM_BACKEND_BINARY": str(llama_server_binary()),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.env.pop("LLM_BACKEND_PORT", None)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *CLI, *args],
            cwd=self.root / "cwd", env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )

    def check(self, *args: str, timeout: float = 120) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def record(self) -> dict[str, object]:
        path = self.root / "state" / "instance.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def kill_recorded(self) -> None:
        """Cleanup by the PIDs this node recorded (never by name)."""
        for path in (self.root / "state" / "instance.json",
                     self.root / "state" / "router.json"):
            with contextlib.suppress(Exception):
                pid = json.loads(path.read_text()).get("pid")
                if pid:
                    os.killpg(int(pid), signal.SIGKILL)


@dataclass
class Cluster:
    boxes: Boxes
    router: Node
    members: list[Node]

    @property
    def router_url(self) -> str:
        return f"http://{self.boxes.hub_from_root}:{ROUTER_PORT}"

    def member_url(self, index: int) -> str:
        return f"http://{self.boxes.box_ip(index)}:{MEMBER_PORT}"

    def workers(self) -> dict[str, dict[str, object]]:
        body = httpx.get(self.router_url + "/workers", timeout=5).json()
        return {w["url"]: w for w in body["workers"]}

    def healthy(self, index: int) -> bool:
        worker = self.workers().get(self.member_url(index))
        return bool(worker and worker["is_healthy"])


def member_config(boxes: Boxes, index: int) -> str:
    return f"""
[profiles.member]
extends = "smollm2-cpu"
host = "{boxes.box_ip(index)}"
port = {MEMBER_PORT}
threads = 1
router_url = "http://{boxes.hub_ip}:{ROUTER_PORT}"
drain_timeout_s = 20
stop_grace_s = 5
"""


ROUTER_CONFIG = f"""
[router]
host = "0.0.0.0"          # inside the hub namespace only
port = {ROUTER_PORT}
health_check_interval_s = 1
health_check_timeout_s = 1
health_failure_threshold = 2
health_success_threshold = 1
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with make_boxes(3) as boxes:
        router = Node(boxes.hub, root / "hub", ROUTER_CONFIG)
        members = [
            Node(name, root / f"box{i + 1}", member_config(boxes, i))
            for i, name in enumerate(boxes.boxes)
        ]
        nodes = [router, *members]
        try:
            router.check("router", "start")
            for member in members:
                member.check("start", "--profile", "member", timeout=300)
            yield Cluster(boxes, router, members)
        finally:
            for member in members:
                with contextlib.suppress(Exception):
                    member.run("stop", "--force", timeout=60)
            with contextlib.suppress(Exception):
                router.run("router", "stop", "--force", timeout=60)
            for node in nodes:
                node.kill_recorded()


class ClientLoop:
    """Sequential chat requests through the router, from the root namespace, until stopped
    or `budget` requests were sent. Records (time, ok, status) for each."""

    def __init__(self, url: str, budget: int = 2000) -> None:
        self.url = url
        self.budget = budget
        self.results: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for number in range(self.budget):
                if self._stop.is_set():
                    return
                body = {
                    "model": "smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": f"Say {number}."}],
                    "max_tokens": 4,
                }
                try:
                    response = client.post(self.url + "/v1/chat/completions", json=body)
                    ok = response.status_code == 200 and "choices" in response.json()
                    self.results.append((time.monotonic(), ok, str(response.status_code)))
                except httpx.HTTPError as error:
                    self.results.append((time.monotonic(), False, type(error).__name__))

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def failures(self) -> list[tuple[float, bool, str]]:
        return [result for result in self.results if not result[1]]


def test_members_register_and_are_healthy(cluster: Cluster) -> None:
    assert wait_for(lambda: all(cluster.healthy(i) for i in range(3)), timeout=20)
    workers = cluster.workers()
    assert sorted(workers) == sorted(cluster.member_url(i) for i in range(3))
    assert {w["model_id"] for w in workers.values()} == {"smollm2-135m-instruct"}
    record = cluster.members[0].record()
    assert record["runtime_info"]["router"]["worker_url"] == cluster.member_url(0)  # type: ignore[index]
    member_status = json.loads(cluster.members[0].check("status", "--json"))
    assert member_status["router"]["worker_url"] == cluster.member_url(0)
    status = json.loads(cluster.router.check("router", "status", "--json"))
    assert status["state"] == "ready"
    assert status["readiness"]["healthy_workers"] == 3
    assert {row["url"] for row in status["workers"]} == set(workers)
    reply = httpx.post(
        cluster.router_url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def test_kill_9_of_a_member_under_load(cluster: Cluster) -> None:
    victim = cluster.members[1]
    pid = int(victim.record()["pid"])  # type: ignore[arg-type]
    with ClientLoop(cluster.router_url) as loop:
        assert wait_for(lambda: len(loop.results) >= 10, timeout=60)
        killed_at = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        assert wait_for(lambda: not cluster.healthy(1), timeout=20), "router kept the dead member"
        unhealthy_after = time.monotonic() - killed_at
        sent_before = len(loop.results)
        assert wait_for(lambda: len(loop.results) >= sent_before + 10, timeout=60)
    failed = loop.failures
    print(f"kill -9: {len(loop.results)} requests, {len(failed)} failed, "
          f"member marked unhealthy after {unhealthy_after:.1f}s")
    # The router retries a failed request on another member (5 retries by default).
    assert len(failed) <= 2, failed
    assert unhealthy_after < 10
    # Bring it back: `status` notices the exit; a new start re-registers it.
    status = victim.run("status", "--json")
    assert json.loads(status.stdout)["state"] == "failed"
    victim.check("start", "--profile", "member", timeout=300)
    assert wait_for(lambda: cluster.healthy(1), timeout=20)


def test_rolling_restart_fails_no_request(cluster: Cluster) -> None:
    with ClientLoop(cluster.router_url) as loop:
        assert wait_for(lambda: len(loop.results) >= 5, timeout=60)
        for index, member in enumerate(cluster.members):
            output = member.check("restart", timeout=300)
            assert "left the router" in output, output
            assert wait_for(lambda i=index: cluster.healthy(i), timeout=20)
        sent_before = len(loop.results)
        assert wait_for(lambda: len(loop.results) >= sent_before + 5, timeout=60)
    print(f"rolling restart: {len(loop.results)} requests, {len(loop.failures)} failed")
    assert len(loop.results) > 20
    assert loop.failures == []


def test_unreachable_member(cluster: Cluster) -> None:
    cluster.boxes.set_link(2, up=False)
    try:
        with ClientLoop(cluster.router_url) as loop:
            assert wait_for(lambda: not cluster.healthy(2), timeout=20)
            sent_before = len(loop.results)
            assert wait_for(lambda: len(loop.results) >= sent_before + 10, timeout=60)
        after_marked = [r for r in loop.results[sent_before:] if not r[1]]
        assert after_marked == []
    finally:
        cluster.boxes.set_link(2, up=True)
    assert wait_for(lambda: cluster.healthy(2), timeout=20)


def test_router_restart_reregisters_members(cluster: Cluster) -> None:
    stopped = cluster.router.check("router", "stop")
    assert "remembered 3 workers" in stopped
    with pytest.raises(httpx.HTTPError):
        httpx.get(cluster.router_url + "/readiness", timeout=2)
    started = cluster.router.check("router", "start")
    assert started.count("re-registered") == 3
    assert wait_for(lambda: all(cluster.healthy(i) for i in range(3)), timeout=20)
    # A member that stops now leaves the new router cleanly.
    left = cluster.members[0].check("stop")
    assert "left the router" in left and "removed" in left
    assert cluster.member_url(0) not in cluster.workers()
    cluster.members[0].check("start", "--profile", "member", timeout=300)
    assert wait_for(lambda: cluster.healthy(0), timeout=20)
