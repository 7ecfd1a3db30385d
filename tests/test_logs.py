"""`llm-backend logs` (issue 10, "Logs"): -n counts exactly, long lines are whole or marked,
-f follows across truncation, rotation and a restart, a deleted log of a running server is
still read, and a deleted log of a stopped one is named with the fix.

The first tests write the log file themselves (the reader is what is tested, through the real
CLI); the last one runs a real llama-server and `restart`.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import Env, wait_for


def write_log(world: Env, text: bytes, name: str = "x.log") -> Path:
    logs = world.state_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    path = logs / name
    path.write_bytes(text)
    path.chmod(0o600)
    return path


def test_n_is_exact_and_zero_prints_nothing(world: Env) -> None:
    write_log(world, b"".join(b"line %d\n" % i for i in range(200)))
    assert world.run("logs", "-n", "3", check=True).stdout.splitlines() == [
        "line 197", "line 198", "line 199"]
    zero = world.run("logs", "-n", "0", check=True)
    assert zero.stdout == ""
    assert len(world.run("logs", "-n", "150", check=True).stdout.splitlines()) == 150
    negative = world.run("logs", "-n", "-3")
    assert negative.returncode == 2 and "error: -n -3 is out of range" in negative.stderr
    assert "fix: llm-backend logs -n" in negative.stderr


def test_a_long_line_is_whole_and_a_huge_one_says_it_is_cut(world: Env) -> None:
    write_log(world, b"first\n" + b"x" * 5_000_000 + b"\nlast\n")
    out = world.run("logs", "-n", "2", check=True, timeout=60).stdout.splitlines()
    assert out == ["x" * 5_000_000, "last"]
    write_log(world, b"first\n" + b"y" * 20_000_000 + b"\nlast\n")
    out = world.run("logs", "-n", "2", check=True, timeout=60).stdout.splitlines()
    assert out[0].startswith("[cut: this line starts before byte ")
    assert "only its last" in out[0] and out[0].endswith("y" * 1000)
    assert out[1] == "last"


class Lines:
    """The follower's stdout, read by a thread so that waiting for a line has a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in stream:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, needle: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return False
            self.seen.append(line)
            if needle in line:
                return True
        return False


def test_follow_goes_on_after_truncation_and_rotation(world: Env) -> None:
    path = write_log(world, b"old 1\nold 2\nold 3\n")
    follower = world.popen("logs", "-f", "-n", "1")
    out = Lines(follower)
    try:
        assert out.until("old 3")
        with path.open("ab") as handle:
            handle.write(b"appended\n")
        assert out.until("appended")
        path.write_bytes(b"after truncation\n")  # shorter than before: emptied, rewritten
        assert out.until("after truncation")
        path.write_bytes(b"rewritten and longer than the old content ever was\n" * 3)
        assert out.until("rewritten and longer")
        path.rename(path.with_suffix(".log.1"))  # rotation: a new file takes the path
        write_log(world, b"after rotation\n")
        assert out.until("after rotation")
    finally:
        follower.kill()
        follower.communicate(timeout=10)
    assert "old 1" not in out.seen and "old 2" not in out.seen  # -n 1 showed only the last line


def test_follow_across_restart_and_a_deleted_log(world: Env) -> None:
    world.run("start", check=True)
    follower = world.popen("logs", "-f", "-n", "0")
    out = Lines(follower)
    try:
        time.sleep(1.0)  # the follower is at the end of the first load's log
        world.run("restart", check=True)
        # the second load rewrote the log from byte 0; its lines reach the follower
        assert out.until("listening on http", timeout=120), out.seen
    finally:
        follower.kill()
        follower.communicate(timeout=10)
    status = world.run("status", "--json", check=True)
    log = Path(json.loads(status.stdout)["log_path"])
    log.unlink()
    while_running = world.run("logs", "-n", "5")
    assert while_running.returncode == 0, while_running.stderr
    assert "nothing was started" not in while_running.stderr
    assert while_running.stdout.strip()  # read through /proc/PID/fd: the server holds it
    world.run("stop", check=True)
    assert wait_for(lambda: world.run("status").returncode == 1, timeout=30)
    after_stop = world.run("logs")
    assert after_stop.returncode == 3
    assert "nothing was started" not in after_stop.stderr
    assert f"error: no log in {log.parent}" in after_stop.stderr
    assert "was deleted" in after_stop.stderr and "fix: llm-backend start" in after_stop.stderr
