"""Host preparation as one journaled transaction: swap, OOM daemons, page cache, guard, restore.

`HostPrep` implements the lifecycle's `HostPreparation` protocol. `recover()` is what every
command runs first: it finishes (undoes) a transaction whose `start` died.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_backend.config import Profile, parse_size
from llm_backend.engines.base import Failure
from llm_backend.errors import BackendError, HostPrepError
from llm_backend.host import caches, oom, swap
from llm_backend.host.guard import MemoryGuard
from llm_backend.host.journal import (
    APPLIED,
    APPLYING,
    LEFT_ON,
    RESTORING,
    Journal,
    JournalStep,
    Transaction,
    fault_point,
)
from llm_backend.host.meminfo import MemInfo, boot_id, format_bytes, read_meminfo, read_swaps
from llm_backend.host.privileges import Command, Privileges, tool
from llm_backend.state import StateStore


@dataclass(frozen=True)
class Decision:
    """Everything the steps will do, decided from the profile and the host as it is now."""

    meminfo: MemInfo
    swap: swap.SwapPlan
    oom: oom.OomPlan | None
    drop_caches: bool

    def all_commands(self) -> list[Command]:
        """Every privileged command apply, guard and restore may run (for the sudo check)."""
        commands = list(self.swap.commands)
        if self.swap.action != "none":
            path = self.swap.path
            if self.swap.allocate_with == "fallocate":
                commands.append(swap.allocation_command("dd", path, self.swap.size))
            commands.append(Command((tool("swapoff"), path)))
            commands.append(Command((tool("rm"), "-f", "--", path)))
        if self.oom is not None:
            commands += self.oom.pause_commands() + self.oom.resume_commands()
        commands += [caches.sync_command(), caches.drop_command()]
        return commands


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover` (or the check every command makes) found and undid."""

    found: bool
    busy_pid: int | None = None
    same_boot: bool = True
    profile: str | None = None
    phase_before: str | None = None
    restored: list[str] = field(default_factory=list)
    left_on: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class HostPrep:
    """The journaled, reversible host changes around one load."""

    def __init__(
        self, profile: Profile, store: StateStore, privileges: Privileges | None = None
    ) -> None:
        self.profile = profile
        self.config = profile.host_prep
        self.store = store
        self.privileges = privileges or Privileges()
        self.journal = Journal(store.root)
        self.transaction: Transaction | None = None
        self.memory_guard: MemoryGuard | None = None
        self._guard_started = False

    # --- deciding -----------------------------------------------------------------------

    def decide(self) -> Decision:
        meminfo = read_meminfo()
        swap_plan = swap.plan_swap(self.config, self.privileges, meminfo)
        daemons = list(self.config.pause_oom_daemons)
        oom_plan = oom.plan_oom(daemons) if daemons else None
        return Decision(meminfo, swap_plan, oom_plan, self.config.drop_caches)

    def plan(self) -> list[str]:
        """Each step and its exact commands, for `start --dry-run`; changes nothing."""
        decision = self.decide()
        how = "as root" if self.privileges.is_root else "through sudo -n"
        lines = [f"host preparation ({how}), journaled in {self.journal.path}:"]
        describe = self.privileges.describe
        plan = decision.swap
        if plan.action == "none":
            lines.append(f"host 1 swap: none needed ({plan.reason})")
        elif plan.action == "reuse_active":
            lines.append(f"host 1 swap: {plan.reason}")
        else:
            lines.append(
                f"host 1 swap: {plan.action} {plan.path}, {format_bytes(plan.size)} "
                f"({plan.reason}) on {plan.filesystem} at {plan.mountpoint}, "
                f"{format_bytes(plan.free_bytes)} free"
            )
            lines += [f"    $ {describe(command)}" for command in plan.commands]
        if decision.oom is None:
            lines.append("host 2 oom daemons: none configured (host_prep.pause_oom_daemons)")
        else:
            lines += self._oom_plan_lines(decision.oom)
        if decision.drop_caches:
            lines.append("host 3 page cache: sync, then drop caches")
            lines += [
                f"    $ {describe(command)}"
                for command in (caches.sync_command(), caches.drop_command())
            ]
        else:
            lines.append("host 3 page cache: left alone (host_prep.drop_caches = false)")
        lines.append(
            f"host 4 guard while loading: every {self.config.guard_interval_s:g} s read "
            f"MemAvailable/SwapFree; under {self.config.guard_soft_floor} drop caches again, "
            f"under {self.config.guard_hard_floor} stop the load (out_of_memory) and restore"
        )
        lines.append(
            "host 5 restore after the load (also on failure, Ctrl-C, SIGTERM), reverse order:"
        )
        if decision.oom is not None:
            lines += [f"    $ {describe(command)}" for command in decision.oom.resume_commands()]
        if plan.action != "none":
            lines.append(
                f"    $ {describe(Command((tool('swapoff'), plan.path)))}   (only if its used "
                "swap fits comfortably in MemAvailable; deadline "
                f"{self.config.swapoff_timeout_s:g} s, else left on and shown in status)"
            )
            if not self.config.keep_swap_file:
                lines.append(f"    $ {describe(Command((tool('rm'), '-f', '--', plan.path)))}")
        return lines

    def _oom_plan_lines(self, plan: oom.OomPlan) -> list[str]:
        lines: list[str] = []
        if plan.mode == "systemd":
            active = ", ".join(plan.active_units) or "none active"
            lines.append(f"host 2 oom daemons (systemd): stop {active}")
        else:
            found = ", ".join(
                f"{p.daemon} pid {p.pid} ({' '.join(p.cmdline)})" for p in plan.processes
            ) or "none running"
            lines.append(f"host 2 oom daemons (no systemd): pause with SIGSTOP: {found}")
            for process in plan.already_stopped:
                lines.append(
                    f"    {process.daemon} pid {process.pid} is already stopped: left alone"
                )
        lines += [f"    $ {self.privileges.describe(command)}" for command in plan.pause_commands()]
        return lines

    # --- the protocol -------------------------------------------------------------------

    def check(self) -> None:
        """Refuse bad input and missing rights before anything on the host changes."""
        soft = parse_size(self.config.guard_soft_floor)
        hard = parse_size(self.config.guard_hard_floor)
        if hard > soft:
            raise HostPrepError(
                f"host_prep.guard_hard_floor = {self.config.guard_hard_floor!r} is above "
                f"host_prep.guard_soft_floor = {self.config.guard_soft_floor!r}",
                remedy="make guard_soft_floor at least as large as guard_hard_floor",
            )
        if self.journal.locked_by_other():
            existing = self.journal.read()
            owner = f" (pid {existing.owner_pid})" if existing else ""
            raise HostPrepError(
                f"another llm-backend{owner} is preparing this host right now",
                remedy="wait for it, or see `llm-backend status`",
            )
        orphan = self.journal.read()
        if orphan is not None and orphan.phase != LEFT_ON:
            # Starting over it would lose the record of what it changed.
            raise HostPrepError(
                f"an earlier start of {orphan.profile} (pid {orphan.owner_pid}) left host "
                f"changes unfinished ({self.journal.path})",
                remedy="llm-backend recover",
            )
        decision = self.decide()
        if decision.meminfo.usable < hard:
            raise HostPrepError(
                f"MemAvailable is {format_bytes(decision.meminfo.usable)}, already under "
                f"host_prep.guard_hard_floor = {self.config.guard_hard_floor!r}",
                remedy="free memory first (stop other programs), or lower "
                "host_prep.guard_hard_floor",
            )
        self.privileges.check_allowed(decision.all_commands())

    def apply(self) -> None:
        """Journal each step, then make it: swap on, OOM daemons paused, caches dropped."""
        if not self.journal.try_lock():
            raise HostPrepError(
                "another llm-backend is preparing this host right now",
                remedy="wait for it, or see `llm-backend status`",
            )
        previous = self.journal.read()
        if previous is not None and previous.phase != LEFT_ON:
            self.journal.unlock()
            raise HostPrepError(
                f"an earlier start of {previous.profile} (pid {previous.owner_pid}) left host "
                f"changes unfinished ({self.journal.path})",
                remedy="llm-backend recover",
            )
        decision = self.decide()
        transaction = Transaction(
            boot_id=boot_id(),
            profile=self.profile.name,
            owner_pid=os.getpid(),
            phase=APPLYING,
            created_at=time.time(),
            snapshot={
                "swaps": [asdict(area) for area in read_swaps()],
                "meminfo": asdict(decision.meminfo),
                "uid": self.privileges.uid,
            },
        )
        if previous is not None and previous.phase == LEFT_ON:
            # An earlier run had to leave its swap on; keep that undo in this transaction.
            taken_over = decision.swap.path if decision.swap.action != "none" else None
            for step in previous.steps:
                if step.status == "left_on" and step.data.get("path") != taken_over:
                    transaction.steps.append(JournalStep("swap.previous", "done", step.data))
        self.transaction = transaction
        self.journal.write(transaction, point="begin")
        if decision.swap.action != "none":
            self._step("swap", decision.swap.journal_data(self.config),
                       lambda: swap.apply_swap(decision.swap, self.privileges))
        oom_plan = decision.oom
        if oom_plan is not None and oom_plan.pause_commands():
            self._step("oom", oom_plan.journal_data(),
                       lambda: oom.pause(oom_plan, self.privileges))
        if decision.drop_caches:
            self._step("caches", {}, lambda: caches.drop_caches(self.privileges))
        transaction.phase = APPLIED
        self.journal.write(transaction, point="applied")
        self.memory_guard = MemoryGuard(
            soft_floor=parse_size(self.config.guard_soft_floor),
            hard_floor=parse_size(self.config.guard_hard_floor),
            interval_s=self.config.guard_interval_s,
            drop_caches=self._guard_drop if self.config.drop_caches else None,
        )

    def _step(
        self, name: str, data: dict[str, Any], action: Callable[[], list[str]]
    ) -> None:
        """Journal the intent (with what undo needs), act, journal it done."""
        assert self.transaction is not None
        step = JournalStep(name, "intent", data)
        self.transaction.steps.append(step)
        self.journal.write(self.transaction, point=f"{name}.intent")
        step.data["commands"] = action()
        step.status = "done"
        step.at = time.time()
        self.journal.write(self.transaction, point=f"{name}.done")

    def _guard_drop(self) -> None:
        # Best effort: a failed drop must not end the load; the hard floor still guards it.
        with contextlib.suppress(BackendError):
            caches.drop_caches(self.privileges)

    def guard(self) -> Failure | None:
        """Called by the monitor on every loop while the model loads."""
        if not self._guard_started:
            self._guard_started = True
            fault_point("guard.started")
        if self.memory_guard is None:
            return None
        return self.memory_guard.check()

    def restore(self) -> list[str]:
        """Undo in reverse order; returns what was undone (and what had to stay)."""
        transaction = self.transaction or self.journal.read()
        if transaction is None:
            self.journal.unlock()
            return []
        if not self.journal.try_lock():
            return []
        try:
            report = run_restore(transaction, self.journal, self.privileges, same_boot=True)
        finally:
            self.journal.unlock()
            self.transaction = None
        lines = list(report.restored)
        if self.memory_guard is not None and self.memory_guard.samples:
            guard = self.memory_guard
            lines.append(
                f"guard: {guard.samples} samples, lowest MemAvailable "
                f"{format_bytes(guard.min_available or 0)}, caches dropped again "
                f"{guard.soft_drops} times"
            )
        lines += [f"error: {error}" for error in report.errors]
        return lines


