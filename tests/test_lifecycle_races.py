"""The single owner of the record, against the races found by trying to break it (issue 9).

Every test runs the real CLI and a real `llama-server` (SmolLM2 on the CPU); slow, frozen,
SIGTERM-ignoring or double-forking servers are the real server behind a small shell wrapper.
"Nothing left" is checked with the marker every launched process carries (`ours`), so the
servers of tests running in parallel never count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.conftest import (
    CLI,
    Env,
    free_port,
    llama_server_binary,
    ours,
    port_is_free,
    wait_for,
)


def read_instance(world: Env) -> dict[str, object] | None:
    path = world.state_dir / "instance.json"
    return json.loads(path.read_text()) if path.exists() else None


def state_of(world: Env) -> str | None:
    record = read_instance(world)
    return str(record["state"]) if record else None


def status(world: Env) -> tuple[int, dict[str, object]]:
    completed = world.run("status", "--json")
    return completed.returncode, json.loads(completed.stdout)


def profile_with(world: Env, name: str, script: str | None = None, extra: str = "") -> None:
    """A profile `name` that extends smollm2-cpu, its binary the real server behind `script`."""
    binary = ""
    if script is not None:
        wrapper = world.root / f"{name}.sh"
        wrapper.write_text(f"#!/bin/sh\n{script}\n")
        wrapper.chmod(0o755)
        binary = f'binary = "{wrapper}"\n'
    config = world.cwd / "llm-backend.toml"
    existing = config.read_text() if config.exists() else ""
    config.write_text(
        existing + f'[profiles.{name}]\nextends = "smollm2-cpu"\n{binary}{extra}\n'
    )


# Host preparation that changes nothing on this host: no swap needed for a 1M footprint, no
# OOM daemon to pause, no cache drop; its journal is still written (and can be frozen at).
NO_HOST_CHANGE = (
    '[profiles.{name}.host_prep]\nenabled = true\nswap_size = "auto"\n'
    'expected_footprint = "1M"\npause_oom_daemons = []\ndrop_caches = false\n'
)


def then_exec(body: str) -> str:
    return f'{body}\nexec {llama_server_binary()} "$@"'


def stopped_by_signal(process: subprocess.Popen[str]) -> bool:
    try:
        return psutil.Process(process.pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def stop_when(
    world: Env, starter: subprocess.Popen[str], ready: Callable[[], bool]
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `stop` once `ready()` says the start is where the test wants it; returns the
    stop and the start's stderr (the start is killed if it does not end)."""
    try:
        assert wait_for(ready, timeout=60)
        stopped = world.run("stop", timeout=120)
        _, start_err = starter.communicate(timeout=120)
    finally:
        if starter.poll() is None:
            starter.kill()
    return stopped, start_err


def assert_nothing_left(world: Env) -> None:
    assert wait_for(lambda: ours(world) == [], timeout=10), ours(world)
    assert port_is_free(world.port)


def test_stop_during_a_load_cancels_the_start_the_same_way_every_time(world: Env) -> None:
    profile_with(world, "slow", then_exec("sleep 3"))
    messages = set()
    for _ in range(2):
        starter = world.popen("start", "--profile", "slow")
        stopped, start_err = stop_when(world, starter, lambda: state_of(world) == "loading")
        assert stopped.returncode == 0, stopped.stderr
        assert "cancelled the start in progress and stopped slow" in stopped.stdout
        assert "no process left" in stopped.stdout
        assert starter.returncode == 5, start_err
        assert "was cancelled by `llm-backend stop`" in start_err
        messages.add(next(line for line in start_err.splitlines() if line.startswith("error:")))
        # The dying start did not rewrite the record to failed: it is gone.
        assert read_instance(world) is None
        code, data = status(world)
        assert code == 1 and data["state"] == "stopped" and data["failure"] is None
        assert_nothing_left(world)
    assert len(messages) == 1, messages


