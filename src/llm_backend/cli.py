"""The command line: the only module that prints. Errors become `error:` and `fix:` lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from llm_backend.config import Profile, flatten, load_config
from llm_backend.engines import get_engine
from llm_backend.errors import BackendError, NotRunningError, StartFailed
from llm_backend.lifecycle import (
    HostPreparation,
    Interrupted,
    Lifecycle,
    StartResult,
    Status,
    log_tail,
)
from llm_backend.monitor import MonitorEvent
from llm_backend.runtimes import get_runtime
from llm_backend.serve import control as serve_control
from llm_backend.state import HOST_JOURNAL_FILE, StateStore

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine, InstallOptions

app = typer.Typer(
    help="Start, watch and stop an OpenAI-compatible LLM server on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
profiles_app = typer.Typer(help="List profiles, or show one with the source of each value.")
engine_app = typer.Typer(help="Install engines.")
app.add_typer(profiles_app, name="profiles")
app.add_typer(engine_app, name="engine")
host_app = typer.Typer(help="Host preparation: the sudoers rules it needs.")
app.add_typer(host_app, name="host")
from llm_backend.cli_router import router_app  # noqa: E402

app.add_typer(router_app, name="router")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def make_lifecycle() -> Lifecycle:
    """The lifecycle with host preparation wired in (imported only when it is used)."""
    return Lifecycle(
        store=StateStore(), host_prep_factory=_host_preparation, host_status=_host_status
    )


def _host_preparation(profile: Profile, store: StateStore) -> HostPreparation:
    from llm_backend.host import host_preparation_factory

    return host_preparation_factory(profile, store)


def _host_status(store: StateStore) -> dict[str, Any] | None:
    if not (store.root / HOST_JOURNAL_FILE).exists():  # nothing in effect: skip the import
        return None
    from llm_backend.host import host_status

    return host_status(store)


def fail(error: BackendError) -> None:
    """Print one error with its remedy, the log tail when there is one, and exit non-zero."""
    # Messages carry user values such as "[profiles.NAME]": never read them as markup.
    err_console.print(Text("error: ", style="red") + Text(error.message), soft_wrap=True)
    tail = error.details.get("log_tail")
    if tail:
        err_console.print(f"[dim]last {len(tail)} log lines:[/dim]")
        for line in tail:
            err_console.print(f"  {line}", markup=False, soft_wrap=True)
    if error.failure_class:
        err_console.print(f"failure: {error.failure_class}")
    if error.details.get("exit_code") is not None:
        err_console.print(f"exit code: {error.details['exit_code']}")
    err_console.print(Text("fix: ", style="green") + Text(error.remedy), soft_wrap=True)
    raise typer.Exit(error.exit_code)


def run_guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except BackendError as error:
        fail(error)
    except (KeyboardInterrupt, Interrupted) as error:
        name = "SIGINT" if isinstance(error, KeyboardInterrupt) else str(error)
        err_console.print(
            f"error: interrupted by {name}; anything this command had started was stopped "
            "and its host changes undone"
        )
        err_console.print("fix: run the command again; `llm-backend status` shows what is running")
        signum = 2 if isinstance(error, KeyboardInterrupt) else error.signum
        raise typer.Exit(128 + signum) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# --- start -------------------------------------------------------------------------------


class StartDisplay:
    """A rich progress line on a terminal; plain timestamped lines otherwise."""

    def __init__(self, profile: str, *, interactive: bool) -> None:
        self.profile = profile
        self.interactive = interactive
        self.progress: Progress | None = None
        self.task: Any = None
        self.last_phase: str | None = None

    def __enter__(self) -> StartDisplay:
        if self.interactive:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=err_console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("load", total=None, phase="launching", eta="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: MonitorEvent) -> None:
        eta = f"ETA {event.eta_s:.0f}s" if event.eta_s is not None else ""
        if event.kind == "phase" and event.phase:
            label = event.phase
            if event.progress:
                label += f" {event.progress[0]}/{event.progress[1]}"
            if self.progress is not None:
                completed = event.progress[0] if event.progress else None
                total = event.progress[1] if event.progress else None
                self.progress.update(
                    self.task, phase=label, eta=eta, total=total, completed=completed or 0
                )
                self.progress.console.print(f"[dim]{event.elapsed_s:6.1f}s[/dim] {label}")
            elif label != self.last_phase:
                err_console.print(
                    f"[{event.elapsed_s:6.1f}s] phase {label}" + (f" ({eta})" if eta else "")
                )
            self.last_phase = label
        elif event.kind == "tick" and self.progress is not None:
            self.progress.update(self.task, eta=eta)
        elif event.kind == "ready":
            if self.progress is not None:  # the same shape as the phase lines above it
                self.progress.console.print(f"[dim]{event.elapsed_s:6.1f}s[/dim] ready")
            else:
                err_console.print(f"[{event.elapsed_s:6.1f}s] ready")


def ensure_llama_server(profile: Profile) -> None:
    """Install the profile's engine first when it needs it (llama.cpp: build llama-server)."""
    engine = get_engine(profile.engine)
    notice = engine.install_needed(profile=profile)
    if notice is None:
        return
    err_console.print(notice)
    _install_engine(engine, profile=profile)


def print_started(result: StartResult) -> None:
    if result.outcome == "already_running":
        console.print(
            f"already {result.state}: {result.profile} ({result.engine}, {result.runtime}) "
            f"at {result.endpoint}, pid {result.pid}"
        )
        return
    console.print(
        f"[green]ready[/green] in {result.duration_s:.1f}s: {result.profile} "
        f"({result.engine}, {result.runtime}), pid {result.pid}"
    )
    for line in result.host_restored:
        console.print(f"host: {line}")
    console.print(f"endpoint: {result.endpoint}/v1")
    console.print(f"model:    {result.served_model_name}")
    console.print("try:")
    body = json.dumps(
        {
            "model": result.served_model_name,
            "messages": [{"role": "user", "content": "Say hello in five words."}],
        }
    )
    console.print(
        f"  curl -s {result.endpoint}/v1/chat/completions "
        f"-H 'Content-Type: application/json' -d '{body}'",
        markup=False,
        soft_wrap=True,
    )


