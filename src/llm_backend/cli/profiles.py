"""`profiles` and `profiles show NAME`."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_backend.cli import render, render_reports
from llm_backend.config import flatten, load_config
from llm_backend.errors import BackendError


def profiles_list(ctx: typer.Context) -> None:
    """List every profile and where it is defined."""
    if ctx.invoked_subcommand is not None:
        return
    config = load_config()
    default = config.default_profile()
    rows: list[tuple[str, str, str, str, str]] = []
    for name in config.profile_names():
        try:
            profile = config.resolve(name).profile
        except BackendError as error:
            rows.append((name, "?", "?", config.source_of(name), f"invalid: {error.message}"))
            continue
        marker = " (default)" if name == default else ""
        rows.append((
            name + marker, profile.engine, profile.runtime, config.source_of(name),
            profile.description,
        ))
    render_reports.render_profile_table(rows)


def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print every effective value of a profile and where it came from."""
    from llm_backend.credentials import mask_flat

    resolved = load_config().resolve(name)
    flat = mask_flat(flatten(resolved.profile))
    if as_json:
        render.print_json(
            {
                key: {"value": value, "source": resolved.sources.get(key, "default")}
                for key, value in flat.items()
            }
        )
        return
    render_reports.render_profile_values(name, flat, resolved.sources, list(resolved.chain))
