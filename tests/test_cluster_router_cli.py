"""`llm-backend router` on loopback: binds, bad input, and a member whose router is gone.

The real sglang-router 0.3.2 and a real llama-server; no network namespaces needed.
"""

from __future__ import annotations

import json
import socket

import psutil
import pytest

from tests.conftest import Env, free_port

pytest.importorskip("sglang_router", reason="sglang-router is installed by setup.sh --test")


def router_config(port: int, metrics: int, extra: str = "") -> str:
    return f"[router]\nport = {port}\nprometheus_port = {metrics}\n{extra}"


def test_router_binds_loopback_and_reports_itself(world: Env) -> None:
    port, metrics = free_port(), free_port()
    world.write_config(router_config(port, metrics))
    try:
        started = world.run("router", "start", "--json", check=True)
        result = json.loads(started.stdout)
        assert result["outcome"] == "started" and result["policy"] == "cache_aware"
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(result["pid"]).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {("127.0.0.1", port), ("127.0.0.1", metrics)}
        again = world.run("router", "start", check=True)
        assert "already running" in again.stdout
        status = world.run("router", "status", "--json", check=True)
        data = json.loads(status.stdout)
        assert data["state"] == "ready" and data["workers"] == []
        assert data["readiness"]["status"] == "not ready"  # no members yet
        logs = world.run("router", "logs", "-n", "200", check=True).stdout
        assert "Starting router on 127.0.0.1" in logs and "\x1b[" not in logs
    finally:
        stopped = world.run("router", "stop")
    assert "stopped the router" in stopped.stdout
    assert not psutil.pid_exists(result["pid"]) or (
        psutil.Process(result["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    assert world.run("router", "status").returncode == 1
    assert "no router was running" in world.run("router", "stop").stdout


def test_router_port_in_use_and_bad_keys_change_nothing(world: Env) -> None:
    port, metrics = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        world.write_config(router_config(port, metrics))
        busy = world.run("router", "start")
    assert busy.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in busy.stderr
    assert "fix:" in busy.stderr
    assert not (world.state_dir / "router.json").exists()
    world.write_config(router_config(port, metrics, 'polcy = "round_robin"\n'))
    typo = world.run("router", "start")
    assert typo.returncode == 2
    assert "unknown key 'router.polcy'" in typo.stderr and "policy" in typo.stderr
    world.write_config(router_config(port, metrics, 'policy = "fastest"\n'))
    bad = world.run("router", "start")
    assert bad.returncode == 2 and "'fastest'" in bad.stderr
    assert not (world.state_dir / "router.json").exists()


def test_member_whose_router_is_down_still_starts(world: Env) -> None:
    gone = free_port()  # nothing listens here
    world.write_config(f"""
[profiles.member]
extends = "smollm2-cpu"
port = {world.port}
threads = 1
router_url = "http://127.0.0.1:{gone}"
""")
    started = world.run("start", "--profile", "member", timeout=300)
    assert started.returncode == 0, started.stderr
    assert "not registered with the router" in started.stderr
    record = json.loads((world.state_dir / "instance.json").read_text())
    assert record["state"] == "ready" and "router" not in record["runtime_info"]
    stopped = world.run("stop", check=True)
    assert "left the router" not in stopped.stdout