@app.command()
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
) -> None:
    """Start the backend and wait until it answers; prints the endpoint and a curl line."""

    def action() -> None:
        lifecycle = make_lifecycle()
        door = serve_control.running(lifecycle.store)
        if door is not None and not dry_run:
            raise BackendError(
                f"serve (pid {door.pid}, door {door.door}) owns the backend here",
                remedy="use it as is; `llm-backend restart` reloads its backend, "
                "`llm-backend stop` stops both",
            )
        name, auto_runtime = choose_profile_and_runtime(lifecycle, profile)
        overrides: dict[str, Any] = {}
        if runtime is not None:
            overrides["runtime"] = runtime
        elif auto_runtime is not None:
            overrides["runtime"] = auto_runtime
        if port is not None:
            overrides["port"] = port
        if timeout is not None:
            overrides["load_timeout_s"] = timeout
        from llm_backend.cli_router import replicas_wanted, start_replicas

        if replicas_wanted(lifecycle, name, overrides):
            start_replicas(lifecycle, name, overrides, skip_checks or [], dry_run=dry_run)
            return
        run_preflight(
            lifecycle, name, overrides, skip_checks or [],
            host_prep=not no_host_prep, dry_run=dry_run,
        )
        if dry_run:
            result = lifecycle.start(
                profile_name=name, overrides=overrides, dry_run=True, host_prep=not no_host_prep
            )
            console.print(
                f"dry run: {result.profile} ({result.engine}, {result.runtime}) would serve "
                f"{result.served_model_name} at {result.endpoint}; nothing was changed"
            )
            for step in result.plan:
                console.print(f"  {step}", markup=False, soft_wrap=True)
            return
        err_console.print(f"starting {name} ...")
        with StartDisplay(name, interactive=err_console.is_terminal) as display:
            result = lifecycle.start(
                profile_name=name,
                overrides=overrides,
                host_prep=not no_host_prep,
                on_event=display,
                on_notice=lambda text: err_console.print(text),
                ensure_binary=ensure_llama_server,
            )
        print_started(result)

    run_guarded(action)


def choose_profile(lifecycle: Lifecycle, requested: str | None) -> str:
    """The profile to use: the one asked for, the user's default, or the automatic choice."""
    return choose_profile_and_runtime(lifecycle, requested)[0]


def choose_profile_and_runtime(
    lifecycle: Lifecycle, requested: str | None
) -> tuple[str, str | None]:
    """The profile, and the runtime `auto` needs when the profile's own cannot run here."""
    name = requested or lifecycle.config.default_profile() or "auto"
    if name != "auto":
        return name, None
    from llm_backend.doctor import auto_profile

    choice = auto_profile(lifecycle.config)
    for reason in choice.reasons:
        err_console.print(f"[dim]auto: {reason}[/dim]", soft_wrap=True)
    return choice.profile, choice.runtime


def run_preflight(
    lifecycle: Lifecycle,
    name: str,
    overrides: dict[str, Any],
    skip_checks: list[str],
    *,
    host_prep: bool,
    dry_run: bool,
) -> None:
    """The `doctor` checks for the profile `start` is about to run; a failure stops it here.

    Skipped when the backend is already running (start then just reports it). In a dry run
    the checks are shown, not enforced.
    """
    import os

    from llm_backend.doctor import preflight, run_checks, validate_skip
    from llm_backend.lifecycle import ACTIVE_STATES

    skip = validate_skip([*skip_checks, os.environ.get("LLM_BACKEND_SKIP_CHECKS", "")])
    current = lifecycle.refresh()
    if current is not None and current.state in ACTIVE_STATES:
        return
    profile = lifecycle.resolve(name, overrides).profile
    if dry_run:
        report = run_checks(profile, host_prep=host_prep, skip=skip, probe_binaries=False)
        err_console.print("preflight checks (a real start stops at any fail):")
        render_checks(report.checks, target=err_console)
        return
    report = preflight(profile, host_prep=host_prep, skip=skip)
    for check in report.warnings:
        if check.name == "gpu" and not get_engine(profile.engine).profile_needs_gpu(
            profile=profile
        ):
            continue  # a CPU profile does not care
        err_console.print(f"warning: {check.name}: {check.summary}", markup=False,
                          soft_wrap=True)
        if check.fix:
            err_console.print(f"  fix: {check.fix}", markup=False, soft_wrap=True)


# --- status / stop / restart / logs ------------------------------------------------------


def with_serve(store: StateStore, status: Status) -> Status:
    """The status plus the door's view when `serve` runs (the door, counts, last restart)."""
    door = serve_control.running(store)
    if door is None:
        return status
    from dataclasses import replace

    from llm_backend.serve.record import summary

    return replace(status, extra={**status.extra, "serve": summary(door)})


