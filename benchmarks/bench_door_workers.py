"""Would several door processes sharing the port (SO_REUSEPORT) raise `serve`'s throughput?

One run, arms interleaved round by round, all in front of one instant backend
(benchmarks/serve_instant_backend.py): direct, and 1, 2 or 3 processes each running the door
(`llm_backend.serve.door.Door` on uvicorn + httptools under uvloop, as `serve` runs it) bound
to one port with SO_REUSEPORT, so the kernel spreads connections over them. The door's
supervisor is replaced by a fixed "ready" one (`AlwaysReady`): this measures the door's
forwarding only, which is what several processes would multiply; `serve` itself runs one
door process (docs/serve.md, "Cost").

Figures per arm at concurrency 64: median req/s, throughput loss against direct within each
round, and the CPU the door processes used per request (user + system, from psutil), which is
steadier than req/s on a machine whose cores are shared.

Usage: python benchmarks/bench_door_workers.py [--rounds N] [--workers 1,2,3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DOC, INSTANT, free_port, load, machine, wait_http

BEGIN = "<!-- door-workers:begin -->"
END = "<!-- door-workers:end -->"
CONCURRENCY = 64
ROUND_S = 3.0


class AlwaysReady:
    """The part of `Supervisor` the door reads, fixed at "ready" (no backend to supervise)."""

    def __init__(self, backend_url: str) -> None:
        self.backend_url = backend_url
        self.ready = asyncio.Event()
        self.ready.set()
        self.changed = asyncio.Event()
        self.inflight = 0
        self.backend_progress = 0.0
        self.backend_authorization: str | None = None
        self.gave_up = False
        self.stopping = False

    def touch(self) -> None:
        pass

    def suspect(self) -> None:
        pass

    def request_start(self) -> None:
        pass


def door_process(backend_url: str, port: int) -> None:
    """One door process on the shared port (runs until SIGTERM)."""
    import uvicorn
    import uvloop

    from llm_backend.lifecycle import Lifecycle
    from llm_backend.serve.door import Door
    from llm_backend.serve.metrics import DoorMetrics

    profile = Lifecycle().resolve("smollm2-cpu").profile

    async def main() -> None:
        door = Door(profile=profile, supervisor=AlwaysReady(backend_url),  # type: ignore[arg-type]
                    metrics=DoorMetrics())
        await door.open()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        config = uvicorn.Config(door, loop="none", http="httptools", lifespan="off",
                                access_log=False, log_level="warning", server_header=False,
                                date_header=False, backlog=4096, proxy_headers=False)
        await uvicorn.Server(config).serve(sockets=[listener])

    uvloop.run(main())


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(float(p.cpu_times().user + p.cpu_times().system) for p in processes)


def run(rounds: int, worker_counts: list[int]) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "rounds": rounds,
                              "load_average_before": os.getloadavg(), "arms": {}}
    backend_port = free_port()
    started: list[subprocess.Popen[bytes]] = [subprocess.Popen(
        [sys.executable, str(INSTANT), "--host", "127.0.0.1", "--port", str(backend_port)],
        stdout=subprocess.DEVNULL)]
    backend = f"http://127.0.0.1:{backend_port}"
    doors: dict[int, tuple[str, list[psutil.Process]]] = {}
    try:
        wait_http(backend + "/health")
        for count in worker_counts:
            port = free_port()
            processes = [subprocess.Popen([sys.executable, __file__, "--door", backend, str(port)])
                         for _ in range(count)]
            started.extend(processes)
            doors[count] = (f"http://127.0.0.1:{port}",
                            [psutil.Process(p.pid) for p in processes])
            wait_http(doors[count][0] + "/health")
        time.sleep(1)  # every process of each arm listening before the first round
        for url, _ in doors.values():
            asyncio.run(load(url, 8, requests=200))
        figures: dict[str, dict[str, list[float]]] = {
            str(count): {"rps": [], "loss_pct": [], "cpu_us": []} for count in doors}
        direct_rps: list[float] = []
        for _ in range(rounds):
            direct = asyncio.run(load(backend, CONCURRENCY, duration_s=ROUND_S))
            direct_rps.append(direct.throughput)
            for count, (url, processes) in doors.items():
                before = cpu_seconds(processes)
                result = asyncio.run(load(url, CONCURRENCY, duration_s=ROUND_S))
                used = cpu_seconds(processes) - before
                row = figures[str(count)]
                row["rps"].append(result.throughput)
                row["loss_pct"].append(100 * (1 - result.throughput / direct.throughput))
                row["cpu_us"].append(1e6 * used / max(1, len(result.latencies_ms)))
        report["direct_rps"] = statistics.median(direct_rps)
        for count, row in figures.items():
            report["arms"][count] = {key: statistics.median(values)
                                     for key, values in row.items()}
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    report["load_average_after"] = os.getloadavg()
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## Several door processes (`benchmarks/bench_door_workers.py`)",
        "",
        f"Machine: {report['machine']}; load average before/after "
        f"{report['load_average_before'][0]:.1f}/{report['load_average_after'][0]:.1f} "
        "(other work shared the machine). One instant backend; N processes running the door "
        "on one port (SO_REUSEPORT), its supervisor fixed at ready; concurrency "
        f"{CONCURRENCY}, {ROUND_S:g} s per arm, medians over {report['rounds']} interleaved "
        f"rounds. Direct: {report['direct_rps']:.0f} req/s.",
        "",
        "| door processes | req/s | throughput loss | door CPU µs/req |",
        "|---|---|---|---|",
    ]
    for count, row in report["arms"].items():
        lines.append(f"| {count} | {row['rps']:.0f} | {row['loss_pct']:.0f}% | "
                     f"{row['cpu_us']:.0f} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--door":
        door_process(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1,2,3", help="door process counts to compare")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    arguments = parser.parse_args()
    import uvloop

    uvloop.install()
    counts = [int(part) for part in arguments.workers.split(",")]
    section = render(run(arguments.rounds, counts))
    print(section)
    if arguments.write:
        write_doc(section)


if __name__ == "__main__":
    main()
