"""SGLang flag validation before anything on the host changes.

Three ways, best first: SGLang's own argument parser inside the profile's image (when the
image is present locally), the locally installed `sglang` (native runtime), or the flag
table committed in `data/sglang_flags.json`, generated from a pinned sglang release's own
parser by `scripts/generate_sglang_flags.py`. Flags that belong to other servers
(`--max-model-len`) and ambiguous prefixes (`--speculative-draft`) are errors that name
the right flag.
"""

from __future__ import annotations

import difflib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from llm_backend.config import DockerConfig, Profile
from llm_backend.errors import ConfigError

TABLE_RESOURCE = "sglang_flags.json"

# Flags people bring from other servers, with SGLang's name for the same thing.
WRONG_FLAGS: dict[str, tuple[str, str]] = {
    "--max-model-len": ("--context-length", "--max-model-len is vLLM's name"),
    "--max-batch-size": (
        "--max-running-requests",
        "SGLang caps concurrent requests with --max-running-requests "
        "(and the CUDA-graph batch with --cuda-graph-max-bs-decode)",
    ),
    "--gpu-memory-utilization": (
        "--mem-fraction-static",
        "--gpu-memory-utilization is vLLM's name",
    ),
    "--max-num-seqs": ("--max-running-requests", "--max-num-seqs is vLLM's name"),
    "--tensor-parallel": ("--tp-size", "the tensor-parallel flag is --tp-size"),
}

# Run by a Python that has sglang: build the parser exactly as `prepare_server_args` does.
_PARSER_PRELUDE = """
import argparse, contextlib, io, json, sys
from sglang.srt.server_args import ServerArgs
try:
    from sglang.version import __version__ as version
except Exception:
    try:
        from importlib.metadata import version as _v
        version = _v("sglang")
    except Exception:
        version = "unknown"
parser = argparse.ArgumentParser(prog="sglang serve")
ServerArgs.add_cli_args(parser)
"""

PARSER_CHECK_SCRIPT = _PARSER_PRELUDE + """
err = io.StringIO()
code = 0
with contextlib.redirect_stderr(err):
    try:
        parser.parse_args(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
print("SGLANG-FLAGS-JSON " + json.dumps(
    {"version": version, "exit_code": code, "stderr": err.getvalue()[-4000:]}))
"""

PARSER_DUMP_SCRIPT = _PARSER_PRELUDE + """
options = []
for action in parser._actions:
    if not action.option_strings or action.dest == "help":
        continue
    nargs = action.nargs
    zero_value = (argparse._StoreTrueAction, argparse._StoreFalseAction,
                  argparse._StoreConstAction, argparse._CountAction,
                  argparse.BooleanOptionalAction)
    if isinstance(action, zero_value):
        nargs = 0
    type_name = getattr(action.type, "__name__", None) if action.type else None
    options.append({
        "flags": list(action.option_strings),
        "dest": action.dest,
        "nargs": nargs,
        # Sets have no stable order between runs; sort those so the table is reproducible.
        "choices": (sorted(str(c) for c in action.choices)
                    if isinstance(action.choices, (set, frozenset))
                    else [str(c) for c in action.choices]) if action.choices else None,
        "type": type_name if type_name in ("int", "float") else None,
        "required": bool(action.required),
    })
print("SGLANG-FLAGS-JSON " + json.dumps({"version": version, "options": options}))
"""

_JSON_MARK = "SGLANG-FLAGS-JSON "


@dataclass(frozen=True)
class FlagOption:
    """One option of SGLang's parser: its spellings, how many values, allowed choices."""

    flags: tuple[str, ...]
    dest: str
    nargs: int | str | None
    choices: tuple[str, ...] | None
    type: str | None
    required: bool