def render_serve(door: dict[str, Any]) -> None:
    line = (f"serve:    door {door['door']} (pid {door['pid']}), backend {door['state']}; "
            f"{door['requests']} requests, {door['held']} held, {door['failed']} failed, "
            f"{door['fallback']} to fallback")
    console.print(line, markup=False, soft_wrap=True)
    if door.get("last_restart"):
        last = door["last_restart"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
        console.print(f"          last restart {when} ({last['reason']}, "
                      f"{last['duration_s']:.1f}s); {door['restarts']} restarts", markup=False)
    if door.get("gave_up") and door.get("last_failure"):
        failure = door["last_failure"]
        console.print(f"          gave up restarting: {failure.get('class')}: "
                      f"{failure.get('message')}", markup=False, soft_wrap=True)
        console.print("fix:      llm-backend logs -n 200, then llm-backend restart", markup=False)


def render_status(status: Status) -> None:
    colour = {"ready": "green", "failed": "red", "loading": "yellow"}.get(status.state, "white")
    console.print(f"state:    [{colour}]{status.state}[/{colour}]")
    if isinstance(status.extra.get("serve"), dict):
        render_serve(status.extra["serve"])
    if status.host_prep:
        render_host_prep(status.host_prep)
    if status.profile is None:
        return
    console.print(f"profile:  {status.profile} ({status.engine}, {status.runtime})")
    console.print(f"endpoint: {status.endpoint}/v1")
    if status.pid:
        console.print(f"pid:      {status.pid}")
    if status.phase and status.state != "ready":
        console.print(f"phase:    {status.phase}")
    if status.models:
        console.print(f"models:   {', '.join(status.models)}")
    if status.health_status is not None:
        console.print(f"health:   {status.health_status} in {status.health_ms} ms")
    if status.uptime_s is not None:
        console.print(f"uptime:   {status.uptime_s:.0f}s")
    if status.last_start_s is not None:
        console.print(f"last start took {status.last_start_s:.1f}s")
    if status.spec:
        console.print(f"spec:     {render_spec(status.spec)}")
    for key, value in status.extra.items():
        if key == "docker" and isinstance(value, dict):
            render_docker(value)
        elif key == "serve":
            continue
        else:
            console.print(f"{key}: {value}", markup=False)
    if status.failure:
        console.print(
            f"failure:  {status.failure.get('class')}: {status.failure.get('message')}",
            markup=False,
        )
        if status.failure.get("remedy"):
            console.print(f"fix:      {status.failure['remedy']}", markup=False)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
) -> None:
    """Show the backend's state; exit 0 only when it is ready (or alive: a follower rank of a
    multi-node model, which serves no API of its own)."""

    def action() -> None:
        lifecycle = make_lifecycle()
        if lifecycle.store.load_instance() is None:
            from llm_backend.cli_router import replica_statuses

            replicas = replica_statuses(lifecycle)
            if replicas:
                if as_json:
                    print_json({"replicas": [replica.to_json() for replica in replicas]})
                else:
                    for index, replica in enumerate(replicas):
                        console.print(f"replica {index}:")
                        render_status(replica)
                raise typer.Exit(0 if all(r.state == "ready" for r in replicas) else 1)
        while True:
            current = with_serve(lifecycle.store, lifecycle.status())
            gpus, ours = gpu_state(lifecycle)
            if as_json:
                from llm_backend.gpu import status_json

                print_json({**current.to_json(), "gpus": status_json(gpus, ours)})
            else:
                if watch:
                    console.clear()
                render_status(current)
                render_gpus(gpus, ours)
            if not watch:
                break
            time.sleep(1.0)
        raise typer.Exit(0 if current.state in ("ready", "alive") else 1)

    run_guarded(action)


@app.command()
def stop(
    force: Annotated[bool, typer.Option("--force", help="SIGKILL at once.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Grace period in seconds before SIGKILL.")
    ] = None,
) -> None:
    """Stop the backend: SIGTERM, grace period, SIGKILL; verify nothing is left."""

    def action() -> None:
        from llm_backend.gpu import process_tree

        lifecycle = make_lifecycle()
        door = serve_control.running(lifecycle.store)
        if door is not None:  # serve owns the backend: it drains, stops it, restores the host
            grace = timeout if timeout is not None else 600.0
            stopped = serve_control.stop(lifecycle.store, door, timeout_s=grace + 60)
            console.print(f"stopped serve (pid {stopped.pid}, door {stopped.door}) and its "
                          f"backend in {stopped.duration_s:.1f}s")
            return
        record = lifecycle.store.load_instance()
        from llm_backend.cli_router import stop_replicas

        if stop_replicas(lifecycle, force=force, grace_s=timeout) and record is None:
            return
        tree = (process_tree(record.pid)
                if record and not get_runtime(record.runtime).in_container else ())
        if record is not None and not force:
            from llm_backend.cluster.distributed import follower_stop_note

            try:
                note = follower_stop_note(lifecycle.resolve(record.profile).profile)
            except BackendError:
                note = None
            if note:
                err_console.print(note, markup=False)
        try:
            outcome = lifecycle.stop(force=force, grace_s=timeout)
        finally:
            report_gpu_leftovers(lifecycle, tree, force=force)
        if not outcome.was_running:
            console.print("nothing was running")
            return
        how = "killed" if outcome.killed else "stopped"
        console.print(f"{how} {outcome.profile} in {outcome.duration_s:.1f}s; no process left")
        if outcome.router:
            from llm_backend.lifecycle import describe_leave

            console.print("  " + describe_leave(outcome.router), markup=False)

    run_guarded(action)


def gpu_state(lifecycle: Lifecycle) -> tuple[Any, list[int]]:
    """NVML's view of the GPUs, and the pids of our server's process tree."""
    from llm_backend.gpu import process_tree, read_gpus

    record = lifecycle.store.load_instance()
    report = read_gpus()
    ours = []
    if report.nvml_available and record is not None and record.pid:
        ours = [owned.pid for owned in process_tree(record.pid)]
    return report, ours


def render_gpus(report: Any, ours: list[int]) -> None:
    """Per GPU: memory (MemAvailable on unified memory), load, temperature, processes."""
    from llm_backend.units import format_bytes as gib

    for device in report.devices:
        if device.unified_memory:
            memory = (f"{gib(device.memory_available_bytes)} MemAvailable of "
                      f"{gib(device.memory_total_bytes)} (unified)")
        else:
            memory = f"{gib(device.memory_used_bytes)} / {gib(device.memory_total_bytes)} used"
        load = "?" if device.utilization_percent is None else f"{device.utilization_percent}%"
        temperature = "?" if device.temperature_c is None else f"{device.temperature_c} C"
        power = "" if device.power_w is None else f", {device.power_w:.0f} W"
        console.print(
            f"gpu {device.index}:    {device.name}: {memory}, {load} busy, {temperature}{power}",
            markup=False, soft_wrap=True,
        )
        for process in device.processes:
            used = gib(process.used_memory_bytes)
            mark = " (ours)" if process.pid in ours else ""
            console.print(
                f"          pid {process.pid} {process.name or '?'} holds {used}{mark}",
                markup=False,
            )


