"""SGLang flag validation before anything on the host changes.

Three ways, best first: SGLang's own argument parser inside the profile's image (when the
image is present locally), the locally installed `sglang` (native runtime), or the flag
table committed in `data/sglang_flags.json`, generated from a pinned sglang release's own
parser by `scripts/generate_sglang_flags.py`. Flags that belong to other servers
(vLLM's `--max-model-len`, llama.cpp's `-ngl`, torchrun's `--master-addr`) are errors that
name SGLang's flag or say why SGLang has none (`data/foreign_flags.json`, built from vLLM's
`EngineArgs` CLI and llama.cpp's `common/arg.cpp`); ambiguous prefixes
(`--speculative-draft`) name the full flag; spelling is suggested only for near-typos.
When only the table could check a Docker profile whose image is another SGLang release,
what the table alone refuses is a warning, not a failure.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from llm_backend.config import Profile
from llm_backend.errors import ConfigError
from llm_backend.runtimes import get_runtime
from llm_backend.runtimes.compose import image_for
from llm_backend.runtimes.docker_facts import docker_cli, image_present

TABLE_RESOURCE = "sglang_flags.json"

FOREIGN_RESOURCE = "foreign_flags.json"
ORIGINS = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "torchrun": "torchrun"}


@dataclass(frozen=True)
class ForeignFlag:
    """A flag of another server (vLLM, llama.cpp, torchrun) and SGLang's flag for it, if any."""

    flag: str
    origin: str
    sglang: str | None
    why: str


@dataclass(frozen=True)
class ForeignTable:
    """Other servers' flags and values, mapped to SGLang's (see `data/foreign_flags.json`)."""

    flags: dict[str, ForeignFlag]
    # SGLang flag -> foreign value -> (SGLang values to use, why)
    values: dict[str, dict[str, tuple[tuple[str, ...], str]]]


@functools.cache
def load_foreign() -> ForeignTable:
    """The committed equivalences of vLLM, llama.cpp and torchrun flags."""
    text = (resources.files("llm_backend") / "data" / FOREIGN_RESOURCE).read_text(
        encoding="utf-8"
    )
    data = json.loads(text)
    flags = {
        row["flag"]: ForeignFlag(row["flag"], row["from"], row["sglang"], row["why"])
        for row in data["flags"]
    }
    values = {
        flag: {value: (tuple(entry["use"]), entry["why"]) for value, entry in by_value.items()}
        for flag, by_value in data["values"].items()
    }
    return ForeignTable(flags=flags, values=values)


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
    # True when the flag or value is another server's (wrong in every SGLang release);
    # False when only this table's release refuses it.
    certain: bool = False


