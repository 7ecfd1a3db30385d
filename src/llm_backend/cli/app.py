"""The command tree, and the one error boundary every command runs inside.

A command raises `BackendError` (or is interrupted); `GuardedGroup.invoke` turns that into
`error:` + `fix:` lines and the error's exit code, in one place for every command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from typer._click.core import Context as ClickContext  # typer vendors click
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from llm_backend.cli import render, render_reports
from llm_backend.errors import BackendError
from llm_backend.lifecycle import HostPreparation, Lifecycle
from llm_backend.signals import Interrupted
from llm_backend.state import HOST_JOURNAL_FILE, StateStore

if TYPE_CHECKING:
    from llm_backend.config import Profile


@contextmanager
def error_boundary() -> Iterator[None]:
    """Render a `BackendError` or an interruption and exit with its code; nothing else."""
    try:
        yield
    except BackendError as error:
        render.render_error(error)
        raise typer.Exit(error.exit_code) from None
    except UsageError as error:  # a value typer could not parse: `--port abc`, a typo'd option
        from llm_backend.cli.hints import usage_error

        render.render_usage_error(*usage_error(error))
        raise typer.Exit(error.exit_code) from None
    except (KeyboardInterrupt, Interrupted) as error:
        name = "SIGINT" if isinstance(error, KeyboardInterrupt) else str(error)
        render.render_interrupted(name)
        signum = 2 if isinstance(error, KeyboardInterrupt) else error.signum
        raise typer.Exit(128 + signum) from None


class GuardedGroup(TyperGroup):
    """The root group: every callback and command below it runs inside `error_boundary`."""

    def invoke(self, ctx: ClickContext) -> object:
        with error_boundary():
            return super().invoke(ctx)


app = typer.Typer(
    cls=GuardedGroup,
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
router_app = typer.Typer(help="sglang-router in front of several servers (scale-out).")
app.add_typer(router_app, name="router")
service_app = typer.Typer(help="A systemd unit that runs `llm-backend serve` at boot.")
app.add_typer(service_app, name="service")


def make_lifecycle() -> Lifecycle:
    """The lifecycle with host preparation wired in (imported only when it is used)."""
    return Lifecycle(
        store=StateStore(), host_prep_factory=_host_preparation, host_status=_host_status
    )


def _host_preparation(profile: Profile, store: StateStore) -> HostPreparation:
    from llm_backend.host import host_preparation_factory

    return host_preparation_factory(profile, store)


def _host_status(store: StateStore) -> dict[str, object] | None:
    if not (store.root / HOST_JOURNAL_FILE).exists():  # nothing in effect: skip the import
        return None
    from llm_backend.host import host_status

    return host_status(store)


@app.callback()
def before_every_command(ctx: typer.Context) -> None:
    # Every command first finishes a host preparation whose `start` died (journal in the
    # state dir): same boot, undo it; after a reboot, only clean up the swap file.
    if ctx.resilient_parsing or ctx.invoked_subcommand in ("recover", "host"):
        return
    store = StateStore()
    if not (store.root / HOST_JOURNAL_FILE).exists():  # no journal: nothing to finish
        return
    try:
        from llm_backend.host import recover as recover_host
    except ImportError:
        return
    try:
        report = recover_host(store, retry_left_on=False)
    except (BackendError, OSError) as error:
        render_reports.render_recovery_warning(
            error.message if isinstance(error, BackendError) else str(error)
        )
        return
    if report.found and report.busy_pid is None and (report.restored or report.errors):
        render_reports.render_recovery(report, to_stderr=True)