def report_gpu_leftovers(lifecycle: Lifecycle, tree: Any, *, force: bool) -> None:
    """After `stop`: warn about our processes still holding GPU memory; `--force` ends them."""
    from llm_backend.gpu import settle_after_stop

    leftovers = settle_after_stop(lifecycle.store.root, tree, force=force)
    for owned in leftovers.ended:
        err_console.print(f"ended pid {owned.pid} ({owned.name or '?'}), which held GPU memory")
    remaining = leftovers.still_running if force else leftovers.lingering
    for owned in remaining:
        err_console.print(
            f"warning: pid {owned.pid} ({owned.name or '?'}) of the stopped server still holds "
            "GPU memory", markup=False,
        )
    if remaining and not force:
        err_console.print("fix: llm-backend stop --force (ends them by pid)", markup=False)
    elif remaining:
        err_console.print(
            f"fix: they ignored SIGKILL (stuck in the driver?): check `nvidia-smi`; "
            f"pids {' '.join(str(owned.pid) for owned in remaining)}; a reboot frees them",
            markup=False,
        )


@app.command()
def restart() -> None:
    """Stop the backend and start it again with the same profile and options."""

    def action() -> None:
        lifecycle = make_lifecycle()
        door = serve_control.running(lifecycle.store)
        if door is not None:  # serve holds (or falls back) while its backend reloads
            done = serve_control.restart(lifecycle.store, door, timeout_s=3600)
            if done.failure:
                raise BackendError(
                    f"the backend behind serve failed to restart: {done.failure.get('message')}",
                    remedy=str(done.failure.get("remedy") or "llm-backend logs -n 200"),
                )
            console.print(f"restarted {done.profile} behind serve ({done.door}) in "
                          f"{done.duration_s:.1f}s")
            return

        def checks(name: str, overrides: dict[str, Any]) -> None:
            run_preflight(lifecycle, name, overrides, [], host_prep=True, dry_run=False)

        with StartDisplay("restart", interactive=err_console.is_terminal) as display:
            result = lifecycle.restart(
                before_start=checks, on_event=display, ensure_binary=ensure_llama_server,
                on_notice=lambda text: err_console.print(text, markup=False),
            )
        print_started(result)

    run_guarded(action)


@app.command()
def logs(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("-n", help="How many lines to show.")] = 50,
) -> None:
    """Print the backend's log (the last one, even after it stopped)."""

    def action() -> None:
        store = StateStore()
        record = store.load_instance()
        path: Path | None = Path(record.log_path) if record else None
        if path is None:
            candidates = sorted(store.logs_dir().glob("*.log"), key=lambda p: p.stat().st_mtime)
            path = candidates[-1] if candidates else None
        if path is None or not path.exists():
            raise NotRunningError("no log yet: nothing was started", remedy="llm-backend start")
        for line in log_tail(path, lines):
            console.print(line, markup=False, soft_wrap=True)
        if follow:
            from llm_backend.monitor import LogFollower

            follower = LogFollower(path, path.stat().st_size)
            while True:
                for line in follower.read_lines():
                    console.print(line, markup=False, soft_wrap=True)
                time.sleep(0.2)

    run_guarded(action)


# --- chat --------------------------------------------------------------------------------


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
) -> None:
    """Stream one reply from the running backend and print its speed."""
    import httpx

    from llm_backend.client import chat as run_chat

    def action() -> None:
        record = make_lifecycle().running_record()
        try:
            result = run_chat(
                endpoint=record.client_endpoint,
                model=record.served_model_name,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                on_text=write_now,
            )
        except httpx.HTTPError as error:
            raise BackendError(
                f"chat request to {record.endpoint} failed: {error}",
                remedy="llm-backend status; llm-backend logs -n 50",
            ) from None
        sys.stdout.write("\n")
        speed = f"{result.tokens_per_s:.1f} tokens/s" if result.tokens_per_s else "? tokens/s"
        ttft = (
            f", first token after {result.time_to_first_token_s * 1000:.0f} ms"
            if result.time_to_first_token_s is not None
            else ""
        )
        err_console.print(
            f"[dim]{result.completion_tokens} tokens in {result.duration_s:.2f}s: "
            f"{speed}{ttft}[/dim]"
        )

    run_guarded(action)


# --- bench -------------------------------------------------------------------------------


def _ms(value: Any, attribute: str) -> str:
    return f"{getattr(value, attribute) * 1000:.0f}" if value is not None else "-"


def _seconds(value: Any, attribute: str) -> str:
    return f"{getattr(value, attribute):.2f}" if value is not None else "-"


def render_bench_table(report: Any, *, title: str) -> None:
    """One row per concurrency level: throughput, latency percentiles, engine agreement."""
    table = Table(title=title, title_justify="left")
    for column in (
        "conc", "ok/err", "req/s", "out tok/s", "tok/s/req p50",
        "TTFT ms p50/p90/p99", "ITL ms p50/p90/p99", "e2e s p50/p90/p99", "accept", "vs engine",
    ):
        table.add_column(column, justify="right")
    for level in report.levels:
        agreement = level.agreement
        table.add_row(
            str(level.concurrency),
            f"{level.ok}/{level.errors}",
            f"{level.request_throughput:.2f}",
            f"{level.output_tokens_per_s:.1f}",
            f"{level.tokens_per_s.p50:.1f}" if level.tokens_per_s else "-",
            "/".join(_ms(level.ttft_s, key) for key in ("p50", "p90", "p99")),
            "/".join(_ms(level.itl_s, key) for key in ("p50", "p90", "p99")),
            "/".join(_seconds(level.e2e_s, key) for key in ("p50", "p90", "p99")),
            f"{level.acceptance:.0%}" if level.acceptance is not None else "-",
            f"{agreement.median_ratio:.3f}" if agreement else "-",
        )
    console.print(table)
    for level in report.levels:
        for sample in level.error_samples:
            console.print(f"[red]c={level.concurrency} error:[/red] {sample}", soft_wrap=True)


def render_agreement(report: Any) -> None:
    agreement_ok = report.agreement_ok
    if agreement_ok is None:
        console.print("client vs engine tokens/s: the engine reported no timings to compare")
        return
    worst = max(
        (level.agreement.median_ratio for level in report.levels if level.agreement),
        key=lambda ratio: abs(ratio - 1.0),
    )
    verdict = "[green]agree[/green]" if agreement_ok else "[yellow]disagree[/yellow]"
    console.print(
        f"client vs engine tokens/s (median ratio per level, tolerance 5%): {verdict}, "
        f"furthest {worst:.3f}"
    )


