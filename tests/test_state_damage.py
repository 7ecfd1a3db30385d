"""Damaged state files never crash a command: they are moved aside (kept) and reported.

Each state file the tool reads (instance.json, history.json, host-prep.json, the lock
files, logs/) is damaged in the ways a crash, a full disk or a careless edit leave it:
binary bytes, garbage, the wrong JSON types, empty, a directory in its place. Then every
command that must keep working (`status`, `stop`, `stop --force`, `recover`, `logs`,
`profiles`, and `start`) runs without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_backend.state import StateStore, atomic_write_json, load_state_json
from tests.conftest import Env, port_is_free

DAMAGE: dict[str, bytes | None] = {
    "binary": b"\x00\xff\xfe\x80garbage\x00",
    "garbage": b"{not json",
    "empty": b"",
    "list": b"[1, 2, 3]",
    "wrong-types": json.dumps({
        "profile": 5, "owner_pid": "1x", "pid": "42", "steps": "none", "state": ["ready"],
        "smollm2-cpu": "fast",
    }).encode(),
    "directory": None,  # a directory in the file's place
}
RECORDS = ["instance.json", "history.json", "host-prep.json"]
COMMANDS = [("status",), ("stop",), ("stop", "--force"), ("recover",), ("logs",), ("profiles",)]


def damage(path: Path, kind: str) -> None:
    content = DAMAGE[kind]
    if content is None:
        path.mkdir()
        (path / "inside").write_text("kept\n")
    else:
        path.write_bytes(content)


def no_crash(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert "Traceback" not in result.stderr, f"{what}:\n{result.stderr}"
    assert result.returncode in (0, 1, 3), f"{what} exited {result.returncode}:\n{result.stderr}"


def clear_moved(state_dir: Path, name: str) -> list[Path]:
    """Remove (and return the contents of) what was moved aside, and the file itself."""
    moved = sorted(state_dir.glob(f"{name}.damaged-*"))
    for leftover in moved:
        if leftover.is_dir():
            (leftover / "inside").unlink()
            leftover.rmdir()
        else:
            leftover.unlink()
    path = state_dir / name
    if path.is_dir():
        (path / "inside").unlink(missing_ok=True)
        path.rmdir()
    path.unlink(missing_ok=True)
    return moved


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_records_never_crash_a_command(world: Env, kind: str) -> None:
    """instance.json, history.json and host-prep.json damaged at once, before each command."""
    for command in COMMANDS:
        for name in RECORDS:
            path = world.state_dir / name
            if not (path.exists() or path.is_symlink()):
                damage(path, kind)
        no_crash(world.run(*command), f"{' '.join(command)} with {kind} records")
    for name in RECORDS:
        clear_moved(world.state_dir, name)
        damage(world.state_dir / name, kind)
    # `status` reads the record and the journal: both are moved aside, their content kept.
    result = world.run("status")
    no_crash(result, "status")
    output = result.stdout + result.stderr
    assert "error:" in output and "fix:" in output and "moved to" in output, output
    assert f"{world.state_dir / 'instance.json'} was damaged" in result.stderr, result.stderr
    for name in ("instance.json", "host-prep.json"):
        moved = sorted(world.state_dir.glob(f"{name}.damaged-*"))
        assert moved, f"the {kind} {name} was not moved aside"
        if DAMAGE[kind] is None:
            assert (moved[0] / "inside").read_text() == "kept\n"
        else:
            assert moved[0].read_bytes() == DAMAGE[kind]
    # `start` reads the history (for its ETA) and writes it anew.
    world.run("start", "-p", "smollm2-cpu", check=True)
    world.run("stop", check=True)
    history = world.state_dir / "history.json"
    assert json.loads(history.read_text())["smollm2-cpu"]["start_duration_s"] > 0
    if kind not in ("empty", "wrong-types"):  # a dict of wrong entries is used, entry by entry
        assert list(world.state_dir.glob("history.json.damaged-*"))


@pytest.mark.parametrize("name", ["start.lock", "state.lock", "logs"])
def test_a_directory_in_place_of_a_lock_or_a_file_for_logs_is_moved_aside(
    world: Env, name: str
) -> None:
    path = world.state_dir / name
    if name == "logs":
        path.write_text("kept\n")  # a file where the logs directory belongs
    else:
        path.mkdir()
        (path / "inside").write_text("kept\n")
    try:
        world.run("start", "-p", "smollm2-cpu", check=True)
        status = world.run("status")
        assert status.returncode == 0, status.stderr
        logs = world.run("logs", "-n", "5")
        no_crash(logs, "logs")
    finally:
        world.run("stop", check=True)
    moved = list(world.state_dir.glob(f"{name}.damaged-*"))
    assert moved
    kept = moved[0] if name == "logs" else moved[0] / "inside"
    assert kept.read_text() == "kept\n"


def test_a_directory_in_place_of_the_journal_lock_is_moved_aside(tmp_path: Path) -> None:
    from llm_backend.host.journal import Journal

    journal = Journal(StateStore(tmp_path / "state").root)
    journal.lock_path.mkdir()
    assert journal.try_lock()
    journal.unlock()
    assert journal.lock_path.is_file()
    assert list(journal.root.glob("host-prep.lock.damaged-*"))


def test_the_store_reports_what_it_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.instance_path.write_bytes(b"\xff\x01")
    assert store.load_instance() is None
    assert len(store.damaged) == 1
    error = store.damaged[0].to_error()
    assert "instance.json was damaged (not UTF-8 text)" in error.message
    assert "moved to" in error.message and error.remedy
    atomic_write_json(store.root / "history.json", {"smollm2-cpu": "fast"})
    assert store.last_start_duration("smollm2-cpu") is None  # wrong type inside: ignored
    data, found = load_state_json(store.root / "history.json")
    assert found is None and data == {"smollm2-cpu": "fast"}


def test_a_record_with_wrong_field_types_is_not_used(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    good = {
        "profile": "p", "engine": "llamacpp", "runtime": "native", "state": "ready",
        "host": "127.0.0.1", "port": 1, "served_model_name": "m", "argv": ["x"],
        "log_path": "/x", "created_at": 1.0, "pid": 5, "pid_create_time": 1.0,
    }
    atomic_write_json(store.instance_path, good)
    assert store.load_instance() is not None
    for key, value in (("pid", "42"), ("port", "80"), ("argv", "x"), ("pid", True),
                       ("runtime_info", []), ("argv", [1])):
        atomic_write_json(store.instance_path, {**good, key: value})
        assert store.load_instance() is None, (key, value)
        assert not store.instance_path.exists()


# --- a read-only or full state dir: an error with a fix, no temporary files left ----------


@pytest.fixture
def small_state(world: Env) -> Iterator[Path]:
    """The world's state dir on a 1 MiB tmpfs of its own (root: mounts), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    mount = world.root / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    world.env["LLM_BACKEND_STATE_DIR"] = str(mount)
    try:
        yield mount
    finally:
        with contextlib.suppress(Exception):
            (mount / "filler").unlink(missing_ok=True)
            world.run("stop", "--force", timeout=60)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> None:
    descriptor = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(descriptor, b"\0" * 4096)
    finally:
        os.close(descriptor)


