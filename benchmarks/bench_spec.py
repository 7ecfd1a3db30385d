"""Measure what speculative decoding gives the embedded profile, and write it into the docs.

Runs `bench --ab spec` (the library behind it) for the `chat` and `copy` workloads at
concurrency 1 and 4 on the smollm2-cpu profile, in a private state dir on a free port. The
arms alternate over several rounds (off, on, off, on, ...) so that load from other processes
hits both alike; the speedup is the median of the per-round ratios.

Writes the "Speculative decoding" section of docs/benchmarks.md between markers (other
sections are kept) and one plot per workload in docs/.

Usage: python benchmarks/bench_spec.py [--requests N] [--rounds N] [--write] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- spec:begin -->"
END = "<!-- spec:end -->"
PROFILE = "smollm2-cpu"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def memory_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return pattern.format(value) if value is not None else "-"


def section(
    results: list[dict[str, Any]], args: argparse.Namespace, spec: Any, costs: dict[int, float]
) -> str:
    from llm_backend.engines.llamacpp import LLAMA_CPP_PYTHON_VERSION

    settings = (
        f"`algorithm = \"{spec.algorithm}\"`, `ngram_match_length = {spec.ngram_match_length}`, "
        f"`draft_min = {spec.draft_min}`, `draft_max = {spec.draft_max}`"
    )

    loads = [load for result in results for load in result["loadavg"]]
    lines = [
        BEGIN,
        "## Speculative decoding (bench --ab spec)",
        "",
        "What llama.cpp's `ngram-mod` speculative decoding gives the embedded `smollm2-cpu`",
        "profile, measured with `llm-backend bench --ab spec` (through",
        "`benchmarks/bench_spec.py`). Each arm restarts the backend through the normal",
        "lifecycle; the arms alternate over "
        f"{args.rounds} rounds (off, on, off, on, ...), {args.requests} requests per",
        "concurrency level and arm in each round, temperature 0, fixed seeds.",
        "",
        f"- Machine: {os.cpu_count()}-core {platform.machine()} VM, {cpu_model()}, "
        f"{memory_gib():.0f} GiB RAM, no GPU, Linux {platform.release()}",
        f"- Engine: llama.cpp `llama-server` from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"
        " (CPU build), model SmolLM2-135M-Instruct Q4_1",
        f"- Speculative settings (profile): {settings}",
        f"- Load average (1 min) seen during the runs: {min(loads):.1f} to {max(loads):.1f} "
        f"on {os.cpu_count()} cores. "
        + (
            "The machine was shared with other test runs, so single requests are noisy; "
            "compare the ratios within a round rather than absolute figures."
            if max(loads) > 1.5
            else "The machine was otherwise quiet."
        ),
        "",
        "Speedup = output tokens/s with speculation over without (aggregate: all output",
        "tokens of the level over its wall time), the median of the per-round ratios (each",
        "round's ratio is listed). Latency speedup = p50 end-to-end latency off over on.",
        "Acceptance = `draft_n_accepted / draft_n` from llama.cpp's `timings`. Identical =",
        "requests whose text is the same in both arms. Client vs engine = median ratio of the",
        "client-side per-request tokens/s to llama.cpp's `predicted_per_second` (must be",
        "within 5%).",
        "",
    ]
    for result in results:
        lines += workload_lines(result, args.requests)
    lines += [
        "Reading it: `ngram-mod` drafts only when the last tokens already occurred in the",
        "prompt or the reply, so it pays off when the reply repeats its input (copying or",
        "editing text and code) and stays out of the way for chat. On a CPU, checking a draft",
        "costs real compute (unlike a GPU, where a decode step is bound by memory reads), so",
        "wrong drafts are not free; the profile keeps drafts short (at most "
        f"{spec.draft_max} tokens) and",
        f"drafts only after the last {spec.ngram_match_length} tokens matched earlier text.",
        *target_lines(results, costs),
        END,
    ]
    return "\n".join(lines) + "\n"


def workload_lines(
    result: dict[str, Any], requests: int, *, plot_prefix: str = "bench-spec-"
) -> list[str]:
    """One workload's tables, differences, warnings and plot link, as markdown lines."""
    ab = result["ab"]
    off, on = ab["arms"]["off"], ab["arms"]["on"]
    lines = [
        f"### `{result['workload']}` workload",
        "",
        f"`{result['command']}`"
        + (
            f" (the {requests} copy texts, then the same {requests} again)"
            if result["workload"] == "copy-twice" else ""
        ),
        "",
        "| concurrency | tok/s off | tok/s on | speedup (rounds) | e2e p50 off | "
        "e2e p50 on | latency speedup | acceptance | identical | client vs engine |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for level in ab["ab"]["levels"]:
        concurrency = level["concurrency"]
        off_level = next(s for s in off["summary"] if s["concurrency"] == concurrency)
        on_level = next(s for s in on["summary"] if s["concurrency"] == concurrency)
        rounds = ", ".join(f"{ratio:.2f}" for ratio in level["round_speedups"])
        agreement = [
            summary["engine_agreement"]["median_ratio"]
            for summary in (off_level, on_level)
            if summary["engine_agreement"]
        ]
        lines.append(
            f"| {concurrency} | {off_level['output_tokens_per_s']:.1f} | "
            f"{on_level['output_tokens_per_s']:.1f} | **{fmt(level['speedup'])}x** "
            f"({rounds}) | {fmt(off_level['e2e_s']['p50'])} s | "
            f"{fmt(on_level['e2e_s']['p50'])} s | {fmt(level['latency_speedup'])}x | "
            f"{fmt(level['acceptance'], '{:.0%}')} | {level['identical']}/{level['compared']}"
            f" | {' / '.join(f'{ratio:.3f}' for ratio in agreement) or '-'} |"
        )
    lines += [
        "",
        "| arm | concurrency | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | "
        "e2e p50 / p90 / p99 (s) | tok/s per request p50 | errors |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    for arm_name, arm in (("off", off), ("on", on)):
        for summary in arm["summary"]:
            ttft, itl, e2e = summary["ttft_s"], summary["itl_s"], summary["e2e_s"]
            lines.append(
                f"| {arm_name} | {summary['concurrency']} | "
                f"{ttft['p50'] * 1000:.0f} / {ttft['p90'] * 1000:.0f} / "
                f"{ttft['p99'] * 1000:.0f} | {itl['p50'] * 1000:.0f} / "
                f"{itl['p90'] * 1000:.0f} / {itl['p99'] * 1000:.0f} | "
                f"{e2e['p50']:.2f} / {e2e['p90']:.2f} / {e2e['p99']:.2f} | "
                f"{summary['tokens_per_s']['p50']:.1f} | {summary['errors']} |"
            )
    differences = [d for level in ab["ab"]["levels"] for d in level["differences"]]
    drift = baseline_drift(off)
    if drift:
        lines += [
            "",
            "Without speculation, the same request's output also changes between rounds "
            "when",
            "batch composition changes (near-ties in floating point): outputs of the `off`",
            "arm that differ from its own first round: "
            + ", ".join(f"c={level}: {changed}/{total}" for level, (changed, total)
                        in drift.items()) + ".",
        ]
    if differences:
        lines += ["", "Requests whose outputs differ (first differing character):", ""]
        for difference in differences[:8]:
            lines.append(
                f"- c={difference['concurrency']}, round {difference['round'] + 1}, request "
                f"{difference['index']}: char {difference['first_difference_char']}: off "
                f"`{difference['off_excerpt']!r}` vs on `{difference['on_excerpt']!r}`"
            )
        if len(differences) > 8:
            lines.append(f"- ... and {len(differences) - 8} more")
    for warning in ab["ab"]["warnings"]:
        lines += ["", f"Warning printed by the bench: {warning}"]
    for level in ab["ab"]["levels"]:
        if level["acceptance"] is None and level["speedup"] is not None:
            lines += [
                "",
                f"At concurrency {level['concurrency']} nothing was drafted, so both arms did "
                f"the same work: its {level['speedup']:.2f}x is this machine's noise.",
            ]
    name = result["workload"]
    lines += ["", f"![{name}: spec off vs on]({plot_prefix}{name}.png)", ""]
    return lines


def baseline_drift(arm: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Per level: how many outputs of later rounds differ from the first round, same arm."""
    first: dict[int, dict[int, str]] = {}
    drift: dict[int, tuple[int, int]] = {}
    for run in arm["runs"]:
        texts = {request["index"]: request["text"] for request in run["requests"]}
        level = run["concurrency"]
        if level not in first:
            first[level] = texts
            continue
        changed, total = drift.get(level, (0, 0))
        for index, text in texts.items():
            if index in first[level]:
                total += 1
                changed += text != first[level][index]
        drift[level] = (changed, total)
    return drift


def measure_batch_cost(endpoint: str) -> dict[int, float]:
    """Median ms to process N new tokens after a cached prefix (llama.cpp /completion), and
    (key 0) ms per decoding step: what checking a draft of N - 1 tokens costs."""
    import httpx

    words = " alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"
    base = "The river starts high in the mountains as a small stream of melted snow. " * 3
    costs: dict[int, float] = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        for count in (1, 4, 8, 16):
            samples = []
            for repeat in range(5):
                prefix = f"{base} case {repeat}"
                extra = " " + " ".join(words.split()[:count])
                client.post(f"{endpoint}/completion",
                            json={"prompt": prefix, "n_predict": 1, "cache_prompt": True})
                timings = client.post(
                    f"{endpoint}/completion",
                    json={"prompt": prefix + extra, "n_predict": 1, "cache_prompt": True},
                ).json()["timings"]
                samples.append((int(timings["prompt_n"]), float(timings["prompt_ms"])))
            counts = {n for n, _ in samples}
            if len(counts) == 1:
                costs[counts.pop()] = statistics.median(ms for _, ms in samples)
        decode = client.post(
            f"{endpoint}/completion", json={"prompt": base, "n_predict": 64, "cache_prompt": True}
        ).json()["timings"]
        costs[0] = float(decode["predicted_per_token_ms"])
    return costs


def target_lines(results: list[dict[str, Any]], costs: dict[int, float]) -> list[str]:
    """Say plainly whether copy at concurrency 1 reached the 1.5x the issue asks for."""
    copy = next((result for result in results if result["workload"] == "copy"), None)
    if copy is None:
        return []
    levels = {level["concurrency"]: level for level in copy["ab"]["ab"]["levels"]}
    single = levels.get(1)
    if single is None or single["speedup"] is None:
        return []
    reached = single["speedup"] >= 1.5
    lines = [
        "",
        f"Target (1.5x on `copy` at concurrency 1): **{'met' if reached else 'not met'}** "
        f"on this machine: {single['speedup']:.2f}x aggregate output tokens/s, "
        f"{fmt(single['per_request_speedup'])}x per-request decode tokens/s, "
        f"{fmt(single['latency_speedup'])}x latency.",
    ]
    if 4 in levels and levels[4]["speedup"] is not None:
        lines[-1] += f" At concurrency 4 the aggregate speedup is {levels[4]['speedup']:.2f}x."
    twice = next((result for result in results if result["workload"] == "copy-twice"), None)
    if twice is not None:
        again = {level["concurrency"]: level for level in twice["ab"]["ab"]["levels"]}
        lines += [
            "",
            "With every text sent a second time (`copy-twice`), acceptance is "
            + ", ".join(
                f"{fmt(level['acceptance'], '{:.0%}')} and the speedup {fmt(level['speedup'])}x "
                f"at concurrency {concurrency}"
                for concurrency, level in again.items()
            )
            + ".",
        ]
    if costs:
        batches = ", ".join(
            f"{count} tokens {ms:.0f} ms" for count, ms in sorted(costs.items()) if count > 1
        )
        lines += [
            "",
            "What checking a draft costs here (llama.cpp `timings`, medians of 5, tokens",
            f"processed in one batch after a cached prefix): one decoding step {costs[0]:.1f} "
            f"ms; {batches}.",
        ]
    if not reached:
        lines += [
            "",
            "Why not more: the 135M model copies only part of each text word for word (it",
            "rewrites some code blocks), drafting starts only once the reply repeats "
            "earlier text,",
            "and on two CPU cores checking a draft costs compute: "
            + (
                "a batch of {} tokens costs as much as {:.1f} decoding steps (above), ".format(
                    *max(
                        ((n, ms / costs[0]) for n, ms in costs.items() if 1 < n <= 12),
                        default=(0, 0.0),
                    )
                )
                if costs.get(0) else ""
            )
            + "so even drafts that are always accepted give well under 2x on decoding, and",
            "the prompt (processed alike in both arms) dilutes that.",
            "Other settings were no better on this workload (n_match/n_min/n_max 6/2/8,",
            "8/2/8, 8/2/16, 12/2/16, 12/2/24, 12/4/32, 16/8/48, measured side by side).",
        ]
    return lines


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,4")
    parser.add_argument("--workloads", default="chat,copy,copy-twice")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="write every figure of both A/B runs here")
    parser.add_argument(
        "--from-json", type=Path, help="re-render the doc section from a saved --json run"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for key, value in saved["args"].items():
            setattr(args, key, value)
        from llm_backend.config import load_config

        spec = load_config().resolve(PROFILE).profile.speculative
        write_doc(section(saved["results"], args, spec, {
            int(count): ms for count, ms in saved["costs"].items()
        }))
        print(f"updated {DOC.relative_to(REPO)} from {args.from_json}")
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so the A/B runner stops the backend it started

    signal.signal(signal.SIGTERM, interrupt)

    private = Path(tempfile.mkdtemp(prefix="llm-backend-bench-"))
    os.environ.update(
        LLM_BACKEND_STATE_DIR=str(private / "state"),
        XDG_CONFIG_HOME=str(private / "config"),
        LLM_BACKEND_PORT=str(free_port()),
    )
    from llm_backend.bench import parse_levels
    from llm_backend.bench.ab import run_ab
    from llm_backend.bench.plot import plot_reports
    from llm_backend.bench.workloads import builtin_workload
    from llm_backend.lifecycle import Lifecycle
    from llm_backend.state import StateStore

    lifecycle = Lifecycle(store=StateStore())
    spec = lifecycle.resolve(PROFILE).profile.speculative
    levels = parse_levels(args.levels)
    results = []
    for name in args.workloads.split(","):
        # "copy-twice": the copy workload's texts, then the same texts again, as when an
        # editor sends the same file again (its reply is then in llama.cpp's n-gram table).
        base_name, repeats = ("copy", 2) if name == "copy-twice" else (name, 1)
        workload = builtin_workload(base_name, count=args.requests)
        loadavg = [os.getloadavg()[0]]
        started = time.monotonic()

        def notice(text: str, name: str = name) -> None:
            print(f"[{name}] {text}", flush=True)

        ab = run_ab(
            lifecycle, workload, levels=levels, requests_per_level=args.requests * repeats,
            rounds=args.rounds, profile_name=PROFILE, on_notice=notice,
        )
        loadavg.append(os.getloadavg()[0])
        for level in ab.comparisons:
            print(
                f"[{name}] c={level.concurrency}: speedup {fmt(level.speedup)}x "
                f"(rounds {', '.join(f'{r:.2f}' for r in level.round_speedups)}), "
                f"acceptance {fmt(level.acceptance, '{:.0%}')}, identical "
                f"{level.identical}/{level.compared}", flush=True,
            )
        print(f"[{name}] took {time.monotonic() - started:.0f}s", flush=True)
        plot_reports(
            [("spec off", ab.off), ("spec on", ab.on)],
            REPO / "docs" / f"bench-spec-{name}.png",
            title=f"{name} on {PROFILE}: speculative decoding off vs on "
            f"({args.rounds} alternating rounds, pooled)",
        )
        results.append({
            "workload": name, "ab": ab.to_json(), "loadavg": loadavg,
            "command": f"llm-backend bench --ab spec --workload {base_name} --concurrency "
            f"{args.levels} --requests {args.requests * repeats} --rounds {args.rounds}",
        })
    print("measuring what a batch of tokens costs (speculation off) ...", flush=True)
    lifecycle.start(profile_name=PROFILE, overrides={"speculative.enabled": False})
    try:
        costs = measure_batch_cost(lifecycle.resolve(PROFILE).profile.endpoint)
    finally:
        lifecycle.stop()
    print(f"batch costs (ms): {costs}", flush=True)
    if args.json:
        saved_args = {key: getattr(args, key) for key in ("requests", "rounds", "levels")}
        document = {"args": saved_args, "results": results, "costs": costs}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    text = section(results, args, spec, costs)
    if args.write:
        write_doc(text)
        print(f"updated {DOC.relative_to(REPO)}")
    else:
        sys.stdout.write(text)
    speedups = [
        level["speedup"] for result in results for level in result["ab"]["ab"]["levels"]
        if level["speedup"] is not None
    ]
    if speedups:
        print(f"median speedup over all levels: {statistics.median(speedups):.2f}x")


if __name__ == "__main__":
    main()
