"""`bench`: serving speed of the running backend, or speculative decoding off vs on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.options import check_number
from llm_backend.cli.render_bench import BenchProgress, render_ab, render_bench
from llm_backend.cli.start import choose_profile, ensure_llama_server
from llm_backend.errors import BackendError, UsageError

if TYPE_CHECKING:
    from llm_backend.bench.report import BenchReport


def bench(
    workload: Annotated[
        str, typer.Option(help="Built-in workload: chat, long, copy or mixed.")
    ] = "chat",
    dataset: Annotated[
        Path | None, typer.Option(help="Your own prompts: JSONL, OpenAI messages per line.")
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Concurrency levels to sweep, comma-separated.")
    ] = "1,4,16",
    requests: Annotated[
        int, typer.Option(help="Requests per concurrency level.", min=1)
    ] = 16,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds per level instead of a request count (cycles the prompts).",
                     min=0.1),
    ] = None,
    ab: Annotated[
        str | None,
        typer.Option("--ab", help="A/B run: 'spec' = speculative decoding off vs on "
                     "(restarts the backend; leaves it as it was)."),
    ] = None,
    rounds: Annotated[
        int, typer.Option(help="With --ab: alternate the arms this many times.", min=1)
    ] = 1,
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="With --ab and a stopped backend: the profile."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every per-request figure here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw tokens/s and latency vs concurrency (PNG).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the prompts and the requests.")] = 1234,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    max_tokens: Annotated[
        int | None, typer.Option(help="Cap every request's output tokens.", min=1)
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Measure the backend itself, not through the "
                           "door of a running `serve`.")
    ] = False,
) -> None:
    """Measure serving speed of the backend; with --ab spec, speculative decoding off vs on."""
    from llm_backend.bench import parse_levels, require_some_answered, run_bench, running_target
    from llm_backend.bench.workloads import builtin_workload, load_dataset

    check_number("--temperature", temperature, low=0, high=2, command="bench")
    check_number("--duration", duration, low=0.1, high=86400, command="bench")
    levels = parse_levels(concurrency)
    if ab is not None and ab != "spec":
        raise UsageError(f"--ab {ab!r} is not known; the A/B kind is: spec",
                           remedy="llm-backend bench --ab spec")
    if json_path is not None:  # before the run: a bad path must not cost the figures
        if json_path.is_dir():
            raise UsageError(f"--json {json_path} is a folder",
                               remedy=f"name a file in it: --json {json_path / 'bench.json'}")
        if not json_path.parent.is_dir():
            raise UsageError(f"--json {json_path}: folder {json_path.parent} does not exist",
                               remedy=f"mkdir -p {json_path.parent}, or choose another --json "
                               "path")
    if plot is not None:
        from llm_backend.bench.plot import check_plot_target

        check_plot_target(plot)
    chosen = (
        load_dataset(dataset, seed=seed) if dataset is not None
        else builtin_workload(workload, count=requests, seed=seed)
    )
    if max_tokens is not None:
        chosen = chosen.capped(max_tokens)
    lifecycle = make_lifecycle()
    display = BenchProgress()
    series: list[tuple[str, BenchReport]]
    if ab is None:
        target = running_target(lifecycle, direct=direct)
        with display:
            report = run_bench(
                target, chosen, levels=levels, requests_per_level=requests,
                duration_s=duration, temperature=temperature, seed=seed,
                on_progress=display.on_progress,
            )
        require_some_answered(report, target)
        title = f"{chosen.name} on {target.profile}"
        if target.through_door:
            title += f" through the door of serve ({target.endpoint})"
        render_bench(report, title=title)
        document: dict[str, object] = report.to_json()
        series = [(target.profile or "", report)]
    else:
        from llm_backend.bench.ab import run_ab
        from llm_backend.serve import control as serve_control

        door = serve_control.running(lifecycle.store)
        if door is not None:  # --ab restarts the backend, which serve owns
            raise BackendError(
                f"bench --ab spec restarts the backend, and serve (pid {door.pid}, door "
                f"{door.door}) owns it here",
                remedy="llm-backend stop (stops serve), then llm-backend bench --ab spec "
                "--profile NAME; or measure serve as it is: llm-backend bench",
            )
        current = lifecycle.refresh()
        name = profile or (
            current.profile if current is not None else choose_profile(lifecycle, None)
        )
        with display:
            result = run_ab(
                lifecycle, chosen, levels=levels, requests_per_level=requests,
                duration_s=duration, rounds=rounds, profile_name=name,
                temperature=temperature, seed=seed, on_progress=display.on_progress,
                on_notice=display.on_notice, ensure_binary=ensure_llama_server,
            )
        render_ab(result)
        document = result.to_json()
        series = [("spec off", result.off), ("spec on", result.on)]
        title = f"{chosen.name} on {result.profile}: speculative decoding off vs on"
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        except OSError as error:
            raise BackendError(f"cannot write --json {json_path}: {error.strerror or error} "
                               "(the figures are above)",
                               remedy="choose a --json path in a folder you can write") from error
        render.wrote(json_path)
    if plot is not None:
        from llm_backend.bench.plot import plot_reports

        plot_reports(series, plot, title=title)
        render.wrote(plot)
