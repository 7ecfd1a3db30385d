"""Step 1: our own swap file (never `swapon -a` / `swapoff -a`): create, mkswap, swapon, undo.

The file is ours when it is a regular root-owned file with mode 0600 and the SWAPSPACE2
signature, carries the swap label `llm-backend`, and its swap UUID is the state dir's id
(`mkswap -U`): a swap file belongs to exactly one state dir. When root makes it, the
boot block (the first 1024 bytes, unused by swap) also names that state dir, so another
state dir that is refused can be told which one owns it. Any other file or swap area is
left alone, and a swap file path that holds anything else is refused.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llm_backend.config import HostPrepConfig, check_safe_path, parse_size
from llm_backend.errors import HostPrepError
from llm_backend.host.meminfo import MemInfo, format_bytes, read_meminfo, swap_area
from llm_backend.host.privileges import Command, Privileges, run_with_deadline, tool

SWAP_LABEL = "llm-backend"
# struct swap_header (linux include/linux/swap.h): bootbits[1024], version, last_page,
# nr_badpages, uuid[16], volume_name[16], ...; the magic "SWAPSPACE2" ends the first page.
BOOTBITS = 1024
UUID_OFFSET = 1036
LABEL_OFFSET = 1052
OWNER_PREFIX = b"llm-backend state dir: "
MIB = 1024**2
GIB = 1024**3
# Free space to leave on the filesystem: 5 % of it, at least 64 MiB, at most 1 GiB.
DISK_MARGIN_MIN = 64 * MIB
DISK_MARGIN_MAX = GIB
# Filesystems a swap file cannot (or must not) live on: RAM-backed, network, layered, compressed.
REFUSED_FILESYSTEMS = frozenset(
    {
        "tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs", "zfs", "nfs", "nfs4", "cifs",
        "smb3", "9p", "fuse", "fuseblk", "proc", "sysfs", "aufs",
    }
)
# ext4 and xfs (Linux 4.18+) give hole-free preallocated files; elsewhere write zeros with dd.
FALLOCATE_FILESYSTEMS = frozenset({"ext4", "xfs"})


@dataclass(frozen=True)
class SwapOwner:
    """The state dir a swap file belongs to: its id (the swap UUID) and its path."""

    state_id: str
    state_dir: str


@dataclass(frozen=True)
class SwapHeader:
    """What the first page of a swap file says: label, UUID, and the owner's state dir."""

    label: str
    uuid: str
    owner_dir: str | None = None


@dataclass(frozen=True)
class SwapPlan:
    """What the swap step will do, decided from the config and the host as it is now."""

    path: str
    size: int
    action: str  # "create" | "recreate" | "reuse_file" | "reuse_active" | "none"
    reason: str
    filesystem: str = ""
    mountpoint: str = ""
    free_bytes: int = 0
    create_dir: str | None = None
    allocate_with: str = "fallocate"
    commands: tuple[Command, ...] = field(default_factory=tuple)
    owner_id: str = ""
    owner_dir: str = ""

    def journal_data(self, config: HostPrepConfig) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "action": self.action,
            "create_dir": self.create_dir,
            "remove_file": not config.keep_swap_file,
            "swapoff_timeout_s": config.swapoff_timeout_s,
            "hard_floor": parse_size(config.guard_hard_floor),
            "owner_id": self.owner_id,
        }


@dataclass(frozen=True)
class SwapUndo:
    """What undoing the swap step did; `left_on` says why our area is still active."""

    lines: list[str]
    left_on: dict[str, Any] | None = None


def filesystem_of(path: Path) -> tuple[str, str, Path]:
    """(fstype, mountpoint, nearest existing directory) for where `path` would live."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    real = os.path.realpath(existing)
    best = ("", "/")
    for partition in psutil.disk_partitions(all=True):
        mount = partition.mountpoint
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (partition.fstype, mount)
    return best[0], best[1], existing


def _uuid_text(raw: bytes) -> str:
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def read_header(path: Path, privileges: Privileges) -> SwapHeader | None:
    """Label, UUID and owner of the swap file at `path`; None if it has no swap signature.

    Opened without following a symlink. Not readable by us (not root): `swaplabel` as root.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError:
        return _read_header_with_swaplabel(path, privileges)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        header = os.pread(descriptor, page, 0)
    finally:
        os.close(descriptor)
    if len(header) < page or header[page - 10 :] != b"SWAPSPACE2":
        return None
    label = header[LABEL_OFFSET : LABEL_OFFSET + 16].split(b"\0", 1)[0]
    owner = None
    if header.startswith(OWNER_PREFIX):
        owner = header[len(OWNER_PREFIX) : BOOTBITS].split(b"\n", 1)[0].decode(
            "utf-8", errors="replace"
        )
    return SwapHeader(
        label=label.decode("utf-8", errors="replace"),
        uuid=_uuid_text(header[UUID_OFFSET : UUID_OFFSET + 16]),
        owner_dir=owner,
    )


