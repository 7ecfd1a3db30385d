"""Host preparation as an ordered list of steps: swap, OOM daemons, page cache.

Each step is decided from the profile and the host as it is now, and then knows its plan
lines (for `start --dry-run`), every privileged command it may run (for `host sudoers` and
the `sudo -n -l` check), how to apply itself, and how to undo itself from its journal entry
alone (recovery after a crash has no profile, only the journal). `HostPrep` loops over
`STEPS` in order to apply and in reverse to restore, and never names a step itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from llm_backend.config import HostPrepConfig
from llm_backend.host import caches, oom, swap
from llm_backend.host.meminfo import MemInfo, format_bytes
from llm_backend.host.privileges import Command, Privileges, tool

Describe = Callable[[Command], str]


@dataclass(frozen=True)
class StepContext:
    """What deciding a step needs: the profile's host_prep table, rights, memory, owner."""

    config: HostPrepConfig
    privileges: Privileges
    meminfo: MemInfo
    owner: swap.SwapOwner


@dataclass(frozen=True)
class UndoContext:
    """What undoing a journaled step needs: rights, the boot it was made in, the owner."""

    privileges: Privileges
    same_boot: bool
    owner: swap.SwapOwner
    swapoff_timeout_s: float | None = None


@dataclass(frozen=True)
class StepUndo:
    """What an undo did; `left_on` (swap only) says why the change had to stay."""

    lines: list[str]
    left_on: dict[str, Any] | None = None


class HostStep(ABC):
    """One named, reversible host change, decided once per start."""

    # The step's name in the journal (`host-prep.json` "steps"[].name) and in fault points.
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def decide(cls, context: StepContext) -> HostStep:
        """Look at the host and the config; raises HostPrepError for input it refuses."""

    @abstractmethod
    def plan_lines(self, number: int, describe: Describe) -> list[str]:
        """`host N NAME: ...` and the exact commands apply would run."""

    @abstractmethod
    def restore_lines(self, describe: Describe) -> list[str]:
        """The exact commands restore would run, for the plan."""

    @abstractmethod
    def commands(self) -> list[Command]:
        """Every privileged command apply, the guard and restore may run (for sudo)."""

    @abstractmethod
    def needed(self) -> bool:
        """False when apply has nothing to change (then nothing is journaled)."""

    @abstractmethod
    def journal_data(self) -> dict[str, Any]:
        """What undo needs, written to the journal before apply runs."""

    @abstractmethod
    def apply(self) -> list[str]:
        """Make the change; returns the commands run. Raises HostPrepError/CommandFailed."""

    @classmethod
    @abstractmethod
    def undo(cls, data: dict[str, Any], context: UndoContext) -> StepUndo:
        """Undo from the journal entry alone; idempotent; touches only what the tool made."""


class Swap(HostStep):
    """Step 1: this state dir's own swap file, on while the model loads."""

    name = "swap"

    def __init__(self, plan: swap.SwapPlan, context: StepContext) -> None:
        self.plan = plan
        self.context = context

    @classmethod
    def decide(cls, context: StepContext) -> Swap:
        plan = swap.plan_swap(context.config, context.privileges, context.meminfo,
                              owner=context.owner)
        return cls(plan, context)

    def plan_lines(self, number: int, describe: Describe) -> list[str]:
        plan = self.plan
        if plan.action == "none":
            return [f"host {number} swap: none needed ({plan.reason})"]
        if plan.action == "reuse_active":
            return [f"host {number} swap: {plan.reason}"]
        return [
            f"host {number} swap: {plan.action} {plan.path}, {format_bytes(plan.size)} "
            f"({plan.reason}) on {plan.filesystem} at {plan.mountpoint}, "
            f"{format_bytes(plan.free_bytes)} free",
            *(f"    $ {describe(command)}" for command in plan.commands),
        ]

    def restore_lines(self, describe: Describe) -> list[str]:
        plan = self.plan
        if plan.action == "none":
            return []
        lines = [
            f"    $ {describe(Command((tool('swapoff'), plan.path)))}   (only if its used "
            "swap fits comfortably in MemAvailable; deadline "
            f"{self.context.config.swapoff_timeout_s:g} s, else left on and shown in status)"
        ]
        if not self.context.config.keep_swap_file:
            lines.append(f"    $ {describe(Command((tool('rm'), '-f', '--', plan.path)))}")
        return lines

    def commands(self) -> list[Command]:
        commands = list(self.plan.commands)
        if self.plan.action != "none":
            path = self.plan.path
            if self.plan.allocate_with == "fallocate":
                commands.append(swap.allocation_command("dd", path, self.plan.size))
            commands.append(Command((tool("swapoff"), path)))
            commands.append(Command((tool("rm"), "-f", "--", path)))
        return commands

    def needed(self) -> bool:
        return self.plan.action != "none"

    def journal_data(self) -> dict[str, Any]:
        return self.plan.journal_data(self.context.config)

    def apply(self) -> list[str]:
        return swap.apply_swap(self.plan, self.context.privileges)

    @classmethod
    def undo(cls, data: dict[str, Any], context: UndoContext) -> StepUndo:
        if context.swapoff_timeout_s is not None:
            data = {**data, "swapoff_timeout_s": context.swapoff_timeout_s}
        result = swap.undo_swap(data, context.privileges, same_boot=context.same_boot,
                                owner=context.owner)
        return StepUndo(result.lines, result.left_on)


