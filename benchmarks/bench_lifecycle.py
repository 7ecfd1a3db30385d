"""Time the lifecycle of the embedded profile and compare readiness with a 5-second poll loop.

Measures, as medians over repeated runs on this machine:
- `llm-backend start` wall time to ready (smollm2-cpu),
- readiness lag: from the server's first 200 on /health to `start` returning,
- `llm-backend status` and `llm-backend stop` wall times,
- the same readiness lag for the usual start script: `until curl -sf /health; do sleep 5; done`.

A watcher thread polls /health every 5 ms to see when the server is first ready.
Writes its section of docs/benchmarks.md between markers (other sections are kept).

Usage: python benchmarks/bench_lifecycle.py [--runs N] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- lifecycle:begin -->"
END = "<!-- lifecycle:end -->"
CLI = [sys.executable, "-m", "llm_backend"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FirstReady:
    """Polls /health every 5 ms from a thread and remembers when it first answered 200."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health"
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FirstReady:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(timeout=0.5, trust_env=False) as client:
            while not self._stop.is_set() and self.at is None:
                try:
                    if client.get(self.url).status_code == 200:
                        self.at = time.perf_counter()
                except httpx.HTTPError:
                    pass
                time.sleep(0.005)


def run_cli(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([*CLI, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def one_llm_backend_run(env: dict[str, str], port: int) -> dict[str, float]:
    with FirstReady(port) as watcher:
        started = time.perf_counter()
        subprocess.run([*CLI, "start"], env=env, check=True, capture_output=True)
        returned = time.perf_counter()
    assert watcher.at is not None, "the watcher never saw /health answer 200"
    status_s = statistics.median(run_cli(env, "status") for _ in range(5))
    stop_s = run_cli(env, "stop")
    return {
        "start_s": returned - started,
        "lag_s": returned - watcher.at,
        "status_s": status_s,
        "stop_s": stop_s,
    }


def one_shell_loop_run(argv: list[str], port: int) -> float:
    """The usual start script: launch, then `until curl -sf; do sleep 5; done`."""
    script = (
        f'until curl -sf -o /dev/null http://127.0.0.1:{port}/health; do sleep 5; done'
    )
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        with FirstReady(port) as watcher:
            subprocess.run(["sh", "-c", script], check=True)
            returned = time.perf_counter()
        assert watcher.at is not None
        return returned - watcher.at
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("error: the shell-loop comparison needs curl\nfix: apt-get install curl")

    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "LLM_BACKEND_STATE_DIR": state, "LLM_BACKEND_PORT": str(port),
               "NO_COLOR": "1"}
        dry = subprocess.run([*CLI, "start", "--dry-run"], env=env, check=True,
                             capture_output=True, text=True).stdout
        argv = next(line.split(": ", 1)[1] for line in dry.splitlines()
                    if "launch (native)" in line).split()
        ours: list[dict[str, float]] = []
        loop: list[float] = []
        for index in range(args.runs):
            ours.append(one_llm_backend_run(env, port))
            if index < max(3, args.runs // 2):  # each loop run costs up to 5 s
                loop.append(one_shell_loop_run(argv, port))

    def median(key: str) -> float:
        return statistics.median(run[key] for run in ours)

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    lag_ratio = statistics.median(loop) / median("lag_s")
    our_lags = ", ".join(f"{run['lag_s'] * 1000:.0f}" for run in ours)
    loop_lags = ", ".join(f"{lag * 1000:.0f}" for lag in loop)
    section = "\n".join([
        BEGIN,
        "## Lifecycle timings (`benchmarks/bench_lifecycle.py`)",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB RAM, "
        f"no GPU; Python {platform.python_version()}. Profile `smollm2-cpu` (native). "
        f"Medians over {len(ours)} runs (shell loop: {len(loop)} runs).",
        "",
        "| what | median | goal |",
        "|---|---|---|",
        f"| `start` to ready (wall) | {median('start_s'):.2f} s | |",
        f"| readiness lag: first /health 200 -> `start` returns | "
        f"{median('lag_s') * 1000:.0f} ms | < 300 ms |",
        f"| `status` wall time | {median('status_s') * 1000:.0f} ms | < 300 ms |",
        f"| `stop` wall time | {median('stop_s'):.2f} s | |",
        f"| readiness lag of `until curl /health; do sleep 5; done` | "
        f"{statistics.median(loop) * 1000:.0f} ms | |",
        "",
        f"The 5-second poll loop notices readiness {lag_ratio:.0f}x later than `start` does "
        f"(per-run lags, ours: {our_lags} ms; loop: {loop_lags} ms).",
        END,
    ])
    print(section)
    if args.write:
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + section + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOC.write_text(text)


if __name__ == "__main__":
    main()
