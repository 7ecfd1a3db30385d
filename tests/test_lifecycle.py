"""The native lifecycle end to end, against a real `llama-server` serving SmolLM2.

Slow starts and stalls come from a real llama-server behind a tiny wrapper script
(sleep, then exec; or SIGSTOP the real server) - the server itself is never faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llm_backend.config import ConfigSet, builtin_layer
from llm_backend.engines.llamacpp import model_path
from tests.conftest import (
    Env,
    llama_server_binary,
    ours,
    port_is_free,
    processes_with_exe,
    wait_for,
)

# `status --json` for the native runtime: the Status fields plus `gpus` (docs/cli.md).
STATUS_KEYS = {
    "state", "profile", "engine", "runtime", "endpoint", "pid", "uptime_s", "models",
    "health_ms", "health_status", "last_start_s", "phase", "failure", "log_path",
    "host_prep", "spec", "gpus", "artifacts",
}


def read_instance(world: Env) -> dict[str, object] | None:
    path = world.state_dir / "instance.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_wrapper(world: Env, body: str) -> Path:
    """A shell script that runs the real llama-server after `body`."""
    script = world.root / "slow-llama-server.sh"
    script.write_text(f"#!/bin/sh\n{body}\nexec {llama_server_binary()} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_start_chat_status_stop(world: Env) -> None:
    started = world.run("start", check=True)
    endpoint = f"http://127.0.0.1:{world.port}"
    assert f"{endpoint}/v1" in started.stdout
    assert "smollm2-135m-instruct" in started.stdout
    assert "curl -s" in started.stdout

    models = httpx.get(f"{endpoint}/v1/models", timeout=60).json()
    assert [model["id"] for model in models["data"]] == ["smollm2-135m-instruct"]

    answer = httpx.post(
        f"{endpoint}/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        },
        timeout=60,
    ).json()
    text = answer["choices"][0]["message"]["content"]
    assert len(text.split()) >= 3  # real words from the model (a 135M model is not reliable)
    assert any(character.isalpha() for character in text)
    assert answer["usage"]["completion_tokens"] > 0

    streamed = world.run("chat", "Name three colours.", "--max-tokens", "24", check=True)
    assert len(streamed.stdout.strip()) > 5
    assert "tokens/s" in streamed.stderr

    status = world.run("status", "--json")
    assert status.returncode == 0
    data = json.loads(status.stdout)
    for key in ("state", "profile", "engine", "runtime", "endpoint", "pid", "uptime_s",
                "models", "health_ms", "last_start_s"):
        assert key in data
    assert set(data) == STATUS_KEYS  # the documented shape, exactly (docs/cli.md)
    assert data["state"] == "ready"
    assert data["profile"] == "smollm2-cpu"
    assert data["engine"] == "llamacpp" and data["runtime"] == "native"
    assert data["endpoint"] == endpoint
    assert data["models"] == ["smollm2-135m-instruct"]
    assert data["health_ms"] > 0 and data["last_start_s"] > 0
    pid = data["pid"]
    assert psutil.pid_exists(pid)

    again = world.run("start")
    assert again.returncode == 0
    assert "already ready" in again.stdout
    # nothing starts, so no "starting ..." and no reasons for a choice (new user's finding)
    assert "starting" not in again.stderr and "auto:" not in again.stderr, again.stderr
    assert read_instance(world)["pid"] == pid  # type: ignore[index]

    stopped = world.run("stop", check=True)
    assert "stopped smollm2-cpu" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert port_is_free(world.port)
    assert not [p for p in processes_with_exe(llama_server_binary()) if p.pid == pid]
    assert ours(world) == []  # nothing this test launched is left
    after = world.run("status", "--json")
    assert after.returncode == 1
    assert json.loads(after.stdout)["state"] == "stopped"
    assert set(json.loads(after.stdout)) == STATUS_KEYS  # the same keys when stopped
    logs = world.run("logs", "-n", "5", check=True)
    assert logs.stdout.strip()
    # The real server's whole log, served and stopped, reads ready and healthy.
    log = world.state_dir / "logs" / "smollm2-cpu.log"
    diagnosed = world.run("diagnose", str(log), "--json")
    data = json.loads(diagnosed.stdout)
    assert data["engine"] == "llamacpp" and data["ready"] is True, log.read_text()
    assert data["failure"] is None and diagnosed.returncode == 0
    assert [phase["name"] for phase in data["phases"]][-1] == "ready"


def test_streaming_chat_completion_returns_chunks(world: Env) -> None:
    world.run("start", check=True)
    pieces = []
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{world.port}/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Count from one to five."}],
            "max_tokens": 30,
            "temperature": 0,
            "stream": True,
        },
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                delta = json.loads(line[5:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces).strip()


def test_stop_when_nothing_runs(world: Env) -> None:
    result = world.run("stop")
    assert result.returncode == 0
    assert "nothing was running" in result.stdout


def test_status_and_chat_when_nothing_runs(world: Env) -> None:
    status = world.run("status")
    assert status.returncode == 1 and "stopped" in status.stdout
    chat = world.run("chat", "hello")
    assert chat.returncode != 0
    assert "error: the backend is not running" in chat.stderr
    assert "fix: llm-backend start" in chat.stderr


def test_corrupt_model_is_reported_with_class_and_log_tail(world: Env) -> None:
    corrupt = world.root / "corrupt.gguf"
    real = model_path(ConfigSet(layers=[builtin_layer()]).resolve("smollm2-cpu").profile)
    corrupt.write_bytes(real.read_bytes()[:2_000_000])
    world.write_config(
        f'[profiles.broken]\nextends = "smollm2-cpu"\nmodel = "{corrupt}"\nmodel_package = ""\n'
    )
    result = world.run("start", "--profile", "broken")
    assert result.returncode == 5
    assert "did not become ready" in result.stderr
    assert "failure: exited" in result.stderr
    assert "could not load the model file" in result.stderr
    assert "last" in result.stderr and "log lines" in result.stderr
    assert "failed to load model" in result.stderr  # the tail itself
    assert "fix:" in result.stderr
    assert port_is_free(world.port)
    data = json.loads(world.run("status", "--json").stdout)
    assert data["state"] == "failed"
    assert data["failure"]["class"] == "exited"


def test_port_in_use_is_refused_before_launch(world: Env) -> None:
    holder = subprocess.Popen(
        ["python3", "-m", "http.server", str(world.port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: not port_is_free(world.port), timeout=10)
        result = world.run("start")
        assert result.returncode != 0
        assert f"port {world.port} on 127.0.0.1 is already in use by pid {holder.pid}" in (
            result.stderr
        )
        assert "fix:" in result.stderr and "--port" in result.stderr
        assert read_instance(world) is None
    finally:
        holder.terminate()
        holder.wait(timeout=10)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('[profiles.x]\nextends = "smollm2-cpu"\nbinary = "{root}/not-executable"\n',
         "is not executable"),
        ('[profiles.x]\nextends = "smollm2-cpu"\nmodel = "{root}/missing.gguf"\n'
         'model_package = ""\n', "missing.gguf does not exist"),
        ('[profiles.x]\nextends = "smollm2-cpu"\nbinary = "{root}/nope"\n', "nope does not exist"),
        ("[profiles.x\n", "is not valid TOML"),
    ],
)
def test_bad_input_starts_nothing(world: Env, config: str, expected: str) -> None:
    not_executable = world.root / "not-executable"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    env = dict(world.env)
    env.pop("LLM_BACKEND_BINARY")
    world.env = env
    world.write_config(config.replace("{root}", str(world.root)))
    result = world.run("start", "--profile", "x")
    assert result.returncode != 0
    assert expected in result.stderr
    assert "fix:" in result.stderr
    assert read_instance(world) is None
    assert port_is_free(world.port)


def test_unknown_profile_is_refused(world: Env) -> None:
    result = world.run("start", "--profile", "does-not-exist")
    assert result.returncode == 2
    assert "unknown profile 'does-not-exist'" in result.stderr
    assert "fix: run `llm-backend profiles`" in result.stderr


def test_dry_run_changes_nothing(world: Env) -> None:
    before = sorted(p.name for p in world.state_dir.iterdir())
    result = world.run("start", "--dry-run", check=True)
    assert "nothing was changed" in result.stdout
    assert "--spec-type ngram-mod" in result.stdout
    assert f"--port {world.port}" in result.stdout
    assert read_instance(world) is None
    assert port_is_free(world.port)
    after = sorted(p.name for p in world.state_dir.iterdir() if p.name != "logs")
    assert after == [name for name in before if name != "logs"]


def test_kill_cli_during_start_then_status_and_stop_work(world: Env) -> None:
    wrapper = write_wrapper(world, "sleep 3")
    world.write_config(f'[profiles.slow]\nextends = "smollm2-cpu"\nbinary = "{wrapper}"\n')
    starter = world.popen("start", "--profile", "slow")
    try:
        assert wait_for(
            lambda: (read_instance(world) or {}).get("state") == "loading", timeout=30
        )
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
    finally:
        if starter.poll() is None:
            starter.kill()
    server_pid = read_instance(world)["pid"]  # type: ignore[index]
    assert psutil.pid_exists(server_pid)
    early = json.loads(world.run("status", "--json").stdout)
    assert early["state"] in ("loading", "ready")
    # the orphaned load is adopted: status notices when it becomes ready
    assert wait_for(
        lambda: json.loads(world.run("status", "--json").stdout)["state"] == "ready",
        timeout=60,
        interval=0.5,
    )
    stopped = world.run("stop", check=True)
    assert "stopped" in stopped.stdout
    assert not psutil.pid_exists(server_pid) or (
        psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    )
    assert port_is_free(world.port)


def test_two_concurrent_starts_only_one_proceeds(world: Env) -> None:
    wrapper = write_wrapper(world, "sleep 2")
    world.write_config(f'[profiles.slow]\nextends = "smollm2-cpu"\nbinary = "{wrapper}"\n')
    first = world.popen("start", "--profile", "slow")
    second = world.popen("start", "--profile", "slow")
    out_first = first.communicate(timeout=120)
    out_second = second.communicate(timeout=120)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 4], (out_first, out_second)
    loser = out_first if first.returncode == 4 else out_second
    assert "already starting" in loser[1]
    servers = [
        p for p in ours(world)
        if any("llama-server" in part for part in p.cmdline())
    ]
    assert len(servers) == 1
    world.run("stop", check=True)


def test_stalled_load_is_stopped_with_class_stalled(world: Env) -> None:
    # The real server, frozen with SIGSTOP right after it starts: no output, no health.
    wrapper = world.root / "frozen.sh"
    wrapper.write_text(
        f'#!/bin/sh\n{llama_server_binary()} "$@" &\nchild=$!\nkill -STOP $child\nwait $child\n'
    )
    wrapper.chmod(0o755)
    world.write_config(
        f'[profiles.frozen]\nextends = "smollm2-cpu"\nbinary = "{wrapper}"\n'
        "stall_timeout_s = 2\nstop_grace_s = 1\n"
    )
    started = time.monotonic()
    result = world.run("start", "--profile", "frozen")
    assert result.returncode == 5
    assert "failure: stalled" in result.stderr
    assert "no progress for 2 s" in result.stderr
    assert time.monotonic() - started < 30
    assert port_is_free(world.port)
    record = read_instance(world)
    assert record is not None and record["state"] == "failed"
    pgid = record["runtime_info"]["pgid"]  # type: ignore[index]
    assert wait_for(lambda: not _group_alive(pgid), timeout=10)


def test_overall_timeout_caps_a_load_that_keeps_talking(world: Env) -> None:
    wrapper = write_wrapper(
        world, "for i in 1 2 3 4 5 6 7 8 9 10; do echo still loading; sleep 0.5; done"
    )
    world.write_config(
        f'[profiles.chatty]\nextends = "smollm2-cpu"\nbinary = "{wrapper}"\n'
        "stall_timeout_s = 2\nload_timeout_s = 3\nstop_grace_s = 1\n"
    )
    result = world.run("start", "--profile", "chatty")
    assert result.returncode == 5
    assert "failure: timeout" in result.stderr
    assert "not ready after 3 s" in result.stderr
    assert "fix: raise `load_timeout_s`" in result.stderr


def test_sigterm_to_start_stops_the_server(world: Env) -> None:
    wrapper = write_wrapper(world, "sleep 3")
    world.write_config(f'[profiles.slow]\nextends = "smollm2-cpu"\nbinary = "{wrapper}"\n')
    starter = world.popen("start", "--profile", "slow")
    assert wait_for(lambda: (read_instance(world) or {}).get("state") == "loading", timeout=30)
    pgid = read_instance(world)["runtime_info"]["pgid"]  # type: ignore[index]
    starter.send_signal(signal.SIGTERM)
    _, stderr = starter.communicate(timeout=60)
    assert starter.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr
    assert wait_for(lambda: not _group_alive(pgid), timeout=15)
    assert read_instance(world)["state"] == "failed"  # type: ignore[index]


def test_restart_keeps_profile_and_port(world: Env) -> None:
    world.run("start", check=True)
    first_pid = read_instance(world)["pid"]  # type: ignore[index]
    world.run("restart", check=True)
    record = read_instance(world)
    assert record is not None and record["state"] == "ready"
    assert record["pid"] != first_pid
    assert record["port"] == world.port
    world.run("stop", check=True)


def _group_alive(pgid: int) -> bool:
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def test_engine_install_is_a_noop_when_the_binary_is_cached(world: Env) -> None:
    started = time.monotonic()
    result = world.run("engine", "install", "llama.cpp", check=True)
    assert "already installed" in result.stdout
    assert time.monotonic() - started < 30


def test_engine_install_of_an_unknown_engine_is_refused(world: Env) -> None:
    result = world.run("engine", "install", "no-such-engine")
    assert result.returncode == 2  # a bad value, as every other command
    assert "cannot install engine 'no-such-engine'" in result.stderr
    assert "fix:" in result.stderr


def test_native_server_gets_env_values_with_home_expanded(world: Env) -> None:
    """`~/...` in a profile's env reaches a native server expanded, as pull and doctor read it;
    other values (`~user/x`, a `~` inside) are passed as written."""
    world.write_config("""
