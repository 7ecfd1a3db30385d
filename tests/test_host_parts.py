"""The parts of host preparation on their own, against the real /proc, disk and sudo (root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_backend.config import HostPrepConfig, load_config
from llm_backend.errors import HostPrepError
from llm_backend.host import caches, sudoers_text
from llm_backend.host.guard import MemoryGuard
from llm_backend.host.journal import Journal, JournalStep, Transaction
from llm_backend.host.meminfo import MemInfo, read_meminfo, read_swaps
from llm_backend.host.privileges import Privileges
from llm_backend.host.swap import SWAP_LABEL, SwapOwner, is_ours, plan_swap

pytestmark = [
    pytest.mark.hostprep,
    pytest.mark.skipif(os.geteuid() != 0, reason="these tests make real swap files: need root"),
]

MIB = 1024 * 1024
OWNER = SwapOwner(state_id=str(uuid.uuid4()), state_dir="/var/tmp/llm-backend-test-owner")


@pytest.fixture
def scratch_swap() -> Iterator[str]:
    """A swap file path with a space in its name; swapped off and removed afterwards."""
    path = f"/var/tmp/llm-backend-test {uuid.uuid4().hex[:8]}.swap"
    try:
        yield path
    finally:
        if any(area.path == path for area in read_swaps()):
            subprocess.run(["swapoff", path], check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.fixture
def plain_swap() -> Iterator[str]:
    """A swap file path of plain characters (what a profile may name); cleaned up after."""
    path = f"/var/tmp/llm-backend-test-{uuid.uuid4().hex[:8]}.swap"
    try:
        yield path
    finally:
        if any(area.path == path for area in read_swaps()):
            subprocess.run(["swapoff", path], check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def make_swap_file(path: str, label: str | None, uuid_text: str = OWNER.state_id) -> None:
    subprocess.run(["fallocate", "-l", "16M", path], check=True)
    os.chmod(path, 0o600)
    subprocess.run(
        ["mkswap", "-q", "-U", uuid_text, *(["-L", label] if label else []), path], check=True
    )


def test_proc_swaps_path_with_a_space_is_decoded(scratch_swap: str) -> None:
    make_swap_file(scratch_swap, SWAP_LABEL)
    subprocess.run(["swapon", scratch_swap], check=True)
    assert "\\040" in Path("/proc/swaps").read_text()
    area = next(area for area in read_swaps() if area.path == scratch_swap)
    assert area.kind == "file" and area.size == 16 * MIB - 4096


def test_meminfo_matches_the_kernel() -> None:
    info = read_meminfo()
    free_kib = {
        line.split(":")[0]: int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
    }
    assert info.mem_total == free_kib["MemTotal"] * 1024
    assert 0 < info.mem_available <= info.mem_total
    assert info.usable == info.mem_available  # no hugetlb pages on this host


def test_hugetlb_pages_count_instead_of_mem_available() -> None:
    """NVIDIA's rule: with hugetlb pages configured, only free huge pages are usable."""
    info = MemInfo(
        mem_total=100, mem_free=50, mem_available=80, swap_total=0, swap_free=0,
        hugepages_total=10, hugepages_free=3, hugepage_size=2 * MIB,
    )
    assert info.usable == 6 * MIB


def test_ours_only_with_our_label_root_owner_and_mode(scratch_swap: str) -> None:
    privileges = Privileges()
    make_swap_file(scratch_swap, "someone-else")
    ours, why = is_ours(Path(scratch_swap), privileges, OWNER)
    assert not ours and "'someone-else'" in why
    os.unlink(scratch_swap)
    make_swap_file(scratch_swap, SWAP_LABEL)
    assert is_ours(Path(scratch_swap), privileges, OWNER)[0]
    os.chmod(scratch_swap, 0o644)
    ours, why = is_ours(Path(scratch_swap), privileges, OWNER)
    assert not ours and "0644" in why


def test_a_swap_file_belongs_to_one_state_dir(scratch_swap: str) -> None:
    """Our label but another state dir's id (swap UUID): not ours, and it says whose."""
    other = SwapOwner(state_id=str(uuid.uuid4()), state_dir="/var/tmp/other-state")
    make_swap_file(scratch_swap, SWAP_LABEL, other.state_id)
    ours, why = is_ours(Path(scratch_swap), Privileges(), OWNER)
    assert not ours and other.state_id in why and "another state dir" in why
    # With the owner's path in the boot block (what root's apply writes), it names it.
    from llm_backend.host.swap import write_owner

    write_owner(scratch_swap, other)
    ours, why = is_ours(Path(scratch_swap), Privileges(), OWNER)
    assert not ours and "the state dir /var/tmp/other-state" in why
    assert is_ours(Path(scratch_swap), Privileges(), other)[0]
    subprocess.run(["swapon", scratch_swap], check=True)  # the boot block is not swap's
    assert any(area.path == scratch_swap for area in read_swaps())


def config(**keys: object) -> HostPrepConfig:
    return HostPrepConfig.model_validate({"enabled": True, **keys})


def test_plan_refuses_bad_paths_naming_the_value_and_the_fix(plain_swap: str) -> None:
    privileges = Privileges()
    cases = {
        "/dev/shm/llm-backend-test.swap": "tmpfs",
        "/proc/llm-backend-test.swap": "proc filesystem",
    }
    for path, reason in cases.items():
        with pytest.raises(HostPrepError) as caught:
            plan_swap(config(swap_file=path, swap_size="16M"), privileges, owner=OWNER)
        assert reason in caught.value.message and repr(path) in caught.value.message
        assert "host_prep.swap_file" in caught.value.remedy
    Path(plain_swap).write_text("notes\n")
    os.chmod(plain_swap, 0o600)
    with pytest.raises(HostPrepError) as caught:
        plan_swap(config(swap_file=plain_swap, swap_size="16M"), privileges, owner=OWNER)
    assert "did not create" in caught.value.message and "no swap signature" in caught.value.message
    assert Path(plain_swap).read_text() == "notes\n"