@pytest.mark.hostprep  # mounts a small tmpfs for its state dir
def test_start_in_a_read_only_state_dir_is_an_error_with_a_fix(
    world: Env, small_state: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_state)], check=True)
    result = world.run("start", "-p", "smollm2-cpu")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "read-only" in result.stderr and "fix:" in result.stderr, result.stderr
    for command in COMMANDS:
        no_crash(world.run(*command), " ".join(command))


@pytest.mark.hostprep  # mounts a small tmpfs for its state dir
def test_a_full_state_dir_is_an_error_with_a_fix_and_leaves_no_temporary_files(
    world: Env, small_state: Path
) -> None:
    world.run("start", "-p", "smollm2-cpu", check=True)
    pid = json.loads((small_state / "instance.json").read_text())["pid"]
    fill(small_state)
    for command in (("status",), ("logs", "-n", "3"), ("recover",)):
        no_crash(world.run(*command), " ".join(command))
    # The record cannot be written, yet `stop` stops the server (and removes the record).
    stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (small_state / "instance.json").exists()
    assert not list(small_state.glob(".*.tmp")), "temporary files were left behind"
    # Starting in a full state dir: an error with a fix, nothing left behind.
    started = world.run("start", "-p", "smollm2-cpu")
    assert started.returncode != 0 and "Traceback" not in started.stderr, started.stderr
    assert "no space left" in started.stderr and "fix:" in started.stderr, started.stderr
    assert port_is_free(world.port), "a server was left running by the failed start"
    assert not list(small_state.glob(".*.tmp"))
    (small_state / "filler").unlink()