[profiles.tilde]
extends = "smollm2-cpu"
[profiles.tilde.env]
TIKTOKEN_ENCODINGS_BASE = "~/tiktoken_encodings"
LB_TEST_OTHER_USER = "~nobody-here/x"
LB_TEST_INSIDE = "a~/b"
""")
    world.run("start", "--profile", "tilde", check=True)
    try:
        pid = json.loads((world.state_dir / "instance.json").read_text())["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        home = os.path.expanduser("~")
        assert f"TIKTOKEN_ENCODINGS_BASE={home}/tiktoken_encodings".encode() in environ
        assert b"LB_TEST_OTHER_USER=~nobody-here/x" in environ
        assert b"LB_TEST_INSIDE=a~/b" in environ
    finally:
        world.run("stop", check=True)


@pytest.mark.parametrize(("script", "says_killed"), [
    # a shell waits for the server: it prints `...: line 4: PID Killed ...` and exits 137
    ("sleep 60 &\nchild=$!\n(sleep 0.5; kill -KILL $child) &\nwait $child\n", True),
    # the server itself dies of SIGKILL (exit -9), nothing in its log says so
    ("(sleep 0.5; kill -KILL $$) &\nexec sleep 60\n", False),
], ids=["shell-says-killed", "exit-minus-9"])
def test_a_load_killed_by_sigkill_is_reported_as_out_of_memory(
    world: Env, script: str, says_killed: bool
) -> None:
    """The kernel's OOM killer sends SIGKILL. The launcher here is a real bash whose server
    process really dies of SIGKILL (the OOM killer itself cannot be provoked safely on a
    shared test box)."""
    launcher = world.root / "launcher.sh"
    launcher.write_text("#!/bin/bash\n" + script)
    launcher.chmod(0o755)
    world.write_config(f'[profiles.killed]\nextends = "smollm2-cpu"\nbinary = "{launcher}"\n')
    result = world.run("start", "--profile", "killed", "--no-host-prep")
    assert result.returncode == 5, result.stderr
    assert "failure: out_of_memory" in result.stderr
    assert "killed with SIGKILL" in result.stderr and "OOM killer" in result.stderr
    assert "fix: check `dmesg" in result.stderr and "swap" in result.stderr
    log = world.state_dir / "logs" / "killed.log"
    assert ("Killed" in log.read_text()) is says_killed
    assert port_is_free(world.port)
    data = json.loads(world.run("status", "--json").stdout)
    assert data["failure"]["class"] == "out_of_memory"
    # The log alone tells it when a shell said `Killed`; without that line it cannot.
    diagnosed = json.loads(world.run("diagnose", str(log), "--json").stdout)
    assert (diagnosed["failure"] or {}).get("class") == ("out_of_memory" if says_killed else
                                                          None)
