"""One model across two nodes (SGLang multi-node tensor parallelism), tested on one machine.

SGLang needs GPUs, so the ranks are tests/sglang_standin.py, which replays real rank-0 and
rank-1 log lines and behaves as SGLang 0.5.23 does across nodes (see its docstring): rank 1
serves a dummy /health, ignores SIGTERM, and exits when rank 0 goes. The argv of each rank is
checked with SGLang 0.5.23's own argument parser (the parser venv of scripts/setup.sh --test).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llm_backend.config import ConfigSet, Layer, builtin_layer
from llm_backend.engines.sglang import SGLangEngine
from llm_backend.engines.sglang_flags import _PARSER_PRELUDE
from llm_backend.errors import ConfigError
from llm_backend.lifecycle import launch_env
from tests.conftest import Env, free_port, llama_server_binary, wait_for
from tests.pull_data import seed_flagship

STANDIN = Path(__file__).resolve().parent / "sglang_standin.py"
NO_GPU_CHECKS = "gpu,memory,sglang"


def profile_for(rank: int, *, interface: str | None = "lo", addr: str = "127.0.0.1:20000",
                gpus_per_node: int = 1, **keys: Any) -> Any:
    table: dict[str, Any] = {
        "extends": "gpt-oss-120b-eagle3",
        "runtime": "native",
        "port": 30000,
        "distributed": {"nnodes": 2, "node_rank": rank, "dist_init_addr": addr,
                        "gpus_per_node": gpus_per_node,
                        **({"interface": interface} if interface else {})},
        **keys,
    }
    config = ConfigSet(layers=[builtin_layer(), Layer("test", {"rank": table})])
    return config.resolve("rank").profile


def parse_with_sglang(flags: list[str]) -> dict[str, Any]:
    python = os.environ.get("SGLANG_PARSER_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("SGLANG_PARSER_PYTHON is not set (scripts/setup.sh --test makes it)")
        pytest.skip("SGLANG_PARSER_PYTHON is not set (scripts/setup.sh --test makes it)")
    script = _PARSER_PRELUDE + (
        "ns = parser.parse_args(sys.argv[1:])\n"
        "print(json.dumps({'version': version, **{k: getattr(ns, k) for k in "
        "('tp_size', 'nnodes', 'node_rank', 'dist_init_addr', 'host', 'port')}}))\n"
    )
    done = subprocess.run([python, "-c", script, *flags], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_argv_parsed_by_sglang(rank: int) -> None:
    profile = profile_for(rank, addr="192.168.100.10:20000")
    engine = SGLangEngine()
    flags = engine.server_flags(profile=profile, for_container=True)
    parsed = parse_with_sglang(flags)
    assert parsed["version"] == "0.5.23"
    assert (parsed["nnodes"], parsed["node_rank"], parsed["tp_size"]) == (2, rank, 2)
    assert parsed["dist_init_addr"] == "192.168.100.10:20000"
    assert (parsed["host"], parsed["port"]) == ("0.0.0.0", 30000)
    # Four GPUs per node: --tp-size is the total over both nodes.
    bigger = profile_for(rank, addr="192.168.100.10:20000", gpus_per_node=4)
    assert parse_with_sglang(engine.server_flags(profile=bigger))["tp_size"] == 8
    assert engine.health_role(profile=profile) == ("ready" if rank == 0 else "alive")


def test_env_names_the_fast_interface_and_its_address() -> None:
    profile = profile_for(1, interface="lo")
    env = launch_env(profile, SGLangEngine())
    assert env["SGLANG_HOST_IP"] == "127.0.0.1"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "lo"
    mine = profile_for(1, interface="lo", env={"NCCL_SOCKET_IFNAME": "lo,eth9"})
    assert launch_env(mine, SGLangEngine())["NCCL_SOCKET_IFNAME"] == "lo,eth9"
    plain = profile_for(0, interface=None)
    assert launch_env(plain, SGLangEngine()) == plain.env  # no interface: nothing added
    with pytest.raises(ConfigError, match=r"'lbc-no-such0'.*does not exist.*interfaces here"):
        launch_env(profile_for(0, interface="lbc-no-such0"), SGLangEngine())


def test_bad_dist_init_addr_is_refused() -> None:
    with pytest.raises(ConfigError, match="IPv6"):
        profile_for(0, addr="[fe80::1]:20000")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        profile_for(0, addr="192.168.100.10")


# --- two ranks, end to end -------------------------------------------------------------------


def make_world(root: Path) -> Env:
    state, config, cwd = root / "state", root / "config", root / "cwd"
    for path in (state, config, cwd):
        path.mkdir(parents=True)
    env = {
        **os.environ,
        "LLM_BACKEND_STATE_DIR": str(state),
        "XDG_CONFIG_HOME": str(config),
        "LLM_BACKEND_BINARY": str(llama_server_binary()),
        "LLM_BACKEND_SKIP_CHECKS": NO_GPU_CHECKS,
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.pop("LLM_BACKEND_PORT", None)
    seed_flagship(root, env)  # weights in a hub cache of its own, and the encoding
    return Env(root, state, config, cwd, free_port(), env)


def rank_config(rank: int, port: int, dist_port: int, grace_s: float,
                encodings: Path) -> str:
    return f"""
