"""`status`, `stop` and `logs`: the running backend as the lifecycle sees it."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.options import check_number
from llm_backend.cli.start import start_choice
from llm_backend.errors import BackendError
from llm_backend.lifecycle import Lifecycle, Status
from llm_backend.logtail import find_log, log_tail
from llm_backend.serve import control as serve_control
from llm_backend.state import StateStore

if TYPE_CHECKING:
    from llm_backend.gpu import GpuReport
    from llm_backend.pull import LocalReport

# How often `status --watch` looks at the caches again while nothing else changes (seconds).
PULLED_REFRESH_S = 30.0


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Refresh every second (with --json: one JSON object a line).")] = False,
) -> None:
    """Show the backend's state; exit 0 only when it is ready (or alive: a follower rank of a
    multi-node model, which serves no API of its own)."""
    lifecycle = make_lifecycle()
    if lifecycle.store.load_instance() is None:
        from llm_backend.cli.replicas import replica_statuses

        replicas = replica_statuses(lifecycle)
        if replicas:
            if as_json:
                render.print_json({"replicas": [replica.to_json() for replica in replicas]})
            else:
                render.render_replica_statuses(replicas)
            raise typer.Exit(0 if all(r.state == "ready" for r in replicas) else 1)
    pulled: LocalReport | None = None
    probed: tuple[float, str | None, str] = (0.0, None, "")
    while True:
        current = with_serve(lifecycle.store, lifecycle.status())
        # What is pulled is judged from the local cache (no network); `--watch` looks again
        # only when the profile or the state changes, or every PULLED_REFRESH_S.
        now = time.monotonic()
        if (pulled is None or probed[1:] != (current.profile, current.state)
                or now - probed[0] >= PULLED_REFRESH_S):
            pulled = lifecycle.pulled(otherwise=lambda: start_choice(lifecycle))
            probed = (now, current.profile, current.state)
        current = replace(current, artifacts=pulled)
        gpus, ours = gpu_state(lifecycle)
        if as_json:
            from llm_backend.gpu import status_json

            shown = {**current.to_json(), "gpus": status_json(gpus, ours)}
            # `--watch --json` is JSON Lines: one compact object a line, each one whole.
            (render.print_json_line if watch else render.print_json)(shown)
        else:
            render.render_status(current, clear=watch)
            render.render_gpus(gpus, ours)
        if not watch:
            break
        time.sleep(1.0)
    render.render_damaged(lifecycle.store.damaged)
    raise typer.Exit(0 if current.state in ("ready", "alive") else 1)


def with_serve(store: StateStore, status: Status) -> Status:
    """The status plus the door's view when `serve` runs (the door, counts, last restart).

    Clients use the door, so `endpoint` is the door's address; the backend's own address
    behind it is `backend_endpoint`.
    """
    door = serve_control.running(store)
    if door is None:
        return status
    from llm_backend.serve.record import summary

    extra = {**status.extra, "backend_endpoint": status.endpoint or door.backend,
             "serve": summary(door)}
    return replace(status, endpoint=door.door, extra=extra)


def gpu_state(lifecycle: Lifecycle) -> tuple[GpuReport, list[int]]:
    """NVML's view of the GPUs, and the pids of our server's process tree."""
    from llm_backend.gpu import process_tree, read_gpus

    record = lifecycle.store.load_instance()
    report = read_gpus()
    ours = []
    if report.nvml_available and record is not None and record.pid:
        ours = [owned.pid for owned in process_tree(record.pid)]
    return report, ours


def stop(
    force: Annotated[bool, typer.Option("--force", help="SIGKILL at once.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Grace period in seconds before SIGKILL.")
    ] = None,
) -> None:
    """Stop the backend: SIGTERM, grace period, SIGKILL; verify nothing is left."""
    from llm_backend.gpu import watch_stop

    check_number("--timeout", timeout, low=0, high=86400, command="stop")
    lifecycle = make_lifecycle()
    door = serve_control.running(lifecycle.store)
    if door is not None:  # serve owns the backend: it drains, stops it, restores the host
        grace = timeout if timeout is not None else 600.0
        render.render_serve_stopped(
            serve_control.stop(lifecycle.store, door, timeout_s=grace + 60)
        )
        return
    record = lifecycle.store.load_instance()
    from llm_backend.cli.replicas import stop_replicas

    if stop_replicas(lifecycle, force=force, grace_s=timeout) and record is None:
        return
    watch = watch_stop(lifecycle.store)
    if record is not None and not force:
        from llm_backend.cluster.distributed import follower_stop_note

        try:
            note = follower_stop_note(lifecycle.resolve(record.profile).profile)
        except BackendError:
            note = None
        if note:
            render.notice_plain(note)
    try:
        outcome = lifecycle.stop(force=force, grace_s=timeout)
    finally:
        render.render_gpu_leftovers(watch.settle(force=force), force=force)
        render.render_damaged(lifecycle.store.damaged)
    render.render_stopped(outcome)


def logs(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("-n", help="How many lines to show.")] = 50,
) -> None:
    """Print the backend's log (the last one, even after it stopped)."""
    check_number("-n", lines, low=0, high=1_000_000, command="logs")
    store = StateStore()
    try:
        path = find_log(store)
    finally:
        render.render_damaged(store.damaged)
    end = path.stat().st_size  # the tail ends here and the follower starts here: no gap
    render.render_log_lines(log_tail(path, lines, end=end))
    if follow:
        from llm_backend.logtail import LogFollower

        follower = LogFollower(path, end)
        while True:
            render.render_log_lines(follower.read_lines())
            time.sleep(0.2)