def test_plan_refuses_a_file_larger_than_the_free_disk(plain_swap: str) -> None:
    vfs = os.statvfs("/var/tmp")
    too_big = f"{vfs.f_bavail * vfs.f_frsize // 1024**3 + 2}G"
    with pytest.raises(HostPrepError) as caught:
        plan_swap(config(swap_file=plain_swap, swap_size=too_big), Privileges(), owner=OWNER)
    assert "not enough disk" in caught.value.message and plain_swap in caught.value.message
    assert "swap_size" in caught.value.remedy
    assert not Path(plain_swap).exists()


def test_auto_size_from_the_footprint() -> None:
    info = read_meminfo()
    small = plan_swap(config(swap_size="auto", expected_footprint="1G"), Privileges(), info,
                      owner=OWNER)
    assert small.action == "none" and small.size == 0
    needed = info.mem_available + 3 * 1024**3
    big = plan_swap(
        config(swap_size="auto", expected_footprint=str(needed), guard_soft_floor="1G",
               swap_file="/var/tmp/llm-backend-test-auto.swap"),
        Privileges(),
        info,
        owner=OWNER,
    )
    assert big.action == "create" and big.size == 4 * 1024**3
    with pytest.raises(HostPrepError) as caught:
        plan_swap(config(swap_size="auto"), Privileges(), info, owner=OWNER)
    assert "expected_footprint" in caught.value.remedy


def test_memory_guard_trips_after_two_samples_under_the_hard_floor() -> None:
    above = read_meminfo().mem_available + 1024**3
    guard = MemoryGuard(soft_floor=above, hard_floor=above, interval_s=0.0)
    assert guard.check() is None  # one sample under the floor may be a blip
    failure = guard.check()
    assert failure is not None and failure.failure_class == "out_of_memory"
    assert "hard floor" in failure.message and "guard_hard_floor" in failure.remedy


def test_memory_guard_drops_caches_under_the_soft_floor_and_rate_limits() -> None:
    dropped: list[list[str]] = []
    guard = MemoryGuard(
        soft_floor=read_meminfo().mem_available + 1024**3,
        hard_floor=0,
        interval_s=0.0,
        drop_caches=lambda: dropped.append(caches.drop_caches(Privileges())),
    )
    for _ in range(5):
        assert guard.check() is None
    assert guard.samples == 5 and guard.soft_drops == 1 and len(dropped) == 1
    assert dropped[0][-1].endswith("tee /proc/sys/vm/drop_caches")
    slow = MemoryGuard(soft_floor=0, hard_floor=0, interval_s=60)
    slow.check()
    slow.check()
    assert slow.samples == 1


def test_journal_lock_tells_a_live_owner_from_a_dead_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.write(Transaction("boot", "p", os.getpid(), "applying", 0.0,
                              steps=[JournalStep("swap", "intent", {"path": "/x"})]))
    assert journal.read() is not None and journal.read().steps[0].data == {"path": "/x"}  # type: ignore[union-attr]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,time; h=open(sys.argv[1],'a+'); fcntl.flock(h, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(journal.lock_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert journal.locked_by_other() and not journal.try_lock()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The kernel dropped the dead owner's lock: the journal is now an orphan to recover.
    assert not journal.locked_by_other() and journal.try_lock()
    journal.unlock()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary journal file was left behind"


@pytest.mark.skipif(shutil.which("visudo") is None, reason="needs sudo's visudo (apt install sudo)")
def test_sudoers_file_is_valid_and_exact() -> None:
    profile = load_config().resolve(
        "smollm2-cpu",
        {"host_prep.enabled": True, "host_prep.swap_size": "256M",
         "host_prep.swap_file": "/var/lib/llm-backend-test/swapfile"},
    ).profile
    text = sudoers_text(profile, "alice")
    with tempfile.NamedTemporaryFile("w", suffix="sudoers", delete=False) as handle:
        handle.write(text)
    try:
        checked = subprocess.run(["visudo", "-cf", handle.name], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        os.unlink(handle.name)
    assert "swapon /var/lib/llm-backend-test/swapfile" in text
    assert "fallocate -l 268435456 /var/lib/llm-backend-test/swapfile" in text
    assert "install -d -m 0700 /var/lib/llm-backend-test" in text  # the folder does not exist
    assert "swapon -a" not in text and "swapoff -a" not in text
    assert 'sync ""' in text  # sync with no arguments, and nothing else
    assert text.rstrip().endswith("NOPASSWD: LLM_BACKEND_SWAP, LLM_BACKEND_CACHES, LLM_BACKEND_OOM")


def test_check_refuses_to_start_over_an_unfinished_journal(tmp_path: Path) -> None:
    """Without the CLI's recovery first, a new start must not overwrite what a dead one did."""
    from llm_backend.host import host_preparation_factory
    from llm_backend.state import StateStore

    profile = load_config().resolve(
        "smollm2-cpu",
        {"host_prep.enabled": True, "host_prep.swap_size": "16M",
         "host_prep.swap_file": f"/var/tmp/llm-backend-test-{uuid.uuid4().hex[:8]}.swap"},
    ).profile
    Journal(tmp_path).write(Transaction("boot", "smollm2-cpu", 4242, "applied", 0.0))
    with pytest.raises(HostPrepError) as caught:
        host_preparation_factory(profile, StateStore(tmp_path)).check()
    assert "pid 4242" in caught.value.message and caught.value.remedy == "llm-backend recover"