def render_ab(result: Any) -> None:
    """Both arms, then the comparison per level, the differing outputs and the warnings."""
    render_bench_table(result.off, title=f"{result.workload}: speculative decoding off")
    render_bench_table(result.on, title=f"{result.workload}: speculative decoding on")
    table = Table(
        title=f"{result.workload}: spec on vs off ({result.rounds} round(s), {result.profile})",
        title_justify="left",
    )
    for column in (
        "conc", "tok/s off", "tok/s on", "speedup", "per-req speedup", "e2e p50 off",
        "e2e p50 on", "latency speedup", "acceptance", "identical",
    ):
        table.add_column(column, justify="right")
    for item in result.comparisons:
        off_level, on_level = result.off.level(item.concurrency), result.on.level(item.concurrency)
        acceptance = (
            f"{item.acceptance:.0%}" if item.acceptance is not None
            else (f"len {item.accept_length:.2f}" if item.accept_length is not None else "-")
        )
        table.add_row(
            str(item.concurrency),
            f"{off_level.output_tokens_per_s:.1f}",
            f"{on_level.output_tokens_per_s:.1f}",
            f"{item.speedup:.2f}x" if item.speedup is not None else "-",
            f"{item.per_request_speedup:.2f}x" if item.per_request_speedup is not None else "-",
            _seconds(off_level.e2e_s, "p50"),
            _seconds(on_level.e2e_s, "p50"),
            f"{item.latency_speedup:.2f}x" if item.latency_speedup is not None else "-",
            acceptance,
            f"{item.identical}/{item.compared}",
        )
    console.print(table)
    for item in result.comparisons:
        for difference in item.differences:
            console.print(
                f"differs: request {difference.index} (c={difference.concurrency}, round "
                f"{difference.round + 1}) at char {difference.position}: "
                f"off {difference.off_excerpt!r} | on {difference.on_excerpt!r}",
                markup=False, soft_wrap=True,
            )
    fraction = result.identical_fraction
    if fraction is not None:
        console.print(f"identical outputs: {fraction:.0%}")
    render_agreement(result.off)
    render_agreement(result.on)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    console.print(f"backend: before {result.backend_before}; after {result.backend_after}")


@app.command()
def bench(
    workload: Annotated[
        str, typer.Option(help="Built-in workload: chat, long, copy or mixed.")
    ] = "chat",
    dataset: Annotated[
        Path | None, typer.Option(help="Your own prompts: JSONL, OpenAI messages per line.")
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Concurrency levels to sweep, comma-separated.")
    ] = "1,4,16",
    requests: Annotated[
        int, typer.Option(help="Requests per concurrency level.", min=1)
    ] = 16,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds per level instead of a request count (cycles the prompts).",
                     min=0.1),
    ] = None,
    ab: Annotated[
        str | None,
        typer.Option("--ab", help="A/B run: 'spec' = speculative decoding off vs on "
                     "(restarts the backend; leaves it as it was)."),
    ] = None,
    rounds: Annotated[
        int, typer.Option(help="With --ab: alternate the arms this many times.", min=1)
    ] = 1,
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="With --ab and a stopped backend: the profile."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every per-request figure here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw tokens/s and latency vs concurrency (PNG).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the prompts and the requests.")] = 1234,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    max_tokens: Annotated[
        int | None, typer.Option(help="Cap every request's output tokens.", min=1)
    ] = None,
) -> None:
    """Measure serving speed of the backend; with --ab spec, speculative decoding off vs on."""
    from llm_backend.bench import Target, parse_levels, run_bench
    from llm_backend.bench.workloads import builtin_workload, load_dataset

    def action() -> None:
        levels = parse_levels(concurrency)
        if ab is not None and ab != "spec":
            raise BackendError(f"--ab {ab!r} is not known; the A/B kind is: spec",
                               remedy="llm-backend bench --ab spec")
        if plot is not None:
            from llm_backend.bench.plot import check_plot_target

            check_plot_target(plot)
        chosen = (
            load_dataset(dataset, seed=seed) if dataset is not None
            else builtin_workload(workload, count=requests, seed=seed)
        )
        if max_tokens is not None:
            chosen = chosen.capped(max_tokens)
        lifecycle = make_lifecycle()
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"),
            TextColumn("/ {task.total}"), TimeElapsedColumn(),
            console=err_console, transient=True, disable=not err_console.is_terminal,
        )
        tasks: dict[str, Any] = {}

        def on_progress(description: str, done: int, total: int | None) -> None:
            if description not in tasks:
                tasks[description] = progress.add_task(description, total=total)
            progress.update(tasks[description], completed=done)

        def on_notice(text: str) -> None:
            progress.console.print(f"[dim]{text}[/dim]")

        if ab is None:
            record = lifecycle.running_record()
            overrides = record.runtime_info.get("overrides") or {}
            try:
                speculative: bool | None = lifecycle.resolve(
                    record.profile, overrides
                ).profile.speculative.enabled
            except BackendError:
                speculative = None
            target = Target(
                endpoint=record.client_endpoint, model=record.served_model_name,
                profile=record.profile, engine=record.engine, speculative=speculative,
            )
            with progress:
                report = run_bench(
                    target, chosen, levels=levels, requests_per_level=requests,
                    duration_s=duration, temperature=temperature, seed=seed,
                    on_progress=on_progress,
                )
            if report.levels and all(level.ok == 0 for level in report.levels):
                raise BackendError(
                    f"every bench request to {target.endpoint} failed: "
                    f"{'; '.join(report.levels[0].error_samples)}",
                    remedy="llm-backend status; llm-backend logs -n 50",
                )
            render_bench_table(report, title=f"{chosen.name} on {record.profile}")
            render_agreement(report)
            document: dict[str, Any] = report.to_json()
            series = [(record.profile, report)]
            title = f"{chosen.name} on {record.profile}"
        else:
            from llm_backend.bench.ab import run_ab

            current = lifecycle.refresh()
            name = profile or (
                current.profile if current is not None else choose_profile(lifecycle, None)
            )
            with progress:
                result = run_ab(
                    lifecycle, chosen, levels=levels, requests_per_level=requests,
                    duration_s=duration, rounds=rounds, profile_name=name,
                    temperature=temperature, seed=seed, on_progress=on_progress,
                    on_notice=on_notice, ensure_binary=ensure_llama_server,
                )
            render_ab(result)
            document = result.to_json()
            series = [("spec off", result.off), ("spec on", result.on)]
            title = f"{chosen.name} on {result.profile}: speculative decoding off vs on"
        if json_path is not None:
            json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
            console.print(f"wrote {json_path}")
        if plot is not None:
            from llm_backend.bench.plot import plot_reports

            plot_reports(series, plot, title=title)
            console.print(f"wrote {plot}")

    run_guarded(action)