class OomDaemons(HostStep):
    """Step 2: the userspace OOM killers that are active, paused while the model loads."""

    name = "oom"

    def __init__(self, plan: oom.OomPlan | None, context: StepContext) -> None:
        self.plan = plan
        self.context = context

    @classmethod
    def decide(cls, context: StepContext) -> OomDaemons:
        daemons = list(context.config.pause_oom_daemons)
        return cls(oom.plan_oom(daemons) if daemons else None, context)

    def plan_lines(self, number: int, describe: Describe) -> list[str]:
        plan = self.plan
        if plan is None:
            return [f"host {number} oom daemons: none configured (host_prep.pause_oom_daemons)"]
        lines: list[str] = []
        if plan.mode == "systemd":
            active = ", ".join(plan.active_units) or "none active"
            lines.append(f"host {number} oom daemons (systemd): stop {active}")
        else:
            found = ", ".join(
                f"{p.daemon} pid {p.pid} ({' '.join(p.cmdline)})" for p in plan.processes
            ) or "none running"
            lines.append(f"host {number} oom daemons (no systemd): pause with SIGSTOP: {found}")
            lines += [
                f"    {process.daemon} pid {process.pid} is already stopped: left alone"
                for process in plan.already_stopped
            ]
        lines += [f"    $ {describe(command)}" for command in plan.pause_commands()]
        return lines

    def restore_lines(self, describe: Describe) -> list[str]:
        if self.plan is None:
            return []
        return [f"    $ {describe(command)}" for command in self.plan.resume_commands()]

    def commands(self) -> list[Command]:
        if self.plan is None:
            return []
        return self.plan.pause_commands() + self.plan.resume_commands()

    def needed(self) -> bool:
        return self.plan is not None and bool(self.plan.pause_commands())

    def journal_data(self) -> dict[str, Any]:
        return self.plan.journal_data() if self.plan is not None else {}

    def apply(self) -> list[str]:
        assert self.plan is not None
        return oom.pause(self.plan, self.context.privileges)

    @classmethod
    def undo(cls, data: dict[str, Any], context: UndoContext) -> StepUndo:
        return StepUndo(oom.resume(data, context.privileges, same_boot=context.same_boot))


class PageCache(HostStep):
    """Step 3: `sync`, then drop the page cache (nothing to undo)."""

    name = "caches"

    def __init__(self, enabled: bool, context: StepContext) -> None:
        self.enabled = enabled
        self.context = context

    @classmethod
    def decide(cls, context: StepContext) -> PageCache:
        return cls(context.config.drop_caches, context)

    def plan_lines(self, number: int, describe: Describe) -> list[str]:
        if not self.enabled:
            return [f"host {number} page cache: left alone (host_prep.drop_caches = false)"]
        return [
            f"host {number} page cache: sync, then drop caches",
            *(f"    $ {describe(command)}" for command in self.commands()),
        ]

    def restore_lines(self, describe: Describe) -> list[str]:
        return []

    def commands(self) -> list[Command]:
        # Listed even when disabled: the memory guard drops caches only if enabled, but
        # `host sudoers` and the sudo check have always covered them.
        return [caches.sync_command(), caches.drop_command()]

    def needed(self) -> bool:
        return self.enabled

    def journal_data(self) -> dict[str, Any]:
        return {}

    def apply(self) -> list[str]:
        return caches.drop_caches(self.context.privileges)

    @classmethod
    def undo(cls, data: dict[str, Any], context: UndoContext) -> StepUndo:
        return StepUndo(["page cache: dropped (nothing to undo)"])


# In apply order; restore runs them in reverse.
STEPS: tuple[type[HostStep], ...] = (Swap, OomDaemons, PageCache)


def step_named(journal_name: str) -> type[HostStep] | None:
    """The step class for a journal entry; `swap.previous` (a left-on swap file taken over
    from an earlier start) is undone like `swap`."""
    base = journal_name.split(".", 1)[0]
    return next((step for step in STEPS if step.name == base), None)