def _read_header_with_swaplabel(path: Path, privileges: Privileges) -> SwapHeader | None:
    result = privileges.run(
        Command((tool("swaplabel"), str(path))), remedy="check the swap file path", check=False
    )
    if result.returncode != 0:
        return None
    values = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in result.stdout.splitlines())
    }
    return SwapHeader(label=values.get("LABEL", ""), uuid=values.get("UUID", ""))


def write_owner(path: str, owner: SwapOwner) -> None:
    """Name the owning state dir in the boot block (root only; swap never reads it)."""
    text = OWNER_PREFIX + owner.state_dir.encode() + b"\n"
    if len(text) > BOOTBITS:
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(descriptor, text, 0)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def is_ours(path: Path, privileges: Privileges, owner: SwapOwner) -> tuple[bool, str]:
    """Whether the file at `path` is a swap file this state dir made, and if not, why not."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False, "it does not exist"
    if not stat.S_ISREG(info.st_mode):
        return False, "it is not a regular file"
    if info.st_uid != 0:
        return False, f"it is owned by uid {info.st_uid}, not root"
    if stat.S_IMODE(info.st_mode) != 0o600:
        return False, f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0600"
    header = read_header(path, privileges)
    if header is None:
        return False, "it has no swap signature"
    if header.label != SWAP_LABEL:
        return False, f"its swap label is {header.label!r}, not {SWAP_LABEL!r}"
    if header.uuid != owner.state_id:
        where = f"the state dir {header.owner_dir}" if header.owner_dir else "another state dir"
        return False, (
            f"it belongs to {where} (swap UUID {header.uuid}), not to this state dir "
            f"{owner.state_dir} (id {owner.state_id}); a swap file serves one state dir"
        )
    return True, "it carries the llm-backend swap label and this state dir's id"


def has_holes(path: Path) -> bool:
    info = path.stat()
    return info.st_blocks * 512 < info.st_size


def wanted_size(config: HostPrepConfig, meminfo: MemInfo) -> tuple[int, str]:
    """Bytes of swap to add and why: the configured size, or `auto` from the footprint."""
    if config.swap_size != "auto":
        size = parse_size(config.swap_size)
        return math.ceil(size / MIB) * MIB, f"swap_size = {config.swap_size!r}"
    if config.expected_footprint is None:
        raise HostPrepError(
            "host_prep.swap_size is 'auto' but the profile has no host_prep.expected_footprint "
            "to size it from",
            remedy='set host_prep.swap_size = "16G" (a size) or host_prep.expected_footprint '
            '= "84G" (what the model uses once loaded) in the profile',
        )
    footprint = parse_size(config.expected_footprint)
    needed = footprint + parse_size(config.guard_soft_floor) - meminfo.mem_available
    if needed <= 0:
        return 0, (
            f"auto: expected footprint {format_bytes(footprint)} fits in MemAvailable "
            f"{format_bytes(meminfo.mem_available)}"
        )
    size = math.ceil(needed / GIB) * GIB
    return size, (
        f"auto: footprint {format_bytes(footprint)} + soft floor - MemAvailable "
        f"{format_bytes(meminfo.mem_available)}, rounded up"
    )


def mkswap_command(path: str) -> Command:
    return Command((tool("mkswap"), "-L", SWAP_LABEL, path))


def owner_command(path: str, state_id: str) -> Command:
    """Set the swap UUID to the owning state dir's id (swaplabel(8) `-U`)."""
    return Command((tool("swaplabel"), "-U", state_id, path))


