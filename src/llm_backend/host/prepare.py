"""Host preparation as one journaled transaction: swap, OOM daemons, page cache, guard, restore.

`HostPrep` implements the lifecycle's `HostPreparation` protocol. `recover()` is what every
command runs first: it finishes (undoes) a transaction whose `start` died.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_backend.config import Profile, parse_size
from llm_backend.engines.base import Failure
from llm_backend.errors import BackendError, HostPrepError
from llm_backend.host import caches, oom
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
from llm_backend.host.privileges import Command, Privileges
from llm_backend.host.steps import STEPS, HostStep, StepContext, UndoContext, step_named
from llm_backend.host.swap import SwapOwner, is_ours
from llm_backend.state import StateStore


@dataclass(frozen=True)
class Decision:
    """Every step, decided from the profile and the host as it is now."""

    meminfo: MemInfo
    steps: tuple[HostStep, ...]

    def all_commands(self) -> list[Command]:
        """Every privileged command apply, guard and restore may run (for the sudo check)."""
        return [command for step in self.steps for command in step.commands()]


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
    """The journaled, reversible host changes around one load: `STEPS` in order, undone in
    reverse. Implements the lifecycle's `HostPreparation` protocol.

    Errors: `HostPrepError` (a refused value or state, missing rights, a busy or unfinished
    journal) and `CommandFailed` (a privileged command exited non-zero), each with a remedy.
    Facts about swap, earlyoom, systemd-oomd and drop_caches are from util-linux swapon(8),
    mkswap(8), swaplabel(8), linux mm/swapfile.c, and earlyoom's README (see docs/).
    """

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

    def owner(self) -> SwapOwner:
        """This state dir as the owner of the swap file it makes."""
        return SwapOwner(state_id=self.store.state_id(), state_dir=str(self.store.root))

    def decide(self) -> Decision:
        """Decide every step; raises HostPrepError for input a step refuses."""
        meminfo = read_meminfo()
        context = StepContext(self.config, self.privileges, meminfo, self.owner())
        return Decision(meminfo, tuple(step.decide(context) for step in STEPS))

    def plan(self) -> list[str]:
        """Each step and its exact commands, for `start --dry-run`; changes nothing.

        Raises HostPrepError when a step refuses the profile's values or the host's state.
        """
        decision = self.decide()
        how = "as root" if self.privileges.is_root else "through sudo -n"
        lines = [f"host preparation ({how}), journaled in {self.journal.path}:"]
        describe = self.privileges.describe
        for number, step in enumerate(decision.steps, start=1):
            lines += step.plan_lines(number, describe)
        guard_number = len(decision.steps) + 1
        lines.append(
            f"host {guard_number} guard while loading: every {self.config.guard_interval_s:g} s "
            f"read MemAvailable/SwapFree; under {self.config.guard_soft_floor} drop caches "
            f"again, under {self.config.guard_hard_floor} stop the load (out_of_memory) and "
            "restore"
        )
        lines.append(
            f"host {guard_number + 1} restore after the load (also on failure, Ctrl-C, "
            "SIGTERM), reverse order:"
        )
        for step in reversed(decision.steps):
            lines += step.restore_lines(describe)
        return lines

    # --- the protocol -------------------------------------------------------------------

    def check(self) -> None:
        """Refuse bad input and missing rights before anything on the host changes.

        Raises HostPrepError: hard floor above soft floor, another start preparing this
        host, an unfinished journal (fix: `llm-backend recover`), MemAvailable already under
        the hard floor, a step refusing the profile, or a command sudo would not allow.
        """
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
        """Journal each step, then make it: swap on, OOM daemons paused, caches dropped.

        Raises HostPrepError or CommandFailed; what was done so far is in the journal and
        `restore` (or the next command's recovery) undoes it.
        """
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
            taken_over = {s.journal_data().get("path") for s in decision.steps if s.needed()}
            for entry in previous.steps:
                if entry.status == "left_on" and entry.data.get("path") not in taken_over:
                    transaction.steps.append(JournalStep("swap.previous", "done", entry.data))
        self.transaction = transaction
        self.journal.write(transaction, point="begin")
        for step in decision.steps:
            if step.needed():
                self._step(step.name, step.journal_data(), step.apply)
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
        """Called by the monitor on every loop while the model loads: an out_of_memory
        Failure once MemAvailable stays under host_prep.guard_hard_floor, else None."""
        if not self._guard_started:
            self._guard_started = True
            fault_point("guard.started")
        if self.memory_guard is None:
            return None
        return self.memory_guard.check()

    def restore(self) -> list[str]:
        """Undo in reverse order; returns what was undone (and what had to stay).

        Never raises for a failed undo: it comes back as an `error: ...` line and stays in
        the journal for `llm-backend recover`.
        """
        transaction = self.transaction or self.journal.read()
        if transaction is None:
            self.journal.unlock()
            return []
        if not self.journal.try_lock():
            return []
        try:
            report = run_restore(
                transaction, self.journal, self.privileges, same_boot=True, owner=self.owner()
            )
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
    owner: SwapOwner,
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
    context = UndoContext(privileges, same_boot, owner, swapoff_timeout_s)
    for step in reversed(transaction.steps):
        if step.status == "undone":
            continue
        kind = step_named(step.name)
        try:
            if kind is None:
                errors.append(f"{step.name}: not a step this tool makes; left alone")
                step.status = "undone"
            else:
                undo = kind.undo(dict(step.data), context)
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
    if not journal.exists():
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
        owner = SwapOwner(state_id=store.state_id(), state_dir=str(store.root))
        if transaction is None:
            if journal.damage is None:
                return RecoveryReport(found=False)
            # The record of what changed is lost: rebuild it from the system itself.
            transaction = rebuild_from_system(owner, privileges or Privileges())
            report = run_restore(transaction, journal, privileges or Privileges(),
                                 same_boot=True, owner=owner)
            damage = journal.damage.to_error()
            return replace(
                report,
                phase_before="damaged",
                restored=[f"error: {damage.message}", f"fix: {damage.remedy}",
                          *report.restored, *transaction.notes],
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
            owner=owner,
            swapoff_timeout_s=swapoff_timeout_s,
        )
    finally:
        journal.unlock()


def rebuild_from_system(owner: SwapOwner, privileges: Privileges) -> Transaction:
    """A transaction for what the system shows this state dir changed, when its journal is
    lost: its own active swap files (label and state id, checked again before each undo).
    Stopped OOM daemons are only reported: nothing says that this tool stopped them."""
    transaction = Transaction(boot_id(), "(unknown: its journal was damaged)", 0, RESTORING,
                              time.time())
    for area in read_swaps():
        if area.kind == "file" and is_ours(Path(area.path), privileges, owner)[0]:
            transaction.steps.append(JournalStep("swap", "done", {
                "path": area.path, "action": "reuse_active", "remove_file": True,
            }))
    for daemon in oom.PROCESS_NAMES:
        for process in oom.find_processes(daemon):
            if process.status == "stopped":
                transaction.notes.append(
                    f"warning: {daemon} pid {process.pid} is stopped (SIGSTOP); if llm-backend "
                    f"paused it, resume it: kill -CONT {process.pid}"
                )
    return transaction


def host_status(store: StateStore) -> dict[str, Any] | None:
    """The host-prep part of `status`: None when nothing is in effect."""
    journal = Journal(store.root)
    if not journal.exists():
        return None
    transaction = journal.read()
    if transaction is None:
        if journal.damage is None:
            return None
        damage = journal.damage.to_error()
        return {
            "phase": "damaged",
            "journal": str(journal.path),
            "steps": {},
            "warning": f"error: {damage.message}; fix: llm-backend recover (turns off this "
            "state dir's own swap files that are still on)",
        }
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
