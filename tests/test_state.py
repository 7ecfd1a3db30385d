"""The instance record's one owner: the transition table, the locked read-modify-write checked
against the state on disk, and the file lock. Fast: no server, real files and real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_backend.errors import AlreadyStartingError, FailureClass
from llm_backend.locks import FileLock
from llm_backend.state import (
    ACTIVE_STATES,
    TRANSITIONS,
    InstanceRecord,
    State,
    StateConflict,
    StateStore,
    allowed,
)

# The table as DESIGN.md draws it: the happy path, `failed` from any step, `alive` for a
# member that serves no API. Written out here so that a change to the table is deliberate.
EXPECTED = {
    ("stopped", "preparing_host"), ("stopped", "launching"),
    ("preparing_host", "launching"), ("preparing_host", "failed"),
    ("preparing_host", "stopping"),
    ("launching", "loading"), ("launching", "failed"), ("launching", "stopping"),
    ("loading", "ready"), ("loading", "alive"), ("loading", "failed"), ("loading", "stopping"),
    ("ready", "stopping"), ("ready", "failed"),
    ("alive", "stopping"), ("alive", "failed"),
    ("stopping", "stopped"), ("stopping", "failed"),
    ("failed", "stopping"), ("failed", "stopped"), ("failed", "preparing_host"),
    ("failed", "launching"),
}


def record(state: State = State.LAUNCHING, created_at: float = 1000.0) -> InstanceRecord:
    return InstanceRecord(
        profile="p", engine="llamacpp", runtime="native", state=state, host="127.0.0.1",
        port=1, served_model_name="m", argv=["x"], log_path="/dev/null", created_at=created_at,
    )


def put(store: StateStore, state: State) -> InstanceRecord:
    """Write a record in `state` straight to disk, as an earlier command would have left it."""
    written = record(state)
    store.instance_path.write_text(json.dumps(written.to_json()))
    return written


def test_the_table_is_the_designed_one() -> None:
    table = {(str(a), str(b)) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == EXPECTED
    assert set(TRANSITIONS) == set(State)
    active = {State.PREPARING_HOST, State.LAUNCHING, State.LOADING, State.READY, State.ALIVE}
    assert set(ACTIVE_STATES) == active


@pytest.mark.parametrize("source", list(State))
@pytest.mark.parametrize("target", list(State))
def test_every_move_is_checked_against_the_state_on_disk(
    tmp_path: Path, source: State, target: State
) -> None:
    store = StateStore(tmp_path)
    on_disk = put(store, source)
    stale = on_disk.evolve(state=State.LOADING)  # what a caller last saw does not matter
    if (str(source), str(target)) in EXPECTED:
        moved = store.transition(stale, target, phase="x")
        if target == State.STOPPED:
            assert store.load_instance() is None  # stopped: the record goes
        else:
            assert moved.state == target and moved.phase == "x"
            assert store.load_instance() == moved
    else:
        with pytest.raises(StateConflict) as refused:
            store.transition(stale, target)
        assert refused.value.current == on_disk
        assert store.load_instance() == on_disk  # unchanged
    assert allowed(source, target) == ((str(source), str(target)) in EXPECTED)


def test_a_dying_start_cannot_overwrite_what_stop_wrote(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    loading = store.begin(record(State.LAUNCHING))
    loading = store.transition(loading, State.LOADING, expect={State.LAUNCHING})
    store.transition(loading, State.STOPPING)  # `stop`, in another process
    with pytest.raises(StateConflict, match="stopping on disk"):
        store.transition(loading, State.FAILED, expect={State.LOADING},
                         failure={"class": "exited"})
    on_disk = store.load_instance()
    assert on_disk is not None and on_disk.state == State.STOPPING and on_disk.failure is None


def test_a_later_start_is_not_touched_by_an_earlier_ones_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    first = store.begin(record(State.LAUNCHING, created_at=1.0))
    store.transition(first, State.FAILED)
    second = store.begin(record(State.LAUNCHING, created_at=2.0))
    with pytest.raises(StateConflict, match="replaced"):
        store.transition(first, State.STOPPING)
    assert store.update(first, phase="late") is None
    assert store.load_instance() == second


def test_begin_refuses_while_a_backend_is_active(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.begin(record(State.LAUNCHING, created_at=1.0))
    with pytest.raises(StateConflict, match="is launching"):
        store.begin(record(State.LAUNCHING, created_at=2.0))


def test_states_and_failure_classes_are_plain_strings_in_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    written = store.begin(record(State.PREPARING_HOST))
    data = json.loads(store.instance_path.read_text())
    assert data["state"] == "preparing_host"
    assert store.load_instance() == written
    assert json.dumps({"class": FailureClass.OUT_OF_MEMORY}) == '{"class": "out_of_memory"}'
    with pytest.raises(ValueError, match="'sleepy'"):
        State("sleepy")


def _bump(root: str, rounds: int) -> None:
    store = StateStore(Path(root))
    for _ in range(rounds):
        store.modify(lambda current: current.evolve(  # type: ignore[union-attr]
            exit_code=(current.exit_code or 0) + 1))  # type: ignore[union-attr]


def test_read_modify_write_loses_no_update_across_processes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.begin(record(State.LAUNCHING))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_bump, args=(str(tmp_path), 40)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    final = store.load_instance()
    assert final is not None and final.exit_code == 160


def test_lock_holder_is_read_whole_or_not_at_all_while_holders_change(tmp_path: Path) -> None:
    """Holders with lines of different lengths ("restart", "start") take turns as fast as
    they can while another process asks who holds the lock: every answer is a whole line of
    a live holder, never a mixture of an old and a new line (CI once read "start\\nt")."""
    path = tmp_path / "start.lock"
    churn = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from pathlib import Path; from llm_backend.locks import FileLock; "
         f"lock = FileLock(Path({str(path)!r})); end = time.monotonic() + 4\n"
         "while time.monotonic() < end:\n"
         "    for name in ('restart', 'start', 'status'):\n"
         "        lock.acquire(holder=name); lock.release()\n"],
    )
    try:
        reader = FileLock(path)
        seen: set[str] = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            pid, command = reader.holder_info()
            if pid is not None:
                assert pid == churn.pid, pid
                assert command in ("restart", "start", "status"), repr(command)
                seen.add(command)
        assert seen, "the reader never saw a holder"
    finally:
        churn.kill()
        churn.wait(timeout=10)


def test_a_killed_holders_line_names_nobody(tmp_path: Path) -> None:
    path = tmp_path / "start.lock"
    subprocess.run(
        [sys.executable, "-c",
         "import os; from pathlib import Path; from llm_backend.locks import FileLock; "
         f"FileLock(Path({str(path)!r})).acquire(holder='start'); os._exit(0)"],
        check=True, timeout=60,
    )
    lock = FileLock(path)
    assert lock.holder_path.read_text().endswith(" start\n")  # left by the dead holder
    assert lock.holder_info() == (None, "")
    assert not lock.held_by_other()
    assert lock.acquire(blocking=False, holder="stop")
    assert lock.holder_info()[1] == "stop"
    lock.release()
    assert not lock.holder_path.exists()


def test_file_lock_says_who_holds_it_and_is_freed_when_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "start.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from llm_backend.locks import FileLock; "
         f"lock = FileLock(Path({str(path)!r})); assert lock.acquire(holder='restart'); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = FileLock(path)
        assert lock.held_by_other()
        assert lock.holder_info() == (holder.pid, "restart")
        started = time.monotonic()
        assert not lock.acquire(timeout_s=0.3)
        assert 0.25 < time.monotonic() - started < 5
        store = StateStore(tmp_path)
        with (
            pytest.raises(AlreadyStartingError, match=f"restart` \\(pid {holder.pid}\\)"),
            store.start_lock(),
        ):
            pass
        holder.kill()
        holder.wait(timeout=10)
        assert lock.acquire(timeout_s=5, holder="stop")  # the kernel dropped the dead one's lock
        assert lock.holder_info()[1] == "stop"
        lock.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.mark.parametrize("planted", ["fifo", "directory", "symlink"])
def test_a_planted_holder_file_never_hangs_follows_or_litters(tmp_path: Path,
                                                              planted: str) -> None:
    """A FIFO, a directory or a symlink at `<lock>.holder`: readers answer at once (nobody),
    the holder's write does not follow the link or leave its temporary file behind."""
    path = tmp_path / "start.lock"
    holder_path = tmp_path / "start.lock.holder"
    target = tmp_path / "target"
    target.write_text("untouched\n")
    if planted == "fifo":
        os.mkfifo(holder_path)
    elif planted == "directory":
        holder_path.mkdir()
    else:
        holder_path.symlink_to(target)
    reader = subprocess.run(
        [sys.executable, "-c",
         "from pathlib import Path; from llm_backend.locks import FileLock; "
         f"print(FileLock(Path({str(path)!r})).holder_info())"],
        capture_output=True, text=True, timeout=60,
    )
    assert (reader.returncode, reader.stdout.strip()) == (0, "(None, '')"), reader.stderr
    lock = FileLock(path)
    assert lock.acquire(blocking=False, holder="start")
    if planted == "directory":
        assert lock.holder_info() == (None, "")  # it could not name itself: nobody, at once
    else:
        assert lock.holder_info() == (os.getpid(), "start")  # the link itself was replaced
    lock.release()
    assert target.read_text() == "untouched\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_holder_killed_while_naming_itself_leaves_no_temporary_file(tmp_path: Path) -> None:
    """`<lock>.holder.PID.TID.tmp` of a holder SIGKILLed between writing and renaming is
    removed by the next holder (a link there is removed itself, its target untouched)."""
    path = tmp_path / "start.lock"
    target = tmp_path / "target"
    target.write_text("untouched\n")
    (tmp_path / "start.lock.holder.999999.1.tmp").write_text("999999 1.0 start\n")
    (tmp_path / "start.lock.holder.999998.1.tmp").symlink_to(target)
    (tmp_path / "other.lock.holder.999999.1.tmp").write_text("not this lock's\n")
    lock = FileLock(path)
    assert lock.acquire(blocking=False, holder="stop")
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other.lock.holder.999999.1.tmp", "start.lock", "target"]
    assert target.read_text() == "untouched\n"
