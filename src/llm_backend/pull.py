"""Acquisition of what a profile needs before it can load: image, weights, encodings, binary.

Each engine and runtime says what its profile needs as a list of `Source`s
(`Engine.artifacts`, `Runtime.artifacts`); this module probes them (present or not, how many
bytes), fetches the missing ones with progress, and checks free disk against what is still
to download. Nothing here knows an engine or a runtime by name.

Shapes: `Artifact.bytes` and every progress figure are bytes; rates are bytes per second.
Errors: every failure is a `PullError` (a `BackendError`) with the value and a fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from llm_backend.errors import BackendError
from llm_backend.units import format_bytes

if TYPE_CHECKING:
    from llm_backend.config import Profile

ArtifactKind = Literal["image", "model", "draft_model", "encoding", "binary", "model_file"]
ArtifactState = Literal["present", "partial", "missing"]

PULL_REMEDY = "llm-backend pull"
# Where `status` judges what is pulled from: `Source.probe_local`, never the network.
LOCAL_JUDGEMENT = "local cache"
PULL_LOCK = "pull.lock"  # in the state dir: one pull at a time
DOWNLOAD_DEADLINE_S = 600.0  # a small file (the encoding) that takes longer is not coming


class PullError(BackendError):
    """An artifact could not be probed or fetched; nothing on the host was changed."""

    exit_code = 7


@dataclass(frozen=True)
class Artifact:
    """One thing a profile needs, as found on this machine now.

    `bytes` is the artifact's whole size when known (None when neither the cache nor the
    source says); `missing_bytes` is what a pull would still download (0 when present);
    `cached_bytes` what of it is already on this machine when the source can tell (an
    interrupted download's complete files), which makes a missing artifact `partial`.
    """

    kind: ArtifactKind
    name: str
    present: bool
    bytes: int | None
    location: str
    missing_bytes: int | None = None
    detail: str | None = None
    cached_bytes: int | None = None

    @property
    def state(self) -> ArtifactState:
        """`present`; `partial` (missing, but some of it is here); or `missing`."""
        if self.present:
            return "present"
        if self.cached_bytes:
            return "partial"
        return "missing"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "present": self.present,
            "state": self.state,
            "bytes": self.bytes,
            "cached_bytes": self.cached_bytes,
            "location": self.location,
            "missing_bytes": self.missing_bytes,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of one artifact's fetch: bytes done of total (total None when unknown)."""

    artifact: str
    done: int
    total: int | None
    message: str | None = None
    finished: bool = False
    unit: Literal["B", "%"] = "B"


ProgressCallback = Callable[[ProgressEvent], None]


def _no_progress(event: ProgressEvent) -> None:
    return None


class Source(ABC):
    """Where one artifact comes from and where it lands; probe is read-only."""

    kind: ArtifactKind
    name: str
    # The doctor check that reports this artifact: `start` runs it after its pull.
    check: str = ""

    def fetchable(self) -> bool:
        """Whether `fetch` can bring it in (False: only the user can, e.g. a path of theirs)."""
        return True

    @abstractmethod
    def probe(self) -> Artifact:
        """What is on this machine now; never changes anything, never raises for `missing`."""

    def probe_local(self) -> Artifact:
        """`probe` without asking anything beyond this machine (no Hub, no registry), quick
        enough for every `status`. The default is `probe`, for sources whose probe only looks
        at local files or the local Docker engine; a source whose probe asks a remote service
        judges from what is cached here instead."""
        return self.probe()

    @abstractmethod
    def fetch(self, *, progress: ProgressCallback) -> None:
        """Bring the artifact in (resuming what an interrupted fetch left); PullError on failure."""

    def disk_path(self) -> Path | None:
        """The folder the bytes land in, for the free-disk check (None: nothing to download)."""
        return None


@dataclass(frozen=True)
class PullPlan:
    """What a profile needs and what a pull would download."""

    profile: str
    artifacts: tuple[Artifact, ...]

    @property
    def missing(self) -> tuple[Artifact, ...]:
        return tuple(artifact for artifact in self.artifacts if not artifact.present)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "artifacts": [artifact.to_json() for artifact in self.artifacts],
        }


