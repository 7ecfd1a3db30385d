"""`replicas = N`: copies of one profile, each with its own port, device and state, started
and stopped as one group, each joining the router. Real llama-servers, real sglang-router."""

from __future__ import annotations

import json

import httpx
import psutil
import pytest

from tests.conftest import Env, free_port, port_is_free, wait_for

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


def test_a_replica_that_cannot_start_stops_the_group(world: Env, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """Library level (the CLI's preflight would refuse the busy port first): replica 1 cannot
    bind, so replica 0, already ready, is stopped again and the error names the port."""
    import socket

    from llm_backend.cluster.replicas import ReplicaGroup
    from llm_backend.config import load_config
    from llm_backend.errors import BackendError
    from llm_backend.state import StateStore

    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    world.write_config(f"""
[profiles.pair]
extends = "smollm2-cpu"
port = {world.port}
threads = 1
replicas = 2
""")
    group = ReplicaGroup(store=StateStore(world.state_dir),
                         config=load_config(cwd=world.cwd))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", world.port + 1))
        holder.listen()
        with pytest.raises(BackendError, match=f"port {world.port + 1}"):
            group.start(profile_name="pair", overrides={})
    # Replica 0 had been launched and was ready (its log says so), then stopped and cleared.
    log0 = (world.state_dir / "replicas" / "0" / "logs" / "pair.log").read_text()
    assert "listening on" in log0 or "server is listening" in log0
    assert not (world.state_dir / "replicas" / "0" / "instance.json").exists()
    assert group.recorded() == []
    assert port_is_free(world.port)
