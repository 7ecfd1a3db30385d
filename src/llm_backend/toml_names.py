"""Table headers and dotted keys written the way TOML reads them back.

A profile name such as `llama3.2` is not a TOML bare key (bare keys are ASCII letters,
digits, `_` and `-`; TOML 1.0.0, "Keys"): `[profiles.llama3.2]` would make a profile
`llama3` with a sub-table `2`. Every fix line that names a profile's table goes through
`profile_table` so the header it prints works when pasted.
"""

from __future__ import annotations

import json
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(part: str) -> str:
    """`llama3.2` -> `"llama3.2"`; a bare key (`smollm2-cpu`) unchanged."""
    if _BARE_KEY.fullmatch(part):
        return part
    return json.dumps(part, ensure_ascii=False)  # a TOML basic string: same escapes


def profile_key(name: str, *keys: str) -> str:
    """The dotted key `profiles.<name>[.<key>...]`, each part quoted where TOML needs it."""
    return ".".join(toml_key(part) for part in ("profiles", name, *keys))


def profile_table(name: str, *keys: str) -> str:
    """The table header `[profiles.<name>[.<key>...]]`, e.g. `[profiles."llama3.2".docker]`."""
    return f"[{profile_key(name, *keys)}]"