@dataclass(frozen=True)
class FlagTable:
    """Every option of one sglang release's parser."""

    sglang_version: str
    options: tuple[FlagOption, ...]
    by_flag: dict[str, FlagOption] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlagTable:
        options = tuple(
            FlagOption(
                flags=tuple(item["flags"]),
                dest=item["dest"],
                nargs=item.get("nargs"),
                choices=tuple(item["choices"]) if item.get("choices") else None,
                type=item.get("type"),
                required=bool(item.get("required")),
            )
            for item in data["options"]
        )
        by_flag = {flag: option for option in options for flag in option.flags}
        return cls(sglang_version=str(data["sglang_version"]), options=options, by_flag=by_flag)


@dataclass(frozen=True)
class FlagProblem:
    """One flag SGLang would refuse, and the flag to use instead (when there is one)."""

    flag: str
    message: str
    suggestion: str | None = None


@dataclass(frozen=True)
class FlagCheck:
    """What checked the flags (image, installed sglang or table) and what it found."""

    source: str
    sglang_version: str
    problems: tuple[FlagProblem, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"SGLang flags checked with {self.source} (sglang {self.sglang_version}): {verdict}"


def load_table() -> FlagTable:
    """The committed table generated from a pinned sglang release."""
    text = (resources.files("llm_backend") / "data" / TABLE_RESOURCE).read_text(encoding="utf-8")
    return FlagTable.from_json(json.loads(text))


# --- checking against the table ---------------------------------------------------------


def _suggest(flag: str, table: FlagTable) -> tuple[str | None, str]:
    """The right flag for a wrong one, and why; `(None, "")` when nothing is close."""
    if flag in WRONG_FLAGS:
        right, why = WRONG_FLAGS[flag]
        return right, why
    dashed = flag.replace("_", "-")
    if dashed != flag and dashed in table.by_flag:
        return dashed, "SGLang's flags use dashes, not underscores"
    close = difflib.get_close_matches(flag, list(table.by_flag), n=1, cutoff=0.75)
    if close:
        return close[0], "closest SGLang flag"
    return None, ""


def _unknown(flag: str, table: FlagTable) -> FlagProblem:
    right, why = _suggest(flag, table)
    if right:
        return FlagProblem(flag, f"{flag} is not an SGLang flag ({why}); use {right}", right)
    return FlagProblem(flag, f"{flag} is not an SGLang flag", None)


def check_with_table(flags: list[str], table: FlagTable) -> FlagCheck:
    """Parse `flags` the way argparse would (with unique-prefix abbreviations) against the table."""
    problems: list[FlagProblem] = []
    notes: list[str] = []
    seen_dests: set[str] = set()
    index = 0
    while index < len(flags):
        token = flags[index]
        index += 1
        if not token.startswith("--"):
            problems.append(
                FlagProblem(token, f"unexpected value {token!r} (not after a flag that takes one)")
            )
            continue
        name, has_inline, inline_value = token.partition("=")
        option = table.by_flag.get(name)
        if option is None:
            # In the parser's own order, so the first candidate is the main spelling.
            matches = [flag for flag in table.by_flag if flag.startswith(name)]
            options = {table.by_flag[flag].dest for flag in matches}
            if len(options) > 1:
                problems.append(
                    FlagProblem(
                        name,
                        f"{name} is ambiguous: it could be {', '.join(matches)}",
                        matches[0],
                    )
                )
                index = _skip_values(flags, index)
                continue
            if not matches:
                problems.append(_unknown(name, table))
                index = _skip_values(flags, index)
                continue
            option = table.by_flag[matches[0]]
            notes.append(f"{name} is an abbreviation of {option.flags[0]}; write the full name")
        seen_dests.add(option.dest)
        values: list[str] = []
        if has_inline:
            if option.nargs == 0:
                problems.append(
                    FlagProblem(name, f"{name} takes no value, got {name}={inline_value}")
                )
                continue
            values = [inline_value]
        elif option.nargs == 0:
            values = []
        elif option.nargs is None or isinstance(option.nargs, int):
            wanted = 1 if option.nargs is None else int(option.nargs)
            taken = flags[index:index + wanted]
            if len(taken) < wanted or any(value.startswith("--") for value in taken):
                problems.append(FlagProblem(name, f"{name} needs a value"))
                continue
            values = taken
            index += wanted
        else:
            while index < len(flags) and not flags[index].startswith("--"):
                values.append(flags[index])
                index += 1
                if option.nargs == "?":
                    break
            if option.nargs == "+" and not values:
                problems.append(FlagProblem(name, f"{name} needs at least one value"))
                continue
        for value in values:
            problem = _check_value(name, option, value)
            if problem:
                problems.append(problem)
    for option in table.options:
        if option.required and option.dest not in seen_dests:
            problems.append(
                FlagProblem(option.flags[0], f"{option.flags[0]} is required", option.flags[0])
            )
    return FlagCheck(
        source="the flag table",
        sglang_version=table.sglang_version,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _skip_values(flags: list[str], index: int) -> int:
    while index < len(flags) and not flags[index].startswith("--"):
        index += 1
    return index


def _check_value(name: str, option: FlagOption, value: str) -> FlagProblem | None:
    if option.choices and value not in option.choices:
        close = difflib.get_close_matches(value, list(option.choices), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return FlagProblem(
            name,
            f"{name} {value!r} is not one of SGLang's choices "
            f"({', '.join(option.choices[:12])}{', ...' if len(option.choices) > 12 else ''})"
            + hint,
            f"{name} {close[0]}" if close else None,
        )
    if option.type in ("int", "float"):
        try:
            (int if option.type == "int" else float)(value)
        except ValueError:
            return FlagProblem(name, f"{name} needs a number ({option.type}), got {value!r}")
    return None


# --- checking with SGLang's own parser ----------------------------------------------------

UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
AMBIGUOUS = re.compile(r"ambiguous option: (\S+?)(?:=\S*)? could match (.*)")
INVALID_CHOICE = re.compile(r"argument ([^:]+): invalid choice: '?([^' ]+)'?")
REQUIRED = re.compile(r"the following arguments are required: (.*)")


def problems_from_parser_error(stderr: str, table: FlagTable) -> list[FlagProblem]:
    """Turn argparse's error text into problems that name the right flag."""
    problems: list[FlagProblem] = []
    for line in stderr.splitlines():
        if match := UNRECOGNIZED.search(line):
            for token in match.group(1).split():
                if token.startswith("-"):
                    problems.append(_unknown(token.partition("=")[0], table))
        elif match := AMBIGUOUS.search(line):
            candidates = [item.strip() for item in match.group(2).split(",")]
            problems.append(
                FlagProblem(
                    match.group(1),
                    f"{match.group(1)} is ambiguous: it could be {', '.join(candidates)}",
                    candidates[0] if candidates else None,
                )
            )
        elif match := INVALID_CHOICE.search(line):
            flag = match.group(1).split("/")[0].strip()
            problems.append(FlagProblem(flag, line.split("error: ", 1)[-1].strip()))
        elif match := REQUIRED.search(line):
            problems.append(FlagProblem(match.group(1).split("/")[0], line.strip()))
    if not problems and stderr.strip():
        last = [line for line in stderr.strip().splitlines() if "error" in line.lower()]
        problems.append(FlagProblem("?", (last or stderr.strip().splitlines())[-1].strip()))
    return problems


def run_parser(command: list[str], flags: list[str], timeout_s: float) -> dict[str, Any] | str:
    """Run the check script with `command` (a Python, or `docker run ... python3`).

    Returns the parsed result, or a string saying why SGLang's parser could not run there.
    """
    argv = [*command, "-c", PARSER_CHECK_SCRIPT, *flags]
    try:
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{' '.join(command)} could not run: {error}"
    for line in completed.stdout.splitlines():
        if line.startswith(_JSON_MARK):
            result: dict[str, Any] = json.loads(line[len(_JSON_MARK):])
            return result
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return f"sglang's parser is not importable with {' '.join(command)}: {tail}"


def check_with_parser(
    command: list[str], flags: list[str], *, source: str, table: FlagTable, timeout_s: float
) -> FlagCheck | str:
    """Validate with SGLang's own parser; a string when that parser is not available there."""
    result = run_parser(command, flags, timeout_s)
    if isinstance(result, str):
        return result
    problems: list[FlagProblem] = []
    from_table = check_with_table(flags, table)
    if int(result.get("exit_code") or 0) != 0:
        problems = problems_from_parser_error(str(result.get("stderr", "")), table)
        # argparse stops at the first error; add the well-known wrong flags it did not reach.
        named = {problem.flag for problem in problems}
        problems += [
            problem
            for problem in from_table.problems
            if problem.flag in WRONG_FLAGS and problem.flag not in named
        ]
    # SGLang's parser accepts unique prefixes; the table names them so the profile is explicit.
    notes = list(from_table.notes)
    return FlagCheck(
        source=source,
        sglang_version=str(result.get("version", "unknown")),
        problems=tuple(problems),
        notes=tuple(notes),
    )


# --- choosing how to check a profile -----------------------------------------------------


def image_for_platform(docker: DockerConfig, machine: str | None = None) -> str | None:
    """The image for this CPU: `image_aarch64` on arm64 hosts when set, else `image`."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") and docker.image_aarch64:
        return docker.image_aarch64
    return docker.image


def image_present(image: str) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        completed = subprocess.run(
            [docker, "image", "inspect", image],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def check_profile_flags(
    profile: Profile, flags: list[str], *, table: FlagTable | None = None
) -> FlagCheck:
    """Check an SGLang profile's flags with the best parser available here."""
    table = table or load_table()
    notes: list[str] = []
    if profile.command:
        notes.append(
            f"profile runs a custom command ({' '.join(profile.command)}), "
            "so the flags were checked against the table"
        )
    elif profile.runtime == "docker":
        image = image_for_platform(profile.docker)
        if image and image_present(image):
            checked = check_with_parser(
                ["docker", "run", "--rm", "--entrypoint", "python3", image],
                flags,
                source=f"SGLang's parser in image {image}",
                table=table,
                timeout_s=300,
            )
            if isinstance(checked, FlagCheck):
                return checked
            notes.append(checked)
        else:
            notes.append(f"image {image} is not present locally")
    else:
        python = os.path.expanduser(profile.python)
        if shutil.which(python):
            checked = check_with_parser(
                [python],
                flags,
                source=f"the installed sglang ({python})",
                table=table,
                timeout_s=120,
            )
            if isinstance(checked, FlagCheck):
                return checked
            notes.append(checked)
        else:
            notes.append(f"python {python!r} was not found")
    result = check_with_table(flags, table)
    return FlagCheck(
        source="the committed flag table",
        sglang_version=table.sglang_version,
        problems=result.problems,
        notes=(*notes, *result.notes),
    )


def raise_for_problems(check: FlagCheck, profile: Profile) -> None:
    """A bad_flag ConfigError naming each wrong flag and the right one."""
    if check.ok:
        return
    messages = "; ".join(problem.message for problem in check.problems)
    fixes = [
        f"replace {problem.flag} with {problem.suggestion}"
        for problem in check.problems
        if problem.suggestion and problem.suggestion != problem.flag
    ]
    fix = "; ".join(fixes) if fixes else "remove or correct those flags"
    raise ConfigError(
        f"profile {profile.name!r}: SGLang would refuse its flags ({messages}); "
        f"checked with {check.source}",
        remedy=f"{fix} in `extra_args` of [profiles.{profile.name}] "
        f"(see `llm-backend profiles show {profile.name}`)",
        failure_class="bad_flag",
        details={"flag_check": check.summary},
    )
