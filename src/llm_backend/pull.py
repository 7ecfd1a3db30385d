"""Acquisition of what a profile needs before it can load: image, weights, encodings, binary.

Each engine and runtime says what its profile needs as a list of `Source`s
(`Engine.artifacts`, `Runtime.artifacts`); this module probes them (present or not, how many
bytes), fetches the missing ones with progress, and checks free disk against what is still
to download. Nothing here knows an engine or a runtime by name.

Shapes: `Artifact.bytes` and every progress figure are bytes; rates are bytes per second.
Errors: every failure is a `PullError` (a `BackendError`) with the value and a fix.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llm_backend import units
from llm_backend.errors import BackendError

if TYPE_CHECKING:
    from llm_backend.config import Profile

ArtifactKind = Literal["image", "model", "draft_model", "encoding", "binary", "model_file"]

PULL_REMEDY = "llm-backend pull"


class PullError(BackendError):
    """An artifact could not be probed or fetched; nothing on the host was changed."""

    exit_code = 7


@dataclass(frozen=True)
class Artifact:
    """One thing a profile needs, as found on this machine now.

    `bytes` is the artifact's whole size when known (None when neither the cache nor the
    source says); `missing_bytes` is what a pull would still download (0 when present).
    """

    kind: ArtifactKind
    name: str
    present: bool
    bytes: int | None
    location: str
    missing_bytes: int | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "present": self.present,
            "bytes": self.bytes,
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

    @abstractmethod
    def probe(self) -> Artifact:
        """What is on this machine now; never changes anything, never raises for `missing`."""

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


def plan(profile_name: str, sources: Sequence[Source]) -> PullPlan:
    """Probe every source (read-only): what is present, what is missing, how big."""
    return PullPlan(profile=profile_name, artifacts=tuple(source.probe() for source in sources))


def check_disk(sources: Sequence[Source], artifacts: Sequence[Artifact]) -> None:
    """Refuse a pull whose missing bytes do not fit on the filesystems they land on.

    Raises PullError naming the folder, the bytes needed and the bytes free.
    """
    needs: dict[int, tuple[Path, int]] = {}
    for source, artifact in zip(sources, artifacts, strict=True):
        folder = source.disk_path()
        if artifact.present or folder is None or not artifact.missing_bytes:
            continue
        existing = _existing_parent(folder)
        device = existing.stat().st_dev
        path, total = needs.get(device, (existing, 0))
        needs[device] = (path, total + artifact.missing_bytes)
    for path, total in needs.values():
        free = shutil.disk_usage(path).free
        if total > free:
            raise PullError(
                f"not enough disk space in {path}: the pull needs {format_bytes(total)}, "
                f"{format_bytes(free)} is free",
                remedy=f"free {format_bytes(total - free)} on that filesystem, or point HF_HOME "
                "(and the profile's volumes) at a larger one, then run `llm-backend pull`",
            )


def pull(
    profile_name: str,
    sources: Sequence[Source],
    *,
    progress: ProgressCallback = _no_progress,
) -> PullResult:
    """Fetch every missing artifact in order; the first failure raises PullError.

    Free disk is checked against all missing bytes before anything is downloaded.
    """
    before = plan(profile_name, sources)
    check_disk(sources, before.artifacts)
    fetched: list[str] = []
    durations: dict[str, float] = {}
    for source, artifact in zip(sources, before.artifacts, strict=True):
        if artifact.present:
            continue
        started = time.monotonic()
        source.fetch(progress=progress)
        durations[artifact.name] = time.monotonic() - started
        fetched.append(artifact.name)
    after = plan(profile_name, sources)
    still = [artifact for artifact in after.artifacts if not artifact.present]
    if still:
        names = ", ".join(f"{artifact.kind} {artifact.name}" for artifact in still)
        raise PullError(
            f"still missing after the pull: {names}",
            remedy="run `llm-backend pull` again and read the error above each artifact",
        )
    return PullResult(profile_name, before.artifacts, after.artifacts, tuple(fetched), durations)


# --- helpers -------------------------------------------------------------------------------


def format_bytes(value: int | float | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'unknown size'."""
    return units.format_bytes(value, unknown="unknown size")


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --- a Hugging Face Hub repository ------------------------------------------------------------


