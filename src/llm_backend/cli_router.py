"""`llm-backend router start|stop|status|logs`: renderers for llm_backend.cluster.router."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

router_app = typer.Typer(help="sglang-router in front of several servers (scale-out).")


def _manager(port: int | None = None, policy: str | None = None) -> Any:
    from llm_backend.cluster.router import RouterManager
    from llm_backend.config import load_config
    from llm_backend.state import StateStore

    overrides: dict[str, Any] = {"port": port} if port is not None else {}
    if policy is not None:
        overrides["policy"] = policy
    return RouterManager(store=StateStore(), config=load_config().router(overrides))


@router_app.command("start")
def router_start(
    port: Annotated[int | None, typer.Option(help="Port for the router (default 30080).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="cache_aware (default), round_robin, random or power_of_two."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start sglang-router (bound to loopback unless [router] host says otherwise)."""
    from llm_backend.cli import console, print_json, run_guarded

    def action() -> None:
        result = _manager(port, policy).start()
        if json_output:
            print_json(result.__dict__)
            return
        if result.outcome == "already_running":
            console.print(f"router already running at {result.url} (pid {result.pid})")
            return
        console.print(
            f"router ready at {result.url} in {result.duration_s:.1f}s "
            f"(pid {result.pid}, policy {result.policy}, metrics {result.prometheus})"
        )
        for url in result.reregistered:
            console.print(f"  re-registered {url} (the router adds it once it answers /health)")

    run_guarded(action)


@router_app.command("stop")
def router_stop(
    force: Annotated[bool, typer.Option("--force", help="SIGKILL at once.")] = False,
) -> None:
    """Stop the router: SIGTERM, grace period, SIGKILL."""
    from llm_backend.cli import console, run_guarded

    def action() -> None:
        result = _manager().stop(force=force)
        if not result.was_running:
            console.print("no router was running")
            return
        how = "killed" if result.killed else "stopped"
        console.print(f"{how} the router in {result.duration_s:.1f}s; no process left")
        if result.remembered:
            console.print(
                f"  remembered {len(result.remembered)} workers; `router start` re-registers them"
            )

    run_guarded(action)


@router_app.command("status")
def router_status(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The router and its workers with health and load; exit 0 when it is up."""
    from llm_backend.cli import console, print_json, run_guarded

    def action() -> None:
        status = _manager().status()
        if json_output:
            print_json(status.to_json())
        else:
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
        if status.state not in ("ready",):
            raise typer.Exit(1)

    run_guarded(action)


@router_app.command("logs")
def router_logs(
    lines: Annotated[int, typer.Option("-n", help="How many lines to show.")] = 50,
) -> None:
    """Print the router's log."""
    from llm_backend.cli import console, run_guarded

    def action() -> None:
        for line in _manager().logs(lines):
            console.print(line, markup=False, soft_wrap=True)

    run_guarded(action)


# --- replicas: `start`, `stop` and `status` of a profile with `replicas = N` ----------------


def replicas_wanted(lifecycle: Any, name: str, overrides: dict[str, Any]) -> bool:
    """True when the profile asks for more than one copy."""
    return int(lifecycle.resolve(name, overrides).profile.replicas) > 1


def start_replicas(
    lifecycle: Any, name: str, overrides: dict[str, Any], skip: list[str], *, dry_run: bool
) -> None:
    """Preflight each copy (its own port), then start them as one group."""
    from llm_backend.cli import console, ensure_llama_server, err_console, run_preflight
    from llm_backend.cluster.replicas import ReplicaGroup, replica_overrides

    profile = lifecycle.resolve(name, overrides).profile
    for index in range(profile.replicas):
        run_preflight(lifecycle, name, replica_overrides(profile, index, overrides), skip,
                      host_prep=False, dry_run=dry_run)
    if dry_run:
        for index in range(profile.replicas):
            result = lifecycle.start(profile_name=name, dry_run=True, host_prep=False,
                                     overrides=replica_overrides(profile, index, overrides))
            console.print(f"dry run: replica {index} would serve at {result.endpoint}: "
                          + " ".join(result.argv), markup=False, soft_wrap=True)
        return
    group = ReplicaGroup(store=lifecycle.store, config=lifecycle.config)
    err_console.print(f"starting {profile.replicas} replicas of {name} ...")
    results = group.start(
        profile_name=name, overrides=overrides, ensure_binary=ensure_llama_server,
        on_notice=lambda text: err_console.print(text, markup=False),
    )
    for index, result in enumerate(results):
        console.print(
            f"replica {index}: {result.state} in {result.duration_s or 0:.1f}s at "
            f"{result.endpoint} (pid {result.pid})", markup=False,
        )


def stop_replicas(lifecycle: Any, *, force: bool, grace_s: float | None) -> bool:
    """Stop the replica group if there is one; False when there is none."""
    from llm_backend.cli import console
    from llm_backend.cluster.replicas import ReplicaGroup
    from llm_backend.lifecycle import describe_leave

    group = ReplicaGroup(store=lifecycle.store, config=lifecycle.config)
    if not group.exists():
        return False
    for index, outcome in enumerate(group.stop(force=force, grace_s=grace_s)):
        how = "killed" if outcome.killed else "stopped"
        console.print(f"replica {index}: {how} in {outcome.duration_s:.1f}s")
        if outcome.router:
            console.print("  " + describe_leave(outcome.router), markup=False)
    return True


def replica_statuses(lifecycle: Any) -> list[Any]:
    from llm_backend.cluster.replicas import ReplicaGroup

    return ReplicaGroup(store=lifecycle.store, config=lifecycle.config).status()