def test_stop_during_host_preparation_cancels_the_start(world: Env) -> None:
    # The start is frozen right after its host preparation journaled `begin`.
    profile_with(world, "prepared", None, NO_HOST_CHANGE.format(name="prepared"))
    env = dict(world.env)
    world.env = {**env, "LLM_BACKEND_FAULT_POINT": "begin"}
    starter = world.popen("start", "--profile", "prepared")
    world.env = env
    stopped, start_err = stop_when(
        world, starter,
        lambda: stopped_by_signal(starter) and state_of(world) == "preparing_host",
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "cancelled the start in progress" in stopped.stdout
    assert starter.returncode == 5, start_err
    assert "was cancelled by `llm-backend stop`" in start_err
    assert read_instance(world) is None
    assert not (world.state_dir / "host-prep.json").exists()  # its host steps were undone
    assert_nothing_left(world)


def test_two_restarts_at_once_one_runs_and_one_is_refused(world: Env) -> None:
    profile_with(world, "slow", then_exec("sleep 1"))
    world.run("start", "--profile", "slow", check=True)
    first = world.popen("restart")
    second = world.popen("restart")
    out_first = first.communicate(timeout=120)
    out_second = second.communicate(timeout=120)
    assert sorted([first.returncode, second.returncode]) == [0, 4], (out_first, out_second)
    loser = out_first if first.returncode == 4 else out_second
    assert "`llm-backend restart` (pid" in loser[1]
    code, data = status(world)
    assert code == 0 and data["state"] == "ready"
    servers = [p for p in ours(world) if "llama-server" in " ".join(p.cmdline())]
    assert len(servers) == 1
    world.run("stop", check=True)
    assert_nothing_left(world)


def test_restart_repeats_the_start_from_anywhere_and_checks_before_it_stops(
    world: Env, tmp_path: Path
) -> None:
    profile_with(world, "mine", None, NO_HOST_CHANGE.format(name="mine"))
    port = free_port()
    world.run("start", "--profile", "mine", "--port", str(port), "--no-host-prep", check=True)
    first = read_instance(world)
    assert first is not None and first["options"]["host_prep"] is False  # type: ignore[index]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    restarted = subprocess.run(
        [*CLI, "restart"], cwd=elsewhere, env=world.env,
        capture_output=True, text=True, timeout=180,
    )
    assert restarted.returncode == 0, restarted.stderr
    record = read_instance(world)
    assert record is not None and record["profile"] == "mine" and record["port"] == port
    assert record["pid"] != first["pid"]
    assert record["options"]["host_prep"] is False  # type: ignore[index]
    assert "host:" not in restarted.stdout  # no host preparation this time either
    assert not (world.state_dir / "host-prep.json").exists()

    # A config that no longer resolves: refused before anything is stopped.
    (world.cwd / "llm-backend.toml").write_text("[profiles.mine\n")
    broken = world.run("restart")
    assert broken.returncode == 2, broken.stderr
    assert "nothing was stopped (mine is still ready)" in broken.stderr
    code, data = status(world)
    assert code == 0 and data["pid"] == record["pid"]
    world.run("stop", check=True)
    assert_nothing_left(world)


def test_start_of_another_backend_while_one_runs_is_refused(world: Env) -> None:
    world.run("start", check=True)
    pid = read_instance(world)["pid"]  # type: ignore[index]
    same = world.run("start")
    assert same.returncode == 0 and "already ready" in same.stdout
    other_port = world.run("start", "--port", str(free_port()))
    assert other_port.returncode == 1, other_port.stderr
    assert "another backend is ready: smollm2-cpu" in other_port.stderr
    assert "you asked for smollm2-cpu" in other_port.stderr
    assert "fix: llm-backend stop" in other_port.stderr
    profile_with(world, "other")
    other_profile = world.run("start", "--profile", "other")
    assert other_profile.returncode == 1
    assert "you asked for other" in other_profile.stderr
    assert read_instance(world)["pid"] == pid  # type: ignore[index]
    world.run("stop", check=True)
    assert_nothing_left(world)


def test_a_frozen_ready_server_is_unhealthy_and_stop_thaws_it(world: Env) -> None:
    profile_with(world, "patient", None, "stop_grace_s = 30\n")
    world.run("start", "--profile", "patient", check=True)
    pid = int(read_instance(world)["pid"])  # type: ignore[index, arg-type]
    os.kill(pid, signal.SIGSTOP)
    code, data = status(world)
    assert code == 1
    assert data["state"] == "unhealthy"
    assert data["health_status"] is None and data["models"] == []
    started = time.monotonic()
    stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped patient")  # SIGTERM worked: no SIGKILL
    assert time.monotonic() - started < 15  # not the whole 30 s grace
    assert_nothing_left(world)


FROZEN = (
    f'{llama_server_binary()} "$@" &\nchild=$!\nkill -STOP $child\nwait $child\n'
)


