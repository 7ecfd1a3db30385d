"""`llm-backend host sudoers`: the minimal sudoers rules for host preparation as a normal user."""

from __future__ import annotations

import math
import os

from llm_backend.config import Profile, parse_size
from llm_backend.host import caches, oom, swap
from llm_backend.host.privileges import Command, tool


def _line(command: Command) -> str:
    """One sudoers command spec; `""` means "exactly no arguments"."""
    argv = [
        part.replace(",", "\\,").replace(":", "\\:").replace("=", "\\=")
        for part in command.argv
    ]
    return " ".join(argv) if len(argv) > 1 else f'{argv[0]} ""'


def sudoers_text(profile: Profile, user: str) -> str:
    """Exact commands only, for the profile's swap file; install as /etc/sudoers.d/llm-backend."""
    config = profile.host_prep
    path = config.swap_file
    directory = path.rsplit("/", 1)[0] or "/"
    size = "*" if config.swap_size == "auto" else str(math.ceil(
        parse_size(config.swap_size) / swap.MIB) * swap.MIB)
    count = "*" if config.swap_size == "auto" else str(int(size) // swap.MIB)
    swap_commands = [
        Command((tool("install"), "-m", "0600", "/dev/null", path)),
        Command((tool("chattr"), "+C", path)),
        Command((tool("fallocate"), "-l", size, path)),
        Command((tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}",
                 "status=none")),
        Command((tool("mkswap"), "-L", swap.SWAP_LABEL, path)),
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
        f"# sudoers rules for llm-backend host preparation (profile {profile.name!r}).",
        "# Exact commands only. Check and install with:",
        "#   visudo -cf FILE && install -m 0440 -o root FILE /etc/sudoers.d/llm-backend",
        "# (the name must have no '.' in it, or sudo skips the file)",
    ]
    if config.swap_size == "auto":
        lines.append("# swap_size is 'auto', so the size arguments are wildcards.")
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
            "# continuing any process; leave it out (and pause_oom_daemons = []) if that is too",
            "# much for this user.",
            f"Cmnd_Alias LLM_BACKEND_OOM = {kill} -STOP *, {kill} -CONT *",
        ]
        aliases.append("LLM_BACKEND_OOM")
    lines.append(f"{user} ALL=(root) NOPASSWD: {', '.join(aliases)}")
    return "\n".join(lines) + "\n"