@dataclass(frozen=True)
class LocalReport:
    """What a profile has on this machine, artifact by artifact, as `status` and `doctor`
    show it. `judged_from`: "local cache" (`status`: `plan(local_only=True)`, no network) or
    "sources" (`doctor`: the pull plan, which asks the Hub for its listing). `error` (with
    `remedy`) when the profile's artifacts could not be listed (a profile that no longer
    resolves, a folder not mounted); `fix` is the pull command that brings in what is
    missing (None when nothing is).
    """

    profile: str | None
    runtime: str | None
    artifacts: tuple[Artifact, ...] = ()
    fix: str | None = None
    error: str | None = None
    remedy: str | None = None
    judged_from: str = LOCAL_JUDGEMENT

    @property
    def missing(self) -> tuple[Artifact, ...]:
        return tuple(artifact for artifact in self.artifacts if not artifact.present)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "runtime": self.runtime,
            "judged_from": self.judged_from,
            "items": [artifact.to_json() for artifact in self.artifacts],
            "missing": [artifact.name for artifact in self.missing],
            "fix": self.fix,
            "error": self.error,
            "remedy": self.remedy,
        }


def local_report(profile: Profile, *, runtime_chosen: bool = False) -> LocalReport:
    """The profile's artifacts judged from this machine alone (for `status`). `runtime_chosen`:
    the runtime is not the profile's own (an override), so the fix names it."""
    try:
        sources = sources_for(profile)
    except BackendError as error:
        return LocalReport(profile.name, profile.runtime, error=error.message,
                           remedy=error.remedy)
    planned = plan(profile.name, sources, local_only=True)
    fix = None
    if planned.missing:
        fix = f"{PULL_REMEDY} --profile {profile.name}"
        if runtime_chosen:
            fix += f" --runtime {profile.runtime}"
    return LocalReport(profile.name, profile.runtime, planned.artifacts, fix=fix)


@dataclass(frozen=True)
class PullResult:
    """What a pull did: the plan before, the artifacts after, and how long each fetch took."""

    profile: str
    before: tuple[Artifact, ...]
    after: tuple[Artifact, ...]
    fetched: tuple[str, ...]
    durations_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "artifacts": [artifact.to_json() for artifact in self.after],
            "fetched": list(self.fetched),
            "durations_s": {name: round(value, 3) for name, value in self.durations_s.items()},
        }


def plan(profile_name: str, sources: Sequence[Source], *, local_only: bool = False) -> PullPlan:
    """Probe every source (read-only): what is present, what is missing, how big.

    `local_only`: judge from this machine alone (`Source.probe_local`: no network), as
    `status` does. A source that cannot be looked at (a folder we may not enter) is missing,
    with the reason in `detail`.
    """
    return PullPlan(profile=profile_name,
                    artifacts=tuple(_probe(source, local_only) for source in sources))


def _probe(source: Source, local_only: bool = False) -> Artifact:
    try:
        return source.probe_local() if local_only else source.probe()
    except OSError as error:
        folder = source.disk_path()
        return Artifact(source.kind, source.name, False, None, str(folder or "unknown"), None,
                        detail=f"could not look: {error}")


@dataclass(frozen=True)
class DiskNeed:
    """Bytes that will land in `path` (None: size unknown); `label` names what they are."""

    label: str
    path: Path
    bytes: int | None


@dataclass(frozen=True)
class FilesystemNeed:
    """Every need that lands on one filesystem, summed; `where` is an existing folder on it."""

    where: Path
    needs: tuple[DiskNeed, ...]
    free: int

    @property
    def total(self) -> int:
        return sum(need.bytes or 0 for need in self.needs)

    @property
    def short(self) -> bool:
        return self.total > self.free


