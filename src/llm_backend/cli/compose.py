"""`compose`: write the profile's docker-compose.yml, the file `start --runtime docker` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_backend.cli import render, render_reports
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.start import choose_profile
from llm_backend.errors import UsageError


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
    from llm_backend.engines import get_engine
    from llm_backend.runtimes.compose import build_compose

    if output is not None:  # before anything is written (the key files below)
        if output.is_dir():
            raise UsageError(f"-o {output} is a folder",
                             remedy=f"name a file in it: -o {output / 'docker-compose.yml'}")
        if not output.parent.is_dir():
            raise UsageError(f"-o {output}: the folder {output.parent} does not exist",
                             remedy=f"mkdir -p {output.parent} first, or write elsewhere")
    lifecycle = make_lifecycle()
    name = choose_profile(lifecycle, profile)
    overrides: dict[str, object] = {"runtime": "docker"}
    if port is not None:
        overrides["port"] = port
    resolved = lifecycle.resolve(name, overrides).profile
    engine = get_engine(resolved.engine)
    engine.check_profile(profile=resolved, for_container=True)
    argv = engine.build_argv(profile=resolved, for_container=True)
    # A profile with an API key: the file must hand it to the server as `start` does (the
    # 0600 key files under the state dir, mounted read-only), or a server run by hand from
    # it would take no key.
    secret_dir, key_args = lifecycle.api_key_setup(
        resolved, engine, lifecycle.runtime("docker"), write=True)
    # Labelled with this state dir, as `start` labels it: a container run by hand from this
    # file is one that `start` adopts and `stop` stops.
    document = build_compose(profile=resolved, argv=[*argv, *key_args],
                             health_path=engine.health_path, state_dir=lifecycle.store.root,
                             secret_dir=secret_dir)
    if output is None:
        render.print_raw(document.text())
        return
    try:
        document.write(output, make_folder=False)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror or error}",
                         remedy="write it to a folder you can write: -o ./docker-compose.yml"
                         ) from error
    render_reports.render_compose_written(document, output)