# --- profiles ----------------------------------------------------------------------------


@profiles_app.callback(invoke_without_command=True)
def profiles_list(ctx: typer.Context) -> None:
    """List every profile and where it is defined."""
    if ctx.invoked_subcommand is not None:
        return

    def action() -> None:
        config = load_config()
        table = Table("profile", "engine", "runtime", "source", "description")
        default = config.default_profile()
        for name in config.profile_names():
            try:
                profile = config.resolve(name).profile
            except BackendError as error:
                table.add_row(name, "?", "?", config.source_of(name), f"invalid: {error.message}")
                continue
            marker = " (default)" if name == default else ""
            table.add_row(
                name + marker, profile.engine, profile.runtime, config.source_of(name),
                profile.description,
            )
        console.print(table)

    run_guarded(action)


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print every effective value of a profile and where it came from."""

    def action() -> None:
        from llm_backend.credentials import mask_flat

        resolved = load_config().resolve(name)
        flat = mask_flat(flatten(resolved.profile))
        if as_json:
            print_json(
                {
                    key: {"value": value, "source": resolved.sources.get(key, "default")}
                    for key, value in flat.items()
                }
            )
            return
        table = Table("key", "value", "source", title=f"profile {name}")
        for key, value in flat.items():
            table.add_row(key, json.dumps(value), resolved.sources.get(key, "default"))
        console.print(table)
        if len(resolved.chain) > 1:
            console.print(f"extends: {' -> '.join(resolved.chain)}")

    run_guarded(action)


# --- engine install ----------------------------------------------------------------------


def _install_engine(
    engine: Engine, *, options: InstallOptions | None = None, profile: Profile | None = None
) -> None:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as progress:
        label = engine.install_names[0] if engine.install_names else engine.name
        task = progress.add_task(label, total=100)
        last_step: list[str] = [""]

        def on_progress(step: str, fraction: float | None) -> None:
            progress.update(
                task, description=step,
                completed=(fraction or 0) * 100 if fraction is not None else None,
            )
            if step != last_step[0]:
                last_step[0] = step
                if not err_console.is_terminal:
                    err_console.print(f"{label}: {step}")

        result = engine.install(on_progress=on_progress, options=options, profile=profile)
    what = result.binary.name + (f" ({result.variant})" if result.variant else "")
    if result.built:
        console.print(f"built {what} in {result.duration_s:.0f}s: {result.binary}")
    else:
        console.print(f"{what} already installed: {result.binary}")


@engine_app.command("install")
def engine_install(
    name: Annotated[str, typer.Argument(help="Engine to install: llama.cpp")],
    cuda: Annotated[
        bool | None,
        typer.Option(
            "--cuda/--cpu",
            help="Build for an NVIDIA GPU (llama.cpp: -DGGML_CUDA=ON) or for the CPU. "
            "Default: CUDA when nvcc and an NVIDIA GPU are found.",
        ),
    ] = None,
    cuda_arch: Annotated[
        str | None,
        typer.Option(
            "--cuda-arch",
            help="GPU architectures (CMAKE_CUDA_ARCHITECTURES), e.g. 90 for H100/H200. "
            "Default: this machine's GPUs.",
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="A local source (llama.cpp: the llama-cpp-python sdist or a llama.cpp "
            "folder) instead of a download.",
        ),
    ] = None,
) -> None:
    """Build llama.cpp's llama-server into the user's cache (a no-op when it is there)."""

    def action() -> None:
        from llm_backend.engines import REGISTRY, installable_engine

        engine = installable_engine(name)
        if engine is None:
            names = [item.install_names[0] for item in REGISTRY.all() if item.install_names]
            raise BackendError(
                f"cannot install engine {name!r}; installable: {', '.join(names)}",
                remedy=f"llm-backend engine install {names[0]} (other engines come as a Docker "
                "image or a Python package: see `llm-backend doctor`)",
            )
        from llm_backend.engines.base import InstallOptions

        accelerator = None if cuda is None else ("cuda" if cuda else "cpu")
        options = InstallOptions(accelerator=accelerator, architectures=cuda_arch, source=source)
        _install_engine(engine, options=options)

    run_guarded(action)


# --- pull --------------------------------------------------------------------------------


class PullDisplay:
    """One progress bar per artifact on a terminal (bytes, rate, ETA); plain lines otherwise."""

    def __init__(self) -> None:
        from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

        self.terminal = err_console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=err_console,
            disable=not self.terminal,
        )
        self.tasks: dict[str, Any] = {}
        self.last_line: dict[str, float] = {}

    def __enter__(self) -> PullDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def __call__(self, event: Any) -> None:
        from llm_backend.units import format_bytes

        task = self.tasks.get(event.artifact)
        if task is None:
            task = self.progress.add_task(event.artifact, total=event.total)
            self.tasks[event.artifact] = task
        self.progress.update(task, completed=event.done, total=event.total)
        if self.terminal:
            return
        now = time.monotonic()
        if event.finished or now - self.last_line.get(event.artifact, 0.0) >= 5.0:
            self.last_line[event.artifact] = now
            if event.unit == "%":
                amount = f"{event.done}%"
            else:
                total = format_bytes(event.total, unknown="unknown size")
                amount = f"{format_bytes(event.done)} of {total}"
            note = f" ({event.message})" if event.message else ""
            state = "done" if event.finished else amount
            err_console.print(f"pull: {event.artifact}: {state}{note}", soft_wrap=True,
                              markup=False)


def render_artifacts(artifacts: Any) -> None:
    from llm_backend.units import format_bytes

    for artifact in artifacts:
        mark = "[green]present[/green]" if artifact.present else "[yellow]missing[/yellow]"
        size = format_bytes(artifact.bytes, unknown="unknown size")
        still = ""
        if not artifact.present and artifact.missing_bytes:
            still = f", {format_bytes(artifact.missing_bytes)} to download"
        console.print(f"  {artifact.kind:<11} {mark} {artifact.name} ({size}{still})",
                      soft_wrap=True)
        console.print(Text(f"              {artifact.location}", style="dim"), soft_wrap=True)
        if artifact.detail and not artifact.present:
            console.print(Text(f"              {artifact.detail}", style="dim"), soft_wrap=True)


@app.command()
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

    def action() -> None:
        lifecycle = make_lifecycle()
        name, auto_runtime = choose_profile_and_runtime(lifecycle, profile)
        chosen_runtime = runtime or auto_runtime
        overrides = {"runtime": chosen_runtime} if chosen_runtime else None
        resolved = lifecycle.resolve(name, overrides).profile
        sources = pulling.sources_for(resolved)
        if dry_run:
            planned = pulling.plan(resolved.name, sources)
            if as_json:
                print_json(planned.to_json())
            else:
                console.print(f"pull --dry-run: {resolved.name} ({resolved.runtime})")
                render_artifacts(planned.artifacts)
            raise typer.Exit(0)
        with PullDisplay() as display:
            result = pulling.pull(resolved.name, sources, progress=display)
        if as_json:
            print_json(result.to_json())
            return
        console.print(f"pull: {resolved.name}: everything is present"
                      + (f" (fetched {', '.join(result.fetched)})" if result.fetched else ""))
        render_artifacts(result.after)

    run_guarded(action)


# --- doctor ------------------------------------------------------------------------------

CHECK_COLOURS = {"pass": "green", "warn": "yellow", "fail": "red", "skipped": "magenta"}


def render_checks(checks: Any, *, indent: str = "  ", target: Console | None = None) -> None:
    """One line per check (`pass  name  summary`), and a `fix:` line under warn and fail."""
    from rich.markup import escape

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


@app.command()
def doctor(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to check, or 'auto'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check that this machine can run a profile: GPU, memory, disk, Docker, port, model files."""
    from llm_backend.doctor import auto_profile, run_checks
    from llm_backend.hardware import describe_host

    def action() -> None:
        config = load_config()
        name = profile or config.default_profile() or "auto"
        choice = None
        if name == "auto":
            choice = auto_profile(config, describe_host())
            name = choice.profile
        overrides = {"runtime": choice.runtime} if choice and choice.runtime else None
        resolved = config.resolve(name, overrides).profile
        report = run_checks(resolved, with_hardware=True, auto=choice)
        if as_json:
            print_json(report.to_json())
        else:
            console.print(f"doctor: {report.profile} ({report.engine}, {report.runtime})")
            for reason in choice.reasons if choice else ():
                console.print(f"  [dim]auto: {reason}[/dim]", soft_wrap=True)
            render_checks(report.checks)
            counts = report.counts()
            verdict = "[green]ok[/green]" if report.ok else "[red]not ready[/red]"
            console.print(
                f"{verdict}: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
                + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
                + f" ({report.duration_s:.1f}s)"
            )
        raise typer.Exit(0 if report.ok else 1)

    run_guarded(action)