def plan_swap(
    config: HostPrepConfig,
    privileges: Privileges,
    meminfo: MemInfo | None = None,
    *,
    owner: SwapOwner,
) -> SwapPlan:
    """Decide the swap step, refusing bad input before anything changes.

    Raises HostPrepError for a path on a RAM-backed or network filesystem, a path that
    holds anything but this state dir's own swap file, or too little free disk.
    """
    meminfo = meminfo or read_meminfo()
    raw_path = config.swap_file
    path = Path(raw_path)
    if not path.is_absolute() or ".." in path.parts:
        raise HostPrepError(
            f"host_prep.swap_file = {raw_path!r} is not an absolute path",
            remedy='set host_prep.swap_file to an absolute path such as '
            '"/var/lib/llm-backend/swapfile"',
        )
    size, reason = wanted_size(config, meminfo)
    if size == 0:
        return SwapPlan(path=raw_path, size=0, action="none", reason=reason)
    fstype, mountpoint, existing_dir = filesystem_of(path)
    if fstype in REFUSED_FILESYSTEMS:
        raise HostPrepError(
            f"host_prep.swap_file = {raw_path!r} is on a {fstype} filesystem ({mountpoint}); "
            "a swap file there would live in RAM or cannot be swapped to",
            remedy="set host_prep.swap_file to a path on a local disk (ext4 or xfs), "
            'such as "/var/lib/llm-backend/swapfile"',
        )
    active = swap_area(raw_path)
    exists = path.exists() or path.is_symlink()
    ours, why = is_ours(path, privileges, owner) if exists else (False, "")
    if exists and not ours and "state dir" in why:
        raise HostPrepError(
            f"host_prep.swap_file = {raw_path!r} is in use by another llm-backend: {why}",
            remedy="give this profile its own host_prep.swap_file (one per state dir), such "
            f'as "{path.parent}/swapfile-{owner.state_id[:8]}"; or stop the backend of the '
            "state dir that owns it and run `llm-backend recover` there",
        )
    if exists and not ours:
        state = "an active swap area" if active else "a file"
        raise HostPrepError(
            f"host_prep.swap_file = {raw_path!r} already exists as {state} that llm-backend "
            f"did not create ({why}); it will not be touched",
            remedy="set host_prep.swap_file to a path that does not exist yet, or remove "
            "that file yourself if you are sure it is unused",
        )
    if active is not None:
        return SwapPlan(
            path=raw_path, size=active.size, action="reuse_active",
            reason=f"our swap file is already active ({format_bytes(active.size)}); reused",
            filesystem=fstype, mountpoint=mountpoint,
            owner_id=owner.state_id, owner_dir=owner.state_dir,
        )
    vfs = os.statvfs(existing_dir)
    free = vfs.f_bavail * vfs.f_frsize
    margin = min(DISK_MARGIN_MAX, max(DISK_MARGIN_MIN, vfs.f_blocks * vfs.f_frsize // 20))
    if exists:
        current = path.stat()
        if current.st_size == size and not has_holes(path):
            return SwapPlan(
                path=raw_path, size=size, action="reuse_file",
                reason=f"our swap file is already there ({format_bytes(size)}); reused",
                filesystem=fstype, mountpoint=mountpoint, free_bytes=free,
                commands=(Command((tool("swapon"), raw_path)),),
                owner_id=owner.state_id, owner_dir=owner.state_dir,
            )
        free += current.st_blocks * 512
    if free < size + margin:
        raise HostPrepError(
            f"not enough disk for host_prep.swap_file = {raw_path!r}: it needs "
            f"{format_bytes(size)} plus a {format_bytes(margin)} margin, and "
            f"{mountpoint} ({fstype}) has {format_bytes(free)} free",
            remedy="free disk space there, set a smaller host_prep.swap_size, or put "
            "host_prep.swap_file on a filesystem with more room",
        )
    create_dir = None if path.parent.is_dir() else str(path.parent)
    allocate_with = "fallocate" if fstype in FALLOCATE_FILESYSTEMS else "dd"
    commands: list[Command] = []
    if create_dir:
        commands.append(Command((tool("install"), "-d", "-m", "0700", create_dir)))
    if exists:
        commands.append(Command((tool("rm"), "-f", "--", raw_path)))
    commands.append(Command((tool("install"), "-m", "0600", "/dev/null", raw_path)))
    if fstype == "btrfs":
        commands.append(Command((tool("chattr"), "+C", raw_path)))
    commands.append(allocation_command(allocate_with, raw_path, size))
    commands.append(mkswap_command(raw_path))
    commands.append(owner_command(raw_path, owner.state_id))
    commands.append(Command((tool("swapon"), raw_path)))
    return SwapPlan(
        path=raw_path,
        size=size,
        action="recreate" if exists else "create",
        reason=reason,
        filesystem=fstype,
        mountpoint=mountpoint,
        free_bytes=free,
        create_dir=create_dir,
        allocate_with=allocate_with,
        commands=tuple(commands),
        owner_id=owner.state_id,
        owner_dir=owner.state_dir,
    )


def allocation_command(method: str, path: str, size: int) -> Command:
    if method == "fallocate":
        return Command((tool("fallocate"), "-l", str(size), path))
    return Command(
        (tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MIB}", "status=none")
    )


def apply_swap(plan: SwapPlan, privileges: Privileges) -> list[str]:
    """Run the plan's commands; fall back to dd if fallocate fails or leaves holes."""
    done: list[str] = []
    remedy = (
        f"check {plan.path} and its filesystem ({plan.mountpoint}), or start with --no-host-prep"
    )
    if plan.action == "create" and (os.path.lexists(plan.path)):
        # Made between the plan and now, by someone else (another state dir's start).
        raise HostPrepError(
            f"host_prep.swap_file = {plan.path!r} appeared after it was planned; another "
            "llm-backend (or someone else) is making it",
            remedy="give each state dir its own host_prep.swap_file, then start again",
        )
    for command in plan.commands:
        is_fallocate = command.argv[0].endswith("fallocate")
        result = privileges.run(command, remedy=remedy, check=not is_fallocate)
        if is_fallocate and (result.returncode != 0 or has_holes(Path(plan.path))):
            fallback = allocation_command("dd", plan.path, plan.size)
            privileges.run(fallback, remedy=remedy)
            done.append(privileges.describe(fallback))
            continue
        done.append(privileges.describe(command))
        if command.argv[0].endswith("swaplabel") and privileges.is_root:
            write_owner(plan.path, SwapOwner(plan.owner_id, plan.owner_dir))
    active = swap_area(plan.path)
    if plan.action != "none" and active is None:
        raise HostPrepError(
            f"swapon {plan.path} reported success but the file is not in /proc/swaps",
            remedy="run `swapon --show` and `llm-backend recover`",
        )
    return done


def swapoff_budget(mem_available: int, hard_floor: int) -> int:
    """Used swap that fits comfortably in RAM: half of what is above the hard floor."""
    return max(0, (mem_available - hard_floor) // 2)


def undo_swap(
    data: dict[str, Any], privileges: Privileges, *, same_boot: bool, owner: SwapOwner
) -> SwapUndo:
    """Swapoff our file when its used pages fit comfortably in RAM, then remove it unless kept.

    Idempotent: checks /proc/swaps and the file before each action. A journal entry is
    only a hint: the file must still be this state dir's own swap file (label, UUID, root,
    0600) before it is swapped off or removed, so a forged or stale entry naming any other
    file or swap area changes nothing.
    """
    path = str(data.get("path") or "")
    lines: list[str] = []
    if not path or data.get("action") == "none":
        return SwapUndo(lines)
    try:
        check_safe_path(path)
    except ValueError as error:
        return SwapUndo([f"swap: the journal names {path!r}, which is not a path this tool "
                         f"makes ({error}); left alone"])
    file_path = Path(path)
    area = swap_area(path) if same_boot else None
    exists = os.path.lexists(path)
    ours, why = is_ours(file_path, privileges, owner) if exists else (False, "it does not exist")
    if exists and not ours:
        return SwapUndo([
            f"swap: left {path} alone: {why}; the journal named it, but only this state dir's "
            "own swap file is ever swapped off or removed (if it is an unfinished swap file "
            f"of an interrupted start, remove it by hand: swapoff {path}; rm {path})"
        ])
    if area is not None and not exists:
        return SwapUndo([f"swap: left {path} on: it is active but its file is gone, so it "
                         "cannot be checked as ours"])
    if area is not None:
        meminfo = read_meminfo()
        budget = swapoff_budget(meminfo.mem_available, int(data.get("hard_floor") or 0))
        if area.used > budget:
            reason = (
                f"{format_bytes(area.used)} of it is in use, more than fits comfortably in "
                f"MemAvailable {format_bytes(meminfo.mem_available)}"
            )
            return SwapUndo(
                [*lines, f"swap: left {path} on: {reason}"],
                left_on={"path": path, "used": area.used, "reason": reason},
            )
        deadline = float(data.get("swapoff_timeout_s") or 120)
        command = Command((tool("swapoff"), path))
        result = run_with_deadline(privileges, command, deadline_s=deadline)
        if result is None or result.returncode != 0:
            reason = (
                f"swapoff did not finish within {deadline:g} s"
                if result is None
                else f"swapoff exited {result.returncode}: {result.stderr.strip()}"
            )
            return SwapUndo(
                [*lines, f"swap: left {path} on: {reason}"],
                left_on={"path": path, "used": area.used, "reason": reason},
            )
        lines.append(f"swap: {privileges.describe(command)} ({format_bytes(area.used)} was in use)")
    remove = bool(data.get("remove_file", True))
    if remove and ours and swap_area(path) is None:
        command = Command((tool("rm"), "-f", "--", path))
        privileges.run(command, remedy=f"remove {path} by hand")
        lines.append(f"swap: removed {path}")
    elif not remove and ours:
        lines.append(f"swap: kept {path} (keep_swap_file = true)")
    create_dir = data.get("create_dir")
    if create_dir and _our_directory(str(create_dir), path) and swap_area(path) is None:
        # rmdir removes it only if empty: anything someone put there stays.
        command = Command((tool("rmdir"), "--", str(create_dir)))
        result = privileges.run(command, remedy=f"remove {create_dir} by hand", check=False)
        if result.returncode == 0:
            lines.append(f"swap: removed the directory {create_dir} it had created")
    return SwapUndo(lines)


def _our_directory(directory: str, path: str) -> bool:
    """The folder made for the swap file: its parent, a real directory, root's, mode 0700."""
    if os.path.dirname(path) != directory:
        return False
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o700
