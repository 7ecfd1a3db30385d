"""Root does not trust a state dir someone else can write, nor links or forged records in it.

These run as root against directories and files owned by another user (`nobody`), as an
attacker without root would leave them, and check that nothing outside the state dir is
touched: no file deleted or truncated, no process signalled.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Env, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root against nobody's files")

NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-owned file outside the state dir that a forged record names."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


def forged_journal(path: str) -> dict[str, object]:
    return {
        "version": 1, "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "profile": "smollm2-cpu", "owner_pid": 999999, "phase": "applied", "created_at": 0,
        "steps": [{"name": "swap", "status": "done", "at": 0,
                   "data": {"path": path, "action": "create", "remove_file": True}}],
    }


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_state_dir_owned_by_another_user_is_refused(world: Env, victim: Path) -> None:
    (world.state_dir / "host-prep.json").write_text(json.dumps(forged_journal(str(victim))))
    os.chown(world.state_dir, NOBODY, -1)
    os.chown(world.state_dir / "host-prep.json", NOBODY, -1)
    for command in (("status",), ("stop",), ("stop", "--force"), ("recover",), ("logs",)):
        assert_refused(world.run(*command), "owned by uid", "chown")
    assert victim.read_text() == "precious\n"


def test_state_dir_writable_by_others_is_refused(world: Env, victim: Path) -> None:
    (world.state_dir / "host-prep.json").write_text(json.dumps(forged_journal(str(victim))))
    world.state_dir.chmod(0o777)
    for command in (("status",), ("recover",)):
        assert_refused(world.run(*command), "writable by others", f"chmod 0700 {world.state_dir}")
    assert victim.read_text() == "precious\n"
    world.state_dir.chmod(0o1777)  # sticky does not help: others may still add files
    assert_refused(world.run("status"), "writable by others")


def test_a_file_of_another_user_in_the_state_dir_is_not_trusted(
    world: Env, victim: Path
) -> None:
    """nobody's journal in root's state dir: moved aside, never acted on."""
    journal = world.state_dir / "host-prep.json"
    journal.write_text(json.dumps(forged_journal(str(victim))))
    os.chown(journal, NOBODY, -1)
    result = world.run("status")
    assert "Traceback" not in result.stderr
    assert "owned by uid 65534" in result.stderr and "moved to" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n"
    assert not journal.exists() and list(world.state_dir.glob("host-prep.json.damaged-*"))


def test_a_forged_journal_in_our_own_state_dir_deletes_nothing(
    world: Env, victim: Path
) -> None:
    """`"action": "create", "path": <any file>`: only our own swap file is ever removed."""
    (world.state_dir / "host-prep.json").write_text(json.dumps(forged_journal(str(victim))))
    result = world.run("status")
    assert "Traceback" not in result.stderr
    assert f"left {victim} alone" in result.stdout + result.stderr
    assert victim.read_text() == "precious\n"
    (world.state_dir / "host-prep.json").write_text(json.dumps(forged_journal("/etc/hostname")))
    world.run("recover")
    assert Path("/etc/hostname").exists()


def test_symlinked_log_is_not_truncated_by_start(world: Env, victim: Path) -> None:
    logs = world.state_dir / "logs"
    logs.mkdir(mode=0o700)
    (logs / "smollm2-cpu.log").symlink_to(victim)
    result = world.run("start", "-p", "smollm2-cpu")
    assert_refused(result, "symbolic link", f"rm {logs / 'smollm2-cpu.log'}")
    assert victim.read_text() == "precious\n"
    assert not (world.state_dir / "instance.json").exists()


def test_symlinked_records_are_not_followed(world: Env, victim: Path) -> None:
    for name in ("instance.json", "history.json", "host-prep.json", "start.lock"):
        (world.state_dir / name).symlink_to(victim)
    for command in (("status",), ("stop",), ("recover",), ("profiles",)):
        result = world.run(*command)
        assert "Traceback" not in result.stderr, (command, result.stderr)
    assert victim.read_text() == "precious\n"
    world.run("start", "-p", "smollm2-cpu", check=True)  # start.lock is made anew
    world.run("stop", check=True)
    assert victim.read_text() == "precious\n" and not victim.is_symlink()


def test_forged_instance_without_start_time_kills_nothing(world: Env) -> None:
    """A record naming an unrelated process (pid_create_time null, or wrong) signals nothing."""
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        process = psutil.Process(unrelated.pid)
        record = {
            "profile": "smollm2-cpu", "engine": "llamacpp", "runtime": "native",
            "state": "ready", "host": "127.0.0.1", "port": world.port,
            "served_model_name": "x", "argv": ["sleep"], "log_path": "/dev/null",
            "created_at": time.time(), "pid": unrelated.pid, "pid_create_time": None,
            "runtime_info": {"pgid": unrelated.pid},
        }
        for create_time in (None, process.create_time() - 1000.0, "soon"):
            record["pid_create_time"] = create_time
            (world.state_dir / "instance.json").write_text(json.dumps(record))
            for command in (("stop",), ("stop", "--force")):
                result = world.run(*command)
                assert "Traceback" not in result.stderr, result.stderr
                assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, (
                    f"{command} with pid_create_time={create_time!r} signalled pid "
                    f"{unrelated.pid}: {result.stdout}{result.stderr}")
    finally:
        unrelated.kill()
        unrelated.wait(timeout=10)
        (world.state_dir / "instance.json").unlink(missing_ok=True)


def test_state_dir_is_0700_and_its_files_0600(world: Env) -> None:
    world.state_dir.chmod(0o755)
    world.run("start", "-p", "smollm2-cpu", check=True)
    try:
        assert stat.S_IMODE(world.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((world.state_dir / "logs").stat().st_mode) == 0o700
        files = [p for p in world.state_dir.rglob("*") if p.is_file()]
        assert world.state_dir / "instance.json" in files
        assert world.state_dir / "logs" / "smollm2-cpu.log" in files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        world.run("stop", check=True)
    history = world.state_dir / "history.json"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


def test_an_older_state_dir_with_open_modes_is_tightened(world: Env) -> None:
    """Files the user owns with group/other bits (an older version's 0644) become 0600."""
    world.run("start", "-p", "smollm2-cpu", check=True)
    try:
        record = world.state_dir / "instance.json"
        record.chmod(0o644)
        world.state_dir.chmod(0o755)
        status = world.run("status")
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        assert stat.S_IMODE(world.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
    finally:
        world.run("stop", check=True)


def test_state_dir_naming_a_file_is_an_error_with_a_fix(world: Env, victim: Path) -> None:
    world.env["LLM_BACKEND_STATE_DIR"] = str(victim)
    for command in (("status",), ("stop",), ("start", "--dry-run")):
        assert_refused(world.run(*command), f"LLM_BACKEND_STATE_DIR={victim} is not a directory")
    assert victim.read_text() == "precious\n"


def test_nothing_signalled_when_the_owner_is_forged(world: Env) -> None:
    """A record whose `start` owner is an unrelated live process with a wrong start time is
    not taken as a live start (the lifecycle adopts or clears it; it never signals it)."""
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        record = {
            "profile": "smollm2-cpu", "engine": "llamacpp", "runtime": "native",
            "state": "loading", "host": "127.0.0.1", "port": world.port,
            "served_model_name": "x", "argv": ["sleep"], "log_path": "/dev/null",
            "created_at": time.time(), "pid": unrelated.pid, "pid_create_time": None,
            "owner_pid": unrelated.pid, "owner_create_time": None,
        }
        (world.state_dir / "instance.json").write_text(json.dumps(record))
        world.run("status")
        world.run("stop", "--force")
        assert wait_for(lambda: unrelated.poll() is None, timeout=0.5)
        os.kill(unrelated.pid, 0)
    finally:
        os.kill(unrelated.pid, signal.SIGKILL)
        unrelated.wait(timeout=10)
        (world.state_dir / "instance.json").unlink(missing_ok=True)
