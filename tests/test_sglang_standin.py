"""The SGLang engine end to end (native runtime) against tests/sglang_standin.py.

SGLang itself needs a big GPU, so these tests run the stand-in, which replays real SGLang
startup logs and serves SGLang's endpoints (see its docstring). What they exercise is ours:
the SGLang log reader in the monitor, readiness on /health, stall detection, failure
classes, `status` (served model, speculative stats) and `stop` of the process tree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import port_is_free, wait_for
from tests.pull_data import seed_flagship

STANDIN = Path(__file__).resolve().parent / "sglang_standin.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sglang"
# `doctor`'s GPU and installed-sglang checks cannot pass on a CPU machine; the stand-in
# needs neither.
NO_GPU_CHECKS = "gpu,memory,sglang"


def use_standin(world: Any, **env: str) -> None:
    """A profile like the flagship, natively, with the stand-in as its launcher."""
    world.env["LLM_BACKEND_SKIP_CHECKS"] = NO_GPU_CHECKS
    # What start would otherwise pull: the weights (in this test's own hub cache) and the
    # encoding where TIKTOKEN_ENCODINGS_BASE points (doctor checks it).
    encodings = seed_flagship(world.root, world.env)
    env = {"SGLANG_STANDIN_LINE_DELAY_S": "0.05", "TIKTOKEN_ENCODINGS_BASE": str(encodings),
           **env}
    env_lines = "\n".join(f'{key} = "{value}"' for key, value in env.items())
    world.write_config(
        f"""
[profiles.standin]
extends = "gpt-oss-120b-eagle3"
runtime = "native"
command = ["{sys.executable}", "{STANDIN}"]
load_timeout_s = 60
stall_timeout_s = 10
stop_grace_s = 15

[profiles.standin.env]
{env_lines}

[profiles.standin.host_prep]
enabled = false
"""
    )


def record(world: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((world.state_dir / "instance.json").read_text())
    return data


def tree_of(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def test_progress_ready_status_chat_and_stop(world: Any) -> None:
    use_standin(world)
    started = world.run("start", "--profile", "standin", timeout=120)
    assert started.returncode == 0, started.stderr
    err = started.stderr
    assert "SGLang flags checked with the committed flag table (sglang 0.5.23): ok" in err
    expected = ["phase init", "phase load_weights 0/14", "phase load_weights 14/14",
                "phase kv_cache", "phase cuda_graph", "phase server_up", "phase warmup"]
    positions = [err.find(text) for text in expected]
    assert all(position >= 0 for position in positions), err
    assert positions == sorted(positions), err
    assert "ready" in started.stdout

    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "ready"
    assert status["engine"] == "sglang"
    assert status["models"] == ["openai/gpt-oss-120b"]
    assert status["health_status"] == 200

    chat = world.run("chat", "Say hello", "--max-tokens", "16")
    assert chat.returncode == 0, chat.stderr
    assert "SGLang stand-in" in chat.stdout

    status = json.loads(world.run("status", "--json").stdout)
    assert status["spec"]["accept_length"] == 2.17
    assert status["spec"]["gen_throughput"] == 0.39
    assert status["spec"]["source"] == "/server_info"
    text = world.run("status").stdout
    assert "accept length 2.17" in text and "gen throughput 0.4 tok/s" in text
    assert "openai/gpt-oss-120b" in text

    pid = int(record(world)["pid"])
    tree = tree_of(pid)
    assert len(tree) >= 2  # the server and its scheduler-like child
    stopped = world.run("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout  # SIGTERM was enough: no SIGKILL from us
    assert wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in tree), 10)
    assert port_is_free(world.port)
    log = (world.state_dir / "logs" / "standin.log").read_text()
    assert "SIGTERM received" in log and "Gracefully exiting" in log


def test_old_info_endpoint_is_used_when_the_new_one_is_missing(world: Any) -> None:
    use_standin(world, SGLANG_STANDIN_OLD_ENDPOINTS="1")
    assert world.run("start", "--profile", "standin", timeout=120).returncode == 0
    assert world.run("chat", "hi", "--max-tokens", "8").returncode == 0
    status = json.loads(world.run("status", "--json").stdout)
    assert status["spec"]["source"] == "/get_server_info"
    assert status["spec"]["accept_length"] == 2.17
    assert world.run("stop", timeout=60).returncode == 0


def test_a_load_that_stops_writing_is_stalled(world: Any) -> None:
    # Stops after the 50% checkpoint-shard line and hangs, port never opened.
    use_standin(world, SGLANG_STANDIN_STALL_AFTER="7")
    config = (world.cwd / "llm-backend.toml").read_text().replace(
        "stall_timeout_s = 10", "stall_timeout_s = 2"
    )
    world.write_config(config)
    failed = world.run("start", "--profile", "standin", timeout=120)
    assert failed.returncode == 5, failed.stderr
    assert "failure: stalled" in failed.stderr
    assert "load_weights" in failed.stderr  # the last phase it reached
    data = record(world)
    assert data["state"] == "failed"
    assert data["failure"]["class"] == "stalled"
    assert not psutil.pid_exists(int(data["pid"])) or (
        psutil.Process(int(data["pid"])).status() == psutil.STATUS_ZOMBIE
    )


@pytest.mark.parametrize(
    ("fixture", "failure_class", "words"),
    [
        ("gpt-oss-oom-child-crash.log", "child_crash", "traceback"),
        ("harmony-vocab-offline.log", "offline_encoding", "TIKTOKEN_ENCODINGS_BASE"),
    ],
)
def test_a_failing_replay_is_classified(
    world: Any, fixture: str, failure_class: str, words: str
) -> None:
    use_standin(world, SGLANG_STANDIN_LOG=str(FIXTURES / fixture))
    failed = world.run("start", "--profile", "standin", timeout=120)
    assert failed.returncode == 5, failed.stderr
    assert f"failure: {failure_class}" in failed.stderr
    assert words in failed.stderr
    assert record(world)["failure"]["class"] == failure_class
    assert port_is_free(world.port)


def test_standin_health_is_503_until_warmup_and_while_draining(tmp_path: Path) -> None:
    """The stand-in's own contract, since the lifecycle tests above rely on it."""
    import http.client
    import signal
    import subprocess

    from tests.conftest import free_port

    port = free_port()
    out = tmp_path / "standin.log"
    env = {**os.environ, "SGLANG_STANDIN_LINE_DELAY_S": "0.1", "SGLANG_STANDIN_DRAIN_S": "0.5"}
    with open(out, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(STANDIN), "--model-path", "m", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        def health() -> int | None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                connection.request("GET", "/health")
                return connection.getresponse().status
            except OSError:
                return None
            finally:
                connection.close()

        seen: list[int | None] = []

        def ready() -> bool:
            seen.append(health())
            return seen[-1] == 200

        assert wait_for(ready, 30, 0.02)
        answered = [status for status in seen if status is not None]
        assert answered[0] == 503 and answered[-1] == 200
        assert seen[0] is None  # the port was closed while "loading"
        assert "fired up and ready to roll" in out.read_text()
        process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: health() in (503, None), 5)
        assert process.wait(timeout=10) == -signal.SIGKILL  # SGLang kills its own tree
        assert "Draining requests" in out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
