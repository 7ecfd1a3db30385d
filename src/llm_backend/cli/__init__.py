"""The command line: thin commands over the library, one error boundary, typed renderers.

`app.py` holds the command tree and the error boundary; `render.py` and `render_bench.py`
are the only code that prints; each other module is one command or a small family of them.
Commands are registered here, in the order `--help` lists them.
"""

from __future__ import annotations

from llm_backend.cli import (
    bench,
    chat,
    compose,
    doctor,
    engine,
    host,
    profiles,
    pull,
    router,
    serve,
    start,
    status,
)
from llm_backend.cli.app import (
    app,
    engine_app,
    host_app,
    profiles_app,
    router_app,
    service_app,
)

__all__ = ["app", "main"]

for command in (
    start.start, status.status, status.stop, start.restart, status.logs, chat.chat,
    bench.bench, pull.pull, doctor.doctor, host.recover, compose.compose, doctor.diagnose,
    serve.serve,
):
    app.command()(command)
profiles_app.callback(invoke_without_command=True)(profiles.profiles_list)
profiles_app.command("show")(profiles.profiles_show)
engine_app.command("install")(engine.engine_install)
host_app.command("sudoers")(host.host_sudoers)
router_app.command("start")(router.router_start)
router_app.command("stop")(router.router_stop)
router_app.command("status")(router.router_status)
router_app.command("logs")(router.router_logs)
service_app.command("install")(serve.service_install)
service_app.command("uninstall")(serve.service_uninstall)


def main() -> None:
    """The `llm-backend` entry point."""
    app()
