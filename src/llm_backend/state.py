"""The state dir: the instance record, start history, locks and atomic writes.

Every change of the instance record is one locked read-modify-write (`StateStore.begin`,
`transition`, `update`), checked against `TRANSITIONS` from the state that is on disk, not
the one the caller last saw: a `start` that is dying cannot overwrite what `stop` wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import stat
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from llm_backend.errors import AlreadyStartingError, BackendError
from llm_backend.locks import FileLock
from llm_backend.net import connect_url, http_url

INSTANCE_FILE = "instance.json"
HISTORY_FILE = "history.json"
START_LOCK = "start.lock"
STATE_LOCK = "state.lock"
STOP_REQUEST_FILE = "stop-request.json"
HOST_JOURNAL_FILE = "host-prep.json"  # written by llm_backend.host.journal
STATE_ID_FILE = "state-id"


DAMAGED_SUFFIX = ".damaged"
# A state file bigger than this is not one we wrote (the records are a few KiB).
MAX_STATE_FILE_BYTES = 4 * 1024 * 1024


class StateDirError(BackendError):
    """The state dir, or a file in it, cannot be trusted or used: names the path and the fix."""


@dataclass(frozen=True)
class DamagedFile:
    """A state file that could not be read: moved aside (kept for the user), and why."""

    path: str
    moved_to: str | None
    reason: str

    def to_error(self) -> BackendError:
        kept = f"; moved to {self.moved_to}" if self.moved_to else ""
        return StateDirError(
            f"{self.path} was damaged ({self.reason}){kept}",
            remedy="nothing to repair: the commands go on without it; look at the kept file "
            "if you need what it said (a record names the server's pid), then delete it",
        )


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def home_dir() -> Path:
    """The user's home: $HOME, else the password database; a StateDirError when neither
    names one (Path.home() raises RuntimeError then)."""
    try:
        return Path.home()
    except RuntimeError:
        raise StateDirError(
            "HOME is not set and this user has no home directory in the password database",
            remedy="set HOME, or set LLM_BACKEND_STATE_DIR and XDG_CONFIG_HOME",
        ) from None
class State(StrEnum):
    """Where one backend is in its life; the value is what `status --json` prints."""

    STOPPED = "stopped"
    PREPARING_HOST = "preparing_host"
    LAUNCHING = "launching"
    LOADING = "loading"
    READY = "ready"
    # A member that serves no API of its own and is up (a multi-node follower rank whose
    # health endpoint answers once its weights are in); it never becomes "ready".
    ALIVE = "alive"
    STOPPING = "stopping"
    FAILED = "failed"


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.PREPARING_HOST, State.LAUNCHING}),
    State.PREPARING_HOST: frozenset({State.LAUNCHING, State.FAILED, State.STOPPING}),
    State.LAUNCHING: frozenset({State.LOADING, State.FAILED, State.STOPPING}),
    State.LOADING: frozenset({State.READY, State.ALIVE, State.FAILED, State.STOPPING}),
    State.READY: frozenset({State.STOPPING, State.FAILED}),
    State.ALIVE: frozenset({State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.STOPPING, State.STOPPED, State.PREPARING_HOST,
                             State.LAUNCHING}),
}
"""The allowed moves: stopped -> preparing_host -> launching -> loading -> ready -> stopping
-> stopped, and failed from any step (DESIGN.md, "Lifecycle")."""

ACTIVE_STATES = frozenset(
    {State.PREPARING_HOST, State.LAUNCHING, State.LOADING, State.READY, State.ALIVE}
)
"""States in which a backend is (being) run: `start` reports it instead of starting another."""

UP_STATES = frozenset({State.READY, State.ALIVE})
"""States in which the load is over and the server is up."""

STARTING_STATES = frozenset({State.PREPARING_HOST, State.LAUNCHING, State.LOADING})
"""States in which a `start` owns the record and watches the load."""


class StateConflict(BackendError):
    """The record on disk is not in a state from which the requested change is allowed.

    `current` is the record on disk (None when there is none).
    """

    def __init__(self, message: str, *, current: InstanceRecord | None) -> None:
        super().__init__(
            message,
            remedy="run `llm-backend status`: another llm-backend command changed the backend",
        )
        self.current = current


def allowed(source: State | str, target: State | str) -> bool:
    """Whether the table allows `source -> target`."""
    return State(target) in TRANSITIONS.get(State(source), frozenset())


def state_dir() -> Path:
    """$LLM_BACKEND_STATE_DIR, else $XDG_STATE_HOME/llm-backend, else ~/.local/state/llm-backend.

    Made with mode 0700 if missing. Raises StateDirError when it names a file, cannot be
    made, or is not owned by the running user / is writable by others (see `trusted_dir`).
    """
    explicit = os.environ.get("LLM_BACKEND_STATE_DIR")
    if explicit:
        path = Path(explicit)
        source = f"LLM_BACKEND_STATE_DIR={explicit}"
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(home_dir() / ".local" / "state")
        path = Path(base) / "llm-backend"
        source = f"the state dir {path}"
    return make_state_dir(path, source)


def make_state_dir(path: Path, source: str | None = None) -> Path:
    """Create `path` (mode 0700) if missing, then check that it can be trusted."""
    source = source or f"the state dir {path}"
    try:
        exists = path.exists()
    except OSError as error:  # EACCES: a parent (an unreadable HOME) cannot be searched
        raise StateDirError(
            f"cannot look at {source}: {error.strerror} (a parent directory cannot be searched)",
            remedy="set LLM_BACKEND_STATE_DIR to a directory you own, or make the parents of "
            f"{path} searchable by this user (chmod u+x)",
        ) from None
    if exists and not path.is_dir():
        raise StateDirError(
            f"{source} is not a directory",
            remedy="point LLM_BACKEND_STATE_DIR at a directory you own (or unset it)"
            if source.startswith("LLM_BACKEND_STATE_DIR")
            else f"set LLM_BACKEND_STATE_DIR to a directory you own, or rename {path}",
        )
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StateDirError(
            f"cannot create {source}: {error.strerror}",
            remedy="set LLM_BACKEND_STATE_DIR to a directory you can write, or fix the "
            f"permissions of {path.parent}",
        ) from None
    trusted_dir(path)
    return path


def trusted_dir(path: Path) -> None:
    """The state dir must be the running user's and writable by no one else.

    Root acts on what the state dir says (journal, records), so a directory another user
    can write is refused. Group/other read bits on our own directory are removed (0700):
    logs may hold prompts. Raises StateDirError with the chown/chmod fix.
    """
    info = os.stat(path)
    uid = os.geteuid()
    if info.st_uid != uid:
        raise StateDirError(
            f"the state dir {path} is owned by uid {info.st_uid}, not by {_user()} (uid {uid}) "
            "who runs llm-backend; its records could make this user act on what another wrote",
            remedy=f"give {_user()} a state dir of its own (set LLM_BACKEND_STATE_DIR, or unset "
            f"it and XDG_STATE_HOME), or take this one over: sudo chown -R {_user()} {path}",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise StateDirError(
            f"the state dir {path} is writable by others (mode {mode:04o})",
            remedy=f"chmod 0700 {path}",
        )
    if mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)


def _check_handle(fd: int, path: Path) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StateDirError(
            f"{path} is not a regular file",
            remedy=f"move it away: mv {path} {path}{DAMAGED_SUFFIX}",
        )
    uid = os.geteuid()
    if info.st_uid != uid:
        raise StateDirError(
            f"{path} is owned by uid {info.st_uid}, not by {_user()} (uid {uid})",
            remedy=f"sudo chown {_user()} {path}  (or remove it)",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.fchmod(fd, 0o600)
    return info


def open_state_file(path: Path, flags: int = os.O_RDONLY) -> int:
    """Open a file in the state dir without following a symlink; a new file gets mode 0600.

    The file must be a regular file owned by the running user; group/other bits are
    removed. Returns the descriptor. Raises StateDirError (symlink, directory, other
    owner, or an OSError such as EACCES, EROFS, ENOSPC) naming the path and a fix.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        _check_handle(fd, path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _os_error(path: Path, error: OSError) -> StateDirError:
    if error.errno == errno.ELOOP:
        return StateDirError(
            f"{path} is a symbolic link; llm-backend never follows links in its state dir",
            remedy=f"rm {path}",
        )
    if error.errno == errno.EISDIR:
        return StateDirError(
            f"{path} is a directory, not a file",
            remedy=f"move it away: mv {path} {path}{DAMAGED_SUFFIX}",
        )
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateDirError(
            f"cannot write {path}: no space left on its filesystem",
            remedy=f"free space on the filesystem of {path.parent}, or set "
            "LLM_BACKEND_STATE_DIR to a directory on another one",
        )
    if error.errno == errno.EROFS:
        return StateDirError(
            f"cannot write {path}: the filesystem of {path.parent} is read-only",
            remedy="remount it read-write, or set LLM_BACKEND_STATE_DIR to a writable directory",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StateDirError(
            f"cannot write {path}: {error.strerror}",
            remedy=f"make {path.parent} writable for {_user()} (chmod u+w), or set "
            "LLM_BACKEND_STATE_DIR to a writable directory",
        )
    return StateDirError(
        f"cannot use {path}: {error.strerror or error}",
        remedy=f"check {path} and its directory, or set LLM_BACKEND_STATE_DIR elsewhere",
    )


def atomic_write_json(path: Path, data: Any) -> None:
    """Write, fsync, rename, fsync the directory: a reader sees the old file or the new one."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the directory: a reader sees the old file or the new one.

    The file gets mode 0600; the temporary file is made exclusively (never through a link)
    and removed again when anything fails. Raises StateDirError (read-only or full state
    dir, a directory in the way) naming the path and the fix.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # ours, from a write this process did not finish
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if path.is_dir() and not path.is_symlink():
                raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
            os.replace(tmp, path)
        except OSError as error:
            raise _os_error(path, error) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def open_log(path: Path, *, truncate: bool = False) -> int:
    """Open a log for appending (emptied first with `truncate`), never through a symlink.

    Returns a descriptor of a regular file of the running user, mode 0600 (logs can hold
    prompts). Raises StateDirError for a symlink (whose target must not be truncated by
    root), a directory, another owner's file, or an unwritable or full state dir.
    """
    fd = open_state_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    if truncate:
        try:
            os.ftruncate(fd, 0)
        except OSError as error:
            os.close(fd)
            raise _os_error(path, error) from None
    return fd


def read_state_bytes(path: Path) -> bytes | None:
    """The bytes of a state file, or None if it does not exist. Raises StateDirError."""
    try:
        fd = open_state_file(path)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            return handle.read(MAX_STATE_FILE_BYTES + 1)
    except OSError as error:
        raise _os_error(path, error) from None


def move_aside(path: Path) -> str | None:
    """Rename a damaged state file (or directory) to NAME.damaged-TIME; None if that failed."""
    target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}")
    counter = 0
    while target.exists() or target.is_symlink():
        counter += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{counter}")
    try:
        os.rename(path, target)
    except OSError:
        return None
    return str(target)


def load_state_json(path: Path, *, expect: type = dict) -> tuple[Any | None, DamagedFile | None]:
    """Read a JSON state file: (data, None), (None, None) if missing, or (None, damage).

    Anything unreadable (binary bytes, not JSON, the wrong top-level type, too big, a
    directory, a symlink, another owner's file) is moved aside and reported as damage;
    this never raises for the file's contents, so `status` and `stop` keep working.
    """
    try:
        raw = read_state_bytes(path)
    except StateDirError as error:
        problem = error.message.removeprefix(f"{path} ")
        if not (path.is_dir() or path.is_symlink() or path.is_file()):
            return None, DamagedFile(str(path), None, problem)
        return None, DamagedFile(str(path), move_aside(path), problem)
    if raw is None:
        return None, None
    reason: str | None = None
    data: Any = None
    if len(raw) > MAX_STATE_FILE_BYTES:
        reason = f"larger than {MAX_STATE_FILE_BYTES} bytes"
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
        except ValueError as error:
            reason = f"not JSON: {error}"
        else:
            if not isinstance(data, expect):
                reason = f"a JSON {type(data).__name__}, not a {expect.__name__}"
    if reason is None:
        return data, None
    return None, DamagedFile(str(path), move_aside(path), reason)


def read_json(path: Path) -> Any | None:
    """A JSON state file's data; None if missing or unreadable (then it is moved aside)."""
    data, _ = load_state_json(path, expect=object)
    return data


@dataclass(frozen=True)
class InstanceRecord:
    """One backend as recorded by `start`; later commands adopt it from here."""

    profile: str
    engine: str
    runtime: str
    state: State
    host: str
    port: int
    served_model_name: str
    argv: list[str]
    log_path: str
    created_at: float
    pid: int | None = None
    pid_create_time: float | None = None
    # The command acting on the record now: the `start` watching the load, or the `stop`.
    owner_pid: int | None = None
    owner_create_time: float | None = None
    ready_at: float | None = None
    start_duration_s: float | None = None
    phase: str | None = None
    failure: dict[str, Any] | None = None
    runtime_info: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    # How the start was asked for (profile, overrides, host_prep, skip_checks, config_dir),
    # so that `restart` repeats it.
    options: dict[str, Any] = field(default_factory=dict)
    # The limits the load runs under, kept so that a load adopted after its `start` died
    # still stalls or times out: seconds, and the wall-clock time of the launch.
    launched_at: float | None = None
    load_timeout_s: float | None = None
    stall_timeout_s: float | None = None
    stop_grace_s: float | None = None

    @property
    def endpoint(self) -> str:
        """The URL as configured (`http://[::]:40000` for an IPv6 wildcard bind)."""
        return http_url(self.host, self.port)

    @property
    def client_endpoint(self) -> str:
        """The URL a client on this machine uses (a wildcard bind is polled at loopback)."""
        return connect_url(self.host, self.port)

    def evolve(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)

    @property
    def instance_id(self) -> str:
        """This start's name outside the state dir (a container label): its creation time."""
        return f"{self.created_at:.6f}"

    def same_instance(self, other: InstanceRecord | None) -> bool:
        """True when `other` records the same start (not a later one)."""
        return other is not None and other.created_at == self.created_at

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceRecord:
        """Raises TypeError/ValueError for a missing field or a value of the wrong type."""
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in data.items() if key in known}
        values["state"] = State(values.get("state", State.FAILED))
        record = cls(**values)
        _check_types(record)
        return record


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "profile": (str,), "engine": (str,), "runtime": (str,), "state": (str,), "host": (str,),
    "port": (int,), "served_model_name": (str,), "argv": (list,), "log_path": (str,),
    "created_at": (int, float), "pid": (int, type(None)),
    "pid_create_time": (int, float, type(None)), "owner_pid": (int, type(None)),
    "owner_create_time": (int, float, type(None)), "ready_at": (int, float, type(None)),
    "start_duration_s": (int, float, type(None)), "phase": (str, type(None)),
    "failure": (dict, type(None)), "runtime_info": (dict,), "exit_code": (int, type(None)),
    "options": (dict,), "launched_at": (int, float, type(None)),
    "load_timeout_s": (int, float, type(None)), "stall_timeout_s": (int, float, type(None)),
    "stop_grace_s": (int, float, type(None)),
}


def _check_types(record: InstanceRecord) -> None:
    for name, types in _FIELD_TYPES.items():
        value = getattr(record, name, None)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{name} = {value!r:.40} is not {'/'.join(t.__name__ for t in types)}")
    if not all(isinstance(part, str) for part in record.argv):
        raise ValueError("argv holds a value that is not a string")


class StateStore:
    """Reads and writes the files of one state dir."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = make_state_dir(root) if root is not None else state_dir()
        # State files found damaged (moved aside) by this store; commands report them.
        self.damaged: list[DamagedFile] = []
        self.instance_lock = FileLock(
            self.root / START_LOCK, open_fd=lambda: self._lock_file(START_LOCK)
        )
        """Held by the one command (start, restart, stop) that acts on the backend."""

    @property
    def instance_path(self) -> Path:
        return self.root / INSTANCE_FILE

    def state_id(self) -> str:
        """This state dir's id (a UUID made once): the swap UUID of the swap file it owns."""
        path = self.root / STATE_ID_FILE
        raw = read_state_bytes(path)
        if raw is not None:
            try:
                return str(uuid.UUID(raw.decode("ascii").strip()))
            except (ValueError, UnicodeDecodeError):
                # A new id would orphan the swap file made under the old one: refuse.
                raise StateDirError(
                    f"{path} does not hold a state id ({raw[:40]!r})",
                    remedy=f"restore it, or remove it (rm {path}) if no swap file of "
                    "llm-backend is on (`swapon --show`)",
                ) from None
        new = str(uuid.uuid4())
        atomic_write_text(path, new + "\n")
        return new

    def logs_dir(self) -> Path:
        """`logs/` in the state dir (0700); something else in its place is moved aside."""
        path = self.root / "logs"
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            self.damaged.append(DamagedFile(str(path), move_aside(path), "not a directory"))
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as error:
            raise _os_error(path, error) from None
        info = path.lstat()
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o022:
            trusted_dir(path)  # raises with the chown/chmod fix
        if stat.S_IMODE(info.st_mode) & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o700)
        return path

    def load_instance(self) -> InstanceRecord | None:
        """The instance record, or None. A damaged record (not JSON, wrong types) is moved
        aside and listed in `self.damaged`; this never raises for the file's contents."""
        data, damage = load_state_json(self.instance_path)
        if damage is not None:
            self.damaged.append(damage)
            return None
        if data is None:
            return None
        try:
            return InstanceRecord.from_json(data)
        except (TypeError, ValueError) as error:
            self.damaged.append(DamagedFile(
                str(self.instance_path), move_aside(self.instance_path), f"wrong fields: {error}"
            ))
            return None

    # --- the one read-modify-write ------------------------------------------------------

    def modify(
        self, change: Callable[[InstanceRecord | None], InstanceRecord | None]
    ) -> InstanceRecord | None:
        """Read the record, apply `change`, write the result (None removes the file), all
        under the state lock. `change` raises StateConflict to leave the record alone."""
        with self.locked(STATE_LOCK):
            current = self.load_instance()
            updated = change(current)
            if updated is None:
                with contextlib.suppress(FileNotFoundError):
                    self.instance_path.unlink()
            elif updated != current:
                atomic_write_json(self.instance_path, updated.to_json())
            return updated

    def begin(self, record: InstanceRecord) -> InstanceRecord:
        """Record a new start; refused while another backend is recorded as active."""

        def change(current: InstanceRecord | None) -> InstanceRecord:
            source = current.state if current is not None else State.STOPPED
            if current is not None and source not in (State.STOPPED, State.FAILED):
                raise StateConflict(
                    f"cannot start {record.profile}: {current.profile} is {source}",
                    current=current,
                )
            if not allowed(source, record.state):
                raise StateConflict(
                    f"internal: transition {source} -> {record.state} is not allowed",
                    current=current,
                )
            return record

        self.modify(change)
        return record

    def transition(
        self,
        record: InstanceRecord,
        state: State,
        *,
        expect: Collection[State] | None = None,
        **changes: Any,
    ) -> InstanceRecord:
        """Move the instance `record` names to `state` (with `changes`), checked against the
        table from the state on disk, which must also be one of `expect` when given (a
        `start` moves only its own load on: never a record that `stop` marked stopping).
        StateConflict when the record on disk is another start or the move is refused."""
        target = State(state)

        def change(current: InstanceRecord | None) -> InstanceRecord | None:
            if current is None or not record.same_instance(current):
                raise StateConflict(
                    f"the record of {record.profile} is gone or was replaced "
                    f"(wanted {record.state} -> {target})",
                    current=current,
                )
            if expect is not None and current.state not in expect:
                raise StateConflict(
                    f"{record.profile} is {current.state} on disk, not "
                    f"{' or '.join(sorted(expect))} (wanted -> {target})",
                    current=current,
                )
            if not allowed(current.state, target):
                raise StateConflict(
                    f"transition {current.state} -> {target} is not allowed "
                    f"({record.profile})",
                    current=current,
                )
            if target == State.STOPPED:
                return None
            return current.evolve(state=target, **changes)

        updated = self.modify(change)
        return updated if updated is not None else record.evolve(state=target, **changes)

    def update(self, record: InstanceRecord, *, states: frozenset[State] | None = None,
               **changes: Any) -> InstanceRecord | None:
        """Change fields (not the state) of the instance `record` names, if it is still in
        one of `states`; None (and nothing written) when it is not."""

        def change(current: InstanceRecord | None) -> InstanceRecord | None:
            if current is None or not record.same_instance(current) or (
                states is not None and current.state not in states
            ):
                raise StateConflict("skipped", current=current)
            return current.evolve(**changes)

        try:
            return self.modify(change)
        except StateConflict:
            return None

    # --- a `stop` asking the running `start` to give up ---------------------------------

    def request_stop(self, *, pid: int, create_time: float) -> None:
        """Say that `stop` (process `pid`) cancels the start in progress."""
        atomic_write_json(self.root / STOP_REQUEST_FILE, {"pid": pid, "create_time": create_time})

    def stop_request(self) -> tuple[int, float] | None:
        """(pid, create time) of the `stop` that asked, if one did."""
        data = read_json(self.root / STOP_REQUEST_FILE)
        if not isinstance(data, dict):
            return None
        pid, create_time = data.get("pid"), data.get("create_time")
        if isinstance(pid, int) and isinstance(create_time, int | float):
            return pid, float(create_time)
        return None

    def clear_stop_request(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / STOP_REQUEST_FILE).unlink()

    def _history(self) -> dict[str, Any]:
        data, damage = load_state_json(self.root / HISTORY_FILE)
        if damage is not None:
            self.damaged.append(damage)
        return data or {}

    def last_start_duration(self, profile: str) -> float | None:
        history = self._history()
        entry = history.get(profile) if isinstance(history, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("start_duration_s"), int | float):
            return float(entry["start_duration_s"])
        return None

    def record_start(
        self, profile: str, duration_s: float, phase_offsets: dict[str, float]
    ) -> None:
        with self.locked(STATE_LOCK):
            path = self.root / HISTORY_FILE
            history = self._history()
            history[profile] = {
                "start_duration_s": round(duration_s, 3),
                "phase_offsets": {k: round(v, 3) for k, v in phase_offsets.items()},
                "at": time.time(),
            }
            atomic_write_json(path, history)

    def _lock_file(self, name: str) -> int:
        """Open a lock file (0600, no symlink); a directory or link in its place is moved
        aside (listed in `self.damaged`) and the lock file made anew."""
        path = self.root / name
        flags = os.O_RDWR | os.O_CREAT
        try:
            return open_state_file(path, flags)
        except StateDirError as error:
            if not (path.is_dir() or path.is_symlink()):
                raise
            self.damaged.append(DamagedFile(str(path), move_aside(path), error.message))
            return open_state_file(path, flags)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """A blocking flock on a file in the state dir."""
        with FileLock(self.root / name, open_fd=lambda: self._lock_file(name)):
            yield

    @contextlib.contextmanager
    def start_lock(self, command: str = "start") -> Iterator[None]:
        """Exactly one `start` (or restart, or stop) at a time; another fails at once."""
        if not self.instance_lock.acquire(blocking=False, holder=command):
            pid, holder = self.instance_lock.holder_info()
            who = f"`llm-backend {holder or 'start'}` (pid {pid})" if pid else "another command"
            raise AlreadyStartingError(
                f"the backend is already starting: {who} holds {self.instance_lock.path}"
                if holder in ("", "start", "restart")
                else f"the backend is busy: {who} holds {self.instance_lock.path}",
                remedy="wait for it, or follow it with `llm-backend status --watch`",
            )
        try:
            yield
        finally:
            self.instance_lock.release()
