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
) -> None:
    """Stream one reply from the running backend and print its speed."""
    import httpx

    from llm_backend.client import chat as run_chat
    from llm_backend.credentials import client_headers

    check_number("--max-tokens", max_tokens, low=1, high=1 << 20, command="chat")
    check_number("--temperature", temperature, low=0, high=2, command="chat")
    record = make_lifecycle().running_record()
    try:
        result = run_chat(
            endpoint=record.client_endpoint,
            model=record.served_model_name,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            on_text=render.stream_text,
            headers=client_headers(),
        )
    except httpx.HTTPError as error:
        raise BackendError(
            f"chat request to {record.endpoint} failed: {error}",
            remedy="llm-backend status; llm-backend logs -n 50",
        ) from None
    render.render_chat_speed(result)