def test_a_load_adopted_after_its_start_died_still_stalls(world: Env) -> None:
    profile_with(world, "frozen", FROZEN, "stall_timeout_s = 2\nstop_grace_s = 1\n")
    for adopter in ("status", "start"):
        starter = world.popen("start", "--profile", "frozen")
        try:
            assert wait_for(lambda: state_of(world) == "loading", timeout=30)
            starter.send_signal(signal.SIGKILL)
            starter.wait(timeout=10)
        finally:
            if starter.poll() is None:
                starter.kill()
        if adopter == "start":
            # `start` finds the orphaned load, watches it under its own limits, reports it.
            again = world.run("start", "--profile", "frozen", timeout=60)
            assert again.returncode == 5, again.stderr
            assert "failure: stalled" in again.stderr
        else:
            assert wait_for(lambda: status(world)[1]["state"] == "failed", timeout=30,
                            interval=0.5)
        code, data = status(world)
        assert code == 1 and data["state"] == "failed"
        assert data["failure"]["class"] == "stalled"  # type: ignore[index]
        assert_nothing_left(world)


IGNORES_SIGTERM = (
    # The shell ignores SIGTERM and outlives the server, as a wrapper that traps it would.
    f"trap '' TERM\n{llama_server_binary()} \"$@\" &\nwait\nsleep 600\n"
)


def test_stop_kills_a_server_tree_that_ignores_sigterm(world: Env) -> None:
    profile_with(world, "stubborn", IGNORES_SIGTERM, "stop_grace_s = 1\n")
    world.run("start", "--profile", "stubborn", check=True)
    assert len(ours(world)) >= 2
    stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("killed stubborn"), stopped.stdout
    assert_nothing_left(world)
    assert read_instance(world) is None


def test_a_stop_killed_midway_is_reported_and_finished_by_the_next(world: Env) -> None:
    profile_with(world, "stubborn", IGNORES_SIGTERM, "stop_grace_s = 60\n")
    world.run("start", "--profile", "stubborn", check=True)
    stopper = world.popen("stop")
    try:
        assert wait_for(lambda: state_of(world) == "stopping", timeout=30)
        time.sleep(0.3)
        stopper.send_signal(signal.SIGKILL)
        stopper.wait(timeout=10)
    finally:
        if stopper.poll() is None:
            stopper.kill()
    assert state_of(world) == "stopping"
    code, data = status(world)
    assert code == 1 and data["state"] == "failed"
    assert "a `stop` was interrupted and the server still runs" in data["failure"]["message"]  # type: ignore[index]
    forced = world.run("stop", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("killed stubborn")
    assert_nothing_left(world)


def test_a_double_forked_child_of_the_server_is_swept(world: Env) -> None:
    profile_with(world, "forky", then_exec("(setsid sleep 600 &)"))
    world.run("start", "--profile", "forky", check=True)
    server_pid = int(read_instance(world)["pid"])  # type: ignore[index, arg-type]
    escaped = [p for p in ours(world) if p.name() == "sleep"]
    assert len(escaped) == 1
    assert os.getsid(escaped[0].pid) != server_pid  # outside the server's session and group
    assert escaped[0].pid not in [c.pid for c in psutil.Process(server_pid).children(True)]
    stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not escaped[0].is_running() or escaped[0].status() == psutil.STATUS_ZOMBIE
    assert_nothing_left(world)


def test_a_start_killed_between_launch_and_record_leaves_no_orphan(world: Env) -> None:
    env = dict(world.env)
    world.env = {**env, "LLM_BACKEND_FAULT_POINT": "launch.done"}
    starter = world.popen("start")
    world.env = env
    try:
        assert wait_for(lambda: stopped_by_signal(starter), timeout=60)
        record = read_instance(world)
        assert record is not None and record["state"] == "launching" and record["pid"] is None
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
    finally:
        if starter.poll() is None:
            starter.kill()
    # The server runs, and only its marker says whose it is: the next command finds it.
    assert wait_for(lambda: status(world)[1]["state"] == "ready", timeout=60, interval=0.5)
    code, data = status(world)
    leader = [p for p in ours(world) if p.pid == data["pid"]]
    assert code == 0 and len(leader) == 1

    # Even with no record at all, the marker finds it and `stop` ends it.
    (world.state_dir / "instance.json").unlink()
    code, data = status(world)
    assert code == 1 and data["state"] == "failed"
    assert "without a record" in data["failure"]["message"]  # type: ignore[index]
    stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "no process left" in stopped.stdout
    assert_nothing_left(world)
