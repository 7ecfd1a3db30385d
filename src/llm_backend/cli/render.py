"""Renderers: the only code of the tool that prints.

Each takes a typed result of the library (a frozen dataclass) and writes it as rich text to
stdout, or as JSON with `print_json`. Progress displays and notices go to stderr, so that
stdout stays the answer of the command.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from llm_backend.errors import BackendError

if TYPE_CHECKING:
    from llm_backend.client import ChatResult
    from llm_backend.gpu import GpuLeftovers, GpuReport
    from llm_backend.hardware import ProfileChoice
    from llm_backend.lifecycle import StartResult, Status, StopOutcome
    from llm_backend.monitor import MonitorEvent
    from llm_backend.pull import LocalReport
    from llm_backend.serve.control import ServeRestart, ServeStop
    from llm_backend.serve.service import ServiceResult
    from llm_backend.state import DamagedFile

# Wide enough that no value of ours is ever cut or wrapped; rich only lays out what it prints.
UNBOUNDED_WIDTH = 100_000


class _Console(Console):
    """A rich Console that, writing to a pipe or a file, never cuts a value short.

    rich lays tables and long lines out for 80 columns (or the size of whatever terminal
    stdin is) when its stream is no terminal, cutting values with an ellipsis and wrapping
    lines mid-value; output that is piped or captured must keep every value whole, so it
    gets no width limit. A terminal keeps its own width.
    """

    @property
    def size(self) -> ConsoleDimensions:
        dimensions = super().size
        if self.is_terminal:
            return dimensions
        return ConsoleDimensions(UNBOUNDED_WIDTH, dimensions.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size  # as rich's own setter


console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)


# --- plain output ------------------------------------------------------------------------


def print_json(data: object) -> None:
    """The `--json` shape: indented, keys sorted, anything else as its `str`."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_json_line(data: object) -> None:
    """One JSON Lines record: compact, keys sorted, on one line, flushed at once (a `--watch`
    reader sees each as it comes, through a pipe too)."""
    sys.stdout.write(json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
                     + "\n")
    sys.stdout.flush()


def print_raw(text: str) -> None:
    """Text exactly as given (a sudoers file, a compose file), on stdout."""
    sys.stdout.write(text)


def stream_text(text: str) -> None:
    """A piece of a streamed reply, shown at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def print_line(text: str) -> None:
    """One line of the command's answer, never read as markup."""
    console.print(text, markup=False, soft_wrap=True)


def notice(text: str) -> None:
    """A remark on stderr (what the command does while it waits); `[dim]` markup allowed."""
    err_console.print(text, soft_wrap=True)


def notice_plain(text: str) -> None:
    """A remark on stderr, never read as markup."""
    err_console.print(text, markup=False)


def wrote(path: object) -> None:
    console.print(f"wrote {path}")


# --- errors and interruptions ------------------------------------------------------------


def render_damaged(damaged: Sequence[DamagedFile]) -> None:
    """State files found damaged and moved aside: `error:` and `fix:` each, on stderr."""
    for item in damaged:
        error = item.to_error()
        err_console.print(Text("error: ", style="red") + Text(error.message), soft_wrap=True)
        err_console.print(Text(f"fix: {error.remedy}"), soft_wrap=True)


def render_error(error: BackendError) -> None:
    """`error:` with the value, the log tail when there is one, then `fix:`."""
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


def render_usage_error(message: str, fix: str) -> None:
    """A command line typer could not parse: the same `error:` + `fix:` shape as the rest."""
    err_console.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
    err_console.print(Text("fix: ", style="green") + Text(fix), soft_wrap=True)


def render_interrupted(name: str) -> None:
    err_console.print(
        f"error: interrupted by {name}; anything this command had started was stopped "
        "and its host changes undone"
    )
    err_console.print("fix: run the command again; `llm-backend status` shows what is running")


# --- start / restart ---------------------------------------------------------------------


