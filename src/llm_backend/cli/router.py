"""`llm-backend router start|stop|status|logs`: sglang-router under our lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.options import check_number
from llm_backend.cli.render_more import (
    render_router_started,
    render_router_status,
    render_router_stopped,
)

if TYPE_CHECKING:
    from llm_backend.cluster.router import RouterManager


def _manager(port: int | None = None, policy: str | None = None) -> RouterManager:
    from llm_backend.cluster.router import RouterManager
    from llm_backend.config import load_config
    from llm_backend.state import StateStore

    overrides: dict[str, object] = {"port": port} if port is not None else {}
    if policy is not None:
        overrides["policy"] = policy
    return RouterManager(store=StateStore(), config=load_config().router(overrides))


def router_start(
    port: Annotated[int | None, typer.Option(help="Port for the router (default 30080).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="cache_aware (default), round_robin, random or power_of_two."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start sglang-router (bound to loopback unless [router] host says otherwise)."""
    result = _manager(port, policy).start()
    if json_output:
        render.print_json(result.__dict__)
        return
    render_router_started(result)


def router_stop(
    force: Annotated[bool, typer.Option("--force", help="SIGKILL at once.")] = False,
) -> None:
    """Stop the router: SIGTERM, grace period, SIGKILL."""
    render_router_stopped(_manager().stop(force=force))


def router_status(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The router and its workers with health and load; exit 0 when it is up."""
    status = _manager().status()
    if json_output:
        render.print_json(status.to_json())
    else:
        render_router_status(status)
    if status.state not in ("ready",):
        raise typer.Exit(1)


def router_logs(
    lines: Annotated[int, typer.Option("-n", help="How many lines to show.")] = 50,
) -> None:
    """Print the router's log."""
    check_number("-n", lines, low=0, high=1_000_000, command="router logs")
    render.render_log_lines(_manager().logs(lines))
