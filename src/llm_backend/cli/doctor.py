"""`doctor` (can this machine run a profile?) and `diagnose` (what does a log say?)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llm_backend.cli import render, render_reports
from llm_backend.config import load_config
from llm_backend.errors import UsageError


def doctor(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to check, or 'auto'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check that this machine can run a profile: GPU, memory, disk, Docker, port, model files."""
    from llm_backend.doctor import auto_profile, run_checks
    from llm_backend.hardware import describe_host

    config = load_config()
    name = profile or config.default_profile() or "auto"
    choice = None
    if name == "auto":
        choice = auto_profile(config, describe_host())
        name = choice.profile
    overrides = {"runtime": choice.runtime} if choice and choice.runtime else None
    resolved = config.resolve(name, overrides).profile
    report = run_checks(resolved, with_hardware=True, auto=choice, with_artifacts=True)
    if as_json:
        render.print_json(report.to_json())
    else:
        render_reports.render_doctor(report, choice)
    raise typer.Exit(0 if report.ok else 1)


def diagnose(
    logfile: Annotated[str, typer.Argument(help="A saved server log, or - for stdin.")],
    engine: Annotated[
        str | None, typer.Option(help="Engine name, e.g. sglang or llamacpp (guessed from the log "
                                 "if left out).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Read a server log: the phase timeline, and the failure with its fix. Exit 0 if ready."""
    from llm_backend.diagnose import diagnose_lines

    if engine is not None:
        from llm_backend.engines import REGISTRY

        problem = REGISTRY.unknown(engine)
        if problem:
            raise UsageError(
                f"{problem}; diagnose reads those engines' logs",
                remedy="pass --engine with one of those, or leave it out to guess",
            )
    if logfile == "-":
        lines = sys.stdin.read().splitlines()
    else:
        path = Path(logfile)
        # A file, or a pipe such as `<(docker logs NAME)` (/dev/fd/N): read what it gives.
        problem = ("does not exist" if not path.exists()
                   else "is a folder" if path.is_dir() else None)
        lines = []
        if problem is None:
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as error:
                problem = f"cannot be read: {error.strerror or error}"
        if problem is not None:
            raise UsageError(
                f"log file {logfile} {problem}",
                remedy="pass a saved log (`llm-backend logs -n 1000 > server.log`) or - "
                "to read stdin",
            )
    result = diagnose_lines(lines, engine)
    if as_json:
        render.print_json(result.to_json())
    else:
        render_reports.render_diagnosis(result)
    raise typer.Exit(0 if result.ready and result.failure is None else 1)
