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

import contextlib
import difflib
import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llm_backend.config import Profile
from llm_backend.errors import ConfigError
from llm_backend.net import host_port, parse_host_port
from llm_backend.runtimes import get_runtime
from llm_backend.runtimes.compose import image_for, run_labels
from llm_backend.runtimes.docker_facts import docker_cli, image_present
from llm_backend.toml_names import profile_table

TABLE_RESOURCE = "sglang_flags.json"

FOREIGN_RESOURCE = "foreign_flags.json"
ORIGINS = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "torchrun": "torchrun"}


Tokens = tuple[str, ...]


@dataclass(frozen=True)
class ForeignFlag:
    """A flag of another server (vLLM, llama.cpp, torchrun), SGLang's flag for it (if any),
    and what becomes of its value (see `foreign_edit`)."""

    flag: str
    origin: str
    sglang: str | None
    why: str
    # How many values the other server's flag takes: 0, 1, "?" (optional) or "+".
    takes: int | str = 1
    sample: Tokens = ()
    # value (lower case; "" = none given) -> the tokens to write instead ((): remove the
    # flag, SGLang's default does it); None: SGLang has no equivalent for that value.
    value_map: dict[str, Tokens | None] | None = None
    replace: Tokens | None = None  # the same tokens whatever the value
    json_template: Any = None  # SGLang's flag takes JSON: "$" stands for the value
    offset: float | None = None
    minimum: float | None = None
    scale: float | None = None
    integer: bool = False
    from_flags: Tokens = ()  # the value is another flag's (e.g. --tp-size), else `default`
    default: str | None = None
    times: Tokens = ()  # the value is multiplied by this flag's (e.g. --nnodes)
    count: bool = False  # the value is the number of items in a `3,1` list
    strip_tag: bool = False  # `org/repo:Q4_K_M` -> `org/repo`
    table: bool = False  # set the profile's [speculative] table instead
    by_hand: str | None = None  # no literal replacement: what to do instead
    secret: bool = False  # never print the value


@dataclass(frozen=True)
class ForeignTable:
    """Other servers' flags and values, mapped to SGLang's (see `data/foreign_flags.json`)."""

    flags: dict[str, ForeignFlag]
    # SGLang flag -> foreign value (lower case) -> (SGLang values to use, why)
    values: dict[str, dict[str, tuple[tuple[str, ...], str]]]


def _tokens(value: Any) -> Tokens | None:
    return None if value is None else tuple(str(item) for item in value)


