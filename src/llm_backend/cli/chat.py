"""`chat`: stream one reply from the running backend."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_backend.cli import render
from llm_backend.cli.app import make_lifecycle
from llm_backend.cli.options import check_number
from llm_backend.errors import BackendError


def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    direct: Annotated[
        bool, typer.Option("--direct", help="Talk to the backend itself, not through the "
                           "door of a running `serve`.")
    ] = False,
) -> None:
    """Stream one reply from the running backend (through `serve`'s door when it runs) and
    print its speed."""
    import httpx

    from llm_backend.client import chat as run_chat
    from llm_backend.credentials import client_headers
    from llm_backend.serve.control import door_client

    check_number("--max-tokens", max_tokens, low=1, high=1 << 20, command="chat")
    check_number("--temperature", temperature, low=0, high=2, command="chat")
    lifecycle = make_lifecycle()
    door = None if direct else door_client(lifecycle.store)
    timeout_s = 300.0
    if door is not None:  # the door holds the request while the backend loads
        endpoint, headers = door.endpoint, door.headers
        timeout_s += door.hold_s
        model = door.model or lifecycle.resolve(door.profile).profile.model_name
    else:
        record = lifecycle.running_record()
        endpoint, headers = record.client_endpoint, client_headers()
        model = record.served_model_name
    try:
        result = run_chat(
            endpoint=endpoint,
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            on_text=render.stream_text,
            headers=headers,
            timeout_s=timeout_s,
        )
    except httpx.HTTPError as error:
        raise BackendError(
            f"chat request to {endpoint} failed: {error}",
            remedy="llm-backend status; llm-backend logs -n 50",
        ) from None
    render.render_chat_speed(result)
