"""Shared fixtures: an isolated state/config dir per test, free ports, and a CLI runner.

Every test runs real processes: the `llm-backend` CLI as a subprocess and a real
`llama-server`. Nothing here fakes an engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from llm_backend.engines.llamacpp import cached_binary_path
from llm_backend.processes import marked_processes
from tests.pull_data import encoding_server, hub  # noqa: F401 - fixtures for the pull tests

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "llm_backend"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_binary() -> Path:
    """The llama-server the tests use: PATH, else the cache that `engine install` fills."""
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = cached_binary_path()
    if not cached.is_file():
        pytest.fail(
            f"no llama-server at {cached}: run `llm-backend engine install llama.cpp` first "
            "(.ci/run does)"
        )
    return cached


@dataclass
class Env:
    """One test's world: its own state dir, config dir, working dir and port."""

    root: Path
    state_dir: Path
    config_home: Path
    cwd: Path
    port: int
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 180, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `llm-backend ARGS` as a real subprocess in this test's world."""
        completed = subprocess.run(
            [*CLI, *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"llm-backend {' '.join(args)} exited {completed.returncode}\n"
                f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
            )
        return completed

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def write_config(self, text: str) -> Path:
        path = self.cwd / "llm-backend.toml"
        path.write_text(text)
        return path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    """An isolated llm-backend world; stops whatever the test left running, by PID."""
    state_dir = tmp_path / "state"
    config_home = tmp_path / "config"
    cwd = tmp_path / "cwd"
    for path in (state_dir, config_home, cwd):
        path.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "LLM_BACKEND_STATE_DIR": str(state_dir),
        "XDG_CONFIG_HOME": str(config_home),
        "LLM_BACKEND_PORT": str(port),
        "LLM_BACKEND_BINARY": str(llama_server_binary()),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.pop("LLM_BACKEND_PROFILE", None)
    world = Env(tmp_path, state_dir, config_home, cwd, port, env)
    yield world
    _stop_leftovers(world)


def _stop_leftovers(world: Env) -> None:
    """Best-effort cleanup through the CLI, then by the recorded PID and by the marker that
    names this test's state dir (never by name)."""
    with contextlib.suppress(Exception):
        world.run("stop", "--force", timeout=60)
    for process in ours(world):
        with contextlib.suppress(psutil.Error):
            process.kill()
    record = world.state_dir / "instance.json"
    if record.exists():
        import json

        data = json.loads(record.read_text())
        pid = data.get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def wait_for(predicate: object, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ours(world: Env) -> list[psutil.Process]:
    """The live processes this test's llm-backend launched: they carry the marker naming its
    state dir (`llm_backend.processes.MARKER_ENV`), so another test's servers never count."""
    return marked_processes(world.state_dir)


def processes_with_exe(path: Path) -> list[psutil.Process]:
    """Live processes running the binary at `path` (to prove a stop left none)."""
    found = []
    for process in psutil.process_iter(["exe", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["exe"] == str(path) and process.info["status"] != "zombie":
                found.append(process)
    return found
