"""`llm-backend router` on loopback: binds, bad input, and a member whose router is gone.

The real sglang-router 0.3.2 and a real llama-server; no network namespaces needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import httpx
import psutil
import pytest

from tests.conftest import Env, free_port, llama_server_binary, wait_for

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


def test_a_member_with_an_api_key_is_reached_with_it(world: Env) -> None:
    """`join` hands the member's key to the router, which then sends it; the key is never
    shown. A real llama-server started with --api-key-file, joined at library level."""
    from llm_backend.cluster.membership import join
    from llm_backend.config import ConfigSet, Layer, builtin_layer
    from llm_backend.engines.llamacpp import model_path

    port, metrics = free_port(), free_port()
    key_file = world.root / "member.key"
    key_file.write_text("member-secret-123\n")
    key_file.chmod(0o600)
    world.write_config(router_config(port, metrics, "health_check_interval_s = 1\n"))
    table = {"extends": "smollm2-cpu", "port": world.port, "api_key_file": str(key_file),
             "router_url": f"http://127.0.0.1:{port}"}
    profile = ConfigSet(layers=[builtin_layer(), Layer("test", {"member": table})]).resolve(
        "member").profile
    server = subprocess.Popen(
        [str(llama_server_binary()), "--model", str(model_path(profile)), "--host",
         "127.0.0.1", "--port", str(world.port), "--threads", "1", "--api-key-file",
         str(key_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        world.run("router", "start", check=True)
        base = f"http://127.0.0.1:{world.port}"
        assert wait_for(lambda: _status(base + "/health") == 200, timeout=60)
        os.environ.pop("LLM_BACKEND_API_KEY", None)
        membership = join(profile)
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        direct = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert direct.status_code == 401  # the member wants its key
        routed = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                            timeout=30)
        assert routed.status_code == 200, routed.text  # the router sent it
        assert membership.worker_url == base
        listed = world.run("router", "status", "--json", check=True).stdout
        assert "member-secret-123" not in listed
        assert "member-secret-123" not in (world.state_dir / "router" / "router.log").read_text()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        world.run("router", "stop", "--force")


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None
