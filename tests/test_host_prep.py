"""Host preparation end to end, with real host operations (this needs root).

Real swap files (small, each test its own name), real drop_caches, a real `earlyoom`
process from Debian's package started by each test, and the embedded llama-server profile
with host preparation turned on. Every test checks that /proc/swaps and its earlyoom
process are exactly as before, and cleans up (swapoff, remove, kill by PID) even if it fails.

Fault injection uses the LLM_BACKEND_FAULT_POINT hook: the CLI stops itself (SIGSTOP)
right after writing that journal entry, and the test SIGKILLs it there.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_backend.host.meminfo import read_meminfo, read_swaps
from tests.conftest import Env, wait_for

pytestmark = [
    pytest.mark.hostprep,
    pytest.mark.skipif(os.geteuid() != 0, reason="host preparation tests change swap: need root"),
]

EARLYOOM = shutil.which("earlyoom") or "/usr/bin/earlyoom"
SWAPOFF = shutil.which("swapoff") or "/usr/sbin/swapoff"
ISSUE_SWAP_FILE = "/var/tmp/llm-backend-test.swap"


# --- fixtures and helpers -------------------------------------------------------------------


def swaps_snapshot() -> list[tuple[str, str, int, int]]:
    """Every active swap area as (path, type, size, priority); Used may move, so it is left out."""
    return sorted((a.path, a.kind, a.size, a.priority) for a in read_swaps())


def remove_swap_file(path: str) -> None:
    if any(area.path == path for area in read_swaps()):
        subprocess.run([SWAPOFF, path], check=False, timeout=120)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@pytest.fixture
def swap_path() -> Iterator[str]:
    """A swap file name of this test's own; swapped off and removed afterwards, whatever happens."""
    path = f"/var/tmp/llm-backend-test-{uuid.uuid4().hex[:8]}.swap"
    try:
        yield path
    finally:
        remove_swap_file(path)


@pytest.fixture
def earlyoom() -> Iterator[psutil.Process]:
    """A real earlyoom started for this test; continued and stopped by its PID afterwards."""
    child = subprocess.Popen(
        [EARLYOOM, "-r", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = psutil.Process(child.pid)
    try:
        # Past exec: it has its own name and command line, and is running.
        assert wait_for(
            lambda: process.name() == "earlyoom" and process.cmdline()[1:] == ["-r", "3600"],
            timeout=10,
        )
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGCONT)
            os.kill(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


def running_normally(process: psutil.Process) -> bool:
    return process.is_running() and process.status() not in (
        psutil.STATUS_STOPPED,
        psutil.STATUS_ZOMBIE,
    )


def write_profile(
    world: Env,
    swap_file: str,
    *,
    swap_size: str = "256M",
    profile_keys: dict[str, object] | None = None,
    **host_prep: object,
) -> None:
    """The issue's user file, with this test's swap file and any extra keys."""
    top = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (profile_keys or {}).items())
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in host_prep.items())
    world.write_config(
        "[profiles.smollm2-hostprep]\n"
        'extends = "smollm2-cpu"\n' + top +
        "[profiles.smollm2-hostprep.host_prep]\n"
        "enabled = true\n"
        f"swap_size = {json.dumps(swap_size)}\n"
        f'swap_file = "{swap_file}"\n' + extra
    )


def journal_path(world: Env) -> Path:
    return world.state_dir / "host-prep.json"


def journal(world: Env) -> dict[str, object]:
    data = json.loads(journal_path(world).read_text())
    assert isinstance(data, dict)
    return data


def assert_host_as_before(
    world: Env, before: list[tuple[str, str, int, int]], daemon: psutil.Process, swap_file: str
) -> None:
    assert swaps_snapshot() == before, "/proc/swaps differs from before the start"
    assert not Path(swap_file).exists(), f"{swap_file} was left on disk"
    assert running_normally(daemon), f"earlyoom pid {daemon.pid} is {daemon.status()}"
    assert not journal_path(world).exists(), "the host-prep journal was left behind"


def wait_stopped(process: subprocess.Popen[str], timeout: float = 90) -> None:
    """Wait until the CLI reached its fault point and stopped itself."""
    watched = psutil.Process(process.pid)
    reached = wait_for(
        lambda: process.poll() is not None or watched.status() == psutil.STATUS_STOPPED,
        timeout=timeout,
    )
    if process.poll() is not None:
        out, err = process.communicate()
        pytest.fail(f"the CLI exited {process.returncode} before its fault point:\n{out}\n{err}")
    assert reached, "the CLI did not reach its fault point"


