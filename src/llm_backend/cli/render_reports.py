"""Renderers of reports: engine install, profiles, doctor checks, host recovery, compose,
diagnose. With render.py and the other render_*.py modules, the only code that prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from llm_backend.cli.render import (
    console,
    err_console,
    render_auto_reasons,
    render_local_report,
    render_spec,
)

if TYPE_CHECKING:
    from llm_backend.diagnose import Diagnosis
    from llm_backend.doctor import CheckResult, DoctorReport
    from llm_backend.engines.base import InstallResult
    from llm_backend.hardware import ProfileChoice
    from llm_backend.host.prepare import RecoveryReport
    from llm_backend.runtimes.compose import ComposeDocument


# --- start preflight ---------------------------------------------------------------------


def render_preflight_dry_run(checks: Iterable[CheckResult]) -> None:
    err_console.print("preflight checks (a real start stops at any fail):")
    render_checks(checks, target=err_console)


def render_preflight_warnings(checks: Iterable[CheckResult]) -> None:
    for check in checks:
        err_console.print(f"warning: {check.name}: {check.summary}", markup=False,
                          soft_wrap=True)
        if check.fix:
            err_console.print(f"  fix: {check.fix}", markup=False, soft_wrap=True)


# --- engine install ----------------------------------------------------------------------


class InstallDisplay:
    """An engine's install: a progress bar on a terminal, one line per step otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        )
        self.task: TaskID | None = None
        self.last_step = ""

    def __enter__(self) -> InstallDisplay:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=100)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, traceback)

    def __call__(self, step: str, fraction: float | None) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, description=step,
                completed=(fraction or 0) * 100 if fraction is not None else None,
            )
        if step != self.last_step:
            self.last_step = step
            if not err_console.is_terminal:
                err_console.print(f"{self.label}: {step}")


def render_installed(result: InstallResult) -> None:
    what = result.binary.name + (f" ({result.variant})" if result.variant else "")
    if result.built:
        console.print(f"built {what} in {result.duration_s:.0f}s: {result.binary}",
                      markup=False, soft_wrap=True)
    else:  # one line, the path whole (rich would break before a long path)
        console.print(f"{what} already installed: {result.binary}", markup=False,
                      soft_wrap=True)


# --- profiles ----------------------------------------------------------------------------


def render_profile_table(rows: Iterable[tuple[str, str, str, str, str]]) -> None:
    """`profiles`: name (default marked), engine, runtime, source, description."""
    from rich.table import Table

    table = Table("profile", "engine", "runtime", "source", "description")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def render_profile_values(
    name: str, values: Mapping[str, object], sources: Mapping[str, str], chain: list[str]
) -> None:
    """`profiles show NAME`: every key, its value as JSON, and where it came from."""
    from rich.table import Table

    table = Table("key", "value", "source", title=f"profile {name}")
    for key, value in values.items():
        table.add_row(key, json.dumps(value), sources.get(key, "default"))
    console.print(table)
    if len(chain) > 1:
        console.print(f"extends: {' -> '.join(chain)}")


# --- doctor ------------------------------------------------------------------------------

CHECK_COLOURS = {"pass": "green", "warn": "yellow", "fail": "red", "skipped": "magenta"}


def render_checks(
    checks: Iterable[CheckResult], *, indent: str = "  ", target: Console | None = None
) -> None:
    """One line per check (`pass  name  summary`), and a `fix:` line under warn and fail."""
    out = target or console
    for check in checks:
        colour = CHECK_COLOURS.get(check.status, "white")
        out.print(
            f"{indent}[{colour}]{check.status:<7}[/{colour}] {check.name:<14} "
            f"{escape(check.summary)}",
            soft_wrap=True,
        )
        if check.fix and check.status != "pass":
            out.print(f"{indent}{'':<7} {'':<14} [green]fix:[/green] {escape(check.fix)}",
                      soft_wrap=True)


