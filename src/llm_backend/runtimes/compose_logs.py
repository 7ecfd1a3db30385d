"""Docker Compose's own additions to a server's log: the `service  | ` prefix and exit lines.

`docker compose up` and `docker compose logs` print each line as `NAME<padding> | text`
(NAME is the service, `service-1` in Compose v2 or `service_1` in v1), optionally coloured,
and report a container's end as `NAME exited with code N`, with ` (restarting)` when the
restart policy starts it again (Compose v2). Engines' log readers see the text only.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PREFIX = re.compile(r"^(?P<service>[A-Za-z0-9][A-Za-z0-9_.-]*)\s+\| ?")
EXIT = re.compile(
    r"^(?P<service>[A-Za-z0-9][A-Za-z0-9_.-]*) exited with code (?P<code>-?\d+)"
    r"(?P<restarting> \(restarting\))?\s*$"
)


def strip_compose_prefix(line: str) -> str:
    """`llama-server  | error: ...` -> `error: ...`; other lines unchanged (colours removed)."""
    plain = ANSI.sub("", line) if "\x1b[" in line else line
    match = PREFIX.match(plain)
    return plain[match.end():] if match else plain


def compose_exit(line: str) -> tuple[str, int, bool] | None:
    """(service, exit code, restarting) for Compose's `NAME exited with code N` line, else None."""
    match = EXIT.match(line.strip())
    if match is None:
        return None
    return match.group("service"), int(match.group("code")), bool(match.group("restarting"))