def hf_home() -> Path:
    """HF_HOME, else ~/.cache/huggingface (huggingface_hub's own default)."""
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface"))


def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps repositories: HF_HUB_CACHE, else HF_HOME/hub."""
    explicit = os.environ.get("HF_HUB_CACHE")
    return Path(os.path.expanduser(explicit)) if explicit else hf_home() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RepoEntry:
    """One file at the top of a Hub repository: its path and size in bytes."""

    path: str
    size: int


FileSelector = Callable[[Sequence[RepoEntry]], list[RepoEntry]]


def select_like_sglang(entries: Sequence[RepoEntry]) -> list[RepoEntry]:
    """The files SGLang loads from a Hub repository, not every file in it.

    SGLang lists only the top of the repository, takes the first weight format present in
    the order safetensors, bin, pt, and ignores `original/` (sglang 0.5.23
    `python/sglang/srt/model_loader/loader.py` `_prepare_weights` and `weight_utils.py`
    `download_weights_from_hf`); transformers then reads the config, generation config and
    tokenizer files (`*.json`, `tokenizer.model`, `*.tiktoken`, `*.txt` merges/vocab,
    `chat_template.jinja`) and, with trust_remote_code, `*.py`.
    """
    top = [entry for entry in entries if "/" not in entry.path]
    chosen: list[RepoEntry] = []
    for weights in ("*.safetensors", "*.bin", "*.pt"):
        matching = [entry for entry in top if fnmatch.fnmatch(entry.path, weights)]
        if matching:
            chosen.extend(matching)
            break
    extra = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py")
    chosen.extend(
        entry for entry in top
        if entry not in chosen and any(fnmatch.fnmatch(entry.path, pattern) for pattern in extra)
    )
    return chosen


def select_files(*patterns: str) -> FileSelector:
    """A selector that keeps the files matching any of `patterns` (fnmatch, whole path)."""

    def selector(entries: Sequence[RepoEntry]) -> list[RepoEntry]:
        return [entry for entry in entries
                if any(fnmatch.fnmatch(entry.path, pattern) for pattern in patterns)]

    return selector


class HubRepository(Source):
    """A model repository on the Hugging Face Hub, pulled into the hub cache with huggingface_hub.

    Honours HF_TOKEN, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT (read by
    huggingface_hub itself). Resuming: files already in the cache are kept and only the
    missing ones are fetched (huggingface_hub >= 1.0 restarts a file it was interrupted in,
    huggingface/huggingface_hub#4228); partial files an earlier killed pull left behind are
    removed first.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        kind: ArtifactKind = "model",
        revision: str = "main",
        selector: FileSelector = select_like_sglang,
        cache_dir: Path | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.kind = kind
        self.name = repo_id
        self.revision = revision
        self.selector = selector
        self.cache_dir = cache_dir or hf_hub_cache()
        self._listing: list[RepoEntry] | None = None
        self._commit: str | None = None

    def disk_path(self) -> Path:
        return self.cache_dir

    @property
    def storage_folder(self) -> Path:
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    def _cached_commit(self) -> str | None:
        ref = self.storage_folder / "refs" / self.revision
        try:
            return ref.read_text().strip() or None
        except OSError:
            return None

    def _remote(self) -> tuple[str, list[RepoEntry]]:
        """The revision's commit and its top-level files, asked of the Hub (cached per run)."""
        if self._listing is not None and self._commit is not None:
            return self._commit, self._listing
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi()
        try:
            info = api.model_info(self.repo_id, revision=self.revision)
            commit = info.sha or self.revision
            entries = [
                RepoEntry(item.path, int(item.size))
                for item in api.list_repo_tree(self.repo_id, revision=commit, recursive=False)
                if isinstance(item, RepoFile)
            ]
        except Exception as error:  # huggingface_hub raises many types; each is translated
            raise self._translate(error) from error
        self._commit, self._listing = commit, entries
        return commit, entries

    def _translate(self, error: Exception) -> PullError:
        from huggingface_hub import errors as hub_errors

        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        if isinstance(error, hub_errors.GatedRepoError) or _status(error) in (401, 403):
            token_set = bool(os.environ.get("HF_TOKEN") or _token_file().is_file())
            return PullError(
                f"{self.repo_id} is gated or private on {endpoint}"
                + ("; the token was refused" if token_set else " and no token is set"),
                remedy="accept the licence on the model's page, then `export HF_TOKEN=hf_...` "
                "(or `hf auth login`) and run `llm-backend pull` again",
                failure_class="gated_model",
            )
        if isinstance(error, hub_errors.RepositoryNotFoundError) or _status(error) == 404:
            return PullError(
                f"no repository {self.repo_id!r} (revision {self.revision}) on {endpoint}",
                remedy="check `model` / `speculative.draft_model` in the profile "
                "(`llm-backend profiles show NAME`)",
                failure_class="model_not_found",
            )
        if isinstance(error, hub_errors.OfflineModeIsEnabled):
            return PullError(
                f"{self.repo_id} is not in {self.cache_dir} and HF_HUB_OFFLINE is set",
                remedy="unset HF_HUB_OFFLINE and run `llm-backend pull` on a connected network, "
                "or copy the repository into the cache",
                failure_class="model_not_found",
            )
        return PullError(
            f"could not reach {endpoint} for {self.repo_id}: {type(error).__name__}: {error}",
            remedy="check the network (or HF_ENDPOINT), then run `llm-backend pull` again; "
            "files already downloaded are kept",
        )

    def _cached_files(self, commit: str) -> dict[str, int]:
        folder = self.storage_folder / "snapshots" / commit
        found: dict[str, int] = {}
        if not folder.is_dir():
            return found
        for path in folder.rglob("*"):
            if path.is_file():  # follows the snapshot's symlink to its blob
                found[path.relative_to(folder).as_posix()] = path.stat().st_size
        return found

    def probe(self) -> Artifact:
        location = str(self.storage_folder)
        if hub_offline():
            commit = self._cached_commit()
            files = self._cached_files(commit) if commit else {}
            return Artifact(
                self.kind, self.name, bool(files), sum(files.values()) if files else None,
                location, None, detail="HF_HUB_OFFLINE: only the cache was looked at",
            )
        try:
            commit, entries = self._remote()
        except PullError as error:
            commit_cached = self._cached_commit()
            files = self._cached_files(commit_cached) if commit_cached else {}
            return Artifact(self.kind, self.name, bool(files),
                            sum(files.values()) if files else None, location, None,
                            detail=error.message)
        wanted = self.selector(entries)
        cached = self._cached_files(commit)
        missing = [entry for entry in wanted if cached.get(entry.path) != entry.size]
        total = sum(entry.size for entry in wanted)
        return Artifact(self.kind, self.name, not missing and bool(wanted), total, location,
                        sum(entry.size for entry in missing),
                        detail=f"{len(wanted)} files at {commit[:12]}")

    def _remove_stale_partials(self) -> None:
        blobs = self.storage_folder / "blobs"
        if blobs.is_dir():
            for partial in blobs.glob("*.incomplete"):
                partial.unlink(missing_ok=True)

    def fetch(self, *, progress: ProgressCallback) -> None:
        from huggingface_hub import hf_hub_download

        if hub_offline():
            raise PullError(
                f"{self.repo_id} is incomplete in {self.cache_dir} and HF_HUB_OFFLINE is set",
                remedy="unset HF_HUB_OFFLINE and run `llm-backend pull` again",
                failure_class="model_not_found",
            )
        commit, entries = self._remote()
        wanted = self.selector(entries)
        cached = self._cached_files(commit)
        total = sum(entry.size for entry in wanted)
        done = sum(entry.size for entry in wanted if cached.get(entry.path) == entry.size)
        self._remove_stale_partials()
        progress(ProgressEvent(self.name, done, total))
        counter = _ByteCounter(self.name, done, total, progress)
        for entry in wanted:
            if cached.get(entry.path) == entry.size:
                continue
            try:
                hf_hub_download(
                    self.repo_id, entry.path, revision=commit, cache_dir=str(self.cache_dir),
                    tqdm_class=counter.tqdm_class(),
                )
            except Exception as error:
                raise self._translate(error) from error
            counter.file_done(entry.size)
        progress(ProgressEvent(self.name, total, total, finished=True))


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _token_file() -> Path:
    return hf_home() / "token"


class _ByteCounter:
    """Turns huggingface_hub's per-file tqdm updates into whole-artifact ProgressEvents."""

    def __init__(self, name: str, done: int, total: int, progress: ProgressCallback) -> None:
        self.name = name
        self.base = done  # bytes of files already complete
        self.current = 0  # bytes of the file in flight
        self.total = total
        self.progress = progress
        self.last_emit = 0.0

    def file_done(self, size: int) -> None:
        self.base += size
        self.current = 0

    def advance(self, count: float) -> None:
        self.current += int(count)
        now = time.monotonic()
        if now - self.last_emit >= 0.1:
            self.last_emit = now
            self.progress(ProgressEvent(self.name, self.base + self.current, self.total))

    def tqdm_class(self) -> type:
        counter = self

        class _Bar:
            """The subset of tqdm's interface huggingface_hub's http_get uses."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                counter.current = int(kwargs.get("initial", 0) or 0)

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, count: float | None = 1) -> None:
                counter.advance(count or 0)

            def update_transfer(self, count: float | None = 1) -> None:
                return None

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

            def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

            def refresh(self) -> None:
                return None

            def close(self) -> None:
                return None

        return _Bar


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
    ) -> None:
        self.kind = kind
        self.name = name
        self.folder = folder
        self.filename = filename
        self.url = url
        self.sha256 = sha256
        self.size = size

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    def disk_path(self) -> Path:
        return self.folder

    def verify(self) -> tuple[bool, str]:
        """(True, '') when the file is there with the right hash; else (False, why)."""
        if not self.path.is_file():
            return False, f"{self.path} does not exist"
        digest = sha256_of(self.path)
        if digest != self.sha256:
            return False, (f"{self.path} has SHA-256 {digest[:16]}..., "
                           f"expected {self.sha256[:16]}...")
        return True, ""

    def probe(self) -> Artifact:
        present, why = self.verify()
        size = self.path.stat().st_size if present else self.size
        return Artifact(self.kind, self.name, present, size, str(self.path),
                        0 if present else self.size, detail=why or None)

    def fetch(self, *, progress: ProgressCallback) -> None:
        import httpx

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PullError(f"cannot create {self.folder}: {error.strerror}",
                            remedy=f"sudo mkdir -p {self.folder} && sudo chown $USER "
                            f"{self.folder}") from error
        partial = self.folder / (self.filename + ".partial")
        offset = partial.stat().st_size if partial.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=30.0,
                              follow_redirects=True) as response:
                if response.status_code == 416:  # the partial file is already whole
                    response.read()
                elif response.status_code not in (200, 206):
                    raise PullError(
                        f"GET {self.url} answered {response.status_code}",
                        remedy="check the address (LLM_BACKEND_ENCODINGS_URL) and the network, "
                        "then run `llm-backend pull` again",
                    )
                else:
                    if response.status_code == 200:
                        offset = 0
                    length = response.headers.get("Content-Length")
                    total = offset + int(length) if length and length.isdigit() else self.size
                    mode = "ab" if offset else "wb"
                    with partial.open(mode) as handle:
                        done = offset
                        for chunk in response.iter_bytes(1 << 16):
                            handle.write(chunk)
                            done += len(chunk)
                            progress(ProgressEvent(self.name, done, total))
        except httpx.HTTPError as error:
            raise PullError(
                f"could not download {self.url}: {type(error).__name__}: {error}",
                remedy="check the network (or LLM_BACKEND_ENCODINGS_URL), then run "
                "`llm-backend pull` again; the part already downloaded is kept",
            ) from error
        digest = sha256_of(partial)
        if digest != self.sha256:
            partial.unlink(missing_ok=True)
            raise PullError(
                f"{self.url} gave a file with SHA-256 {digest}, expected {self.sha256}",
                remedy="check LLM_BACKEND_ENCODINGS_URL points at an unmodified copy, then run "
                "`llm-backend pull` again",
            )
        os.chmod(partial, 0o644)
        os.replace(partial, self.path)
        progress(ProgressEvent(self.name, self.path.stat().st_size,
                               self.path.stat().st_size, finished=True))


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