def render_doctor(report: DoctorReport, choice: ProfileChoice | None) -> None:
    console.print(f"doctor: {report.profile} ({report.engine}, {report.runtime})")
    if choice is not None:
        render_auto_reasons(choice, to_stderr=False)
    render_checks(report.checks)
    if report.artifacts is not None:
        render_local_report(report.artifacts)
    counts = report.counts()
    verdict = "[green]ok[/green]" if report.ok else "[red]not ready[/red]"
    console.print(
        f"{verdict}: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
        + f" ({report.duration_s:.1f}s)"
    )


# --- host preparation --------------------------------------------------------------------


def render_recovery(report: RecoveryReport, *, to_stderr: bool) -> None:
    """What recovery found and undid, one line each."""
    to = err_console if to_stderr else console
    boot = "same boot" if report.same_boot else "after a reboot"
    if report.phase_before == "left_on":
        to.print(
            f"host: retried the swap file an earlier start of {report.profile} had to leave "
            f"on ({boot}):",
            soft_wrap=True,
        )
    else:
        to.print(
            f"host: undid the host preparation of a `start` that did not finish "
            f"(profile {report.profile}, interrupted while {report.phase_before}, {boot}):",
            soft_wrap=True,
        )
    for line in report.restored:
        to.print(f"  {line}", markup=False, soft_wrap=True)
    for item in report.left_on:
        to.print(
            f"  warning: swap file {item['path']} is still on: {item['reason']}",
            markup=False,
            soft_wrap=True,
        )
    for line in report.errors:
        to.print(f"  error: {line}", markup=False, soft_wrap=True)


def render_recover(report: RecoveryReport) -> None:
    """`recover`'s answer: nothing to do, busy, or what it undid."""
    if not report.found:
        console.print("nothing to recover: no unfinished host preparation")
    elif report.busy_pid is not None:
        console.print(
            f"host preparation is in progress (pid {report.busy_pid}, profile "
            f"{report.profile}); nothing to recover"
        )
    else:
        render_recovery(report, to_stderr=False)


def render_recovery_warning(message: str) -> None:
    err_console.print(
        f"warning: could not undo an interrupted host preparation: {message}", soft_wrap=True
    )
    err_console.print("fix: llm-backend recover (as root, or with the sudoers rules)")


# --- compose -----------------------------------------------------------------------------


def render_compose_written(document: ComposeDocument, output: object) -> None:
    console.print(
        f"wrote {output}: project {document.project}, container {document.container_name}, "
        f"image {document.image}, port {document.port}",
        markup=False,
        soft_wrap=True,
    )
    console.print(f"run it by hand: docker compose -f {output} up -d", markup=False)


# --- diagnose ----------------------------------------------------------------------------


def render_diagnosis(result: Diagnosis) -> None:
    console.print(f"engine:  {result.engine} ({result.line_count} lines)")
    for phase in result.phases:
        at = f"{phase.at_s:7.1f}s " if phase.at_s is not None else "         "
        progress = ""
        if phase.progress is not None:
            done, total = phase.progress
            progress = f" {done}/{total or '?'}"
        console.print(f"  {at}{phase.name}{progress}", markup=False)
    if not result.phases:
        console.print("  (no startup phase found in this log)")
    console.print(f"ready:   {'yes' if result.ready else 'no'}")
    if result.spec is not None:
        console.print(
            "spec:    "
            + render_spec(
                {
                    "accept_length": result.spec.accept_length,
                    "accept_rate": result.spec.accept_rate,
                    "gen_throughput": result.spec.gen_throughput,
                }
            )
        )
    if result.failure is not None:
        console.print(
            f"failure: {result.failure.failure_class}: {result.failure.message}",
            markup=False, soft_wrap=True,
        )
        if result.failure.line:
            console.print(f"line:    {result.failure.line}", markup=False, soft_wrap=True)
        console.print(f"fix:     {result.failure.remedy}", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note:    {note}", markup=False, soft_wrap=True)
