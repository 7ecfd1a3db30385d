"""Step 3: `sync`, then drop the page cache and reclaimable slab (nothing to undo)."""

from __future__ import annotations

from llm_backend.host.privileges import Command, Privileges, tool

DROP_CACHES_PATH = "/proc/sys/vm/drop_caches"


def sync_command() -> Command:
    return Command((tool("sync"),))


def drop_command() -> Command:
    """`echo 3 | tee /proc/sys/vm/drop_caches`: tee so that sudoers can grant exactly it."""
    return Command((tool("tee"), DROP_CACHES_PATH), stdin="3\n")


def drop_caches(privileges: Privileges) -> list[str]:
    """sync first: drop_caches frees only clean pages."""
    done = []
    for command in (sync_command(), drop_command()):
        privileges.run(command, remedy="run `sync; echo 3 | sudo tee /proc/sys/vm/drop_caches`"
                       " by hand, or set host_prep.drop_caches = false")
        done.append(privileges.describe(command))
    return done