def disk_needs(sources: Sequence[Source], artifacts: Sequence[Artifact]) -> list[DiskNeed]:
    """What each artifact with a folder of its own still has to download there (0 when present).

    Labels: `model cache for REPO` for Hub repositories, `KIND NAME` for the others.
    """
    needs: list[DiskNeed] = []
    for source, artifact in zip(sources, artifacts, strict=True):
        folder = source.disk_path()
        if folder is None:
            continue
        label = (f"model cache for {artifact.name}" if artifact.kind in ("model", "draft_model")
                 else f"{artifact.kind} {artifact.name}")
        needs.append(DiskNeed(label, folder, 0 if artifact.present else artifact.missing_bytes))
    return needs


def by_filesystem(needs: Iterable[DiskNeed]) -> list[FilesystemNeed]:
    """Group needs by the filesystem their folder is on (the nearest existing parent's), with
    that filesystem's free bytes now (`shutil.disk_usage`)."""
    grouped: dict[int, tuple[Path, list[DiskNeed]]] = {}
    for need in needs:
        existing = _existing_parent(need.path)
        _, members = grouped.setdefault(existing.stat().st_dev, (existing, []))
        members.append(need)
    return [FilesystemNeed(where, tuple(members), shutil.disk_usage(where).free)
            for where, members in grouped.values()]


DISK_REMEDY = ("free space on that filesystem, or move what lands there to a larger one (HF_HOME, "
               "or the host side of the profile's volumes; host_prep.swap_file)")


def check_disk(sources: Sequence[Source], artifacts: Sequence[Artifact]) -> None:
    """Refuse a pull whose missing bytes do not fit on the filesystems they land on.

    Raises PullError naming the folder, the bytes needed and the bytes free.
    """
    for filesystem in by_filesystem(disk_needs(sources, artifacts)):
        if filesystem.short:
            total, free = filesystem.total, filesystem.free
            raise PullError(
                f"not enough disk space in {filesystem.where}: the pull needs "
                f"{format_bytes(total)}, {format_bytes(free)} is free",
                remedy=f"free {format_bytes(total - free)} on that filesystem, or point HF_HOME "
                "(and the profile's volumes) at a larger one, then run `llm-backend pull`",
            )


def pull(
    profile_name: str,
    sources: Sequence[Source],
    *,
    progress: ProgressCallback = _no_progress,
    lock: Path | None = None,
    planned: PullPlan | None = None,
) -> PullResult:
    """Fetch every missing artifact in order; the first failure raises PullError.

    Free disk is checked against all missing bytes before anything is downloaded. `lock` (a
    file in the state dir) keeps two pulls from writing the same files at once: the second
    is refused while the first runs. `planned`: a plan of these sources just made (not made
    again).
    """
    if lock is not None:
        from llm_backend.locks import FileLock

        guard = FileLock(lock)
        if not guard.acquire(blocking=False, holder="pull"):
            pid, _ = guard.holder_info()
            raise PullError(
                f"another pull is running{f' (pid {pid})' if pid else ''}: it holds {lock}",
                remedy="wait for it to finish (its progress is on its own terminal), then run "
                "the command again",
            )
        try:
            return pull(profile_name, sources, progress=progress, planned=planned)
        finally:
            guard.release()
    fetched: list[str] = []
    durations: dict[str, float] = {}
    try:
        before = planned or plan(profile_name, sources)
        check_disk(sources, before.artifacts)
        for source, artifact in zip(sources, before.artifacts, strict=True):
            if artifact.present:
                continue
            started = time.monotonic()
            source.fetch(progress=progress)
            durations[artifact.name] = time.monotonic() - started
            fetched.append(artifact.name)
    except BackendError as error:  # "run `llm-backend pull` again": this profile's pull
        error.remedy = name_the_profile(error.remedy, profile_name)
        raise
    after = plan(profile_name, sources)
    still = [artifact for artifact in after.artifacts if not artifact.present]
    if still:
        names = ", ".join(f"{artifact.kind} {artifact.name}" for artifact in still)
        raise PullError(
            f"still missing after the pull: {names}",
            remedy=f"run `{PULL_REMEDY} --profile {profile_name}` again and read the error "
            "above each artifact",
        )
    return PullResult(profile_name, before.artifacts, after.artifacts, tuple(fetched), durations)