def run_restore(
    transaction: Transaction,
    journal: Journal,
    privileges: Privileges,
    *,
    same_boot: bool,
    swapoff_timeout_s: float | None = None,
) -> RecoveryReport:
    """Undo every step of `transaction` in reverse order, journaling each undo.

    Same boot: swapoff (when it fits), resume the OOM daemons, remove the file. After a
    reboot only the swap file is left to remove. A step that fails stays in the journal,
    so the next command tries again.
    """
    phase_before = transaction.phase
    transaction.phase = RESTORING
    journal.write(transaction, point="restore.begin")
    restored: list[str] = []
    left_on: list[dict[str, Any]] = []
    errors: list[str] = []
    for step in reversed(transaction.steps):
        if step.status == "undone":
            continue
        try:
            if step.name == "caches":
                restored.append("page cache: dropped (nothing to undo)")
                step.status = "undone"
            elif step.name == "oom":
                restored += oom.resume(step.data, privileges, same_boot=same_boot)
                step.status = "undone"
            elif step.name.startswith("swap"):
                data = dict(step.data)
                if swapoff_timeout_s is not None:
                    data["swapoff_timeout_s"] = swapoff_timeout_s
                undo = swap.undo_swap(data, privileges, same_boot=same_boot)
                restored += undo.lines
                if undo.left_on is not None:
                    step.status = "left_on"
                    step.data["left_on"] = undo.left_on
                    left_on.append(undo.left_on)
                else:
                    step.status = "undone"
        except BackendError as error:
            errors.append(f"{step.name}: {error.message} (fix: {error.remedy})")
        journal.write(transaction, point=f"restore.{step.name}")
    if not transaction.steps:
        restored.append("no step had started yet: nothing on the host to undo")
    if errors:
        transaction.notes.append(f"restore failed at {time.ctime()}: {'; '.join(errors)}")
        journal.write(transaction)
    elif left_on:
        transaction.phase = LEFT_ON
        journal.write(transaction)
    else:
        journal.remove()
    return RecoveryReport(
        found=True,
        same_boot=same_boot,
        profile=transaction.profile,
        phase_before=phase_before,
        restored=restored,
        left_on=left_on,
        errors=errors,
    )