@functools.cache
def load_foreign() -> ForeignTable:
    """The committed equivalences of vLLM, llama.cpp and torchrun flags."""
    text = (resources.files("llm_backend") / "data" / FOREIGN_RESOURCE).read_text(
        encoding="utf-8"
    )
    data = json.loads(text)
    flags = {
        row["flag"]: ForeignFlag(
            row["flag"], row["from"], row["sglang"], row["why"],
            takes=row.get("takes", 1),
            sample=tuple(row.get("sample", ())),
            value_map=(
                {key.lower(): _tokens(use) for key, use in row["map"].items()}
                if "map" in row else None
            ),
            replace=_tokens(row.get("replace")),
            json_template=row.get("json"),
            offset=row.get("offset"),
            minimum=row.get("minimum"),
            scale=row.get("scale"),
            integer=bool(row.get("integer")),
            from_flags=tuple(row.get("value_from", ())),
            default=row.get("default"),
            times=tuple(row.get("times", ())),
            count=bool(row.get("count")),
            strip_tag=bool(row.get("strip_tag")),
            table=bool(row.get("table")),
            by_hand=row.get("by_hand"),
            secret=bool(row.get("secret")),
        )
        for row in data["flags"]
    }
    values = {
        flag: {
            value.lower(): (tuple(entry["use"]), entry["why"])
            for value, entry in by_value.items()
        }
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
        # int, float, SGLang's human_readable_int (1k, 2Mi) and json.loads: values we check.
        "type": ("json" if action.type is json.loads
                 else type_name if type_name in ("int", "float", "human_readable_int")
                 else None),
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
    """One flag SGLang would refuse, and how to fix it.

    `wrong` holds the spans of the profile's argv the problem is about (a flag and its values);
    `right` the tokens to write in place of the first span (the others are removed): `()`
    means remove, None means there is no literal replacement (see `suggestion` and `also`).
    """

    flag: str
    message: str
    suggestion: str | None = None
    # True when the flag or value is another server's (wrong in every SGLang release);
    # False when only this table's release refuses it.
    certain: bool = False
    wrong: tuple[Tokens, ...] = ()
    right: Tokens | None = None
    # What else to do, said after the edit (e.g. "set ... in [speculative]").
    also: str = ""
    secret: bool = False
    # Refused when SGLang starts (after its parser accepted it): --dist-init-addr's value.
    at_launch: bool = False


def join_tokens(tokens: Tokens) -> str:
    """Tokens as one line, quoted (shell style) only where a token has spaces or quotes,
    so `[fd00::1]:5000` reads as written and a JSON value stays one token."""
    return " ".join(
        shlex.quote(token) if not token or re.search(r"[\s'\"`\\]", token) else token
        for token in tokens
    )


def _shown(tokens: Tokens, secret: bool) -> str:
    from llm_backend.credentials import MASK

    if secret:
        # The value, given apart (`-hft TOKEN`) or inline (`-hft=TOKEN`), is never shown.
        flag, inline, _ = tokens[0].partition("=")
        tokens = (f"{flag}={MASK}" if inline else flag, *(MASK for _ in tokens[1:]))
    return "`" + join_tokens(tokens) + "`"


def fix_of(problem: FlagProblem, profile_name: str | None = None) -> str | None:
    """The fix as the user follows it, literally: "replace `A 1` with `B 1`", "remove `A`"
    (then `also`); None when the problem carries no edit."""
    section = f"{profile_table(profile_name, 'speculative')}" if profile_name else "[speculative]"
    also = problem.also.replace("[speculative]", section)
    if problem.wrong and problem.right is not None:
        spans = " and ".join(_shown(span, problem.secret) for span in problem.wrong)
        edit = (f"replace {spans} with {_shown(problem.right, False)}" if problem.right
                else f"remove {spans}")
        return f"{edit}, then {also}" if also else edit
    if problem.suggestion and problem.suggestion != problem.flag:
        edit = f"replace {problem.flag} with {problem.suggestion}"
        return f"{edit}, then {also}" if also else edit
    return also or None


def fix_text(problems: tuple[FlagProblem, ...] | list[FlagProblem],
             profile_name: str | None = None) -> str | None:
    """Every problem's fix, joined with "; "; None when none has one."""
    fixes = [fix for problem in problems if (fix := fix_of(problem, profile_name))]
    return "; ".join(fixes) if fixes else None


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
    word, one word added or dropped, words swapped, or only the separators differ
    (`fp8e4m3` for `fp8_e4m3`). `--num-nodes` is not `--numa-node` (both words differ) and
    `fp8` is not `mxfp8` (a different format)."""
    if wrong == right:
        return False
    a, b = _words(wrong), _words(right)
    if not a or not b:
        return False
    if sorted(a) == sorted(b) or "".join(a) == "".join(b):
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


def _foreign_for(name: str, table: FlagTable) -> tuple[ForeignFlag | None, str]:
    """Another server's flag that `name` is, and how it is written: exactly, with vLLM's
    underscores (`--max_model_len`), as vLLM's dotted JSON key (`--speculative-config.method`)
    or as a unique prefix vLLM's argparse accepts (`--max-model`, vLLM's FlexibleArgumentParser
    keeps argparse's allow_abbrev; vllm/utils/argparse_utils.py)."""
    foreign = load_foreign().flags
    if name in foreign:
        return foreign[name], ""
    if name.startswith("--"):
        base = name.partition(".")[0]
        for candidate in (base, base.replace("_", "-")):
            if candidate in foreign:
                how = (f"vLLM's dotted form of {candidate}" if candidate != base.replace("_", "-")
                       or "." in name else f"vLLM's spelling of {candidate}")
                return foreign[candidate], how
        dashed = base.replace("_", "-")
        if not any(flag.startswith(dashed) for flag in table.by_flag):
            prefixed = [row for flag, row in foreign.items()
                        if row.origin == "vllm" and flag.startswith(dashed)]
            if len(prefixed) == 1 and len(dashed) >= 5:
                return prefixed[0], f"vLLM's abbreviation of {prefixed[0].flag}"
    return None, ""


def _number(text: str) -> float | None:
    """A finite number, or None (`inf`, `nan` and `1e999` are no value to scale or round)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _format_number(value: float, integer: bool) -> str:
    return str(round(value)) if integer else f"{round(value, 4):g}"


def _fill(template: Any, value: Any) -> Any:
    if template == "$":
        return value
    if isinstance(template, dict):
        return {key: _fill(item, value) for key, item in template.items()}
    return template


SPEC_METHODS = {
    # vLLM speculative_config "method" -> SGLang --speculative-algorithm
    # (vllm/config/speculative.py SpeculativeMethod; SGLang 0.5.23 spec_info.py)
    "eagle": "EAGLE", "eagle3": "EAGLE3", "ngram": "NGRAM", "mtp": "EAGLE",
    "deepseek_mtp": "EAGLE", "draft_model": "STANDALONE",
}


def _speculative_keys(value: str | None) -> str:
    """vLLM's --speculative-config JSON as the profile's [speculative] keys."""
    try:
        config = json.loads(value or "")
    except ValueError:
        config = None
    if not isinstance(config, dict):
        return "set enabled = true, algorithm and draft_model in [speculative]"
    keys = ["enabled = true"]
    method = str(config.get("method", "")).lower()
    if method in SPEC_METHODS or method.endswith("_mtp"):
        keys.append(f'algorithm = "{SPEC_METHODS.get(method, "EAGLE")}"')
    if config.get("model"):
        keys.append(f'draft_model = "{config["model"]}"')
    steps = config.get("num_speculative_tokens")
    if isinstance(steps, int) and steps > 0:
        keys += [f"num_steps = {steps}", "eagle_topk = 1", f"num_draft_tokens = {steps + 1}"]
    return f"set {', '.join(keys)} in [speculative]"


def foreign_edit(
    foreign: ForeignFlag, values: list[str], flags: list[str], table: FlagTable
) -> tuple[Tokens | None, str, str]:
    """What to write instead of another server's flag with `values`: (tokens, why, also).

    tokens `()` means remove it; None means there is no literal replacement (`also` then
    says what to do). Every replacement here parses with SGLang's own parser.
    """
    value = values[0] if values else None
    name = foreign.sglang
    if foreign.table:
        return (), "", _speculative_keys(value)
    if foreign.value_map is not None:
        key = (value or "").lower()
        if key in foreign.value_map:
            mapped = foreign.value_map[key]
            if mapped is None:
                return (), f"SGLang has no equivalent of {foreign.flag} {value}", ""
            if not mapped:
                return (), "SGLang's default does the same; remove it", ""
            return _checked_choices(mapped, table)
        if foreign.by_hand:
            return (), "", foreign.by_hand
        option = table.by_flag.get(name) if name else None
        if option is None or option.nargs == 0 or value is None:
            return (), f"SGLang has no equivalent of {foreign.flag} {value or ''}".rstrip(), ""
    if foreign.by_hand:
        return (), "", foreign.by_hand
    if name is None:
        return (), "", ""
    if foreign.replace is not None:
        return foreign.replace, "", ""
    option = table.by_flag[name]
    if option.nargs == 0:
        return (name,), ("SGLang's flag takes no value" if values else ""), ""
    if foreign.from_flags:
        given = next((found for flag in foreign.from_flags
                      if (found := _value_of(flags, flag)) is not None), None)
        return (name, given or foreign.default or "N"), "", ""
    if value is None:
        return (), f"{foreign.flag} was given no value", f"add {name} with a value"
    if foreign.json_template is not None:
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        return (name, json.dumps(_fill(foreign.json_template, parsed))), "", ""
    new_values = list(values)
    if foreign.offset is not None or foreign.scale is not None or foreign.times:
        number = _number(value)
        if number is None:
            return (), f"{value!r} is not a number", f"add {name} with a number"
        if foreign.scale is not None:
            number *= foreign.scale
        if foreign.offset is not None:
            number += foreign.offset
        if foreign.minimum is not None:
            number = max(number, foreign.minimum)
        for flag in foreign.times:
            factor = _number(_value_of(flags, flag) or "")
            if factor is not None:
                number *= factor
                break
        new_values = [_format_number(number, foreign.integer or bool(foreign.times))]
    elif foreign.count:
        new_values = [str(len([part for part in re.split(r"[,/]+", value) if part]))]
    elif foreign.strip_tag:
        new_values = [value.partition(":")[0]]
    if name == "--lora-paths":
        adapters = [_lora_adapter(item) for item in new_values]
        if None in adapters:
            bad = new_values[adapters.index(None)]
            return (), f"{bad!r} is no LoRA adapter SGLang reads", \
                "add --lora-paths with NAME=PATH for each adapter"
        new_values = [adapter for adapter in adapters if adapter is not None]
    return _checked_choices((name, *new_values), table)


def _lora_adapter(value: str) -> str | None:
    """A LoRA adapter as SGLang 0.5.23's --lora-paths takes it (`srt/arg_groups/
    argparse_actions.py` LoRAPathAction: `NAME=PATH`, `PATH`, or a JSON object with
    `lora_name` and `lora_path`, which it asserts). vLLM's JSON form (`vllm/entrypoints/
    openai/cli_args.py` LoRAParserAction: `{"name": ..., "path": ...}`) becomes NAME=PATH;
    None for a JSON object with neither."""
    text = value.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return value
    try:
        adapter = json.loads(text)
    except ValueError:
        return None
    if not isinstance(adapter, dict):
        return None
    if "lora_name" in adapter and "lora_path" in adapter:
        return value
    name, path = adapter.get("name"), adapter.get("path")
    if isinstance(name, str) and isinstance(path, str) and name and path and "=" not in name:
        return f"{name}={path}"
    return None


def _checked_choices(tokens: Tokens, table: FlagTable) -> tuple[Tokens | None, str, str]:
    """`tokens` with each value that is not one of its flag's choices replaced by SGLang's
    (`q8_0` -> `fp8_e4m3` for --kv-cache-dtype); the flag removed when there is none."""
    out: list[str] = []
    option: FlagOption | None = None
    for token in tokens:
        if _is_flag(token):
            option = table.by_flag.get(token)
            out.append(token)
            continue
        if option is not None and option.choices and token not in option.choices:
            right, _, _ = choice_for(option, token)
            if right is None:
                return (), f"{token!r} is not one of SGLang's choices for {option.flags[0]}", ""
            token = right
        kind = _refused_kind(option, token) if option is not None else None
        if option is not None and kind is not None:
            return (), f"{token!r} is not {kind}", f"add {option.flags[0]} with {kind}"
        out.append(token)
    return tuple(out), "", ""


# SGLang 0.5.23 srt/utils/common.py human_readable_int: an integer, or a number with an SI
# suffix (decimals allowed) or an IEC suffix (no decimals); suffixes are case-sensitive.
_HUMAN_INT = re.compile(r"\d+(?:\.\d+)?(?:k|M|G|T)|\d+(?:Ki|Mi|Gi|Ti)")


def _refused_kind(option: FlagOption, value: str) -> str | None:
    """What `value` should be when SGLang's parser refuses it for `option` (its `type`), as
    "an integer", "a number" or "JSON"; None when it takes it (or the type is not known)."""
    converters: dict[str | None, tuple[Callable[[str], Any], str]] = {
        "int": (int, "an integer"), "float": (float, "a number"),
        "human_readable_int": (int, "an integer"), "json": (json.loads, "JSON"),
    }
    if option.type not in converters:
        return None
    convert, kind = converters[option.type]
    if option.type == "human_readable_int":
        value = value.strip()
        if _HUMAN_INT.fullmatch(value):
            return None
    try:
        convert(value)  # what argparse calls: int(), float(), json.loads()
    except ValueError:
        return kind
    return None


def _value_of(flags: list[str], flag: str) -> str | None:
    """The value given to `flag` (`--x v` or `--x=v`), the last one wins; None if absent."""
    found: str | None = None
    for index, token in enumerate(flags):
        name, has_inline, inline = token.partition("=")
        if name == flag:
            if has_inline:
                found = inline
            elif index + 1 < len(flags) and not _is_flag(flags[index + 1]):
                found = flags[index + 1]
    return found


def _foreign_problem(
    name: str, how: str, foreign: ForeignFlag, span: Tokens, values: list[str],
    flags: list[str], table: FlagTable,
) -> FlagProblem:
    origin = ORIGINS.get(foreign.origin, foreign.origin)
    right, why, also = foreign_edit(foreign, values, flags, table)
    spelled = f" ({how})" if how else ""
    head = f"{name}{spelled} is {origin}'s, not an SGLang flag ({foreign.why})"
    if why:
        head += f"; {why}"
    if right:
        head += f"; use {join_tokens(right)}"
    elif foreign.sglang is None and not also:
        head = (f"{name}{spelled} is {origin}'s, not an SGLang flag, and SGLang has no "
                f"equivalent ({foreign.why})")
    return FlagProblem(
        name, head, foreign.sglang, certain=True, wrong=(span,), right=right, also=also,
        secret=foreign.secret,
    )


def _unknown(flag: str, table: FlagTable, span: Tokens | None = None) -> FlagProblem:
    """A flag SGLang does not know that is no other server's either."""
    foreign, how = _foreign_for(flag, table)
    if foreign is not None:
        return _foreign_problem(flag, how, foreign, span or (flag,), list((span or ())[1:]),
                                list(span or ()), table)
    dashed = flag.replace("_", "-")
    right: str | None = None
    why = ""
    if dashed != flag and dashed in table.by_flag:
        right, why = dashed, "SGLang's flags use dashes, not underscores"
    else:
        close = _typo_match(flag, [name for name in table.by_flag if name.startswith("--")])
        if close:
            right, why = close, "a near spelling"
    if right:
        return FlagProblem(flag, f"{flag} is not an SGLang flag ({why}); use {right}", right,
                           wrong=((flag,),), right=(right,))
    return FlagProblem(flag, f"{flag} is not an SGLang flag", None)


def _is_flag(token: str) -> bool:
    """`--x` and `-x` are flags; `-1` and `-0.5` are values."""
    return token.startswith("-") and len(token) > 1 and not re.match(r"-\.?\d", token)


RENDEZVOUS_ADDRESS = ("--master-addr", "--master_addr", "--data-parallel-address", "-dpa")
# The port each launcher uses when none is given: torchrun's --master-port default
# (torch.distributed.run) and vLLM's --data-parallel-rpc-port default (vllm/config/parallel.py).
RENDEZVOUS_PORT = {"--master-port": "29500", "--master_port": "29500",
                   "--data-parallel-rpc-port": "29550", "-dpp": "29550"}


def _merge_rendezvous(flags: list[str], problems: list[FlagProblem]) -> list[FlagProblem]:
    """torchrun's --master-addr X --master-port Y (and vLLM's data-parallel address and port)
    become one SGLang fix: --dist-init-addr X:Y, the host written by `net.host_port`
    (`[fd00::1]:5000` for IPv6). When --dist-init-addr is already given they are removed;
    a port alone on one node is SGLang's --nccl-port."""
    ours = [p for p in problems if p.flag in RENDEZVOUS_ADDRESS or p.flag in RENDEZVOUS_PORT]
    if not ours:
        return problems
    address = next((p.wrong[0][1] for p in ours if p.flag in RENDEZVOUS_ADDRESS
                    and len(p.wrong[0]) > 1), None)
    port_problem = next((p for p in ours if p.flag in RENDEZVOUS_PORT), None)
    port = (port_problem.wrong[0][1] if port_problem and len(port_problem.wrong[0]) > 1
            else None)
    if address == "":
        address = None
    if port is not None and not port.isdigit():
        port = None
    if address is not None:
        # `--master-addr 10.0.0.1:5000` carries its port already: one port, not two.
        with contextlib.suppress(ValueError):
            address, given_port = parse_host_port(address)
            port = port or str(given_port)
    wrong = tuple(span for p in ours for span in p.wrong)
    names = " and ".join(p.flag for p in ours)
    verb = "are" if len(ours) > 1 else "is"
    existing = _value_of(flags, "--dist-init-addr")
    right: Tokens | None
    also = ""
    if existing is not None:
        right = ()
        target = f"--dist-init-addr {existing} is already given"
        if port:
            target += f" (its port is the rendezvous port; to use {port}, change that value)"
    elif address is not None:
        port = port or RENDEZVOUS_PORT.get(port_problem.flag if port_problem else "", "29500")
        right = ("--dist-init-addr", host_port(address, port))
        target = join_tokens(right)
    elif port is None:
        right = ()
        target = "--dist-init-addr NODE0_ADDRESS:PORT"
        also = "add --dist-init-addr with node 0's address and a free port"
    elif (_number(_value_of(flags, "--nnodes") or "1") or 1) > 1:
        right = ()
        target = f"--dist-init-addr NODE0_ADDRESS:{port}"
        also = f"add --dist-init-addr with node 0's address and port {port}"
    else:
        right = ("--nccl-port", port or "29500")
        target = join_tokens(right) + " (one node: the port of its process group)"
    merged = FlagProblem(
        ours[0].flag if len(ours) == 1 else names,
        f"{names} {verb} another launcher's (torchrun or vLLM), not SGLang flags; "
        f"SGLang's rendezvous is one flag: {target}",
        right[0] if right else None,
        certain=True, wrong=wrong, right=right, also=also,
    )
    out: list[FlagProblem] = []
    for problem in problems:
        if problem in ours:
            if problem is ours[0]:
                out.append(merged)
            continue
        out.append(problem)
    return out


def _take_values(foreign: ForeignFlag, flags: list[str], index: int) -> int:
    """Where another server's flag's values end (how many it takes is in its table entry)."""
    if foreign.takes == 0:
        return index
    if foreign.takes == "?":
        if (index < len(flags) and not _is_flag(flags[index]) and foreign.value_map is not None
                and flags[index].lower() in foreign.value_map):
            return index + 1
        return index
    if foreign.takes == "+":
        return _skip_values(flags, index)
    return index + 1 if index < len(flags) and not _is_flag(flags[index]) else index


def check_with_table(flags: list[str], table: FlagTable) -> FlagCheck:
    """Parse `flags` the way argparse would (with unique-prefix abbreviations) against the table."""
    problems: list[FlagProblem] = []
    notes: list[str] = []
    seen_dests: set[str] = set()
    index = 0
    while index < len(flags):
        start = index
        token = flags[index]
        index += 1
        if not _is_flag(token):
            problems.append(FlagProblem(
                token, f"unexpected value {token!r} (not after a flag that takes one)",
                wrong=((token,),), right=(),
            ))
            continue
        name, has_inline, inline_value = token.partition("=")
        if (name.startswith("-O") and not name.startswith("--") and len(name) > 2
                and name not in table.by_flag and not has_inline):
            # vLLM's -O3 / -O=3 (vllm/utils/argparse_utils.py).
            name, has_inline, inline_value = "-O", "=", name[2:].lstrip("=")
        option = table.by_flag.get(name)
        unique_prefix = option is None and name.startswith("--") and len(
            {table.by_flag[flag].dest for flag in table.by_flag if flag.startswith(name)}
        ) == 1
        foreign, how = (None, "") if option is not None or unique_prefix else _foreign_for(
            name, table)
        if foreign is not None:
            # Another server's flag (even when it is an ambiguous prefix of SGLang ones). A
            # unique prefix of an SGLang flag (`--tensor-parallel`) SGLang accepts; noted below.
            if not has_inline:
                index = _take_values(foreign, flags, index)
            span = tuple(flags[start:index])
            given = [inline_value] if has_inline else list(span[1:])
            problems.append(_foreign_problem(name, how, foreign, span, given, flags, table))
            continue
        if option is None and not unique_prefix and not name.startswith("--"):
            # A short flag: argparse matches no prefix of SGLang's long options for `-x`.
            index = _skip_values(flags, index)
            problems.append(_unknown(name, table))
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
                problems.append(FlagProblem(
                    name, f"{name} takes no value, got {name}={inline_value}",
                    wrong=((token,),), right=(name,),
                ))
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
            problem = _check_value(name, option, value, inline=token if has_inline else None)
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
        problems=tuple(_merge_same_target(_merge_rendezvous(flags, problems))),
        notes=tuple(notes),
    )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _merge_same_target(problems: list[FlagProblem]) -> list[FlagProblem]:
    """Other servers' flags that become the same SGLang flag become one fix: llama.cpp's
    --temp 0.7 --top-p 0.9 one --preferred-sampling-params '{"temperature": 0.7, "top_p": 0.9}'
    (two would leave only the last, argparse's rule), -ctk q8_0 -ctv q8_0 one --kv-cache-dtype
    (SGLang has one dtype for K and V: the first is kept)."""
    groups: dict[str, list[FlagProblem]] = {}
    for problem in problems:
        if problem.certain and problem.right and problem.wrong:
            groups.setdefault(problem.right[0], []).append(problem)
    out: list[FlagProblem] = []
    for problem in problems:
        group = groups.get(problem.right[0]) if problem.right and problem.certain else None
        if not group or len(group) < 2 or problem not in group:
            out.append(problem)
            continue
        if problem is not group[0]:
            continue
        right = group[0].right or ()
        objects = [_json_object(p.right[1]) if p.right and len(p.right) == 2 else None
                   for p in group]
        if all(item is not None for item in objects):
            merged: dict[str, Any] = {}
            for item in objects:
                merged.update(item or {})
            right = (right[0], json.dumps(merged))
        out.append(FlagProblem(
            " and ".join(p.flag for p in group),
            "; ".join(p.message for p in group)
            + f"; SGLang takes {right[0]} once (the last one given wins), so they become one",
            right[0], certain=True,
            wrong=tuple(span for p in group for span in p.wrong), right=right,
            also=next((p.also for p in group if p.also), ""),
            secret=any(p.secret for p in group),
        ))
    return out


def _skip_values(flags: list[str], index: int) -> int:
    while index < len(flags) and not _is_flag(flags[index]):
        index += 1
    return index


def _normal(value: str) -> str:
    return value.lower().replace("-", "_")


def choice_for(option: FlagOption, value: str) -> tuple[str | None, str, bool]:
    """SGLang's choice for a value it would refuse, why, and whether the value is another
    server's (refused by every SGLang release); (None, "", False) when there is none.

    In order: another server's name for it (`data/foreign_flags.json` "values": vLLM's
    `FLASH_ATTN` is fa3, `bf16` is `--dtype bfloat16`), a slip of case or separator
    (`FLASHINFER`, `deepseek_r1`), a near-typo (`fp8e4m3`). Never a different format
    (`fp8` is not `mxfp8`).
    """
    choices = list(option.choices or ())
    aliases = load_foreign().values.get(option.flags[0], {})
    known = aliases.get(value.lower()) or aliases.get(_normal(value))
    if known is not None:
        use = [choice for choice in known[0] if choice in choices]
        if use:
            return use[0], known[1] + (f"; or {' or '.join(use[1:])}" if use[1:] else ""), True
    same = [choice for choice in choices if _normal(choice) == _normal(value)]
    if same:
        return same[0], "SGLang's choices are written " + same[0], False
    close = _typo_match(value.lower(), choices)
    if close:
        return close, "a near spelling", False
    return None, "", False


def _check_value(
    name: str, option: FlagOption, value: str, *, inline: str | None = None
) -> FlagProblem | None:
    span: Tokens = (inline,) if inline else (name, value)
    if option.choices and value not in option.choices:
        listed = (
            f"{', '.join(option.choices[:12])}{', ...' if len(option.choices) > 12 else ''}"
        )
        right, why, certain = choice_for(option, value)
        if right is not None:
            return FlagProblem(
                name,
                f"{name} {value!r} is not one of SGLang's choices ({why}); use {name} {right}",
                f"{name} {right}",
                certain=certain,
                wrong=(span,), right=(name, right),
            )
        return FlagProblem(name, f"{name} {value!r} is not one of SGLang's choices ({listed})")
    kind = _refused_kind(option, value)
    if kind is not None:
        return FlagProblem(name, f"{name} needs {kind}, got {value!r}")
    if option.dest == "dist_init_addr":
        try:
            parse_host_port(value)
        except ValueError as error:
            fixed = _bracketed(value)
            return FlagProblem(
                name,
                f"{name} {value!r}: SGLang refuses it ({error}; "
                "srt/utils/network.py NetworkAddress.parse)",
                f"{name} {fixed}" if fixed else None,
                certain=True, at_launch=True,
                wrong=(span,) if fixed else (), right=(name, fixed) if fixed else None,
            )
    return None


def _bracketed(value: str) -> str | None:
    """`fd00::1:5000` -> `[fd00::1]:5000`; None when the value cannot be read that way."""
    host, _, port = value.rpartition(":")
    if host and port.isdigit():
        try:
            parse_host_port(host_port(host, port))
        except ValueError:
            return None
        return host_port(host, port)
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


def _mask() -> str:
    from llm_backend.credentials import MASK

    return MASK


def _secret_values(problems: tuple[FlagProblem, ...]) -> list[str]:
    """The values given to secret flags (`-hft VALUE`, `-hft=VALUE`), longest first."""
    values: set[str] = set()
    for problem in problems:
        if problem.secret:
            for span in problem.wrong:
                values.update(token for token in span[1:] if token)
                inline = span[0].partition("=")[2] if span else ""
                if inline:
                    values.add(inline)
    return sorted(values, key=len, reverse=True)


def check_with_parser(
    command: list[str], flags: list[str], *, source: str, table: FlagTable, timeout_s: float
) -> FlagCheck | str:
    """Validate with SGLang's own parser; a string when that parser is not available there."""
    result = run_parser(command, flags, timeout_s)
    if isinstance(result, str):
        return result
    problems: list[FlagProblem] = []
    from_table = check_with_table(flags, table)
    stderr = str(result.get("stderr", ""))
    for value in _secret_values(from_table.problems):
        # argparse echoes what it refuses (`ignored explicit argument 'ft=VALUE'`).
        stderr = stderr.replace(value, _mask())
    if int(result.get("exit_code") or 0) != 0:
        # The table's reading of the same flag carries its value and the literal fix.
        by_flag = {part: problem for problem in from_table.problems
                   for part in problem.flag.split(" and ")}
        problems = []
        for problem in problems_from_parser_error(stderr, table):
            known = by_flag.get(problem.flag)
            chosen = known if known is not None and (known.wrong or known.also) else problem
            if chosen not in problems:
                problems.append(chosen)
        # argparse stops at the first error; add the other servers' flags it did not reach.
        named = {part for problem in problems for part in problem.flag.split(" and ")}
        problems += [
            problem
            for problem in from_table.problems
            if problem.certain and not set(problem.flag.split(" and ")) & named
        ]
    # What SGLang's parser accepts but SGLang refuses when it starts (--dist-init-addr).
    problems += [problem for problem in from_table.problems
                 if problem.at_launch and problem not in problems]
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


def _state_dir() -> Path | None:
    """The state dir for a helper container's label; None when there is none usable."""
    from llm_backend.errors import BackendError
    from llm_backend.state import state_dir

    try:
        return state_dir()
    except BackendError:
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
                [docker_cli(), "run", "--rm", *run_labels("flag-check", _state_dir()),
                 "--entrypoint", "python3", image],
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
    fix = fix_text(check.problems, profile.name) or "remove or correct those flags"
    raise ConfigError(
        f"profile {profile.name!r}: SGLang would refuse its flags ({messages}); "
        f"checked with {check.source}",
        remedy=f"in `extra_args` of {profile_table(profile.name)}: {fix} "
        f"(see `llm-backend profiles show {profile.name}`)",
        failure_class="bad_flag",
        details={"flag_check": check.summary},
    )