class StartDisplay:
    """A rich progress line on a terminal; plain timestamped lines otherwise."""

    def __init__(self, profile: str, *, interactive: bool | None = None) -> None:
        self.profile = profile
        self.interactive = err_console.is_terminal if interactive is None else interactive
        self.progress: Progress | None = None
        self.task: TaskID | None = None
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: MonitorEvent) -> None:
        eta = f"ETA {event.eta_s:.0f}s" if event.eta_s is not None else ""
        if event.kind == "phase" and event.phase:
            label = event.phase
            if event.progress:
                label += f" {event.progress[0]}/{event.progress[1]}"
            if self.progress is not None and self.task is not None:
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
        elif event.kind == "tick" and self.progress is not None and self.task is not None:
            self.progress.update(self.task, eta=eta)
        elif event.kind == "ready":
            if self.progress is not None:  # the same shape as the phase lines above it
                self.progress.console.print(f"[dim]{event.elapsed_s:6.1f}s[/dim] ready")
            else:
                err_console.print(f"[{event.elapsed_s:6.1f}s] ready")


def render_auto_reasons(choice: ProfileChoice, *, to_stderr: bool) -> None:
    """Why `auto` chose its profile, one dim line each."""
    for reason in choice.reasons:
        if to_stderr:
            err_console.print(f"[dim]auto: {reason}[/dim]", soft_wrap=True)
        else:
            console.print(f"  [dim]auto: {reason}[/dim]", soft_wrap=True)


def render_starting(name: str) -> None:
    err_console.print(f"starting {name} ...")


def render_dry_run(result: StartResult) -> None:
    if result.refusal is not None:  # the error itself follows on stderr
        console.print(
            f"dry run: {result.profile} ({result.engine}, {result.runtime}) would NOT start: "
            f"a preflight check fails (model {result.served_model_name}, endpoint "
            f"{result.endpoint}); nothing was changed"
        )
    else:
        console.print(
            f"dry run: {result.profile} ({result.engine}, {result.runtime}) would serve "
            f"{result.served_model_name} at {result.endpoint}; nothing was changed"
        )
    for step in result.plan:
        console.print(f"  {step}", markup=False, soft_wrap=True)


def render_started(result: StartResult) -> None:
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
    key = (f'-H "Authorization: Bearer $(cat {result.client_key_file})" '
           if result.client_key_file else "")  # the key's path, never the key
    console.print(
        f"  curl -s {result.endpoint}/v1/chat/completions {key}"
        f"-H 'Content-Type: application/json' -d '{body}'",
        markup=False,
        soft_wrap=True,
    )


def render_replica_dry_run(index: int, result: StartResult) -> None:
    console.print(f"dry run: replica {index} would serve at {result.endpoint}: "
                  + " ".join(result.argv), markup=False, soft_wrap=True)


def render_replicas_started(results: Iterable[StartResult]) -> None:
    for index, result in enumerate(results):
        console.print(
            f"replica {index}: {result.state} in {result.duration_s or 0:.1f}s at "
            f"{result.endpoint} (pid {result.pid})", markup=False,
        )


def render_replicas_stopped(outcomes: Iterable[StopOutcome]) -> None:
    from llm_backend.lifecycle import describe_leave

    for index, outcome in enumerate(outcomes):
        how = "killed" if outcome.killed else "stopped"
        console.print(f"replica {index}: {how} in {outcome.duration_s:.1f}s")
        if outcome.router:
            console.print("  " + describe_leave(outcome.router), markup=False)


def render_replica_statuses(replicas: Iterable[Status]) -> None:
    for index, replica in enumerate(replicas):
        console.print(f"replica {index}:")
        render_status(replica)


# --- status / stop / logs / chat ---------------------------------------------------------


def render_spec(spec: Mapping[str, object]) -> str:
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


def render_host_prep(host_prep: Mapping[str, object]) -> None:
    steps_value = host_prep.get("steps", {})
    steps_map = steps_value if isinstance(steps_value, Mapping) else {}
    steps = ", ".join(f"{name} {state}" for name, state in steps_map.items())
    owner = " (in progress)" if host_prep.get("in_progress") else ""
    console.print(f"host:     {host_prep.get('phase')}{owner}: {steps or 'no steps'}")
    if host_prep.get("warning"):
        console.print(f"warning:  {host_prep['warning']}", markup=False, soft_wrap=True)


