"""Renderers of `pull` (progress per artifact, what is present) and `router` (its state)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from llm_backend.cli.render import console, err_console

if TYPE_CHECKING:
    from llm_backend.cluster.router import RouterStartResult, RouterStatus, RouterStopResult
    from llm_backend.pull import Artifact, ProgressEvent, PullPlan, PullResult


# --- pull --------------------------------------------------------------------------------


class PullDisplay:
    """One progress bar per artifact on a terminal (bytes, rate, ETA); plain lines otherwise."""

    def __init__(self, *, terminal: bool | None = None) -> None:
        # `start` passes terminal=False: its own load display owns the terminal.
        self.terminal = err_console.is_terminal if terminal is None else terminal
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=err_console,
            disable=not self.terminal,
        )
        self.tasks: dict[str, TaskID] = {}
        self.last_line: dict[str, float] = {}
        self.first_seen: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> PullDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def __call__(self, event: ProgressEvent) -> None:
        from llm_backend.units import format_bytes

        task = self.tasks.get(event.artifact)
        if task is None:
            task = self.progress.add_task(event.artifact, total=event.total)
            self.tasks[event.artifact] = task
        self.progress.update(task, completed=event.done, total=event.total)
        if self.terminal:
            return
        now = time.monotonic()
        started, done_then = self.first_seen.setdefault(event.artifact, (now, event.done))
        if event.finished or now - self.last_line.get(event.artifact, 0.0) >= 5.0:
            self.last_line[event.artifact] = now
            if event.unit == "%":
                amount = f"{event.done}%"
            else:
                total = format_bytes(event.total, unknown="unknown size")
                amount = f"{format_bytes(event.done)} of {total}"
                elapsed = now - started
                rate = (event.done - done_then) / elapsed if elapsed > 1.0 else 0.0
                if rate > 0:
                    amount += f", {format_bytes(int(rate))}/s"
                    if event.total:
                        amount += f", {max(event.total - event.done, 0) / rate:.0f} s left"
            note = f" ({event.message})" if event.message else ""
            state = "done" if event.finished else amount
            err_console.print(f"pull: {event.artifact}: {state}{note}", soft_wrap=True,
                              markup=False)


def render_artifacts(artifacts: Iterable[Artifact]) -> None:
    from llm_backend.units import format_bytes

    for artifact in artifacts:
        mark = "[green]present[/green]" if artifact.present else "[yellow]missing[/yellow]"
        size = format_bytes(artifact.bytes, unknown="unknown size")
        still = ""
        if not artifact.present and artifact.missing_bytes:
            still = f", {format_bytes(artifact.missing_bytes)} to download"
        console.print(f"  {artifact.kind:<11} {mark} {artifact.name} ({size}{still})",
                      soft_wrap=True)
        console.print(Text(f"              {artifact.location}", style="dim"), soft_wrap=True)
        if artifact.detail and not artifact.present:
            console.print(Text(f"              {artifact.detail}", style="dim"), soft_wrap=True)


def render_pull_plan(profile: str, runtime: str, planned: PullPlan) -> None:
    console.print(f"pull --dry-run: {profile} ({runtime})")
    render_artifacts(planned.artifacts)


def render_pulled(profile: str, result: PullResult) -> None:
    console.print(f"pull: {profile}: everything is present"
                  + (f" (fetched {', '.join(result.fetched)})" if result.fetched else ""))
    render_artifacts(result.after)


# --- router ------------------------------------------------------------------------------


def render_router_started(result: RouterStartResult) -> None:
    if result.outcome == "already_running":
        console.print(f"router already running at {result.url} (pid {result.pid})")
        return
    console.print(
        f"router ready at {result.url} in {result.duration_s:.1f}s "
        f"(pid {result.pid}, policy {result.policy}, metrics {result.prometheus})"
    )
    for url in result.reregistered:
        console.print(f"  re-registered {url} (the router adds it once it answers /health)")


def render_router_stopped(result: RouterStopResult) -> None:
    if not result.was_running:
        console.print("no router was running")
        return
    how = "killed" if result.killed else "stopped"
    console.print(f"{how} the router in {result.duration_s:.1f}s; no process left")
    if result.remembered:
        console.print(
            f"  remembered {len(result.remembered)} workers; `router start` re-registers them"
        )


def render_router_status(status: RouterStatus) -> None:
    console.print(f"router: {status.state}" + (f" at {status.url}" if status.url else ""))
    if status.failure:
        console.print(f"  {status.failure}", markup=False)
    if status.readiness:
        ready = status.readiness
        console.print(
            f"  readiness: {ready.get('status')} "
            f"({ready.get('healthy_workers', 0)}/{ready.get('total_workers', 0)} "
            "healthy)" if "healthy_workers" in ready else
            f"  readiness: {ready.get('status')} ({ready.get('reason', '')})",
            markup=False,
        )
    if status.workers:
        table = Table("worker", "model", "health", "in flight", "reported load")
        for row in status.workers:
            table.add_row(
                row["url"], str(row["model_id"]),
                "healthy" if row["healthy"] else "unhealthy",
                str(row["in_flight"]), str(row["reported_load"] or "-"),
            )
        console.print(table)
