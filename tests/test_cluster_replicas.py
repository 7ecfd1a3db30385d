"""`replicas = N`: copies of one profile, each with its own port, device and state, started
and stopped as one group, each joining the router. Real llama-servers, real sglang-router."""

from __future__ import annotations

import json

import httpx
import psutil
import pytest

from tests.conftest import Env, free_port, wait_for

pytest.importorskip("sglang_router", reason="sglang-router is installed by setup.sh --test")


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_two_replicas_start_join_and_stop_as_a_group(world: Env) -> None:
    router_port, metrics_port = free_port(), free_port()
    world.write_config(f"""
[router]
port = {router_port}
prometheus_port = {metrics_port}
health_check_interval_s = 1
health_success_threshold = 1

[profiles.pair]
extends = "smollm2-cpu"
port = {world.port}
threads = 1
replicas = 2
device_ids = ["3", "5"]
router_url = "http://127.0.0.1:{router_port}"
""")
    world.run("router", "start", check=True)
    try:
        started = world.run("start", "--profile", "pair", timeout=300, check=True)
        assert "replica 0: ready" in started.stdout and "replica 1: ready" in started.stdout
        status = json.loads(world.run("status", "--json", check=True).stdout)
        replicas = status["replicas"]
        assert [r["endpoint"] for r in replicas] == [
            f"http://127.0.0.1:{world.port}", f"http://127.0.0.1:{world.port + 1}"
        ]
        assert [r["state"] for r in replicas] == ["ready", "ready"]
        devices = [psutil.Process(r["pid"]).environ()["CUDA_VISIBLE_DEVICES"] for r in replicas]
        assert devices == ["3", "5"]
        workers_url = f"http://127.0.0.1:{router_port}/workers"
        assert wait_for(lambda: sum(w["is_healthy"] for w in
                                    httpx.get(workers_url, timeout=5).json()["workers"]) == 2,
                        timeout=20)
        # Each replica has its own state dir.
        for index in (0, 1):
            record = json.loads(
                (world.state_dir / "replicas" / str(index) / "instance.json").read_text())
            assert record["port"] == world.port + index
        pids = [r["pid"] for r in replicas]
        stopped = world.run("stop", check=True)
        assert stopped.stdout.count("left the router") == 2
        assert all(gone(pid) for pid in pids)
        assert httpx.get(workers_url, timeout=5).json()["workers"] == []
        assert world.run("status").returncode == 1
    finally:
        world.run("stop", "--force")
        world.run("router", "stop", "--force")


def test_too_few_device_ids_is_a_config_error(world: Env) -> None:
    world.write_config(f"""
[profiles.pair]
extends = "smollm2-cpu"
port = {world.port}
replicas = 3
device_ids = ["0", "1"]
""")
    failed = world.run("start", "--profile", "pair")
    assert failed.returncode == 2
    assert "replicas = 3 but device_ids has 2 entries" in failed.stderr
    assert "fix:" in failed.stderr
    assert not (world.state_dir / "replicas").exists()