def render_docker(facts: Mapping[str, object]) -> None:
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


def render_serve(door: Mapping[str, object]) -> None:
    """The `serve:` lines of `status`: the door, its counts, the last restart, a give-up."""
    line = (f"serve:    door {door['door']} (pid {door['pid']}), backend {door['state']}; "
            f"{door['requests']} requests, {door['held']} held, {door['failed']} failed, "
            f"{door['fallback']} to fallback")
    console.print(line, markup=False, soft_wrap=True)
    last = door.get("last_restart")
    if last and isinstance(last, Mapping):
        at = last.get("at")
        when = time.strftime("%Y-%m-%d %H:%M:%S",
                             time.localtime(at if isinstance(at, int | float) else None))
        console.print(f"          last restart {when} ({last['reason']}, "
                      f"{last['duration_s']:.1f}s); {door['restarts']} restarts", markup=False)
    failure = door.get("last_failure")
    if door.get("gave_up") and failure and isinstance(failure, Mapping):
        console.print(f"          gave up restarting: {failure.get('class')}: "
                      f"{failure.get('message')}", markup=False, soft_wrap=True)
        console.print("fix:      llm-backend logs -n 200, then llm-backend restart", markup=False)


def render_serve_stopped(stopped: ServeStop) -> None:
    console.print(f"stopped serve (pid {stopped.pid}, door {stopped.door}) and its "
                  f"backend in {stopped.duration_s:.1f}s")


def render_serve_restarted(done: ServeRestart) -> None:
    console.print(f"restarted {done.profile} behind serve ({done.door}) in "
                  f"{done.duration_s:.1f}s")


def render_serve_line(text: str) -> None:
    """One line of `serve`'s running account, with the time of day."""
    err_console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, soft_wrap=True)


def render_service_installed(result: ServiceResult) -> None:
    console.print(f"wrote {result.unit_path} (systemd-analyze verify: ok)"
                  + ("; enabled" if result.enabled else ""))
    for note in result.notes:
        console.print(note, markup=False)


def render_service_uninstalled(result: ServiceResult) -> None:
    if result.action == "absent":
        console.print(f"no unit at {result.unit_path}")
    else:
        console.print(f"removed {result.unit_path}")


def render_status(status: Status, *, clear: bool = False) -> None:
    if clear:
        console.clear()
    colour = {"ready": "green", "failed": "red", "loading": "yellow"}.get(status.state, "white")
    console.print(f"state:    [{colour}]{status.state}[/{colour}]")
    serve = status.extra.get("serve")
    if isinstance(serve, Mapping):
        render_serve(serve)
    if status.host_prep:
        render_host_prep(status.host_prep)
    if status.profile is not None:
        _render_backend(status)
    if status.artifacts is not None:
        render_local_report(status.artifacts)


def _render_backend(status: Status) -> None:
    console.print(f"profile:  {status.profile} ({status.engine}, {status.runtime})")
    via_door = " (the door of `serve`)" if "serve" in status.extra else ""
    console.print(f"endpoint: {status.endpoint}/v1{via_door}")
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
        if key == "docker" and isinstance(value, Mapping):
            render_docker(value)
        elif key == "serve":
            continue
        elif key == "backend_endpoint":
            console.print(f"backend:  {value}/v1 (behind the door; chat and bench take "
                          "--direct to use it)", markup=False)
        elif key == "router" and isinstance(value, dict):
            console.print(f"router:   joined {value.get('router_url')} as "
                          f"{value.get('worker_url')}", markup=False)
        else:
            console.print(f"{key}: {value}", markup=False)
    if status.failure:
        console.print(
            f"failure:  {status.failure.get('class')}: {status.failure.get('message')}",
            markup=False,
        )
        if status.failure.get("remedy"):
            console.print(f"fix:      {status.failure['remedy']}", markup=False)


