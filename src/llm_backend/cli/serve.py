"""`serve` (the front door and supervisor) and `service install|uninstall` (its systemd unit)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.start import choose_profile, ensure_llama_server


def serve(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile name, or 'auto'.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="The door's port (clients use it).")] = None,
) -> None:
    """Run the front door and supervisor in the foreground until SIGTERM or `stop`."""
    from llm_backend.serve import daemon

    lifecycle = make_lifecycle()
    name = choose_profile(lifecycle, profile)
    serve_plan = daemon.plan(lifecycle, name, port)
    code = daemon.run(lifecycle, serve_plan, on_line=render.render_serve_line,
                      ensure_binary=ensure_llama_server)
    raise typer.Exit(code)


def service_install(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile the service serves.")
    ] = None,
    unit_dir: Annotated[
        Path, typer.Option(help="Where to write the unit.", hidden=True)
    ] = Path("/etc/systemd/system"),
) -> None:
    """Write, verify and enable llm-backend.service (runs `serve` at boot, as root)."""
    from llm_backend.serve import service

    lifecycle = make_lifecycle()
    name = choose_profile(lifecycle, profile)
    resolved = lifecycle.resolve(name).profile
    environment = {
        key: value for key, value in os.environ.items()
        if key in ("LLM_BACKEND_STATE_DIR", "XDG_CONFIG_HOME", "HF_HOME")
    }
    result = service.install(resolved, unit_dir=unit_dir, working_directory=Path.cwd(),
                             environment=environment)
    render.render_service_installed(result)


def service_uninstall(
    unit_dir: Annotated[
        Path, typer.Option(help="Where the unit is.", hidden=True)
    ] = Path("/etc/systemd/system"),
) -> None:
    """Disable and remove llm-backend.service (only the unit `service install` wrote)."""
    from llm_backend.serve import service

    render.render_service_uninstalled(service.uninstall(unit_dir=unit_dir))
