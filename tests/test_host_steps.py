"""Each host-preparation step on its own: decide, apply, undo; and an undo that is handed a
journal entry naming something the tool did not make changes nothing (this needs root).

Real swap files, a real earlyoom process (Debian's package), the real drop_caches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_backend.config import HostPrepConfig
from llm_backend.host.meminfo import read_meminfo, read_swaps
from llm_backend.host.privileges import Privileges
from llm_backend.host.steps import (
    STEPS,
    OomDaemons,
    PageCache,
    StepContext,
    Swap,
    UndoContext,
    step_named,
)
from llm_backend.host.swap import SWAP_LABEL, SwapOwner, is_ours
from tests.conftest import wait_for

pytestmark = [
    pytest.mark.hostprep,
    pytest.mark.skipif(os.geteuid() != 0, reason="host steps change swap and signal: need root"),
]

EARLYOOM = shutil.which("earlyoom") or "/usr/bin/earlyoom"
OWNER = SwapOwner(state_id=str(uuid.uuid4()), state_dir="/var/tmp/llm-backend-test-steps")


def context(**keys: object) -> StepContext:
    config = HostPrepConfig.model_validate({"enabled": True, **keys})
    return StepContext(config, Privileges(), read_meminfo(), OWNER)


def undo_context(owner: SwapOwner = OWNER) -> UndoContext:
    return UndoContext(Privileges(), same_boot=True, owner=owner)


def active(path: str) -> bool:
    return any(area.path == path for area in read_swaps())


@pytest.fixture
def swap_path() -> Iterator[str]:
    path = f"/var/tmp/llm-backend-test-{uuid.uuid4().hex[:8]}.swap"
    try:
        yield path
    finally:
        if active(path):
            subprocess.run(["swapoff", path], check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.fixture
def earlyoom() -> Iterator[psutil.Process]:
    child = subprocess.Popen(
        [EARLYOOM, "-r", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = psutil.Process(child.pid)
    try:
        assert wait_for(lambda: process.name() == "earlyoom", timeout=10)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGCONT)
            os.kill(child.pid, signal.SIGTERM)
        child.wait(timeout=10)


def test_the_steps_in_order() -> None:
    assert [step.name for step in STEPS] == ["swap", "oom", "caches"]
    assert step_named("swap.previous") is Swap and step_named("firewall") is None


def test_swap_step_applies_and_undoes(swap_path: str) -> None:
    step = Swap.decide(context(swap_file=swap_path, swap_size="16M"))
    assert step.needed() and step.plan.action == "create"
    assert any("mkswap" in " ".join(c.argv) for c in step.commands())
    assert f"host 1 swap: create {swap_path}" in step.plan_lines(1, Privileges().describe)[0]
    step.apply()
    assert active(swap_path) and is_ours(Path(swap_path), Privileges(), OWNER)[0]
    undo = Swap.undo(step.journal_data(), undo_context())
    assert undo.left_on is None
    assert f"swap: removed {swap_path}" in undo.lines
    assert not active(swap_path) and not os.path.lexists(swap_path)
    # Idempotent: a second undo finds nothing to do.
    assert Swap.undo(step.journal_data(), undo_context()).lines == []


def test_swap_undo_leaves_another_state_dirs_swap_file_alone(swap_path: str) -> None:
    """Two state dirs, one swap file path: the second refuses it and its undo touches nothing."""
    first = Swap.decide(context(swap_file=swap_path, swap_size="16M"))
    first.apply()
    other = SwapOwner(state_id=str(uuid.uuid4()), state_dir="/var/tmp/llm-backend-test-other")
    from llm_backend.errors import HostPrepError

    second = StepContext(context().config.model_copy(
        update={"swap_file": swap_path, "swap_size": "16M"}), Privileges(), read_meminfo(), other)
    with pytest.raises(HostPrepError) as caught:
        Swap.decide(second)
    assert f"the state dir {OWNER.state_dir}" in caught.value.message
    assert "in use by another llm-backend" in caught.value.message
    assert "its own host_prep.swap_file" in caught.value.remedy
    # Even a journal entry saying the second one reused or created it changes nothing.
    for action in ("reuse_active", "create"):
        undo = Swap.undo({"path": swap_path, "action": action}, undo_context(other))
        assert "left" in undo.lines[0] and "alone" in undo.lines[0], undo.lines
        assert active(swap_path) and os.path.exists(swap_path)
    Swap.undo(first.journal_data(), undo_context())
    assert not active(swap_path)


def test_swap_undo_of_a_forged_entry_never_deletes_or_swaps_off(
    swap_path: str, tmp_path: Path
) -> None:
    """`"action": "create", "path": <any file>` and `reuse_active` of a foreign swap area."""
    victim = Path(f"/var/tmp/llm-backend-test-victim-{uuid.uuid4().hex[:8]}")
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    try:
        for path in (str(victim), "/etc/hostname", "/var/tmp/x *", "relative"):
            undo = Swap.undo({"path": path, "action": "create", "remove_file": True,
                              "create_dir": "/var/tmp"}, undo_context())
            assert undo.left_on is None and "alone" in undo.lines[0], undo.lines
        assert victim.read_text() == "precious\n" and Path("/etc/hostname").exists()
        assert Path("/var/tmp").is_dir()
        # A foreign swap file (someone else's label), active: reuse_active must not swapoff it.
        subprocess.run(["fallocate", "-l", "16M", swap_path], check=True)
        os.chmod(swap_path, 0o600)
        subprocess.run(["mkswap", "-q", "-L", "not-ours", swap_path], check=True)
        subprocess.run(["swapon", swap_path], check=True)
        undo = Swap.undo({"path": swap_path, "action": "reuse_active"}, undo_context())
        assert "'not-ours'" in undo.lines[0]
        assert active(swap_path) and os.path.exists(swap_path)
        # Our label but no UUID of ours (an older version's, or forged): left alone too.
        subprocess.run(["swapoff", swap_path], check=True)
        subprocess.run(["mkswap", "-q", "-L", SWAP_LABEL, swap_path], check=True)
        undo = Swap.undo({"path": swap_path, "action": "create"}, undo_context())
        assert "another state dir" in undo.lines[0] and os.path.exists(swap_path)
    finally:
        victim.unlink(missing_ok=True)


def test_oom_step_pauses_and_undo_resumes_the_same_process(earlyoom: psutil.Process) -> None:
    step = OomDaemons.decide(context(pause_oom_daemons=["earlyoom"]))
    assert step.plan is not None and step.plan.mode == "process"  # no systemd here
    assert any(p.pid == earlyoom.pid for p in step.plan.processes)
    step.apply()
    assert earlyoom.status() == psutil.STATUS_STOPPED
    # Other earlyoom processes (not this test's) may be in the entry; only ours is checked.
    undo = OomDaemons.undo(step.journal_data(), undo_context())
    assert f"earlyoom (pid {earlyoom.pid}) resumed" in "\n".join(undo.lines)
    assert wait_for(lambda: earlyoom.status() != psutil.STATUS_STOPPED, timeout=5)


def test_oom_undo_of_a_forged_entry_signals_no_other_process() -> None:
    """A journal entry naming a process that is no OOM daemon (right pid and start time), a
    unit that is no OOM daemon's, or a pid with no start time: nothing is signalled."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        process = psutil.Process(victim.pid)
        os.kill(victim.pid, signal.SIGSTOP)
        assert wait_for(lambda: process.status() == psutil.STATUS_STOPPED, timeout=5)
        forged = [
            {"mode": "process", "processes": [
                {"daemon": "earlyoom", "pid": victim.pid, "create_time": process.create_time()}]},
            {"mode": "process", "processes": [
                {"daemon": "earlyoom", "pid": victim.pid, "create_time": None}]},
            {"mode": "process", "processes": [{"pid": "1x"}, "garbage", {"pid": victim.pid}]},
            {"mode": "systemd", "units": ["ssh.service", 5]},
        ]
        for data in forged:
            undo = OomDaemons.undo(data, undo_context())
            assert "resumed" not in "\n".join(undo.lines), undo.lines
        time.sleep(0.2)
        assert process.status() == psutil.STATUS_STOPPED
    finally:
        victim.kill()
        victim.wait(timeout=10)


def cached_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Cached: line in /proc/meminfo")


def test_page_cache_step_drops_and_has_nothing_to_undo(tmp_path: Path) -> None:
    data = tmp_path / "cached.bin"
    data.write_bytes(os.urandom(128 * 1024 * 1024))
    data.read_bytes()
    step = PageCache.decide(context(drop_caches=True))
    assert step.needed() and step.restore_lines(Privileges().describe) == []
    before = cached_bytes()
    ran = step.apply()
    assert ran[-1].endswith("tee /proc/sys/vm/drop_caches")
    # The 128 MiB file we just wrote and read was in the page cache; now most of it is not.
    assert cached_bytes() < before - 64 * 1024 * 1024
    undo = PageCache.undo({}, undo_context())
    assert undo.lines == ["page cache: dropped (nothing to undo)"] and undo.left_on is None
    assert not PageCache.decide(context(drop_caches=False)).needed()
