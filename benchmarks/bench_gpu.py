"""The whole lifecycle of the embedded model on an NVIDIA GPU, through the `llm-backend` CLI.

`run` (on the GPU machine, with a CUDA build of llama-server in the cache): `doctor`,
`start` (profile auto), `status`, `status --json`, `chat`, `bench --ab spec` on the `chat` and
`copy` workloads at concurrency 1 and 4 (and `copy` sent twice, when time allows), `stop`;
then checks that no process of the server is left and that its GPU memory was released (NVML),
and measures what a batch of tokens costs on the GPU (speculation off), as
benchmarks/bench_spec.py does on the CPU. Every command, its exit code, wall time and output
go into `gpu-run.json`; each A/B run into `gpu-<workload>.json` and a plot.

`render` (anywhere): writes the GPU section of docs/benchmarks.md from those files, and copies
the plots into docs/.

Usage: python benchmarks/bench_gpu.py run --out DIR [--rounds N] [--requests N]
       python benchmarks/bench_gpu.py render --from DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- spec-gpu:begin -->"
END = "<!-- spec-gpu:end -->"
PROFILE = "smollm2-gpu"
CLI = [sys.executable, "-m", "llm_backend"]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gpu_snapshot() -> dict[str, Any]:
    from llm_backend.gpu import read_gpus

    report = read_gpus()
    return report.to_json()


def run_cli(transcript: list[dict[str, Any]], *args: str, timeout: float = 300) -> dict[str, Any]:
    started = time.monotonic()
    completed = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    entry = {
        "command": "llm-backend " + " ".join(args),
        "exit_code": completed.returncode,
        "wall_s": round(time.monotonic() - started, 3),
        "stdout": completed.stdout[-6000:],
        "stderr": completed.stderr[-6000:],
    }
    transcript.append(entry)
    print(f"$ {entry['command']}  (exit {entry['exit_code']}, {entry['wall_s']:.1f}s)", flush=True)
    for line in (completed.stdout + completed.stderr).strip().splitlines()[-25:]:
        print(f"  {line}", flush=True)
    return entry


def run(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="llm-backend-gpu-"))
    os.environ.update(
        LLM_BACKEND_STATE_DIR=str(private / "state"),
        XDG_CONFIG_HOME=str(private / "config"),
        PYTHONUNBUFFERED="1",
    )
    began = time.monotonic()
    transcript: list[dict[str, Any]] = []
    document: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "transcript": transcript,
    }
    from llm_backend.hardware import describe_host

    document["hardware"] = describe_host().to_json()
    document["gpu_before"] = gpu_snapshot()
    run_cli(transcript, "doctor")
    start = run_cli(transcript, "start")
    if start["exit_code"] != 0:
        run_cli(transcript, "logs", "-n", "60")
        save(out, document)
        raise SystemExit("start failed")
    run_cli(transcript, "status")
    status_json = run_cli(transcript, "status", "--json")
    document["status"] = json.loads(status_json["stdout"])
    run_cli(transcript, "chat", "Name three rivers in Europe.", "--max-tokens", "64")
    levels = "1,4"
    workloads = [("chat", "chat", args.requests, args.rounds),
                 ("copy", "copy", args.requests, args.rounds),
                 ("copy-twice", "copy", args.requests * 2, max(3, args.rounds - 2))]
    document["bench"] = {}
    for label, workload, requests, rounds in workloads:
        if label == "copy-twice" and time.monotonic() - began > args.budget_s:
            print(f"skipping {label}: {time.monotonic() - began:.0f}s used", flush=True)
            continue
        json_file = out / f"gpu-{label}.json"
        entry = run_cli(
            transcript, "bench", "--ab", "spec", "--workload", workload,
            "--concurrency", levels, "--requests", str(requests), "--rounds", str(rounds),
            "--json", str(json_file), "--plot", str(out / f"bench-spec-gpu-{label}.png"),
            timeout=420,
        )
        document["bench"][label] = {
            "command": entry["command"].replace(str(out) + "/", ""), "exit_code":
            entry["exit_code"], "wall_s": entry["wall_s"], "requests": requests,
            "rounds": rounds,
        }
    status_after = run_cli(transcript, "status", "--json")
    running = json.loads(status_after["stdout"]) if status_after["stdout"].strip() else {}
    pid = running.get("pid")
    from llm_backend.gpu import process_tree

    tree = [owned.pid for owned in process_tree(pid)] if pid else []
    run_cli(transcript, "stop")
    time.sleep(0.5)
    after = gpu_snapshot()
    import psutil

    document["after_stop"] = {
        "server_pid": pid,
        "tree": tree,
        "alive": [item for item in tree if psutil.pid_exists(item)
                  and psutil.Process(item).status() != psutil.STATUS_ZOMBIE],
        "gpu_processes": [process for device in after["devices"]
                          for process in device["processes"]],
        "gpu_memory_used_bytes": [device["memory_used_bytes"] for device in after["devices"]],
        "gpu_memory_used_before_start": [device["memory_used_bytes"]
                                         for device in document["gpu_before"]["devices"]],
    }
    document["costs"] = batch_costs(document["status"].get("profile") or PROFILE)
    document["elapsed_s"] = round(time.monotonic() - began, 1)
    save(out, document)
    print(json.dumps({key: document[key] for key in ("after_stop", "costs", "elapsed_s")},
                     indent=1), flush=True)


def batch_costs(profile: str) -> dict[str, float]:
    """What a batch of N tokens costs on this GPU, speculation off (bench_spec's method)."""
    from bench_spec import measure_batch_cost
    from llm_backend.lifecycle import Lifecycle
    from llm_backend.state import StateStore

    lifecycle = Lifecycle(store=StateStore())
    lifecycle.start(profile_name=profile, overrides={"speculative.enabled": False})
    try:
        costs = measure_batch_cost(lifecycle.resolve(profile).profile.endpoint)
    finally:
        lifecycle.stop()
    return {str(count): ms for count, ms in costs.items()}


def save(out: Path, document: dict[str, Any]) -> None:
    (out / "gpu-run.json").write_text(json.dumps(document, indent=1, default=str) + "\n")


# --- variants: what makes speculation pay at concurrency 1 --------------------------------------

VARIANTS = {
    # name: (ngram_match_length, draft_min, draft_max)
    "d16": (12, 2, 16),
    "d32": (12, 4, 32),
    "llamacpp-defaults": (24, 48, 64),
}


def variants(args: argparse.Namespace) -> None:
    """`bench --ab spec` on `copy` with longer drafts, and with CUDA graphs off, plus the cost
    of a batch with CUDA graphs off (llama.cpp's GGML_CUDA_DISABLE_GRAPHS)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="llm-backend-gpu-"))
    work = private / "work"
    work.mkdir()
    config = [
        f'[profiles.{name}]\nextends = "{args.base}"\n[profiles.{name}.speculative]\n'
        f"ngram_match_length = {match}\ndraft_min = {low}\ndraft_max = {high}\n"
        for name, (match, low, high) in VARIANTS.items()
    ]
    (work / "llm-backend.toml").write_text("\n".join(config))
    os.environ.update(
        LLM_BACKEND_STATE_DIR=str(private / "state"),
        XDG_CONFIG_HOME=str(private / "config"),
        PYTHONUNBUFFERED="1",
    )
    os.chdir(work)
    transcript: list[dict[str, Any]] = []
    document: dict[str, Any] = {"variants": VARIANTS, "base": args.base,
                                "transcript": transcript, "runs": {}}
    began = time.monotonic()
    os.environ["GGML_CUDA_DISABLE_GRAPHS"] = "1"
    document["costs_no_graphs"] = batch_costs(args.base)
    runs = [("no-graphs", args.base), *((name, name) for name in VARIANTS)]
    for label, profile in runs:
        if label != "no-graphs":
            os.environ.pop("GGML_CUDA_DISABLE_GRAPHS", None)
        json_file = out / f"gpu-var-{label}.json"
        entry = run_cli(
            transcript, "bench", "--ab", "spec", "--profile", profile, "--workload", "copy",
            "--concurrency", "1,4", "--requests", str(args.requests), "--rounds",
            str(args.rounds), "--json", str(json_file), timeout=300,
        )
        document["runs"][label] = {
            "profile": profile, "exit_code": entry["exit_code"], "wall_s": entry["wall_s"],
            "command": entry["command"].replace(str(out) + "/", ""),
            "graphs": label != "no-graphs",
        }
    document["elapsed_s"] = round(time.monotonic() - began, 1)
    (out / "gpu-variants.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(json.dumps({"costs_no_graphs": document["costs_no_graphs"],
                      "elapsed_s": document["elapsed_s"]}), flush=True)


# --- render -----------------------------------------------------------------------------------


def render(args: argparse.Namespace) -> None:
    from bench_spec import workload_lines

    source: Path = args.from_dir
    run_doc = json.loads((source / "gpu-run.json").read_text())
    hardware = run_doc["hardware"]
    gpu = hardware["gpus"][0]
    results = []
    for label, info in run_doc["bench"].items():
        path = source / f"gpu-{label}.json"
        if not path.exists():
            continue
        results.append({"workload": label, "ab": json.loads(path.read_text()),
                        "command": info["command"], "requests": info["requests"]})
        plot = source / f"bench-spec-gpu-{label}.png"
        if plot.exists():
            shutil.copyfile(plot, REPO / "docs" / plot.name)
    costs = {int(count): ms for count, ms in run_doc["costs"].items()}
    lines = [
        BEGIN,
        "## Speculative decoding on a GPU (NVIDIA H200)",
        "",
        "The same A/B as above, on the `smollm2-gpu` profile (the same model and the same",
        "`ngram-mod` settings, every layer offloaded with `--gpu-layers all`), run through the",
        "CLI by `benchmarks/bench_gpu.py run` on a lent GPU machine; this section is written by",
        "`benchmarks/bench_gpu.py render` from the files it saved (in benchmarks/results/).",
        "",
        f"- Machine: {gpu['name']} ({gpu['memory_total_bytes'] / 1024**3:.1f} GiB, compute "
        f"capability {gpu['compute_capability']}), driver {hardware['driver_version']}, CUDA "
        f"{hardware['cuda_driver_version']}; {hardware['cpu_count']} CPU cores "
        f"({hardware['cpu_model']}); {run_doc['machine']['platform']}",
        "- Engine: llama.cpp `llama-server` from llama-cpp-python 0.3.36, built with",
        "  `llm-backend engine install llama.cpp --cuda` (`-DGGML_CUDA=ON",
        "  -DCMAKE_CUDA_ARCHITECTURES=90`), model SmolLM2-135M-Instruct Q4_1",
        "",
    ]
    for result in results:
        lines += workload_lines(result, result["requests"], plot_prefix="bench-spec-gpu-")
    lines += cost_lines(costs, results)
    lines += lifecycle_lines(run_doc)
    lines.append(END)
    write_doc("\n".join(lines) + "\n")
    print(f"updated {DOC.relative_to(REPO)}")


def cost_lines(costs: dict[int, float], results: list[dict[str, Any]]) -> list[str]:
    if not costs.get(0):
        return []
    batches = ", ".join(f"{count} tokens {ms:.1f} ms ({ms / costs[0]:.1f} steps)"
                        for count, ms in sorted(costs.items()) if count > 1)
    return [
        "What checking a draft costs on the H200 (llama.cpp `timings`, medians of 5, tokens",
        f"processed in one batch after a cached prefix): one decoding step {costs[0]:.2f} ms;",
        f"{batches}.",
        "",
    ]


def lifecycle_lines(run_doc: dict[str, Any]) -> list[str]:
    lines = ["The run, command by command (exit code, wall time):", ""]
    for entry in run_doc["transcript"]:
        lines.append(f"- `{entry['command']}`: exit {entry['exit_code']}, {entry['wall_s']:.1f} s")
    after = run_doc.get("after_stop", {})
    if after:
        used = ", ".join(f"{value / 1024**2:.0f} MiB" for value in after["gpu_memory_used_bytes"])
        before = ", ".join(f"{value / 1024**2:.0f} MiB"
                           for value in after["gpu_memory_used_before_start"])
        lines += [
            "",
            f"After `stop`: processes of the server's tree still alive: "
            f"{len(after['alive'])} (of {len(after['tree'])}); processes holding GPU memory: "
            f"{len(after['gpu_processes'])}; GPU memory used {used} (before `start`: {before}).",
        ]
    return [*lines, ""]


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        marker = "<!-- spec:end -->"
        if marker in doc:
            head, rest = doc.split(marker, 1)
            doc = head + marker + "\n\n" + text.rstrip("\n") + rest
        else:
            doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--requests", type=int, default=10)
    run_parser.add_argument("--rounds", type=int, default=5)
    run_parser.add_argument("--budget-s", type=float, default=330,
                            help="skip the optional copy-twice run after this many seconds")
    variants_parser = sub.add_parser("variants")
    variants_parser.add_argument("--out", type=Path, required=True)
    variants_parser.add_argument("--base", default=PROFILE)
    variants_parser.add_argument("--requests", type=int, default=10)
    variants_parser.add_argument("--rounds", type=int, default=3)
    render_parser = sub.add_parser("render")
    render_parser.add_argument("--from", dest="from_dir", type=Path, required=True)
    args = parser.parse_args()
    if args.mode == "run":
        run(args)
    elif args.mode == "variants":
        variants(args)
    else:
        render(args)


if __name__ == "__main__":
    main()