def render_local_report(report: LocalReport) -> None:
    """The `pulled:` lines of `status` and `doctor`: each artifact present, partial or
    missing, with sizes, and the pull command that brings in what is missing."""
    from llm_backend.units import format_bytes

    about = f"{report.profile} ({report.runtime})" if report.runtime else str(report.profile)
    if report.error:
        console.print(f"pulled:   {about}: cannot tell: {report.error}", markup=False,
                      soft_wrap=True)
        if report.remedy:
            console.print(f"fix:      {report.remedy}", markup=False, soft_wrap=True)
        return
    if not report.artifacts:
        console.print(f"pulled:   {about} needs nothing pulled", markup=False)
        return
    verdict = (f"{len(report.missing)} of {len(report.artifacts)} missing" if report.missing
               else "everything present")
    basis = ("judged from the local cache" if report.judged_from == "local cache"
             else "as `llm-backend pull --dry-run` sees it")
    console.print(f"pulled:   {about}: {verdict} ({basis})", markup=False,
                  soft_wrap=True)
    colours = {"present": "green", "partial": "yellow", "missing": "red"}
    for artifact in report.artifacts:
        state = artifact.state
        if state == "present":
            size = format_bytes(artifact.bytes, unknown="size unknown")
        elif state == "partial":
            here = format_bytes(artifact.cached_bytes)
            size = (f"{here} of {format_bytes(artifact.bytes)} here" if artifact.bytes
                    else f"{here} here, the whole size unknown")
        else:
            size = (f"{format_bytes(artifact.missing_bytes)} to download"
                    if artifact.missing_bytes else "size unknown")
        line = Text(f"  {artifact.kind:<11} ")
        line.append(f"{state:<8}", style=colours[state])
        line.append(f" {artifact.name} ({size})")
        console.print(line, soft_wrap=True)
        if state != "present":
            console.print(Text(f"              in {artifact.location}", style="dim"),
                          soft_wrap=True)
            if artifact.detail:
                console.print(Text(f"              {artifact.detail}", style="dim"),
                              soft_wrap=True)
    if report.fix:
        console.print(f"fix:      {report.fix}", markup=False, soft_wrap=True)


def render_gpus(report: GpuReport, ours: Iterable[int]) -> None:
    """Per GPU: memory (MemAvailable on unified memory), load, temperature, processes."""
    from llm_backend.units import format_bytes as gib

    ours = set(ours)
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


def render_stopped(outcome: StopOutcome) -> None:
    if not outcome.was_running:
        console.print("nothing was running")
        return
    how = "killed" if outcome.killed else "stopped"
    what = outcome.profile or (
        "the start in progress" if outcome.cancelled_start
        else "processes launched from this state dir without a record "
        f"({', '.join(outcome.unrecorded)})"
    )
    if outcome.cancelled_start and outcome.profile:
        how = f"cancelled the start in progress and {how}"
    console.print(f"{how} {what} in {outcome.duration_s:.1f}s; no process left")
    if outcome.router:
        from llm_backend.lifecycle import describe_leave

        console.print("  " + describe_leave(outcome.router), markup=False)


def render_gpu_leftovers(leftovers: GpuLeftovers, *, force: bool) -> None:
    """After `stop`: our processes still holding GPU memory; what `--force` ended."""
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


def render_log_lines(lines: Iterable[str]) -> None:
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


def chat_speed_line(result: ChatResult) -> str:
    """`24 tokens in 1.20s (20.0 tokens/s), first token after 310 ms`; no rate for one token
    (`ChatResult.tokens_per_s`), `reply in 1.20s` when the server counted no tokens."""
    tokens = result.completion_tokens
    if tokens is None:
        line = f"reply in {result.duration_s:.2f}s (the server sent no token count)"
    else:
        line = f"{tokens} token{'' if tokens == 1 else 's'} in {result.duration_s:.2f}s"
    if result.tokens_per_s is not None:
        line += f" ({result.tokens_per_s:.1f} tokens/s)"
    if result.time_to_first_token_s is not None:
        line += f", first token after {result.time_to_first_token_s * 1000:.0f} ms"
    return line


def render_chat_speed(result: ChatResult) -> None:
    """After the streamed reply, on stderr: `chat_speed_line`."""
    sys.stdout.write("\n")
    err_console.print(chat_speed_line(result), style="dim", markup=False)
