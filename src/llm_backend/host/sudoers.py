"""`llm-backend host sudoers`: the minimal sudoers rules for host preparation as a normal user.

Every rule names an exact command line. Where a value is only known at run time (the swap
size when `swap_size = "auto"`, the PID of an OOM daemon without systemd) the arguments are a
sudoers regular expression that allows digits there and nothing else, never a `*` wildcard:
in sudoers `*` also matches spaces, so `dd ... count=*` would allow `count=1 of=/etc/shadow`
(sudoers(5), "Wildcards"; regular expressions need sudo 1.9.10 or later, an older sudo
treats them as literal text and so allows nothing).
"""

from __future__ import annotations

import math
import os
import re

from llm_backend.config import Profile, check_safe_path, parse_size
from llm_backend.errors import ConfigError
from llm_backend.host import caches, oom, swap
from llm_backend.host.privileges import Command, tool

# POSIX portable user names (useradd's default NAME_REGEX, plus upper case and digits first).
USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
# An argument may only hold these; sudoers' own special characters ',', ':', '=', '\\' are
# escaped, everything else (spaces, '*', '?', '[', '!', '#', quotes, newlines) is refused.
SAFE_ARGUMENT = re.compile(r"[A-Za-z0-9._/=+-]+")
# Stand for values known only at run time; each becomes a regular expression (see above).
DIGITS = "\0digits\0"
UUID = "\0uuid\0"
PLACEHOLDERS = {
    DIGITS: "[0-9]+",
    UUID: "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:").replace("=", "\\=")


def _regex(part: str) -> str:
    """One argument as part of a sudoers regular expression ('.' as '[.]': no backslashes)."""
    for placeholder, pattern in PLACEHOLDERS.items():
        if placeholder in part:
            return pattern.join(_regex(piece) for piece in part.split(placeholder))
    return _escape(part.replace(".", "[.]").replace("+", "[+]"))


def _plain(part: str) -> str:
    for placeholder in PLACEHOLDERS:
        part = part.replace(placeholder, "0")
    return part


def _line(command: Command) -> str:
    """One sudoers command spec; `""` means "exactly no arguments".

    Raises ConfigError if an argument holds anything but plain characters: a rule must
    never grant more than the one command line it names.
    """
    for part in command.argv:
        if not SAFE_ARGUMENT.fullmatch(_plain(part)):
            raise ConfigError(
                f"refusing to write a sudoers rule with the argument {part!r}: only letters, "
                "digits and '._/=+-' are allowed there",
                remedy="use a plain path for host_prep.swap_file, such as "
                '"/var/lib/llm-backend/swapfile"',
            )
    program, arguments = command.argv[0], command.argv[1:]
    if not arguments:
        return f'{_escape(program)} ""'
    if any(_plain(part) != part for part in arguments):
        return f"{_escape(program)} ^{' '.join(map(_regex, arguments))}$"
    return " ".join(_escape(part) for part in command.argv)


def check_user_name(user: str) -> None:
    """A user name goes into the rule's first field: refuse anything but a plain name."""
    if not USER_NAME_PATTERN.fullmatch(user):
        raise ConfigError(
            f"{user!r} is not a plain user name for a sudoers rule",
            remedy="pass --user NAME with the login name of the user (letters, digits, "
            "'_', '.', '-')",
        )


def sudoers_text(profile: Profile, user: str) -> str:
    """Exact commands only, for the profile's swap file; install as /etc/sudoers.d/llm-backend.

    Raises ConfigError for a user name or swap file path that a rule could not name exactly.
    """
    check_user_name(user)
    config = profile.host_prep
    path = config.swap_file
    try:
        check_safe_path(path)
    except ValueError as error:
        raise ConfigError(
            f"host_prep.swap_file: {error}",
            remedy="set host_prep.swap_file to a plain path such as "
            '"/var/lib/llm-backend/swapfile"',
        ) from None
    directory = path.rsplit("/", 1)[0] or "/"
    auto = config.swap_size == "auto"
    size = DIGITS if auto else str(math.ceil(parse_size(config.swap_size) / swap.MIB) * swap.MIB)
    count = DIGITS if auto else str(int(size) // swap.MIB)
    swap_commands = [
        Command((tool("install"), "-m", "0600", "/dev/null", path)),
        Command((tool("chattr"), "+C", path)),
        Command((tool("fallocate"), "-l", size, path)),
        Command((tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}",
                 "status=none")),
        swap.mkswap_command(path),
        swap.owner_command(path, UUID),
        Command((tool("swaplabel"), path)),
        Command((tool("swapon"), path)),
        Command((tool("swapoff"), path)),
        Command((tool("rm"), "-f", "--", path)),
    ]
    if not os.path.isdir(directory):
        # The directory will be created (and removed again when empty) by host preparation.
        swap_commands.insert(0, Command((tool("install"), "-d", "-m", "0700", directory)))
        swap_commands.append(Command((tool("rmdir"), "--", directory)))
    # `true` does nothing as root; it lets `llm-backend doctor` probe `sudo -n true`.
    cache_commands = [caches.sync_command(), caches.drop_command(), Command((tool("true"),))]
    lines = [
        f"# sudoers rules for llm-backend host preparation (profile {profile.name}).",
        "# Exact commands only. Check and install with:",
        "#   visudo -cf FILE && install -m 0440 -o root FILE /etc/sudoers.d/llm-backend",
        "# (the name must have no '.' in it, or sudo skips the file)",
    ]
    if auto:
        lines.append(
            "# swap_size is 'auto': the size arguments are regular expressions allowing digits"
            " only (sudo 1.9.10+)."
        )
    lines.append("Cmnd_Alias LLM_BACKEND_SWAP = " + ", \\\n    ".join(map(_line, swap_commands)))
    lines.append("Cmnd_Alias LLM_BACKEND_CACHES = " + ", ".join(map(_line, cache_commands)))
    aliases = ["LLM_BACKEND_SWAP", "LLM_BACKEND_CACHES"]
    daemons = list(config.pause_oom_daemons)
    if daemons and oom.systemd_running():
        units = [unit for daemon in daemons for unit in oom.SYSTEMD_UNITS[daemon]]
        oom_commands = [
            Command((tool("systemctl"), "--no-ask-password", verb, unit))
            for unit in units
            for verb in ("stop", "start")
        ]
        lines.append("# OOM daemons: runtime stop/start of their units (a polkit rule works too)")
        lines.append("Cmnd_Alias LLM_BACKEND_OOM = " + ", \\\n    ".join(map(_line, oom_commands)))
        aliases.append("LLM_BACKEND_OOM")
    elif daemons:
        kill = tool("kill")
        lines += [
            "# No systemd here: OOM daemons are paused with SIGSTOP and resumed with SIGCONT by",
            "# pid. sudoers cannot limit that to the daemon's pid, so this grants stopping and",
            "# continuing any one process by its pid; leave it out (and pause_oom_daemons = [])",
            "# if that is too much for this user.",
            "Cmnd_Alias LLM_BACKEND_OOM = "
            + ", ".join(_line(Command((kill, signal, DIGITS))) for signal in ("-STOP", "-CONT")),
        ]
        aliases.append("LLM_BACKEND_OOM")
    lines.append(f"{user} ALL=(root) NOPASSWD: {', '.join(aliases)}")
    return "\n".join(lines) + "\n"