# --- host preparation: recovery first, `recover`, `host sudoers` -------------------------


@app.callback()
def before_every_command(ctx: typer.Context) -> None:
    # Every command first finishes a host preparation whose `start` died (journal in the
    # state dir): same boot, undo it; after a reboot, only clean up the swap file.
    if ctx.resilient_parsing or ctx.invoked_subcommand in ("recover", "host"):
        return
    try:
        store = StateStore()
    except BackendError as error:  # a state dir that cannot be used or trusted
        fail(error)
    if not (store.root / HOST_JOURNAL_FILE).exists():  # no journal: nothing to finish
        return
    try:
        from llm_backend.host import recover as recover_host
    except ImportError:
        return
    try:
        report = recover_host(store, retry_left_on=False)
    except (BackendError, OSError) as error:
        message = error.message if isinstance(error, BackendError) else str(error)
        err_console.print(
            f"warning: could not undo an interrupted host preparation: {message}", soft_wrap=True
        )
        err_console.print("fix: llm-backend recover (as root, or with the sudoers rules)")
        return
    if report.found and report.busy_pid is None and (report.restored or report.errors):
        print_recovery(report, to=err_console)


def print_recovery(report: Any, *, to: Console) -> None:
    """What recovery found and undid, one line each."""
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


def render_host_prep(host_prep: dict[str, Any]) -> None:
    steps = ", ".join(f"{name} {state}" for name, state in host_prep.get("steps", {}).items())
    owner = " (in progress)" if host_prep.get("in_progress") else ""
    console.print(f"host:     {host_prep.get('phase')}{owner}: {steps or 'no steps'}")
    if host_prep.get("warning"):
        console.print(f"warning:  {host_prep['warning']}", markup=False, soft_wrap=True)


@app.command()
def recover(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    swapoff_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to let swapoff run (instead of the journaled deadline)."),
    ] = None,
) -> None:
    """Undo host changes left by a `start` that was killed, and report what was restored."""

    def action() -> None:
        from llm_backend.errors import HostPrepError
        from llm_backend.host import recover as recover_host

        report = recover_host(StateStore(), swapoff_timeout_s=swapoff_timeout)
        if as_json:
            print_json(report.to_json())
        elif not report.found:
            console.print("nothing to recover: no unfinished host preparation")
        elif report.busy_pid is not None:
            console.print(
                f"host preparation is in progress (pid {report.busy_pid}, profile "
                f"{report.profile}); nothing to recover"
            )
        else:
            print_recovery(report, to=console)
        if report.errors:
            raise HostPrepError(
                "recovery could not undo every host change: " + "; ".join(report.errors),
                remedy="fix the cause named above, then run `llm-backend recover` again",
            )
        if report.left_on:
            raise typer.Exit(1)

    run_guarded(action)