@dataclass(frozen=True)
class FlagCheck:
    """What checked the flags (image, installed sglang or table) and what it found."""

    source: str
    sglang_version: str
    problems: tuple[FlagProblem, ...] = ()
    notes: tuple[str, ...] = ()
    # What only this table's release refuses, for an image of another release.
    warnings: tuple[FlagProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        if self.warnings:
            verdict += f", {len(self.warnings)} warning(s)"
        return f"SGLang flags checked with {self.source} (sglang {self.sglang_version}): {verdict}"


def load_table() -> FlagTable:
    """The committed table generated from a pinned sglang release."""
    text = (resources.files("llm_backend") / "data" / TABLE_RESOURCE).read_text(encoding="utf-8")
    return FlagTable.from_json(json.loads(text))


# --- checking against the table ---------------------------------------------------------


def _words(flag: str) -> list[str]:
    return [word for word in flag.lstrip("-").replace("_", "-").split("-") if word]


def _edit_distance(left: str, right: str) -> int:
    previous = list(range(len(right) + 1))
    for i, char in enumerate(left, 1):
        current = [i]
        for j, other in enumerate(right, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def near_typo(wrong: str, right: str) -> bool:
    """Whether `wrong` is `right` mistyped, not another name: one or two letters off in one
    word, one word added or dropped, or words swapped. `--num-nodes` is not `--numa-node`
    (both words differ) and `fp8` is not `mxfp8` (a different format)."""
    if wrong == right:
        return False
    a, b = _words(wrong), _words(right)
    if not a or not b:
        return False
    if sorted(a) == sorted(b):
        return True
    if len(a) == len(b):
        differing = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        if len(differing) != 1:
            return False
        x, y = differing[0]
        return _edit_distance(x, y) <= (1 if min(len(x), len(y)) < 6 else 2) and x[0] == y[0]
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    if len(longer) - len(shorter) != 1 or len(shorter) < 2:
        return False
    return any(longer[:index] + longer[index + 1:] == shorter for index in range(len(longer)))


def _typo_match(name: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(name, candidates, n=8, cutoff=0.6)
    return next((candidate for candidate in close if near_typo(name, candidate)), None)


def _suggest(flag: str, table: FlagTable) -> tuple[str | None, str]:
    """The right flag for a wrong one, and why; `(None, why)` when SGLang has none."""
    foreign = load_foreign().flags.get(flag)
    if foreign is not None:
        return foreign.sglang, f"{flag} is {ORIGINS.get(foreign.origin, foreign.origin)}'s: " + (
            foreign.why
        )
    dashed = flag.replace("_", "-")
    if dashed != flag and dashed in table.by_flag:
        return dashed, "SGLang's flags use dashes, not underscores"
    close = _typo_match(flag, [name for name in table.by_flag if name.startswith("--")])
    if close:
        return close, "a near spelling"
    return None, ""


def _unknown(flag: str, table: FlagTable) -> FlagProblem:
    right, why = _suggest(flag, table)
    foreign = flag in load_foreign().flags
    if right:
        return FlagProblem(
            flag, f"{flag} is not an SGLang flag ({why}); use {right}", right, certain=foreign
        )
    if foreign:
        return FlagProblem(
            flag, f"{flag} is not an SGLang flag and SGLang has no equivalent ({why})", None,
            certain=True,
        )
    return FlagProblem(flag, f"{flag} is not an SGLang flag", None)


def _is_flag(token: str) -> bool:
    """`--x` and `-x` are flags; `-1` and `-0.5` are values."""
    return token.startswith("-") and len(token) > 1 and not re.match(r"-\.?\d", token)


def _merge_rendezvous(flags: list[str], problems: list[FlagProblem]) -> list[FlagProblem]:
    """torchrun's --master-addr X --master-port Y become one SGLang fix: --dist-init-addr X:Y."""
    addr_flags = {"--master-addr", "--master_addr", "--data-parallel-address", "-dpa"}
    port_flags = {"--master-port", "--master_port", "--data-parallel-rpc-port", "-dpp"}

    def value_of(names: set[str]) -> str | None:
        for index, token in enumerate(flags):
            name, has_inline, inline = token.partition("=")
            if name in names:
                return inline if has_inline else (flags[index + 1] if index + 1 < len(flags)
                                                   else None)
        return None

    address, port = value_of(addr_flags), value_of(port_flags)
    if address is None and port is None:
        return problems
    target = f"--dist-init-addr {address or 'HOST'}:{port or 'PORT'}"
    merged: list[FlagProblem] = []
    done = False
    for problem in problems:
        if problem.flag in addr_flags | port_flags:
            if done:
                continue
            done = True
            wrong = " and ".join(
                name for name in (
                    next((f for f in flags if f.partition("=")[0] in addr_flags), None),
                    next((f for f in flags if f.partition("=")[0] in port_flags), None),
                ) if name
            )
            merged.append(FlagProblem(
                wrong.split("=")[0] if " and " not in wrong else wrong,
                f"{wrong} are torchrun's (not SGLang flags); SGLang's rendezvous is one flag: "
                f"{target}" if " and " in wrong else
                f"{wrong} is torchrun's (not an SGLang flag); SGLang's rendezvous is one flag: "
                f"{target}",
                target,
                certain=True,
            ))
        else:
            merged.append(problem)
    return merged


def check_with_table(flags: list[str], table: FlagTable) -> FlagCheck:
    """Parse `flags` the way argparse would (with unique-prefix abbreviations) against the table."""
    problems: list[FlagProblem] = []
    notes: list[str] = []
    seen_dests: set[str] = set()
    index = 0
    while index < len(flags):
        token = flags[index]
        index += 1
        if not _is_flag(token):
            problems.append(
                FlagProblem(token, f"unexpected value {token!r} (not after a flag that takes one)")
            )
            continue
        name, has_inline, inline_value = token.partition("=")
        option = table.by_flag.get(name)
        unique_prefix = option is None and name.startswith("--") and len(
            {table.by_flag[flag].dest for flag in table.by_flag if flag.startswith(name)}
        ) == 1
        if option is None and not unique_prefix and (
            name in load_foreign().flags or not name.startswith("--")
        ):
            # Another server's flag (even when it is an ambiguous prefix of SGLang ones), or
            # a short flag: argparse matches no prefix of SGLang's long options for `-x`. A
            # unique prefix (`--tensor-parallel`) SGLang accepts; it is noted below.
            problems.append(_unknown(name, table))
            index = _skip_values(flags, index)
            continue
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
            if len(taken) < wanted or any(_is_flag(value) for value in taken):
                problems.append(FlagProblem(name, f"{name} needs a value"))
                continue
            values = taken
            index += wanted
        else:
            while index < len(flags) and not _is_flag(flags[index]):
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
        problems=tuple(_merge_rendezvous(flags, problems)),
        notes=tuple(notes),
    )


def _skip_values(flags: list[str], index: int) -> int:
    while index < len(flags) and not _is_flag(flags[index]):
        index += 1
    return index


def _check_value(name: str, option: FlagOption, value: str) -> FlagProblem | None:
    if option.choices and value not in option.choices:
        listed = (
            f"{', '.join(option.choices[:12])}{', ...' if len(option.choices) > 12 else ''}"
        )
        foreign = load_foreign().values.get(option.flags[0], {}).get(value)
        if foreign is not None:
            use = [choice for choice in foreign[0] if choice in option.choices]
            if use:
                return FlagProblem(
                    name,
                    f"{name} {value!r} is not one of SGLang's choices ({foreign[1]}); "
                    f"use {' or '.join(use)}",
                    f"{name} {use[0]}",
                    certain=True,
                )
        close = _typo_match(value, list(option.choices))
        hint = f"; did you mean {close}?" if close else ""
        return FlagProblem(
            name,
            f"{name} {value!r} is not one of SGLang's choices ({listed})" + hint,
            f"{name} {close}" if close else None,
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
        # argparse stops at the first error; add the other servers' flags it did not reach.
        named = {problem.flag for problem in problems}
        problems += [
            problem
            for problem in from_table.problems
            if problem.certain and problem.flag not in named
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


def _image_of(profile: Profile) -> str | None:
    """The profile's image for this CPU, or None when it names none."""
    try:
        return image_for(profile)
    except ConfigError:
        return None


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
    elif get_runtime(profile.runtime).in_container:
        image = _image_of(profile)
        if image and image_present(image):
            checked = check_with_parser(
                [docker_cli(), "run", "--rm", "--entrypoint", "python3", image],
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
    problems = result.problems
    warnings: tuple[FlagProblem, ...] = ()
    image = _image_of(profile) if get_runtime(profile.runtime).in_container else None
    if image and not profile.command and not image_is_release(image, table.sglang_version):
        # SGLang's own parser in that image could not run here; the table is another
        # release, so what only the table refuses may be fine there (and the reverse).
        notes.append(
            f"the flag table is SGLang {table.sglang_version}'s; image {image} is not that "
            "release and could not be checked here, so what only the table refuses is a "
            f"warning (pin docker.image = \"lmsysorg/sglang:v{table.sglang_version}\", or "
            f"pull {image} and check again)"
        )
        problems = tuple(problem for problem in result.problems if problem.certain)
        warnings = tuple(problem for problem in result.problems if not problem.certain)
    return FlagCheck(
        source="the committed flag table",
        sglang_version=table.sglang_version,
        problems=problems,
        notes=(*notes, *result.notes),
        warnings=warnings,
    )


def image_is_release(image: str, version: str) -> bool:
    """Whether `image`'s tag names SGLang `version` (`lmsysorg/sglang:v0.5.23`, `...-cu129`)."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2].partition("@")[0]
    return tag == f"v{version}" or tag.startswith(f"v{version}-")


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
