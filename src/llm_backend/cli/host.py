"""`recover` and `host sudoers`: the host preparation's own commands."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_backend.cli import render, render_reports
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.options import check_number
from llm_backend.cli.start import choose_profile
from llm_backend.state import StateStore


def recover(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    swapoff_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to let swapoff run (instead of the journaled deadline)."),
    ] = None,
) -> None:
    """Undo host changes left by a `start` that was killed, and report what was restored."""
    from llm_backend.errors import HostPrepError

    check_number("--swapoff-timeout", swapoff_timeout, low=0, high=3600, low_open=True,
                 command="recover")
    from llm_backend.host import recover as recover_host

    report = recover_host(StateStore(), swapoff_timeout_s=swapoff_timeout)
    if as_json:
        render.print_json(report.to_json())
    else:
        render_reports.render_recover(report)
    if report.errors:
        raise HostPrepError(
            "recovery could not undo every host change: " + "; ".join(report.errors),
            remedy="fix the cause named above, then run `llm-backend recover` again",
        )
    if report.left_on:
        raise typer.Exit(1)


def host_sudoers(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile whose swap file to allow.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="User to allow (default: you).")] = None,
) -> None:
    """Print a minimal sudoers file (exact commands) for host preparation without root."""
    import getpass
    import os

    from llm_backend.host import sudoers_text

    lifecycle = make_lifecycle()
    name = choose_profile(lifecycle, profile)
    resolved = lifecycle.resolve(name).profile
    who = user or os.environ.get("SUDO_USER") or getpass.getuser()
    render.print_raw(sudoers_text(resolved, who))