# --- helpers -------------------------------------------------------------------------------


def name_the_profile(remedy: str, profile_name: str) -> str:
    """`... run `llm-backend pull` again` -> `... llm-backend pull --profile NAME ...`: the
    sources' fixes say "pull" without knowing the profile, and a bare `llm-backend pull`
    pulls the default profile, not the one that failed."""
    return re.sub(r"llm-backend pull(?! --profile)",
                  lambda _: f"{PULL_REMEDY} --profile {profile_name}", remedy)


def _existing_parent(path: Path) -> Path:
    """The nearest folder of `path` (itself included) that exists and that we may look at."""
    path = path.expanduser()
    for candidate in (path, *path.parents):
        try:
            candidate.stat()
        except OSError:  # not there, or behind a folder we cannot enter
            continue
        return candidate
    return Path("/")


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --- a file checked by its SHA-256 (gpt-oss's harmony encoding) ---------------------------------


class VerifiedFile(Source):
    """A file fetched over HTTP into a folder and checked against a known SHA-256.

    The download goes to `NAME.partial` next to the target and resumes from its size with
    an HTTP Range request; the file is renamed into place only once its hash matches.
    """

    def __init__(
        self,
        *,
        kind: ArtifactKind,
        name: str,
        folder: Path,
        filename: str,
        url: str,
        sha256: str,
        size: int | None = None,
        check: str = "",
        url_setting: str = "",
        folder_setting: str = "",
        pull_command: str = PULL_REMEDY,
    ) -> None:
        self.kind = kind
        # The pull a fix ends with: `llm-backend pull --profile NAME` for a profile's file.
        self.pull_command = pull_command
        self.check = check
        self.name = name
        self.folder = folder
        self.filename = filename
        self.url = url
        self.sha256 = sha256
        self.size = size
        # Where the user sets the URL's base and the folder (an environment variable), for
        # the error that names a bad value; empty when they come from the code.
        self.url_setting = url_setting
        self.folder_setting = folder_setting

    def folder_problem(self, *, writing: bool = False) -> tuple[str, str] | None:
        """(what, fix) when `folder` cannot hold the file: a file, or a link to nothing, is in
        its place (mkdir would fail, and a `mkdir -p` fix would too); with `writing`, also a
        folder that cannot be written (a read-only filesystem, no permission). None when it
        is a folder (writable, with `writing`) or does not exist yet. The fix ends with
        `pull_command`."""
        folder, pull = self.folder, self.pull_command
        where = f" or set {self.folder_setting} to another folder" if self.folder_setting else ""
        if folder.is_dir():
            if not writing or os.access(folder, os.W_OK | os.X_OK):
                return None
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                return (f"{folder} is on a read-only filesystem: {self.filename} cannot be "
                        "put there",
                        f"remount it read-write{where}, then run `{pull}`")
            return (f"{folder} cannot be written by this user: {self.filename} cannot be put "
                    "there", f"chown $USER {folder} (or run as its owner){where}, then run "
                    f"`{pull}`")
        if not (folder.exists() or folder.is_symlink()):
            return None
        what = ("a link to nothing" if folder.is_symlink() and not folder.exists()
                else "a file, not a folder")
        return (f"{folder} is {what}: {self.filename} cannot be put there",
                f"move it away (mv {folder} {folder}.old){where}, then run `{pull}`")

    def url_problem(self) -> tuple[str, str] | None:
        """(what, fix) when `url` is no http(s) URL with a host and a valid port; None when
        it is one. httpx would raise InvalidURL (a traceback) or UnsupportedProtocol (read as a
        network failure) for these."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if valid:
            return None
        if self.url_setting:
            value = os.environ.get(self.url_setting, "")
            return (f"{self.url_setting}={value!r} is not a valid http(s) URL",
                    f"export {self.url_setting}=https://HOST[:PORT]/FOLDER/ (a mirror of "
                    f"{self.filename}), or `unset {self.url_setting}`")
        return f"{self.url!r} is not a valid http(s) URL", "correct the URL"

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    def disk_path(self) -> Path:
        return self.folder

    def verify(self) -> tuple[bool, str]:
        """(True, '') when the file is there with the right hash; else (False, why)."""
        problem = self.folder_problem()
        if problem is not None:
            return False, problem[0]
        if not self.path.is_file():
            why = f"{self.path} does not exist"
        else:
            digest = sha256_of(self.path)
            if digest == self.sha256:
                return True, ""
            why = f"{self.path} has SHA-256 {digest[:16]}..., expected {self.sha256[:16]}..."
        unwritable = self.folder_problem(writing=True)  # a pull could not put it there
        return False, why + (f"; {unwritable[0]}" if unwritable else "")

    def probe(self) -> Artifact:
        present, why = self.verify()
        size = self.path.stat().st_size if present else self.size
        partial = 0
        if not present:  # what an interrupted fetch left to resume from
            try:
                partial = (self.folder / (self.filename + ".partial")).stat().st_size
            except OSError:
                partial = 0
        missing = 0 if present else (max(self.size - partial, 0) if self.size else None)
        return Artifact(self.kind, self.name, present, size, str(self.path), missing,
                        detail=why or None, cached_bytes=size if present else partial)

    def fetch(self, *, progress: ProgressCallback) -> None:
        for problem in (self.url_problem(), self.folder_problem(writing=True)):
            if problem is not None:  # before anything is made on the host
                raise PullError(problem[0], remedy=problem[1])
        created = not self.folder.exists()
        try:
            self._fetch(progress)
        except BaseException:
            if created:  # a failed pull leaves no folder of its own behind (empty ones only)
                with contextlib.suppress(OSError):
                    self.folder.rmdir()
            raise

    def _fetch(self, progress: ProgressCallback) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PullError(f"cannot create {self.folder}: {error.strerror}",
                            remedy=f"sudo mkdir -p {self.folder} && sudo chown $USER "
                            f"{self.folder}") from error
        partial = self.folder / (self.filename + ".partial")
        try:
            self._download(partial, progress)
            digest = sha256_of(partial)
            if digest != self.sha256:
                partial.unlink(missing_ok=True)
                raise PullError(
                    f"{self.url} gave a file with SHA-256 {digest}, expected {self.sha256}",
                    remedy="check LLM_BACKEND_ENCODINGS_URL points at an unmodified copy, then "
                    "run `llm-backend pull` again",
                )
            os.chmod(partial, 0o644, follow_symlinks=False)
            os.replace(partial, self.path)  # replaces a link in its place, never its target
        except OSError as error:
            raise PullError(
                f"cannot write {error.filename or partial}: {error.strerror}",
                remedy=f"make {self.folder} a folder you can write (not a file or a link to "
                "one), with space left, then run `llm-backend pull` again",
            ) from error
        size = self.path.stat().st_size
        progress(ProgressEvent(self.name, size, size, finished=True))

    def _too_big(self, partial: Path, handle: Any, what: str) -> NoReturn:
        """Refuse a download larger than the known size, removing what it left."""
        handle.truncate(0)
        partial.unlink(missing_ok=True)
        where = self.url_setting or "the address"
        raise PullError(
            f"{self.url} {what} for a file of {format_bytes(self.size)}; nothing was kept",
            remedy=f"check {where} serves an unmodified {self.filename}, then run "
            "`llm-backend pull` again",
        )

    def _download(self, partial: Path, progress: ProgressCallback) -> None:
        """GET the file into `partial`, resuming from its size; never through a symlink, never
        past the known size, never longer than DOWNLOAD_DEADLINE_S."""
        import httpx

        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                             0o600)
        try:  # one writer per partial, across state dirs too (each has its own pull lock)
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise PullError(
                f"another pull is fetching {self.filename} into {self.folder} right now",
                remedy="wait for it to finish (or stop it), then run `llm-backend pull` again",
            ) from None
        with os.fdopen(descriptor, "ab") as handle:
            offset = os.fstat(descriptor).st_size
            limit = self.size  # the hash is known, so is the size: not a byte more
            if limit is not None and offset > limit:  # left by an older, looser pull
                handle.truncate(0)
                offset = 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
            try:
                with httpx.stream("GET", self.url, headers=headers, timeout=30.0,
                                  follow_redirects=True) as response:
                    if response.status_code == 416:  # the partial file is already whole
                        response.read()
                        return
                    if response.status_code not in (200, 206):
                        raise PullError(
                            f"GET {self.url} answered {response.status_code}",
                            remedy="check the address (LLM_BACKEND_ENCODINGS_URL) and the "
                            "network, then run `llm-backend pull` again",
                        )
                    if response.status_code == 200 and offset:
                        handle.truncate(0)  # the server sent the whole file again
                        offset = 0
                    length = response.headers.get("Content-Length")
                    total = offset + int(length) if length and length.isdigit() else self.size
                    if limit is not None and total is not None and total > limit:
                        self._too_big(partial, handle, f"announced {format_bytes(total)}")
                    done = offset
                    # Whatever arrives, as it arrives: a slow server shows progress and meets
                    # the deadline (a fixed chunk size would wait for it to fill).
                    for chunk in response.iter_bytes():
                        done += len(chunk)
                        if limit is not None and done > limit:
                            self._too_big(partial, handle, f"sent more than "
                                          f"{format_bytes(limit)}")
                        handle.write(chunk)
                        progress(ProgressEvent(self.name, done, total))
                        if time.monotonic() > deadline:
                            raise PullError(
                                f"{self.url} took longer than {DOWNLOAD_DEADLINE_S:.0f} s",
                                remedy="check the network (or LLM_BACKEND_ENCODINGS_URL), then "
                                "run `llm-backend pull` again; the part downloaded is kept",
                            )
            except httpx.HTTPError as error:
                raise PullError(
                    f"could not download {self.url}: {type(error).__name__}: {error}",
                    remedy="check the network (or LLM_BACKEND_ENCODINGS_URL), then run "
                    "`llm-backend pull` again; the part already downloaded is kept",
                ) from error
            except ValueError as error:  # a malformed URL
                raise PullError(f"cannot download {self.url!r}: {error}",
                                remedy="set LLM_BACKEND_ENCODINGS_URL to an http(s) URL") from error


def sources_in_order(groups: Iterable[Iterable[Source]]) -> list[Source]:
    """Concatenate source lists, dropping later duplicates of the same (kind, name)."""
    seen: set[tuple[str, str]] = set()
    ordered: list[Source] = []
    for group in groups:
        for source in group:
            key = (source.kind, source.name)
            if key not in seen:
                seen.add(key)
                ordered.append(source)
    return ordered


def sources_for(profile: Profile) -> list[Source]:
    """What the profile's runtime and engine need, runtime first (the image holds the engine).

    Raises ConfigError when a needed folder is not reachable from this machine.
    """
    from llm_backend.engines import get_engine
    from llm_backend.runtimes import get_runtime

    runtime = get_runtime(profile.runtime)
    engine = get_engine(profile.engine)
    return sources_in_order(
        [runtime.artifacts(profile=profile), engine.artifacts(profile=profile, runtime=runtime)]
    )