def start_until(world: Env, point: str, *args: str) -> subprocess.Popen[str]:
    world.env["LLM_BACKEND_FAULT_POINT"] = point
    try:
        process = world.popen("start", "-p", "smollm2-hostprep", *args)
    finally:
        world.env.pop("LLM_BACKEND_FAULT_POINT")
    wait_stopped(process)
    return process


def kill_cli(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def engine_pid(world: Env) -> int:
    data = json.loads((world.state_dir / "instance.json").read_text())
    return int(data["pid"])


# --- the whole sequence ---------------------------------------------------------------------


def test_issue_user_file_full_sequence_leaves_host_as_before(
    world: Env, earlyoom: psutil.Process
) -> None:
    """The exact user file of the issue: swap on, earlyoom paused while loading, all undone."""
    remove_swap_file(ISSUE_SWAP_FILE)
    try:
        world.write_config(
            "[profiles.smollm2-hostprep]\n"
            'extends = "smollm2-cpu"\n'
            "[profiles.smollm2-hostprep.host_prep]\n"
            "enabled = true\n"
            'swap_size = "256M"\n'
            f'swap_file = "{ISSUE_SWAP_FILE}"\n'
        )
        before = swaps_snapshot()
        cmdline = earlyoom.cmdline()

        dry = world.run("start", "-p", "smollm2-hostprep", "--dry-run", check=True)
        assert f"mkswap -L llm-backend {ISSUE_SWAP_FILE}" in dry.stdout
        assert f"kill -STOP {earlyoom.pid}" in dry.stdout
        assert "/proc/sys/vm/drop_caches" in dry.stdout
        assert f"swapoff {ISSUE_SWAP_FILE}" in dry.stdout
        assert swaps_snapshot() == before and not Path(ISSUE_SWAP_FILE).exists()

        # Stop at the first guard sample to see the host as it is during the load.
        process = start_until(world, "guard.started")
        try:
            area = next(a for a in read_swaps() if a.path == ISSUE_SWAP_FILE)
            assert area.size >= 255 * 1024 * 1024
            info = os.stat(ISSUE_SWAP_FILE)
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
            assert info.st_blocks * 512 >= info.st_size, "the swap file has holes"
            assert earlyoom.status() == psutil.STATUS_STOPPED
            steps = {s["name"]: s["status"] for s in journal(world)["steps"]}  # type: ignore[attr-defined]
            assert steps == {"swap": "done", "oom": "done", "caches": "done"}
            live = world.run("status", "--json")
            assert json.loads(live.stdout)["host_prep"]["in_progress"] is True
            assert swaps_snapshot() != before, "status must not undo a live start's changes"
        finally:
            os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert f"earlyoom (pid {earlyoom.pid}) resumed" in out
        assert f"swapoff {ISSUE_SWAP_FILE}" in out
        assert_host_as_before(world, before, earlyoom, ISSUE_SWAP_FILE)
        assert earlyoom.cmdline() == cmdline
        status = json.loads(world.run("status", "--json").stdout)
        assert status["state"] == "ready" and status["host_prep"] is None
        world.run("stop", check=True)
    finally:
        remove_swap_file(ISSUE_SWAP_FILE)


def test_no_host_prep_skips_every_step(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    write_profile(world, swap_path)
    before = swaps_snapshot()
    dry = world.run("start", "-p", "smollm2-hostprep", "--dry-run", "--no-host-prep", check=True)
    assert "host preparation" not in dry.stdout and "launch (native)" in dry.stdout
    # Even held at the point where the guard would start, nothing on the host changed.
    world.env["LLM_BACKEND_FAULT_POINT"] = "begin"
    try:
        started = world.run("start", "-p", "smollm2-hostprep", "--no-host-prep", check=True)
    finally:
        world.env.pop("LLM_BACKEND_FAULT_POINT")
    assert "host:" not in started.stdout
    assert_host_as_before(world, before, earlyoom, swap_path)
    world.run("stop", check=True)


# --- fault injection: SIGKILL the CLI right after each step -----------------------------------

FAULT_POINTS = [
    # (point, what must be true on the host at that moment, command that recovers)
    ("begin", "nothing yet", "status"),
    ("swap.intent", "nothing yet", "recover"),
    ("swap.done", "swap on", "status"),
    ("oom.intent", "swap on", "recover"),
    ("oom.done", "swap on, earlyoom stopped", "status"),
    ("caches.done", "swap on, earlyoom stopped", "recover"),
    ("applied", "swap on, earlyoom stopped", "status"),
    ("guard.started", "swap on, earlyoom stopped, loading", "recover"),
    ("restore.begin", "swap on, earlyoom stopped, ready", "status"),
    ("restore.oom", "swap on, earlyoom running, ready", "recover"),
]


@pytest.mark.parametrize(("point", "expected", "command"), FAULT_POINTS)
def test_sigkill_after_each_step_then_next_command_restores(
    world: Env,
    earlyoom: psutil.Process,
    swap_path: str,
    point: str,
    expected: str,
    command: str,
) -> None:
    write_profile(world, swap_path)
    before = swaps_snapshot()
    process = start_until(world, point)
    swap_on = any(a.path == swap_path for a in read_swaps())
    assert swap_on == ("swap on" in expected)
    assert (earlyoom.status() == psutil.STATUS_STOPPED) == ("earlyoom stopped" in expected)
    assert journal_path(world).exists()
    kill_cli(process)

    result = world.run(command)
    output = result.stdout + result.stderr
    assert_host_as_before(world, before, earlyoom, swap_path)
    assert "undid the host preparation" in output, output
    if "swap on" in expected:
        assert f"swapoff {swap_path}" in output
    if "earlyoom stopped" in expected:
        assert f"earlyoom (pid {earlyoom.pid}) resumed" in output
    if "loading" in expected or "ready" in expected:
        # The server outlived its `start`; stopping it touches nothing on the host.
        world.run("stop", check=True)
        assert_host_as_before(world, before, earlyoom, swap_path)
    # A second recovery finds nothing left to do.
    assert "nothing to recover" in world.run("recover", check=True).stdout


def test_recover_after_a_reboot_only_removes_the_file(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    """A journal from another boot: swap and SIGSTOP died with that boot; only the file is left."""
    write_profile(world, swap_path)
    before = swaps_snapshot()
    process = start_until(world, "applied")
    kill_cli(process)
    data = journal(world)
    data["boot_id"] = "00000000-0000-0000-0000-000000000000"  # as if written before a reboot
    journal_path(world).write_text(json.dumps(data))
    # Play the reboot's part: it turned the swap off and ended the SIGSTOP.
    subprocess.run([SWAPOFF, swap_path], check=True)
    os.kill(earlyoom.pid, signal.SIGCONT)
    result = world.run("recover", check=True)
    assert "after a reboot" in result.stdout
    assert f"removed {swap_path}" in result.stdout
    assert "kill -CONT" not in result.stdout and "swapoff" not in result.stdout
    assert_host_as_before(world, before, earlyoom, swap_path)


# --- failures during the load restore the host at once ----------------------------------------


def test_engine_crash_mid_load_restores_host(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    write_profile(world, swap_path)
    before = swaps_snapshot()
    process = start_until(world, "guard.started")
    os.killpg(engine_pid(world), signal.SIGKILL)
    os.kill(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "did not become ready" in err
    assert_host_as_before(world, before, earlyoom, swap_path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_mid_load_restores_host(
    world: Env, earlyoom: psutil.Process, swap_path: str, signum: signal.Signals
) -> None:
    write_profile(world, swap_path)
    before = swaps_snapshot()
    process = start_until(world, "guard.started")
    pid = engine_pid(world)
    os.kill(process.pid, signum)
    os.kill(process.pid, signal.SIGCONT)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert_host_as_before(world, before, earlyoom, swap_path)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_start_that_times_out_restores_host(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    write_profile(world, swap_path)
    before = swaps_snapshot()
    # Held at the first guard sample for longer than --timeout, so the load times out.
    process = start_until(world, "guard.started", "--timeout", "1")
    wait_for(lambda: False, timeout=1.5)
    os.kill(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "failure: timeout" in err, err
    assert_host_as_before(world, before, earlyoom, swap_path)


ALLOCATE = """
import sys, time
from llm_backend.host.meminfo import read_meminfo
# Takes memory in 32 MiB blocks (filled, so every page is in use) until MemAvailable is
# 192 MiB under the target, and keeps it there while other programs on the host come and
# go; never more than the cap.
target, cap = int(sys.argv[1]) - 192 * 2**20, int(sys.argv[2])
blocks = []
announced = False
while True:
    if read_meminfo().mem_available > target and len(blocks) * 32 * 2**20 < cap:
        blocks.append(bytes([1]) * (32 * 2**20))
        continue
    if not announced:
        print("allocated", len(blocks) * 32, flush=True)
        announced = True
    time.sleep(0.05)
"""


def test_memory_guard_stops_the_load_under_the_hard_floor(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    """A hard floor 256 MiB under MemAvailable, then a process takes memory while loading."""
    available = read_meminfo().mem_available
    hard_floor = available - 256 * 1024 * 1024
    write_profile(
        world,
        swap_path,
        guard_hard_floor=str(hard_floor),
        guard_soft_floor=str(hard_floor),
        # Short grace: the engine is SIGSTOPped below, so only SIGKILL ends it.
        profile_keys={"stop_grace_s": 1},
    )
    before = swaps_snapshot()
    process = start_until(world, "guard.started")
    hog: subprocess.Popen[str] | None = None
    try:
        # Keep the server from finishing its load, then take the memory.
        os.killpg(engine_pid(world), signal.SIGSTOP)
        hog = subprocess.Popen(
            [sys.executable, "-c", ALLOCATE, str(hard_floor), str(2 * 1024**3)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert hog.stdout is not None and hog.stdout.readline().startswith("allocated")
        os.kill(process.pid, signal.SIGCONT)
        _, err = process.communicate(timeout=120)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait(timeout=30)
    assert process.returncode != 0
    assert "failure: out_of_memory" in err, err
    assert "memory guard" in err and "hard floor" in err
    assert "fix:" in err
    assert_host_as_before(world, before, earlyoom, swap_path)


# --- bad input: a clear error, and the host untouched -----------------------------------------


def assert_refused(
    world: Env, before: list[tuple[str, str, int, int]], daemon: psutil.Process, *needles: str
) -> str:
    instance = world.state_dir / "instance.json"
    record_before = instance.read_text() if instance.exists() else None
    result = world.run("start", "-p", "smollm2-hostprep")
    assert result.returncode != 0
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert swaps_snapshot() == before
    assert running_normally(daemon)
    assert not journal_path(world).exists()
    record_after = instance.read_text() if instance.exists() else None
    assert record_after == record_before, "the server was launched anyway"
    return result.stderr


def test_not_enough_disk(world: Env, earlyoom: psutil.Process, swap_path: str) -> None:
    vfs = os.statvfs("/var/tmp")
    too_big = (vfs.f_bavail * vfs.f_frsize) // (1024**3) + 10
    write_profile(world, swap_path, swap_size=f"{too_big}G")
    before = swaps_snapshot()
    # The doctor's disk preflight (when present) or host preparation's own check refuses it.
    assert_refused(world, before, earlyoom, "not enough", "swap", "free")
    assert not Path(swap_path).exists()


def test_swap_file_on_tmpfs(world: Env, earlyoom: psutil.Process) -> None:
    path = f"/dev/shm/llm-backend-test-{uuid.uuid4().hex[:8]}.swap"
    write_profile(world, path)
    before = swaps_snapshot()
    assert_refused(world, before, earlyoom, "tmpfs", path)
    assert not Path(path).exists()


@pytest.mark.parametrize("size", ["lots", "12Q", "512K", "-5G"])
def test_invalid_swap_size(world: Env, earlyoom: psutil.Process, swap_path: str, size: str) -> None:
    write_profile(world, swap_path, swap_size=size)
    before = swaps_snapshot()
    assert_refused(world, before, earlyoom, "host_prep.swap_size", repr(size))
    assert not Path(swap_path).exists()


def test_swap_file_path_that_is_not_ours(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    Path(swap_path).write_bytes(b"someone else's data\n")
    os.chmod(swap_path, 0o600)
    before_stat = os.stat(swap_path)
    write_profile(world, swap_path)
    before = swaps_snapshot()
    assert_refused(world, before, earlyoom, swap_path, "did not create")
    assert Path(swap_path).read_bytes() == b"someone else's data\n"
    assert os.stat(swap_path).st_mtime_ns == before_stat.st_mtime_ns


class Nobody:
    """Runs the CLI as the unprivileged user `nobody` in a world it can write to."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def argv(self, *args: str) -> list[str]:
        return [
            shutil.which("setpriv") or "/usr/bin/setpriv",
            "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            sys.executable, *args,
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv("-m", "llm_backend", *args),
            cwd=self.root / "cwd", env=self.env, capture_output=True, text=True, timeout=180,
        )

    def popen(self, *args: str, fault_point: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv("-m", "llm_backend", *args),
            cwd=self.root / "cwd",
            env={**self.env, "LLM_BACKEND_FAULT_POINT": fault_point},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


@pytest.fixture
def nobody(world: Env, swap_path: str) -> Iterator[Nobody]:
    """A world for `nobody`: state, config and a copy of llama-server it may read."""
    shared = Path(tempfile.mkdtemp(prefix="llm-backend-nobody-", dir="/tmp"))
    try:
        for sub in ("state", "cwd", "config", "bin"):
            (shared / sub).mkdir()
        binary = shared / "bin" / "llama-server"
        shutil.copy2(world.env["LLM_BACKEND_BINARY"], binary)
        write_profile(world, swap_path)
        shutil.copy(world.cwd / "llm-backend.toml", shared / "cwd" / "llm-backend.toml")
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o755)
        # The state dir must be nobody's own and writable by no one else.
        nobody_ids = pwd.getpwnam("nobody")
        os.chown(shared / "state", nobody_ids.pw_uid, nobody_ids.pw_gid)
        (shared / "state").chmod(0o700)
        env = {
            **world.env,
            "LLM_BACKEND_STATE_DIR": str(shared / "state"),
            "XDG_CONFIG_HOME": str(shared / "config"),
            "LLM_BACKEND_BINARY": str(binary),
            "HOME": str(shared),
        }
        user = Nobody(shared, env)
        yield user
        user.run("stop", "--force")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


CHECK_AS_NOBODY = """
import sys
from pathlib import Path
from llm_backend.config import load_config
from llm_backend.errors import BackendError
from llm_backend.host import host_preparation_factory
from llm_backend.state import StateStore
profile = load_config().resolve("smollm2-hostprep").profile
try:
    host_preparation_factory(profile, StateStore(Path(sys.argv[1]))).check()
except BackendError as error:
    print(error.message)
    print("fix:", error.remedy)
else:
    print("allowed")
"""


def test_no_root_and_no_sudo_rules(
    nobody: Nobody, earlyoom: psutil.Process, swap_path: str
) -> None:
    """As `nobody` without sudoers rules: refused before any change, with the sudoers fix."""
    before = swaps_snapshot()
    result = nobody.run("start", "-p", "smollm2-hostprep")
    assert result.returncode != 0
    # Refused by the doctor's preflight (when present) or by host preparation's own check.
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    assert "root" in result.stderr and "sudo" in result.stderr, result.stderr
    # Host preparation's own check, on its own.
    check = subprocess.run(
        nobody.argv("-c", CHECK_AS_NOBODY, str(nobody.root / "state")),
        cwd=nobody.root / "cwd", env=nobody.env, capture_output=True, text=True, timeout=120,
    )
    assert "needs root rights: running as uid 65534 (nobody)" in check.stdout, check.stderr
    assert "llm-backend host sudoers" in check.stdout
    assert ("sudo is not installed" in check.stdout) == (shutil.which("sudo") is None)
    assert swaps_snapshot() == before
    assert running_normally(earlyoom)
    assert not Path(swap_path).exists()
    assert not (nobody.root / "state" / "host-prep.json").exists()
    assert not (nobody.root / "state" / "instance.json").exists()


@pytest.fixture
def nobody_sudoers(world: Env) -> Iterator[Path]:
    """The rules `llm-backend host sudoers --user nobody` prints, installed for this test only."""
    if shutil.which("sudo") is None:
        pytest.skip("needs sudo (apt-get install sudo)")
    text = world.run("host", "sudoers", "-p", "smollm2-hostprep", "--user", "nobody", check=True)
    path = Path(f"/etc/sudoers.d/llm-backend-test-{uuid.uuid4().hex[:8]}")
    staged = world.root / "sudoers"
    staged.write_text(text.stdout)
    checked = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    try:
        subprocess.run(["install", "-m", "0440", str(staged), str(path)], check=True)
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_not_root_with_the_printed_sudoers_rules(
    nobody: Nobody, nobody_sudoers: Path, earlyoom: psutil.Process, swap_path: str
) -> None:
    """`sudo -n` with exactly the printed rules runs every step, restore and recovery."""
    before = swaps_snapshot()
    dry = nobody.run("start", "-p", "smollm2-hostprep", "--dry-run")
    assert f"sudo -n {shutil.which('swapon')} {swap_path}" in dry.stdout, dry.stdout + dry.stderr

    started = nobody.run("start", "-p", "smollm2-hostprep")
    assert started.returncode == 0, started.stderr
    assert f"sudo -n {shutil.which('kill')} -CONT {earlyoom.pid}" in started.stdout
    assert f"sudo -n {shutil.which('swapoff')} {swap_path}" in started.stdout
    assert swaps_snapshot() == before and not Path(swap_path).exists()
    assert running_normally(earlyoom)
    assert nobody.run("stop").returncode == 0

    # Killed after pausing earlyoom: recovery as nobody goes through sudo too.
    process = nobody.popen("start", "-p", "smollm2-hostprep", fault_point="oom.done")
    wait_stopped(process)
    assert earlyoom.status() == psutil.STATUS_STOPPED
    kill_cli(process)
    recovered = nobody.run("recover")
    assert recovered.returncode == 0, recovered.stderr
    assert f"earlyoom (pid {earlyoom.pid}) resumed" in recovered.stdout
    assert swaps_snapshot() == before and not Path(swap_path).exists()
    assert running_normally(earlyoom)


# --- swap areas that are not ours ------------------------------------------------------------


def test_foreign_swap_areas_are_never_touched(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    """Someone else's active swap file stays on, with its priority: start, crash, recover."""
    foreign = f"/var/tmp/llm-backend-test-foreign-{uuid.uuid4().hex[:8]}.swap"
    try:
        subprocess.run(["fallocate", "-l", "64M", foreign], check=True)
        os.chmod(foreign, 0o600)
        subprocess.run(["mkswap", "-q", "-L", "not-ours", foreign], check=True)
        subprocess.run(["swapon", "-p", "7", foreign], check=True)
        write_profile(world, swap_path)
        before = swaps_snapshot()
        assert (foreign, "file", 64 * 1024 * 1024 - 4096, 7) in before

        world.run("start", "-p", "smollm2-hostprep", check=True)
        assert_host_as_before(world, before, earlyoom, swap_path)
        world.run("stop", check=True)

        process = start_until(world, "caches.done")
        kill_cli(process)
        world.run("recover", check=True)
        assert_host_as_before(world, before, earlyoom, swap_path)
        world.run("stop", check=True)  # clears the record the killed start left

        # Its path given as our swap file: refused, not reused and not swapped off.
        write_profile(world, foreign)
        assert_refused(world, before, earlyoom, foreign, "active swap area")
    finally:
        remove_swap_file(foreign)


# --- swap that cannot be turned off in time stays on, shown in status --------------------------

PAGE_OUT = """
import mmap, sys, time
size = 64 * 1024 * 1024
area = mmap.mmap(-1, size)
area.write(bytes([1]) * size)
area.madvise(21)  # MADV_PAGEOUT: push these pages out to swap now
print("paged out", flush=True)
time.sleep(600)
"""


def test_swapoff_past_its_deadline_is_left_on_and_shown(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    write_profile(world, swap_path, swapoff_timeout_s=0.001)
    before = swaps_snapshot()
    process = start_until(world, "guard.started")
    holder = subprocess.Popen(
        [sys.executable, "-c", PAGE_OUT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "paged out"
        used = next(a.used for a in read_swaps() if a.path == swap_path)
        assert used > 0, "MADV_PAGEOUT put nothing in our swap file"
        os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert f"left {swap_path} on" in out and "did not finish within" in out
        assert running_normally(earlyoom), "the OOM daemon must be back even if swap stays on"
        status = json.loads(world.run("status", "--json").stdout)
        left = status["host_prep"]["swap_left_on"]
        assert left[0]["path"] == swap_path
        assert "still on" in world.run("status").stdout
        assert any(a.path == swap_path for a in read_swaps()), "status must not swapoff it"

        # Our file, still active: the next start reuses it.
        dry = world.run("start", "-p", "smollm2-hostprep", "--dry-run", check=True)
        assert "already active" in dry.stdout

        recovered = world.run("recover", "--swapoff-timeout", "120", check=True)
        assert f"swapoff {swap_path}" in recovered.stdout
        assert holder.poll() is None, "swapoff must page the holder back in, not kill it"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    world.run("stop", check=True)
    assert_host_as_before(world, before, earlyoom, swap_path)


# --- a filesystem without fallocate: dd, and a folder of our own ------------------------------


@pytest.fixture
def ext2_mount() -> Iterator[Path]:
    """A 400 MiB ext2 filesystem on a loop device (ext2 has no fallocate); removed afterwards."""
    if shutil.which("mkfs.ext2") is None or shutil.which("losetup") is None:
        pytest.skip("needs mkfs.ext2 and loop devices (e2fsprogs, util-linux)")
    tag = uuid.uuid4().hex[:8]
    image = Path(f"/var/tmp/llm-backend-test-{tag}.img")
    mountpoint = Path(f"/mnt/llm-backend-test-{tag}")
    mounted = False
    try:
        subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
        subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True)
        mountpoint.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
        mounted = True
        yield mountpoint
    finally:
        if mounted:
            for area in read_swaps():
                if area.path.startswith(str(mountpoint) + "/"):
                    subprocess.run([SWAPOFF, area.path], check=False)
            subprocess.run(["umount", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        image.unlink(missing_ok=True)


def test_swap_file_on_ext2_is_written_with_dd_in_a_folder_of_its_own(
    world: Env, earlyoom: psutil.Process, ext2_mount: Path
) -> None:
    folder = ext2_mount / "llm-backend"
    swap_file = str(folder / "swapfile")
    write_profile(world, swap_file, swap_size="64M")
    before = swaps_snapshot()
    dry = world.run("start", "-p", "smollm2-hostprep", "--dry-run", check=True)
    assert f"install -d -m 0700 {folder}" in dry.stdout
    assert f"dd if=/dev/zero of={swap_file} bs=1M count=64" in dry.stdout
    assert "fallocate" not in dry.stdout

    process = start_until(world, "guard.started")
    try:
        area = next(a for a in read_swaps() if a.path == swap_file)
        assert 60 * 1024 * 1024 < area.size <= 64 * 1024 * 1024
        info = os.stat(swap_file)
        assert info.st_blocks * 512 >= info.st_size, "the swap file has holes"
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    finally:
        os.kill(process.pid, signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"removed the directory {folder}" in out
    assert not folder.exists()
    assert_host_as_before(world, before, earlyoom, swap_file)


def test_not_enough_room_on_a_small_filesystem(
    world: Env, earlyoom: psutil.Process, ext2_mount: Path
) -> None:
    """300 MiB wanted on a 400 MiB filesystem (64 MiB margin): refused, nothing created."""
    swap_file = str(ext2_mount / "swapfile")
    write_profile(world, swap_file, swap_size="300M")
    before = swaps_snapshot()
    assert_refused(world, before, earlyoom, "not enough", "free", swap_file)
    assert list(ext2_mount.iterdir()) == [ext2_mount / "lost+found"]


# --- two state dirs, one swap file path: the second is refused -------------------------------


def test_a_second_state_dir_naming_the_same_swap_file_is_refused(
    world: Env, earlyoom: psutil.Process, swap_path: str
) -> None:
    """The first start is loading with the swap file on; a second state dir's start (its own
    port) must neither reuse it nor swap it off: it is refused, naming the owner."""
    import dataclasses

    from tests.conftest import free_port

    write_profile(world, swap_path)
    before = swaps_snapshot()
    process = start_until(world, "guard.started")
    other_state = world.root / "other-state"
    other_state.mkdir(mode=0o700)
    other = dataclasses.replace(
        world, state_dir=other_state, port=free_port(),
        env={**world.env, "LLM_BACKEND_STATE_DIR": str(other_state)},
    )
    try:
        other.env["LLM_BACKEND_PORT"] = str(other.port)
        result = other.run("start", "-p", "smollm2-hostprep")
        assert result.returncode != 0
        assert "in use by another llm-backend" in result.stderr, result.stderr
        assert f"the state dir {world.state_dir}" in result.stderr, result.stderr
        assert "fix:" in result.stderr and "its own host_prep.swap_file" in result.stderr
        assert any(a.path == swap_path for a in read_swaps()), "the first one's swap is gone"
        assert not (other_state / "host-prep.json").exists()
        assert "nothing to recover" in other.run("recover", check=True).stdout
        assert any(a.path == swap_path for a in read_swaps())
    finally:
        os.kill(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    world.run("stop", check=True)
    assert_host_as_before(world, before, earlyoom, swap_path)