def recover(
    store: StateStore,
    privileges: Privileges | None = None,
    *,
    swapoff_timeout_s: float | None = None,
    retry_left_on: bool = True,
) -> RecoveryReport:
    """Undo a transaction whose owner is gone: same boot, restore; new boot, clean up files.

    `swapoff_timeout_s` replaces the journaled deadline, for a swapoff that needs longer.
    With `retry_left_on=False` (the check every command makes) a swap file that restore
    had to leave on stays on and is only reported: a swapoff can take minutes, which is
    for `recover` or the next `start` to spend, not `status`.
    """
    journal = Journal(store.root)
    if not journal.path.exists():
        return RecoveryReport(found=False)
    if not journal.try_lock():
        existing = journal.read()
        return RecoveryReport(
            found=True,
            busy_pid=existing.owner_pid if existing else None,
            profile=existing.profile if existing else None,
            phase_before=existing.phase if existing else None,
        )
    try:
        transaction = journal.read()
        if transaction is None:
            return RecoveryReport(
                found=True, errors=[f"{journal.path} is not a readable journal; left as is"]
            )
        same_boot = transaction.boot_id == boot_id()
        if transaction.phase == LEFT_ON and same_boot and not retry_left_on:
            return RecoveryReport(
                found=True,
                profile=transaction.profile,
                phase_before=LEFT_ON,
                left_on=[s.data["left_on"] for s in transaction.steps if s.status == "left_on"],
            )
        return run_restore(
            transaction,
            journal,
            privileges or Privileges(),
            same_boot=same_boot,
            swapoff_timeout_s=swapoff_timeout_s,
        )
    finally:
        journal.unlock()


def host_status(store: StateStore) -> dict[str, Any] | None:
    """The host-prep part of `status`: None when nothing is in effect."""
    journal = Journal(store.root)
    if not journal.path.exists():
        return None
    transaction = journal.read()
    if transaction is None:
        return {"phase": "unreadable", "journal": str(journal.path)}
    left_on = [
        step.data["left_on"] for step in transaction.steps if step.status == "left_on"
    ]
    result: dict[str, Any] = {
        "phase": transaction.phase,
        "profile": transaction.profile,
        "owner_pid": transaction.owner_pid,
        "in_progress": journal.locked_by_other(),
        "same_boot": transaction.boot_id == boot_id(),
        "steps": {step.name: step.status for step in transaction.steps},
        "journal": str(journal.path),
    }
    if left_on:
        result["swap_left_on"] = left_on
        result["warning"] = (
            "our swap file is still on: " + "; ".join(
                f"{item['path']} ({item['reason']})" for item in left_on
            ) + "; `llm-backend recover` tries swapoff again"
        )
    if transaction.notes:
        result["notes"] = transaction.notes
    return result