[profiles.rank]
extends = "gpt-oss-120b-eagle3"
runtime = "native"
command = ["{sys.executable}", "{STANDIN}"]
port = {port}
load_timeout_s = 60
stall_timeout_s = 20
stop_grace_s = {grace_s}
env = {{ SGLANG_STANDIN_LINE_DELAY_S = "0.02", SGLANG_STANDIN_VERSION = "0.5.22", \
TIKTOKEN_ENCODINGS_BASE = "{encodings}" }}

[profiles.rank.distributed]
nnodes = 2
node_rank = {rank}
dist_init_addr = "127.0.0.1:{dist_port}"
interface = "lo"

[profiles.rank.host_prep]
enabled = false
"""


@pytest.fixture
def ranks(tmp_path: Path) -> Iterator[tuple[Env, Env]]:
    dist_port = free_port()
    worlds = []
    for rank in (0, 1):
        world = make_world(tmp_path / f"rank{rank}")
        world.write_config(rank_config(rank, world.port, dist_port, grace_s=2,
                                       encodings=world.root / "tiktoken_encodings"))
        worlds.append(world)
    yield worlds[0], worlds[1]
    for world in reversed(worlds):
        with contextlib.suppress(Exception):
            world.run("stop", "--force", timeout=60)
        with contextlib.suppress(Exception):
            pid = json.loads((world.state_dir / "instance.json").read_text()).get("pid")
            if pid:
                os.killpg(int(pid), signal.SIGKILL)


def start_both(rank0: Env, rank1: Env) -> tuple[dict[str, Any], dict[str, Any]]:
    # Rank 1 waits for rank 0's dist-init port, as SGLang's followers do: start both at once.
    follower = rank1.popen("start", "--profile", "rank")
    rank0.run("start", "--profile", "rank", check=True, timeout=120)
    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 0, out + err
    records = []
    for world in (rank0, rank1):
        records.append(json.loads((world.state_dir / "instance.json").read_text()))
    return records[0], records[1]


def test_two_ranks_ready_and_alive(ranks: tuple[Env, Env]) -> None:
    rank0, rank1 = ranks
    record0, record1 = start_both(rank0, rank1)
    assert (record0["state"], record1["state"]) == ("ready", "alive")
    status1 = json.loads(rank1.run("status", "--json", check=True).stdout)
    assert status1["state"] == "alive" and status1["health_status"] == 200
    # Rank 1 serves nothing but the dummy health endpoints.
    base1 = f"http://127.0.0.1:{rank1.port}"
    assert httpx.get(base1 + "/ping", timeout=5).status_code == 200
    assert httpx.get(base1 + "/v1/models", timeout=5).status_code == 404
    assert httpx.get(f"http://127.0.0.1:{rank0.port}/v1/models", timeout=5).status_code == 200
    # The follower's log has TP1 lines, no "fired up": phases still came from it.
    log1 = (rank1.state_dir / "logs" / "rank.log").read_text()
    assert "[2025-10-16 09:06:22 TP1] KV Cache is allocated" in log1
    assert "fired up" not in log1
    history = json.loads((rank1.state_dir / "history.json").read_text())["rank"]
    assert {"load_weights", "kv_cache", "cuda_graph"} <= set(history["phase_offsets"])
    reader = SGLangEngine().log_reader()
    dummy = next(line for line in log1.splitlines() if "Dummy health check server" in line)
    assert [event.name for event in reader.feed(dummy)] == ["server_up"]
    # Both ranks got the interface settings.
    environ = psutil.Process(record1["pid"]).environ()
    assert environ["SGLANG_HOST_IP"] == "127.0.0.1" and environ["NCCL_SOCKET_IFNAME"] == "lo"
    # Stop order: rank 0 first; the follower then exits by itself, no SIGKILL needed.
    stop0 = rank0.run("stop", check=True)
    assert "stopped rank" in stop0.stdout
    assert wait_for(lambda: not psutil.pid_exists(record1["pid"])
                    or psutil.Process(record1["pid"]).status() == psutil.STATUS_ZOMBIE,
                    timeout=15)
    stop1 = rank1.run("stop")
    assert "killed" not in stop1.stdout


def test_follower_ignores_sigterm_and_is_killed_after_grace(ranks: tuple[Env, Env]) -> None:
    rank0, rank1 = ranks
    _, record1 = start_both(rank0, rank1)
    started = time.monotonic()
    stop1 = rank1.run("stop", "--timeout", "2", timeout=60)
    took = time.monotonic() - started
    assert stop1.returncode == 0, stop1.stderr
    assert "still serves: stop it first" in stop1.stderr
    assert "killed rank" in stop1.stdout
    assert took >= 2
    log1 = (rank1.state_dir / "logs" / "rank.log").read_text()
    assert "SIGTERM received on node_rank 1; waiting for the rank-0 ShutdownReq" in log1
    assert not psutil.pid_exists(record1["pid"]) or (
        psutil.Process(record1["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    # Rank 0 keeps serving after its follower went (SGLang's rank 0 would later fail its
    # next collective; the stand-in has none).
    assert json.loads(rank0.run("status", "--json").stdout)["state"] == "ready"


def test_doctor_checks_the_fast_link_and_node_zero(tmp_path: Path) -> None:
    dist_port = free_port()
    world = make_world(tmp_path / "doc")
    world.write_config(rank_config(1, world.port, dist_port, grace_s=2,
                                   encodings=world.root / "tiktoken_encodings"))
    report = json.loads(world.run("doctor", "--profile", "rank", "--json").stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["fast_link"]["status"] == "pass", checks["fast_link"]
    assert checks["fast_link"]["details"]["ipv4"] == ["127.0.0.1"]
    assert checks["rank0"]["status"] == "warn" and "nothing listens" in checks["rank0"]["summary"]
    world.write_config(
        rank_config(1, world.port, dist_port, grace_s=2,
                    encodings=world.root / "tiktoken_encodings").replace('"lo"', '"lbc-none0"')
    )
    report = json.loads(world.run("doctor", "--profile", "rank", "--json").stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["fast_link"]["status"] == "fail"
    assert "lbc-none0" in checks["fast_link"]["summary"]


@pytest.mark.parametrize(("image_tag", "status"), [("v0.5.22", "pass"), ("v0.5.23", "fail")])
def test_doctor_on_a_follower_compares_versions_with_node_zero(
    ranks: tuple[Env, Env], tmp_path: Path, image_tag: str, status: str
) -> None:
    rank0, rank1 = ranks
    start_both(rank0, rank1)
    table = tomllib.loads((rank1.cwd / "llm-backend.toml").read_text())["profiles"]["rank"]
    dist_port = int(table["distributed"]["dist_init_addr"].rpartition(":")[2])
    follower = make_world(tmp_path / "follower")
    # The same profile as the ranks (same API port), in Docker: its version is the image tag.
    config = rank_config(1, rank0.port, dist_port, grace_s=2,
                         encodings=follower.root / "tiktoken_encodings").replace(
        'runtime = "native"', 'runtime = "docker"'
    )
    follower.write_config(
        config + f'\n[profiles.rank.docker]\nimage = "lmsysorg/sglang:{image_tag}"\n'
    )
    report = json.loads(follower.run("doctor", "--profile", "rank", "--json").stdout)
    check = {c["name"]: c for c in report["checks"]}["rank0"]
    assert check["status"] == status, check
    assert check["details"]["rank0_version"] == "0.5.22"
    assert check["details"]["local_version"] == image_tag.lstrip("v")
