"""The `error:` and `fix:` of a command line typer could not parse.

The fix names the llm-backend command that does what was typed when it is a command of
another local LLM tool (Ollama's `run`, `list`, `ps`; LM Studio's `lms ls`, `load`, `get`) or
a model given where llm-backend takes a profile (`start NAME`, `--model PATH`); else it
points at the command's `--help`. The error repeats the value an option could not take.
"""

from __future__ import annotations

import re
import shlex

from typer._click.core import Context as ClickContext  # typer vendors click
from typer._click.exceptions import BadParameter, NoSuchOption, UsageError

# What another tool calls it -> what does it here (by the root's command name).
OTHER_TOOLS_COMMANDS: dict[str, str] = {
    "run": 'llm-backend start (loads and serves the model; `--profile NAME` picks one), '
           'then llm-backend chat "your prompt"',
    "list": "llm-backend profiles (the models it can serve are profiles)",
    "ls": "llm-backend profiles (the models it can serve are profiles)",
    "models": "llm-backend profiles (the models it can serve are profiles)",
    "ps": "llm-backend status (what runs, its state and endpoint)",
    "show": "llm-backend profiles show NAME",
    "load": "llm-backend start --profile NAME",
    "unload": "llm-backend stop",
    "get": "llm-backend pull --profile NAME",
}
# The same under `profiles`.
PROFILES_COMMANDS: dict[str, str] = {
    "list": "llm-backend profiles (lists them; `llm-backend profiles show NAME` shows one)",
    "ls": "llm-backend profiles (lists them; `llm-backend profiles show NAME` shows one)",
}

_NO_SUCH_COMMAND = re.compile(r"No such command '([^']*)'")
_EXTRA_ARGUMENTS = re.compile(r"Got unexpected extra argument\S* \((.*)\)")


def usage_error(error: UsageError) -> tuple[str, str]:
    """(`error:` text, `fix:` text) for a command line typer could not parse."""
    command = _command(error.ctx)
    return _message(error), _fix(error, command) or f"see `{command} --help`"


def _command(ctx: ClickContext | None) -> str:
    """`llm-backend start`: the command as the user runs it (the root is "python -m
    llm_backend" under -m)."""
    if ctx is None:
        return "llm-backend"
    return "llm-backend" + ctx.command_path.removeprefix(ctx.find_root().command_path)


def _message(error: UsageError) -> str:
    """Click's message, with the value when it left it out (typer's integer check says
    "Input should be a valid integer" without the value)."""
    message = error.format_message()
    if not isinstance(error, BadParameter):
        return message
    value = _bad_value(error)
    if value is None or repr(value) in message:
        return message
    prefix = "Invalid value for "
    if message.startswith(prefix):
        return f"Invalid value {value!r} for " + message.removeprefix(prefix)
    return f"{message} (got {value!r})"


def _bad_value(error: BadParameter) -> object | None:
    """The value the user gave, from the pydantic error typer converted (None: not known)."""
    from pydantic import ValidationError

    cause = error.__cause__
    if not isinstance(cause, ValidationError) or not cause.errors():
        return None
    value: object = cause.errors()[0].get("input")
    return value


def _takes_profile(ctx: ClickContext | None) -> bool:
    return ctx is not None and any(param.name == "profile" for param in ctx.command.params)


def _fix(error: UsageError, command: str) -> str | None:
    """The direct hint, or None for the generic `see --help`."""
    message = error.format_message()
    unknown = _NO_SUCH_COMMAND.search(message)
    if unknown is not None:
        table = PROFILES_COMMANDS if command == "llm-backend profiles" else (
            OTHER_TOOLS_COMMANDS if command == "llm-backend" else {})
        hint = table.get(unknown.group(1))
        return f"{hint}; see `{command} --help`" if hint else None
    if not _takes_profile(error.ctx):
        return None
    if isinstance(error, NoSuchOption) and error.option_name == "--model":
        return (f"LLM_BACKEND_MODEL=PATH.gguf {command} (a GGUF file of yours), or "
                f"{command} --profile NAME (llm-backend profiles lists them)")
    extra = _EXTRA_ARGUMENTS.search(message)
    if extra is not None:
        name = shlex.quote(extra.group(1).split()[0])
        if name.endswith(".gguf") or "/" in name:
            return f"LLM_BACKEND_MODEL={name} {command} (a model file goes in LLM_BACKEND_MODEL)"
        return (f"{command} --profile {name} (the model is a profile; "
                "llm-backend profiles lists them)")
    return None
