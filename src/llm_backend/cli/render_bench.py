"""Renderers of `bench`: one table per run, the A/B comparison, and the progress bars."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from llm_backend.cli.render import console, err_console

if TYPE_CHECKING:
    from llm_backend.bench.ab import ABReport
    from llm_backend.bench.report import BenchReport, Percentiles


def _ms(value: Percentiles | None, attribute: str) -> str:
    return f"{getattr(value, attribute) * 1000:.0f}" if value is not None else "-"


def _seconds(value: Percentiles | None, attribute: str) -> str:
    return f"{getattr(value, attribute):.2f}" if value is not None else "-"


class BenchProgress:
    """One bar per step (warm-up, level, arm) on a terminal; nothing otherwise."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"),
            TextColumn("/ {task.total}"), TimeElapsedColumn(),
            console=err_console, transient=True, disable=not err_console.is_terminal,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BenchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_progress(self, description: str, done: int, total: int | None) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[description], completed=done)

    def on_notice(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]")


def render_bench_table(report: BenchReport, *, title: str) -> None:
    """One row per concurrency level: throughput, latency percentiles, engine agreement."""
    table = Table(title=title, title_justify="left")
    for column in (
        "conc", "ok/err", "req/s", "out tok/s", "tok/s/req p50",
        "TTFT ms p50/p90/p99", "ITL ms p50/p90/p99", "e2e s p50/p90/p99", "accept", "vs engine",
    ):
        table.add_column(column, justify="right")
    for level in report.levels:
        agreement = level.agreement
        table.add_row(
            str(level.concurrency),
            f"{level.ok}/{level.errors}",
            f"{level.request_throughput:.2f}",
            f"{level.output_tokens_per_s:.1f}",
            f"{level.tokens_per_s.p50:.1f}" if level.tokens_per_s else "-",
            "/".join(_ms(level.ttft_s, key) for key in ("p50", "p90", "p99")),
            "/".join(_ms(level.itl_s, key) for key in ("p50", "p90", "p99")),
            "/".join(_seconds(level.e2e_s, key) for key in ("p50", "p90", "p99")),
            f"{level.acceptance:.0%}" if level.acceptance is not None else "-",
            f"{agreement.median_ratio:.3f}" if agreement else "-",
        )
    console.print(table)
    for level in report.levels:
        for sample in level.error_samples:
            console.print(f"[red]c={level.concurrency} error:[/red] {sample}", soft_wrap=True)


def render_agreement(report: BenchReport) -> None:
    agreement_ok = report.agreement_ok
    if agreement_ok is None:
        console.print("client vs engine tokens/s: the engine reported no timings to compare")
        return
    worst = max(
        (level.agreement.median_ratio for level in report.levels if level.agreement),
        key=lambda ratio: abs(ratio - 1.0),
    )
    verdict = "[green]agree[/green]" if agreement_ok else "[yellow]disagree[/yellow]"
    console.print(
        f"client vs engine tokens/s (median ratio per level, tolerance 5%): {verdict}, "
        f"furthest {worst:.3f}"
    )


def render_bench(report: BenchReport, *, title: str) -> None:
    render_bench_table(report, title=title)
    render_agreement(report)


def render_ab(result: ABReport) -> None:
    """Both arms, then the comparison per level, the differing outputs and the warnings."""
    render_bench_table(result.off, title=f"{result.workload}: speculative decoding off")
    render_bench_table(result.on, title=f"{result.workload}: speculative decoding on")
    table = Table(
        title=f"{result.workload}: spec on vs off ({result.rounds} round(s), {result.profile})",
        title_justify="left",
    )
    for column in (
        "conc", "tok/s off", "tok/s on", "speedup", "per-req speedup", "e2e p50 off",
        "e2e p50 on", "latency speedup", "acceptance", "identical",
    ):
        table.add_column(column, justify="right")
    for item in result.comparisons:
        off_level, on_level = result.off.level(item.concurrency), result.on.level(item.concurrency)
        acceptance = (
            f"{item.acceptance:.0%}" if item.acceptance is not None
            else (f"len {item.accept_length:.2f}" if item.accept_length is not None else "-")
        )
        table.add_row(
            str(item.concurrency),
            f"{off_level.output_tokens_per_s:.1f}",
            f"{on_level.output_tokens_per_s:.1f}",
            f"{item.speedup:.2f}x" if item.speedup is not None else "-",
            f"{item.per_request_speedup:.2f}x" if item.per_request_speedup is not None else "-",
            _seconds(off_level.e2e_s, "p50"),
            _seconds(on_level.e2e_s, "p50"),
            f"{item.latency_speedup:.2f}x" if item.latency_speedup is not None else "-",
            acceptance,
            f"{item.identical}/{item.compared}",
        )
    console.print(table)
    for item in result.comparisons:
        for difference in item.differences:
            console.print(
                f"differs: request {difference.index} (c={difference.concurrency}, round "
                f"{difference.round + 1}) at char {difference.position}: "
                f"off {difference.off_excerpt!r} | on {difference.on_excerpt!r}",
                markup=False, soft_wrap=True,
            )
    fraction = result.identical_fraction
    if fraction is not None:
        console.print(f"identical outputs: {fraction:.0%}")
    render_agreement(result.off)
    render_agreement(result.on)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    console.print(f"backend: before {result.backend_before}; after {result.backend_after}")
