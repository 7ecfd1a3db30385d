"""`pull`: bring in what a profile needs before it can load."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.render_more import PullDisplay, render_pull_plan, render_pulled
from llm_backend.cli.start import choose_profile_and_runtime


def pull(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to pull for, or 'auto'.")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="native or docker (default: the profile's).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what is present and what is missing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Bring in what a profile needs before it can load: image, weights, encodings, binary."""
    from llm_backend import pull as pulling

    lifecycle = make_lifecycle()
    name, auto_runtime = choose_profile_and_runtime(lifecycle, profile)
    chosen_runtime = runtime or auto_runtime
    overrides = {"runtime": chosen_runtime} if chosen_runtime else None
    resolved = lifecycle.resolve(name, overrides).profile
    sources = pulling.sources_for(resolved)
    if dry_run:
        planned = pulling.plan(resolved.name, sources)
        if as_json:
            render.print_json(planned.to_json())
        else:
            render_pull_plan(resolved.name, resolved.runtime, planned)
        raise typer.Exit(0)
    with PullDisplay() as display:
        result = pulling.pull(resolved.name, sources, progress=display,
                              lock=lifecycle.store.root / pulling.PULL_LOCK)
    if as_json:
        render.print_json(result.to_json())
        return
    render_pulled(resolved.name, result)
