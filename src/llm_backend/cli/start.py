"""`start` and `restart`: choose the profile, run the preflight, start, render the result."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from llm_backend.cli import render, render_reports
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.render_more import PullDisplay
from llm_backend.config import Profile
from llm_backend.engines import get_engine
from llm_backend.errors import BackendError
from llm_backend.lifecycle import Lifecycle
from llm_backend.serve import control as serve_control
from llm_backend.state import State


def ensure_llama_server(profile: Profile) -> None:
    """Install the profile's engine first when it needs it (llama.cpp: build llama-server)."""
    from llm_backend.cli.engine import install_engine

    engine = get_engine(profile.engine)
    notice = engine.install_needed(profile=profile)
    if notice is None:
        return
    render.notice(notice)
    install_engine(engine, profile=profile)


def start(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile name, or 'auto'.")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="native or docker (overrides the profile).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Overall load timeout in seconds.")
    ] = None,
    no_host_prep: Annotated[
        bool, typer.Option("--no-host-prep", help="Skip swap, OOM-daemon and cache steps.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")
    ] = False,
    skip_checks: Annotated[
        list[str] | None,
        typer.Option(
            "--skip-checks",
            help="Go on although this preflight check fails (repeatable; see `doctor`).",
        ),
    ] = None,
    no_pull: Annotated[
        bool,
        typer.Option("--no-pull", help="Refuse to start when the image, weights or encoding "
                     "are missing, instead of pulling them first."),
    ] = False,
) -> None:
    """Start the backend and wait until it answers; prints the endpoint and a curl line."""
    lifecycle = make_lifecycle()
    door = serve_control.running(lifecycle.store)
    if door is not None and not dry_run:
        raise BackendError(
            f"serve (pid {door.pid}, door {door.door}) owns the backend here",
            remedy="use it as is; `llm-backend restart` reloads its backend, "
            "`llm-backend stop` stops both",
        )
    # A backend already ready gets "already ready", not auto's reasons and "starting ...".
    recorded = lifecycle.store.load_instance()
    ready = recorded is not None and recorded.state == State.READY
    name, auto_runtime = choose_profile_and_runtime(lifecycle, profile,
                                                    announce=not ready or dry_run)
    overrides: dict[str, object] = {}
    if runtime is not None:
        overrides["runtime"] = runtime
    elif auto_runtime is not None:
        overrides["runtime"] = auto_runtime
    if port is not None:
        overrides["port"] = port
    if timeout is not None:
        overrides["load_timeout_s"] = timeout
    from llm_backend.cli.replicas import replicas_wanted, start_replicas

    if replicas_wanted(lifecycle, name, overrides):
        start_replicas(lifecycle, name, overrides, skip_checks or [], dry_run=dry_run)
        return
    if dry_run:
        result = lifecycle.start(
            profile_name=name, overrides=overrides, dry_run=True,
            host_prep=not no_host_prep, skip_checks=skip_checks or [], pull=not no_pull,
        )
        render_reports.render_preflight_dry_run(result.checks)
        render.render_dry_run(result)
        if result.refusal is not None:  # the same error and exit code as the real start
            raise dry_run_refusal(result.refusal)
        return
    if not (ready and recorded is not None and recorded.profile == name):
        render.render_starting(name)
    with render.StartDisplay(name) as display:
        # The doctor preflight runs inside Lifecycle.start; its warnings come as notices.
        result = lifecycle.start(
            profile_name=name,
            overrides=overrides,
            host_prep=not no_host_prep,
            skip_checks=skip_checks or [],
            on_event=display,
            on_notice=render.notice_plain,
            ensure_binary=ensure_llama_server,
            pull=not no_pull,
            on_pull=PullDisplay(terminal=False),
        )
    render.render_started(result)


def dry_run_refusal(error: BackendError) -> BackendError:
    """The error a real start would stop with, said of a dry run (same type: same exit code)."""
    return type(error)(
        f"dry run: a real start would fail: {error.message}", remedy=error.remedy,
        failure_class=error.failure_class, details=error.details,
    )


def restart() -> None:
    """Stop the backend and start it again with the same profile and options."""
    lifecycle = make_lifecycle()
    door = serve_control.running(lifecycle.store)
    if door is not None:  # serve holds (or falls back) while its backend reloads
        done = serve_control.restart(lifecycle.store, door, timeout_s=3600)
        if done.failure:
            raise BackendError(
                f"the backend behind serve failed to restart: {done.failure.get('message')}",
                remedy=str(done.failure.get("remedy") or "llm-backend logs -n 200"),
            )
        render.render_serve_restarted(done)
        return

    with render.StartDisplay("restart") as display:
        result = lifecycle.restart(
            on_event=display, ensure_binary=ensure_llama_server, on_notice=render.notice_plain,
        )
    render.render_started(result)


def choose_profile(lifecycle: Lifecycle, requested: str | None) -> str:
    """The profile to use: the one asked for, the user's default, or the automatic choice."""
    return choose_profile_and_runtime(lifecycle, requested)[0]


def choose_profile_and_runtime(
    lifecycle: Lifecycle, requested: str | None, *, announce: bool = True
) -> tuple[str, str | None]:
    """The profile, and the runtime `auto` needs when the profile's own cannot run here.
    `announce`: print auto's reasons (to stderr)."""
    name = requested or lifecycle.config.default_profile() or "auto"
    if name != "auto":
        return name, None
    from llm_backend.doctor import auto_profile

    choice = auto_profile(lifecycle.config)
    if announce:
        render.render_auto_reasons(choice, to_stderr=True)
    return choice.profile, choice.runtime


def start_choice(lifecycle: Lifecycle) -> tuple[str, dict[str, object] | None]:
    """The profile a plain `start` would use here, and its overrides (auto's runtime)."""
    name, runtime = choose_profile_and_runtime(lifecycle, None, announce=False)
    return name, {"runtime": runtime} if runtime else None


def run_preflight(
    lifecycle: Lifecycle,
    name: str,
    overrides: dict[str, object],
    skip_checks: list[str],
    *,
    host_prep: bool,
    dry_run: bool,
) -> None:
    """The `doctor` checks for each copy of a replica group (`Lifecycle.start` runs them
    for a single backend itself); a failure stops it here.

    Skipped when the backend is already running (start then just reports it). In a dry run
    the checks are shown, not enforced.
    """
    from llm_backend.doctor import preflight, preflight_error, run_checks, validate_skip
    from llm_backend.lifecycle import ACTIVE_STATES

    skip = validate_skip([*skip_checks, os.environ.get("LLM_BACKEND_SKIP_CHECKS", "")])
    current = lifecycle.refresh()
    if current is not None and current.state in ACTIVE_STATES:
        return
    profile = lifecycle.resolve(name, overrides).profile
    if dry_run:
        report = run_checks(profile, host_prep=host_prep, skip=skip, probe_binaries=False)
        render_reports.render_preflight_dry_run(report.checks)
        error = preflight_error(profile.name, report)
        if error is not None:
            raise dry_run_refusal(error)
        return
    report = preflight(profile, host_prep=host_prep, skip=skip)
    render_reports.render_preflight_warnings(
        check for check in report.warnings
        # a CPU profile does not care about the GPU
        if not (
            check.name == "gpu"
            and not get_engine(profile.engine).profile_needs_gpu(profile=profile)
        )
    )
