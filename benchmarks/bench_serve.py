"""What `llm-backend serve` costs: direct vs through serve vs through sglang-router 0.3.2.

One run, same backends, arms interleaved round by round:
- backends: a tiny server that answers at once (benchmarks/serve_instant_backend.py, so the
  proxies' own cost is visible) and a real llama-server (SmolLM2-135M on the CPU);
- arms: direct to the backend, through `llm-backend serve` (which launched that backend), and
  through `sglang-router` 0.3.2 (round_robin, one worker: the same backend);
- figures: latency p50/p99 at concurrency 1 and 64 and what each proxy adds, throughput at
  64 and its loss, streaming time to first chunk and chunk spacing, the proxies' memory.

The load generator (aiohttp) runs in this process, on the same machine as everything else:
on a small machine all of them compete for the same cores, which the report says.
Writes its section of docs/benchmarks.md between markers (other sections are kept).

Usage: python benchmarks/bench_serve.py [--rounds N] [--write] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- serve:begin -->"
END = "<!-- serve:end -->"
CLI = [sys.executable, "-m", "llm_backend"]
INSTANT = Path(__file__).resolve().parent / "serve_instant_backend.py"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 4, "temperature": 0}
ARMS = ("direct", "serve", "router")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout} s")


@dataclass
class Backend:
    """One backend behind `serve`, with the router in front of the same backend."""

    name: str
    door: str
    backend: str
    router: str
    serve_process: subprocess.Popen[bytes]
    router_process: subprocess.Popen[bytes]
    env: dict[str, str]
    backend_pid: int
    # `--baseline SRC`: a second serve running that source tree's code, with its own (same
    # kind of) backend, measured in the same rounds as "serve_before".
    before: tuple[subprocess.Popen[bytes], str, int] | None = None

    @property
    def arms(self) -> tuple[str, ...]:
        return ARMS + (("serve_before",) if self.before else ())

    def url(self, arm: str) -> str:
        if arm == "serve_before" and self.before:
            return self.before[1]
        return {"direct": self.backend, "serve": self.door, "router": self.router}[arm]

    def cpu_processes(self, arm: str) -> dict[str, psutil.Process | None]:
        """The processes whose CPU time a round of `arm` is charged with."""
        if arm == "serve_before" and self.before:
            proxy, backend_pid = self.before[0].pid, self.before[2]
        else:
            proxy = {"direct": 0, "serve": self.serve_process.pid,
                     "router": self.router_process.pid}[arm]
            backend_pid = self.backend_pid
        return {"proxy": psutil.Process(proxy) if proxy else None,
                "backend": psutil.Process(backend_pid),
                "load_generator": psutil.Process()}

    def memory_mib(self) -> dict[str, float]:
        def rss(pid: int) -> float:
            try:
                return psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                return float("nan")

        return {"serve": rss(self.serve_process.pid), "router": rss(self.router_process.pid)}

    def stop(self) -> None:
        processes = [self.router_process, self.serve_process]
        if self.before:
            processes.append(self.before[0])
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def start_serve(
    name: str, root: Path, profile_toml: str, source: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, str, Path, dict[str, str]]:
    """`llm-backend serve` for a profile in a world of its own (from `source`/src if given):
    (process, door URL, backend URL, world, environment)."""
    world = root / name
    for sub in ("state", "config", "cwd"):
        (world / sub).mkdir(parents=True)
    (world / "cwd" / "llm-backend.toml").write_text(profile_toml)
    door_port = free_port()
    env = {**os.environ, "LLM_BACKEND_STATE_DIR": str(world / "state"),
           "XDG_CONFIG_HOME": str(world / "config"), "LLM_BACKEND_PORT": str(door_port),
           "NO_COLOR": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")
    log = open(world / "serve.out", "wb")  # noqa: SIM115 - kept open while serve runs
    serve = subprocess.Popen([*CLI, "serve", "--profile", "bench"], cwd=world / "cwd", env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    door = f"http://127.0.0.1:{door_port}"
    wait_http(door + "/ready")
    record = json.loads((world / "state" / "serve.json").read_text())
    return serve, door, record["backend"], world, env


def backend_pid(world: Path) -> int:
    return int(json.loads((world / "state" / "instance.json").read_text())["pid"])


def start_backend(name: str, root: Path, profile_toml: str) -> Backend:
    """`llm-backend serve` for a profile, then sglang-router in front of its backend."""
    serve, door, backend, world, env = start_serve(name, root, profile_toml)
    router_port, metrics_port = free_port(), free_port()
    router_log = open(world / "router.out", "wb")  # noqa: SIM115
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
         "--port", str(router_port), "--worker-urls", backend, "--policy", "round_robin",
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
         "--log-level", "warn"],
        stdout=router_log, stderr=subprocess.STDOUT, env=env,
    )
    router_url = f"http://127.0.0.1:{router_port}"
    wait_http(router_url + "/readiness")
    return Backend(name, door, backend, router_url, serve, router, env, backend_pid(world))


# --- load -------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    duration_s: float = 0.0
    # CPU seconds (user + system) each process used during the round: proxy, backend, load
    # generator. On a machine whose cores are shared this is steadier than throughput.
    cpu_s: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_request(self, process: str) -> float:
        if process not in self.cpu_s or not self.latencies_ms:
            return float("nan")
        return 1e6 * self.cpu_s[process] / len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s else 0.0


async def load(url: str, concurrency: int, *, requests: int | None = None,
               duration_s: float | None = None, body: dict[str, Any] = CHAT) -> LoadResult:
    """`concurrency` workers send chat requests until `requests` are done or time is up."""
    result = LoadResult()
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    sent = 0
    started = time.perf_counter()
    deadline = started + (duration_s or 1e9)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and (requests is None or sent < requests):
            sent += 1
            begin = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", data=payload,
                                        headers=headers) as answer:
                    await answer.read()
                    ok = answer.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                result.latencies_ms.append((time.perf_counter() - begin) * 1000)
            else:
                result.errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - started
    return result


async def stream_timing(url: str, body: dict[str, Any], repeats: int) -> dict[str, float]:
    """Time to first chunk, and the gaps between the chunks, over `repeats` streams."""
    first: list[float] = []
    gaps: list[float] = []
    events: list[int] = []
    # A new connection per stream: llama-server may close an idle kept-alive one under us.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(repeats):
            for attempt in range(3):
                begin = time.perf_counter()
                arrivals: list[float] = []
                count = 0
                try:
                    async with session.post(url + "/v1/chat/completions", json=body) as answer:
                        async for chunk in answer.content.iter_any():
                            arrivals.append(time.perf_counter())
                            count += chunk.count(b"data: ")
                    break
                except aiohttp.ClientError:
                    if attempt == 2:
                        raise
            first.append((arrivals[0] - begin) * 1000)
            gaps.extend((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
            events.append(count)
    return {
        "ttfb_ms_p50": statistics.median(first),
        "gap_ms_p50": statistics.median(gaps) if gaps else float("nan"),
        "gap_ms_p99": percentile(gaps, 0.99),
        "reads_per_stream": (len(gaps) + repeats) / repeats,
        "events_per_stream": statistics.mean(events),
    }


# --- the run -----------------------------------------------------------------------------


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    gpu = "no GPU" if shutil.which("nvidia-smi") is None else "GPU present"
    return f"{os.cpu_count()}-core {platform.machine()} VM, {memory:.0f} GiB RAM, {gpu}"


@contextlib.contextmanager
def backends(
    root: Path, llama_binary: str | None, baseline: Path | None = None,
    instant_only: bool = False,
) -> Iterator[list[Backend]]:
    wrapper = root / "instant-server.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {INSTANT} "$@"\n')
    wrapper.chmod(0o755)
    started: list[Backend] = []
    instant = ('[profiles.bench]\nextends = "smollm2-cpu"\n'
               f'binary = "{wrapper}"\n[profiles.bench.serve]\nprobe_interval_s = 10\n')
    try:
        started.append(start_backend("instant", root, instant))
        if baseline is not None:
            process, door, _, world, _ = start_serve("instant-before", root, instant, baseline)
            started[0].before = (process, door, backend_pid(world))
        binary = f'binary = "{llama_binary}"\n' if llama_binary else ""
        if not instant_only:
            started.append(start_backend("llama-server", root, (
                f'[profiles.bench]\nextends = "smollm2-cpu"\n{binary}'
            )))
        yield started
    finally:
        for backend in started:
            backend.stop()


def run(rounds: int, baseline: Path | None = None, instant_only: bool = False) -> dict[str, Any]:
    from llm_backend.engines.llamacpp import cached_binary_path

    llama = shutil.which("llama-server") or str(cached_binary_path())
    report: dict[str, Any] = {"machine": machine(), "rounds": rounds,
                              "load_average_before": os.getloadavg()}
    plan = {
        # backend: [(label, concurrency, requests, duration_s, body)]
        "instant": [("c1", 1, 1500, None, CHAT), ("c64", 64, None, 4.0, CHAT)],
        # llama-server at 64 only measures its queue (one CPU, 2 cores): 8 shows the proxies.
        "llama-server": [("c1", 1, 12, None, CHAT), ("c8", 8, None, 4.0, CHAT)],
    }
    stream_bodies = {
        "instant": ({**CHAT, "stream": True}, 10),
        "llama-server": ({**CHAT, "stream": True, "max_tokens": 24}, 4),
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temporary, \
            backends(Path(temporary), llama, baseline, instant_only) as started:
        for backend in started:
            figures: dict[str, Any] = {}
            for label, concurrency, requests, duration, body in plan[backend.name]:
                # Warm every arm once, then interleave the arms round by round.
                for arm in backend.arms:
                    asyncio.run(load(backend.url(arm), min(concurrency, 4), requests=4,
                                     body=body))
                per_arm: dict[str, list[LoadResult]] = {arm: [] for arm in backend.arms}
                for _ in range(rounds):
                    for arm in backend.arms:
                        processes = backend.cpu_processes(arm)
                        before = {name: cpu_seconds(one) for name, one in processes.items()}
                        result = asyncio.run(load(
                            backend.url(arm), concurrency, requests=requests,
                            duration_s=duration, body=body))
                        result.cpu_s = {name: cpu_seconds(one) - before[name]
                                        for name, one in processes.items() if one is not None}
                        per_arm[arm].append(result)
                figures[label] = summarize(per_arm)
            body, repeats = stream_bodies[backend.name]
            figures["stream"] = {
                arm: asyncio.run(stream_timing(backend.url(arm), body, repeats))
                for arm in ARMS
            }
            figures["memory_mib"] = backend.memory_mib()
            report[backend.name] = figures
    report["load_average_after"] = os.getloadavg()
    return report


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def summarize(per_arm: dict[str, list[LoadResult]]) -> dict[str, Any]:
    """Per arm: medians over rounds of p50, p99, throughput; added = arm - direct per round."""
    out: dict[str, Any] = {}
    for arm, results in per_arm.items():
        out[arm] = {
            "p50_ms": statistics.median(percentile(r.latencies_ms, 0.5) for r in results),
            "p99_ms": statistics.median(percentile(r.latencies_ms, 0.99) for r in results),
            "throughput_rps": statistics.median(r.throughput for r in results),
            "errors": sum(r.errors for r in results),
            "requests": sum(len(r.latencies_ms) for r in results),
            "cpu_us_per_request": {
                process: statistics.median(r.cpu_us_per_request(process) for r in results)
                for process in ("proxy", "backend", "load_generator")
                if all(process in r.cpu_s for r in results)
            },
        }
    direct = per_arm["direct"]
    for arm in [name for name in per_arm if name != "direct"]:
        results = per_arm[arm]
        out[arm]["added_p50_ms"] = statistics.median(
            percentile(a.latencies_ms, 0.5) - percentile(d.latencies_ms, 0.5)
            for a, d in zip(results, direct, strict=True))
        out[arm]["added_p99_ms"] = statistics.median(
            percentile(a.latencies_ms, 0.99) - percentile(d.latencies_ms, 0.99)
            for a, d in zip(results, direct, strict=True))
        out[arm]["throughput_loss_pct"] = statistics.median(
            100 * (1 - a.throughput / d.throughput) for a, d in zip(results, direct, strict=True)
            if d.throughput)
    return out


# --- the report --------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## The front door (`benchmarks/bench_serve.py`)",
        "",
        f"Machine: {report['machine']}; load average before/after the run "
        f"{report['load_average_before'][0]:.1f}/{report['load_average_after'][0]:.1f} "
        "(other work shared the machine). The load generator, the proxies and the backends "
        "share these cores. Medians over "
        f"{report['rounds']} interleaved rounds; \"added\" is the arm minus direct within a "
        "round. Router: sglang-router 0.3.2, round_robin, one worker (the same backend).",
        "",
    ]
    for name in [name for name in ("instant", "llama-server") if name in report]:
        figures = report[name]
        title = ("Instant backend (answers at once: the proxy's own cost)" if name == "instant"
                 else "Real llama-server (SmolLM2-135M, CPU, max_tokens 4)")
        lines += [f"### {title}", "",
                  "| arm | c | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | "
                  "throughput loss | errors | proxy CPU µs/req |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label in [key for key in figures if key.startswith("c")]:
            for arm in figures[label]:
                row = figures[label][arm]
                added50 = f"{row['added_p50_ms']:+.2f}" if "added_p50_ms" in row else ""
                added99 = f"{row['added_p99_ms']:+.2f}" if "added_p99_ms" in row else ""
                loss = (f"{row['throughput_loss_pct']:.0f}%"
                        if "throughput_loss_pct" in row and label != "c1" else "")
                proxy_cpu = row.get("cpu_us_per_request", {}).get("proxy")
                cpu = "" if proxy_cpu is None else f"{proxy_cpu:.0f}"
                lines.append(
                    f"| {arm} | {label[1:]} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                    f"{added50} | {added99} | {row['throughput_rps']:.3g} | {loss} | "
                    f"{row['errors']} | {cpu} |")
        stream = figures["stream"]
        lines += ["", "| arm | streaming: first chunk p50 ms | chunk gap p50 ms | "
                  "gap p99 ms | reads per stream | events per stream |",
                  "|---|---|---|---|---|---|"]
        for arm in ARMS:
            row = stream[arm]
            lines.append(
                f"| {arm} | {row['ttfb_ms_p50']:.2f} | {row['gap_ms_p50']:.2f} | "
                f"{row['gap_ms_p99']:.2f} | {row['reads_per_stream']:.1f} | "
                f"{row['events_per_stream']:.1f} |")
        memory = figures["memory_mib"]
        lines += ["", f"Resident memory after the run: serve {memory['serve']:.0f} MiB, "
                  f"sglang-router {memory['router']:.0f} MiB.", ""]
        if name == "llama-server":
            lines += ["A 4-token reply takes from a tenth of a second to seconds here "
                      "because the CPU is shared; the spread between rounds and between runs "
                      "is larger than any proxy's cost, so these rows (an \"added\" or a loss "
                      "of either sign) show only that neither proxy changes the picture in "
                      "front of a real model on this machine.", ""]
    lines += before_and_after(report["instant"])
    lines += goals(report["instant"])
    lines.append(END)
    return "\n".join(lines) + "\n"


def before_and_after(instant: dict[str, Any]) -> list[str]:
    """With --baseline: the door of this tree vs the door of the baseline, same rounds."""
    if "serve_before" not in instant["c64"]:
        return []
    now, before = instant["c64"]["serve"], instant["c64"]["serve_before"]
    cpu_now = now["cpu_us_per_request"].get("proxy", float("nan"))
    cpu_before = before["cpu_us_per_request"].get("proxy", float("nan"))
    return [
        "`serve_before` is the door of the code before its CPU changes (a second `serve` "
        "with its own instant backend, in the same rounds). At c=64 the door used "
        f"{cpu_now:.0f} µs of CPU per request against {cpu_before:.0f} µs before "
        f"({cpu_now / cpu_before:.2f} times), and answered {now['throughput_rps']:.0f} against "
        f"{before['throughput_rps']:.0f} req/s "
        f"({now['throughput_rps'] / before['throughput_rps']:.2f} times); c=1 p50 "
        f"{instant['c1']['serve']['p50_ms']:.2f} against "
        f"{instant['c1']['serve_before']['p50_ms']:.2f} ms.",
        "",
    ]


def share(proxy_us: float, others_us: float) -> float:
    """The proxy's share of the machine's CPU per request, in percent."""
    return 100 * proxy_us / (proxy_us + others_us)


def goals(instant: dict[str, Any]) -> list[str]:
    """The issue's goals, checked against the instant backend's figures of this run."""
    added = instant["c1"]["serve"]["added_p50_ms"]
    loss = instant["c64"]["serve"]["throughput_loss_pct"]
    router_loss = instant["c64"]["router"]["throughput_loss_pct"]
    direct_gap = instant["stream"]["direct"]["gap_ms_p50"]
    serve_gap = instant["stream"]["serve"]["gap_ms_p50"]
    events_kept = (instant["stream"]["serve"]["events_per_stream"]
                   == instant["stream"]["direct"]["events_per_stream"])
    cpu = {arm: instant["c64"][arm].get("cpu_us_per_request", {}) for arm in ARMS}
    door_cpu = cpu["serve"].get("proxy", float("nan"))
    router_cpu = cpu["router"].get("proxy", float("nan"))
    others_cpu = (cpu["direct"].get("backend", float("nan"))
                  + cpu["direct"].get("load_generator", float("nan")))
    serve_reads = instant["stream"]["serve"]["reads_per_stream"]
    direct_reads = instant["stream"]["direct"]["reads_per_stream"]
    kept = abs(serve_gap - direct_gap) <= 2 and events_kept and serve_reads >= direct_reads - 1

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        "Goals, on the instant backend:",
        "",
        f"- at most 1 ms added at p50 (c=1): {added:+.2f} ms, {verdict(added <= 1)};",
        f"- chunk timing preserved: median gap {serve_gap:.1f} ms through serve vs "
        f"{direct_gap:.1f} ms direct, {serve_reads:.1f} reads per stream of 21 events "
        f"({direct_reads:.1f} direct: nothing buffered), {verdict(kept)};",
        f"- at most 10% throughput loss at c=64: {loss:.0f}% (sglang-router: "
        f"{router_loss:.0f}%), {verdict(loss <= 10)}. Per request at c=64 the door used "
        f"{door_cpu:.0f} µs of CPU (sglang-router {router_cpu:.0f} µs), while the instant "
        f"backend and the load generator together used {others_cpu:.0f} µs direct. They all "
        "share the same two cores (with other work), so when the cores are busy every "
        "request through a proxy costs the machine the proxy's CPU too, and throughput falls "
        "by about the proxy's share of the CPU per request: "
        f"{share(door_cpu, others_cpu):.0f}% for the door (measured {loss:.0f}%), "
        f"{share(router_cpu, others_cpu):.0f}% for the router (measured {router_loss:.0f}%). "
        "A loss of 10% would take a proxy costing about a ninth of the backend and client "
        "together; on a machine with cores to spare the proxy's CPU is not taken from the "
        "backend and this bound does not apply.",
        "",
    ]


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--from-json", type=Path, help="render a saved run instead of running")
    parser.add_argument("--instant-only", action="store_true",
                        help="only the instant backend (a quicker A/B; not for --write)")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of other code: its door runs beside this one's")
    arguments = parser.parse_args()
    if arguments.from_json:
        section = render(json.loads(arguments.from_json.read_text()))
        print(section)
        if arguments.write:
            write_doc(section)
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    report = run(arguments.rounds, arguments.baseline, arguments.instant_only)
    section = render(report)
    print(section)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
    if arguments.write:
        write_doc(section)


if __name__ == "__main__":
    main()
