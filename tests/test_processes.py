"""The one process-tree stop and the launch marker, on real processes (sh, sleep, python)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_backend.gpu import OwnedProcess, end_processes, process_tree
from llm_backend.processes import marked_processes, marker_env, running, stop_tree, tree
from tests.conftest import Env, wait_for

# Exits at once on SIGTERM (Python's default), prints when it is up.
EXITS_ON_TERM = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed by pid afterwards if they are still there."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def spawn(spawned: list[subprocess.Popen[str]], argv: list[str],
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, **(env or {})})
    spawned.append(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "up"
    return child


def test_a_tree_that_ignores_sigterm_is_killed(spawned: list[subprocess.Popen[str]]) -> None:
    shell = spawn(spawned, ["sh", "-c", "trap '' TERM; sleep 60 & echo up; wait; sleep 60"])

    def members_now() -> list[psutil.Process]:
        return tree(leader=psutil.Process(shell.pid), group=shell.pid)

    assert wait_for(lambda: sorted(p.name() for p in members_now()) == ["sh", "sleep"], 5)
    members = members_now()
    result = stop_tree(members, grace_s=0.5, group=shell.pid,
                       rescan=lambda: tree(leader=None, group=shell.pid))
    assert result.killed and result.leftovers == []
    assert not any(running(p) for p in members)


def test_a_frozen_process_is_thawed_and_stops_on_sigterm(
    spawned: list[subprocess.Popen[str]]
) -> None:
    child = spawn(spawned, EXITS_ON_TERM)
    os.kill(child.pid, signal.SIGSTOP)
    assert wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_STOPPED, 5)
    started = time.monotonic()
    result = stop_tree([psutil.Process(child.pid)], grace_s=20)
    assert not result.killed  # SIGCONT let it act on SIGTERM: no SIGKILL, no 20 s wait
    assert time.monotonic() - started < 5
    child.wait(timeout=5)  # (psutil.wait_procs reaped it: Popen cannot see the signal)
    assert len(result.stopped) == 1 and result.stopped[0].startswith(f"pid {child.pid} (")


def test_the_marker_finds_a_double_forked_process(
    spawned: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    leader = spawn(
        spawned,
        ["sh", "-c", "(setsid sleep 60 &); echo up; sleep 60"],
        env=marker_env(tmp_path),
    )

    def escaped_sleeps() -> list[psutil.Process]:
        return [p for p in marked_processes(tmp_path)
                if p.name() == "sleep" and os.getsid(p.pid) != leader.pid]

    assert wait_for(lambda: len(escaped_sleeps()) == 1, timeout=5)
    escaped = escaped_sleeps()
    # Not in the leader's tree, group or session: only the marker finds it.
    assert escaped[0].pid not in [p.pid for p in tree(leader=psutil.Process(leader.pid),
                                                      group=leader.pid)]
    assert marked_processes(tmp_path / "other") == []
    result = stop_tree(marked_processes(tmp_path), grace_s=2,
                       rescan=lambda: marked_processes(tmp_path))
    assert result.leftovers == [] and not running(escaped[0])


def test_gpu_leftovers_are_ended_by_pid_and_start_time(
    spawned: list[subprocess.Popen[str]]
) -> None:
    child = spawn(spawned, EXITS_ON_TERM)
    owned = process_tree(child.pid)
    assert [item.pid for item in owned] == [child.pid]
    stale = OwnedProcess(child.pid, owned[0].create_time - 100)  # a reused pid: left alone
    assert end_processes([stale], grace_s=1) == ([], [])
    assert running(psutil.Process(child.pid))
    ended, left = end_processes(owned, grace_s=5)
    assert [item.pid for item in ended] == [child.pid] and left == []


def test_stop_sends_llama_server_one_sigterm_so_it_cleans_up(world: Env) -> None:
    """A second SIGTERM makes llama-server skip its clean-up (tools/server/server.cpp:
    "Received second interrupt, terminating immediately"); the group and the pid must not
    both be signalled."""
    world.run("start", "--profile", "smollm2-cpu", check=True, timeout=180)
    world.run("stop", check=True, timeout=60)
    log = (world.state_dir / "logs" / "smollm2-cpu.log").read_text(errors="replace")
    assert "Received second interrupt" not in log, log[-1500:]
    assert "cleaning up before exit" in log, log[-1500:]