@host_app.command("sudoers")
def host_sudoers(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile whose swap file to allow.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="User to allow (default: you).")] = None,
) -> None:
    """Print a minimal sudoers file (exact commands) for host preparation without root."""

    def action() -> None:
        import getpass
        import os

        from llm_backend.host import sudoers_text

        lifecycle = make_lifecycle()
        name = choose_profile(lifecycle, profile)
        resolved = lifecycle.resolve(name).profile
        who = user or os.environ.get("SUDO_USER") or getpass.getuser()
        sys.stdout.write(sudoers_text(resolved, who))

    run_guarded(action)


# --- compose (the Docker runtime's file) -------------------------------------------------


def render_docker(facts: dict[str, Any]) -> None:
    """The container line of `status` for the docker runtime."""
    if "error" in facts:
        console.print(f"docker:   {facts['error']}", markup=False, soft_wrap=True)
        return
    health = f", {facts['health']}" if facts.get("health") else ""
    if facts.get("exit_code") is not None:
        health += f", exit code {facts['exit_code']}"
    adopted = ", adopted" if facts.get("adopted") else ""
    console.print(
        f"docker:   container {facts.get('container')} ({facts.get('state')}{health}{adopted}), "
        f"image {facts.get('image')}",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"compose:  {facts.get('compose_file')} (project {facts.get('project')}, "
        f"{facts.get('compose')})",
        markup=False,
        soft_wrap=True,
    )


@app.command()
def compose(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile name (default: the default).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; default: stdout.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
) -> None:
    """Write the profile's docker-compose.yml: the file `start --runtime docker` runs."""

    def action() -> None:
        from llm_backend.engines import get_engine
        from llm_backend.runtimes.compose import build_compose

        lifecycle = make_lifecycle()
        name = choose_profile(lifecycle, profile)
        overrides: dict[str, Any] = {"runtime": "docker"}
        if port is not None:
            overrides["port"] = port
        resolved = lifecycle.resolve(name, overrides).profile
        engine = get_engine(resolved.engine)
        engine.check_profile(profile=resolved, for_container=True)
        argv = engine.build_argv(profile=resolved, for_container=True)
        document = build_compose(profile=resolved, argv=argv, health_path=engine.health_path)
        if output is None:
            sys.stdout.write(document.text())
            return
        document.write(output)
        console.print(
            f"wrote {output}: project {document.project}, container {document.container_name}, "
            f"image {document.image}, port {document.port}",
            markup=False,
            soft_wrap=True,
        )
        console.print(f"run it by hand: docker compose -f {output} up -d", markup=False)

    run_guarded(action)


# --- diagnose ----------------------------------------------------------------------------


def render_spec(spec: dict[str, Any]) -> str:
    """`accept length 2.17, accept rate 0.54, gen throughput 178.9 tok/s (log)`."""
    parts = []
    if spec.get("accept_length") is not None:
        parts.append(f"accept length {spec['accept_length']:.2f}")
    if spec.get("accept_rate") is not None:
        parts.append(f"accept rate {spec['accept_rate']:.2f}")
    if spec.get("gen_throughput") is not None:
        parts.append(f"gen throughput {spec['gen_throughput']:.1f} tok/s")
    text = ", ".join(parts) or "no figures yet"
    return text + (f" ({spec['source']})" if spec.get("source") else "")


@app.command()
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

    def action() -> None:
        if engine is not None:
            from llm_backend.engines import REGISTRY

            problem = REGISTRY.unknown(engine)
            if problem:
                raise BackendError(
                    f"{problem}; diagnose reads those engines' logs",
                    remedy="pass --engine with one of those, or leave it out to guess",
                )
        if logfile == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(logfile)
            if not path.is_file():
                raise BackendError(
                    f"log file {logfile} does not exist",
                    remedy="pass a saved log (`llm-backend logs -n 1000 > server.log`) or - "
                    "to read stdin",
                )
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        result = diagnose_lines(lines, engine)
        if as_json:
            print_json(result.to_json())
        else:
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
        raise typer.Exit(0 if result.ready and result.failure is None else 1)

    run_guarded(action)


# --- serve and service --------------------------------------------------------------------

service_app = typer.Typer(help="A systemd unit that runs `llm-backend serve` at boot.")
app.add_typer(service_app, name="service")


@app.command()
def serve(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile name, or 'auto'.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="The door's port (clients use it).")] = None,
) -> None:
    """Run the front door and supervisor in the foreground until SIGTERM or `stop`."""

    def action() -> None:
        from llm_backend.serve import daemon

        lifecycle = make_lifecycle()
        name = choose_profile(lifecycle, profile)
        serve_plan = daemon.plan(lifecycle, name, port)

        def line(text: str) -> None:
            err_console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False,
                              soft_wrap=True)

        code = daemon.run(lifecycle, serve_plan, on_line=line,
                          ensure_binary=ensure_llama_server)
        raise typer.Exit(code)

    run_guarded(action)


@service_app.command("install")
def service_install(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile the service serves.")
    ] = None,
    unit_dir: Annotated[
        Path, typer.Option(help="Where to write the unit.", hidden=True)
    ] = Path("/etc/systemd/system"),
) -> None:
    """Write, verify and enable llm-backend.service (runs `serve` at boot, as root)."""

    def action() -> None:
        import os

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
        console.print(f"wrote {result.unit_path} (systemd-analyze verify: ok)"
                      + ("; enabled" if result.enabled else ""))
        for note in result.notes:
            console.print(note, markup=False)

    run_guarded(action)


@service_app.command("uninstall")
def service_uninstall(
    unit_dir: Annotated[
        Path, typer.Option(help="Where the unit is.", hidden=True)
    ] = Path("/etc/systemd/system"),
) -> None:
    """Disable and remove llm-backend.service (only the unit `service install` wrote)."""

    def action() -> None:
        from llm_backend.serve import service

        result = service.uninstall(unit_dir=unit_dir)
        if result.action == "absent":
            console.print(f"no unit at {result.unit_path}")
        else:
            console.print(f"removed {result.unit_path}")

    run_guarded(action)


def main() -> None:
    try:
        app()
    except StartFailed as error:  # pragma: no cover - typer handles exits itself
        fail(error)
