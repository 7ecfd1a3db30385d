"""The Hugging Face hub cache, for engines that download models at start (SGLang, vLLM).

The cache layout (`$HF_HUB_CACHE` or `$HF_HOME/hub`, `models--ORG--NAME/blobs` and
`snapshots/REV/...`) is huggingface_hub's (`constants.py`, `file_download.py`). The cache
that counts is the one the server reads (`hub_cache_for`: through the runtime's mounts), and
whether a repository is in it has one answer, `HubRepository.probe` (the pull plan), which
`pull`, `start` and the `model_cache` check share. The checks here are engine checks: an
engine lists them in its `checks()` and names its repos in `hub_models()`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.checks import CheckResult, Context, result
from llm_backend.config import (
    ModelFacts,
    Profile,
    builtin_facts,
    builtin_facts_by_identity,
    builtin_model_facts,
)
from llm_backend.errors import BackendError, ConfigError
from llm_backend.pull import (
    Artifact,
    ArtifactKind,
    ProgressCallback,
    ProgressEvent,
    PullError,
    Source,
)
from llm_backend.toml_names import profile_table
from llm_backend.units import format_bytes

if TYPE_CHECKING:
    from llm_backend.runtimes.base import Runtime


def hf_home() -> Path:
    """HF_HOME, else ~/.cache/huggingface (huggingface_hub's own default)."""
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface"))


def hf_hub_cache() -> Path:
    """Where downloaded repos live: HF_HUB_CACHE (or its old name), else HF_HOME/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "hub"


def model_config(model: str, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The model's config.json: in a local folder, else in the newest snapshot in `cache_dir`
    (default: this machine's hub cache, `hf_hub_cache()`)."""
    local = Path(model).expanduser()
    candidates = [local / "config.json"] if model.startswith(("/", "~", ".")) else []
    if not candidates and re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        snapshots = (cache_dir or hf_hub_cache()) / ("models--" + model.replace("/", "--")) \
            / "snapshots"
        try:
            found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            found = []
        candidates = found[-1:]
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def model_identity(model: str, cache_dir: Path | None = None) -> tuple[str, int | None] | None:
    """(`architectures[0]`, `num_hidden_layers`) from the model's config.json, if it is here."""
    config = model_config(model, cache_dir)
    if config is None:
        return None
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        return None
    layers = config.get("num_hidden_layers")
    return str(architectures[0]), layers if isinstance(layers, int) else None


def model_facts_for(profile: Profile) -> ModelFacts:
    """The model facts that apply to the profile's model, recognised by its config.

    The profile's own `model_facts` hold when they describe its model; a profile that
    extends another but serves a different model does not inherit the parent's (a Qwen
    profile built on the gpt-oss one is not 75 GB). A model is recognised by its config.json
    (architecture and layer count, from a local folder or the hub cache), else by its repo
    name (`unsloth/gpt-oss-120b` and `/models/gpt-oss-120b` are gpt-oss-120b). Unknown models
    get empty facts: checks then say they do not know.
    """
    facts = profile.model_facts
    identity = model_identity(profile.model, server_hub_cache(profile))
    if identity is not None:
        architecture, layers = identity
        if facts.architecture == architecture and facts.num_hidden_layers in (None, layers):
            return facts
        known = builtin_facts_by_identity(architecture, layers)
        if known is not None:
            return known
        return facts if facts.architecture is None and not _inherited(facts) else ModelFacts()
    by_name = builtin_model_facts(profile.model)
    if by_name is not None:
        return by_name
    return ModelFacts() if _inherited(facts) else facts


def _inherited(facts: ModelFacts) -> bool:
    """Whether `facts` are exactly a built-in profile's (copied through `extends`)."""
    if facts == ModelFacts():
        return False
    return any(known == facts for _, known in builtin_facts())


def expected_download_bytes(profile: Profile, repo: str) -> int | None:
    """The download size of `repo` when it is the profile's model and its facts say it."""
    if repo != profile.model:
        return None
    return model_facts_for(profile).bytes_of("download_size")


# Where the hub cache lives in a container that runs as root and leaves HF_HOME unset
# (huggingface_hub's default `~/.cache/huggingface`, `constants.py`), as in SGLang's image.
CONTAINER_HF_HOME = "/root/.cache/huggingface"


def hub_cache_for(profile: Profile, runtime: Runtime) -> Path:
    """The folder on this machine of the hub cache the profile's server reads weights from.

    The server's HF_HOME (the profile's env, else the container's default or this machine's)
    mapped through the runtime's mounts (`Runtime.host_path`: a Docker volume's host side).
    Raises ConfigError when no volume mounts it from this machine.
    """
    inner = profile.env.get("HF_HOME") or (
        CONTAINER_HF_HOME if runtime.in_container else str(hf_home()))
    folder = runtime.host_path(profile=profile, path=inner)
    if folder is None:
        raise ConfigError(
            f"profile {profile.name!r}: the server's Hugging Face cache {inner} is not mounted "
            "from this machine, so every start would download the weights again",
            remedy=f'add "~/.cache/huggingface:{inner}" to volumes under '
            f"{profile_table(profile.name, 'docker')}",
        )
    explicit = os.environ.get("HF_HUB_CACHE")
    return Path(explicit) if explicit and not runtime.in_container else folder / "hub"


def server_hub_cache(profile: Profile) -> Path | None:
    """`hub_cache_for` the profile's own runtime; None when that cache is not mounted here."""
    from llm_backend.runtimes import get_runtime

    try:
        return hub_cache_for(profile, get_runtime(profile.runtime))
    except BackendError:
        return None


def hub_sources(profile: Profile, runtime: Runtime, repos: Sequence[str]) -> list[HubRepository]:
    """The Hub repositories `repos` (the engine's `hub_models`: model first), as pull sources in
    the cache the server reads (`hub_cache_for`). Raises ConfigError when it is not mounted."""
    if not repos:
        return []
    cache = hub_cache_for(profile, runtime)
    return [
        HubRepository(repo, kind="model" if repo == profile.model else "draft_model",
                      cache_dir=cache, expected_bytes=expected_download_bytes(profile, repo),
                      profile_name=profile.name)
        for repo in repos
    ]


def is_hub_id(model: str) -> bool:
    """`org/name` that is not a local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model)) and not Path(model).expanduser().exists()


def _hf_token_source() -> str | None:
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable):
            return f"env {variable}"
    token_path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home() / "token").expanduser()
    if token_path.is_file() and token_path.read_text(encoding="utf-8").strip():
        return f"cached login ({token_path})"
    return None


def check_hf_token(ctx: Context) -> CheckResult | None:
    """`hf_token`: a token for gated repos, when the engine downloads from the hub."""
    if not ctx.engine.hub_models(profile=ctx.profile):
        return None
    source = _hf_token_source()
    if source:
        return result("hf_token", "pass", f"Hugging Face token from {source}")
    return result(
        "hf_token", "warn",
        "no Hugging Face token (HF_TOKEN or a cached login): gated repos cannot be downloaded "
        "and anonymous downloads are rate-limited",
        "huggingface-cli login, or export HF_TOKEN=<token>",
    )


def check_model_cache(ctx: Context) -> CheckResult | None:
    """`model_cache`: whether the engine's Hub repositories are in the cache the server reads.

    The answer is the pull plan's (`Context.plan`: `HubRepository.probe`, in `hub_cache_for`
    the profile's runtime), so `doctor`, `start` and `pull --dry-run` agree.
    """
    repos = ctx.engine.hub_models(profile=ctx.profile)
    if not repos:
        return None
    try:
        cache = hub_cache_for(ctx.profile, ctx.runtime)
    except BackendError as error:
        return result("model_cache", "fail", error.message, error.remedy)
    artifacts = [artifact for source, artifact in ctx.plan() if source.check == "model_cache"]
    parts, missing = [], []
    for artifact in artifacts:
        if artifact.present:
            parts.append(f"{artifact.name} cached ({format_bytes(artifact.bytes)})")
            continue
        size = artifact.missing_bytes
        if not size:
            to_download = "size unknown"
        elif size >= 10**9:
            to_download = f"about {size / 10**9:.0f} GB to download"
        else:
            to_download = f"{format_bytes(size)} to download"
        if artifact.state == "partial":
            whole = f" of {format_bytes(artifact.bytes)}" if artifact.bytes else ""
            parts.append(f"{artifact.name} partly cached "
                         f"({format_bytes(artifact.cached_bytes)}{whole} here, {to_download})")
        else:
            parts.append(f"{artifact.name} not cached ({to_download})")
        missing.append(artifact.name)
    summary = "; ".join(parts) + f" in {cache}"
    details: dict[str, Any] = {"artifacts": [artifact.to_json() for artifact in artifacts]}
    if not missing:
        return result("model_cache", "pass", summary, **details)
    if hub_offline():
        return result("model_cache", "fail", summary + f"; {_offline_name()} is set",
                      f"{ctx.pull_command} on a machine with internet, then copy the cache "
                      f"({', '.join(missing)})", **details)
    return result("model_cache", "warn", summary + "; `start` pulls it first",
                  ctx.pull_command, **details)


# --- pulling a repository (`llm-backend pull`) -------------------------------------------


def offline_variable() -> str | None:
    """The variable that puts huggingface_hub offline, read as huggingface_hub 2.4 reads it
    (`constants.py`: `HF_HUB_OFFLINE`, else `TRANSFORMERS_OFFLINE` when the first is unset or
    empty; true for 1/ON/YES/TRUE in any case, nothing else), so that the tool's judgement and
    the server's downloads agree; None when online."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return name if value.upper() in {"1", "ON", "YES", "TRUE"} else None
    return None


def hub_offline() -> bool:
    return offline_variable() is not None


def _offline_name() -> str:
    return offline_variable() or "HF_HUB_OFFLINE"


@dataclass(frozen=True)
class RepoEntry:
    """One file at the top of a Hub repository: its path and size in bytes."""

    path: str
    size: int


FileSelector = Callable[[Sequence[RepoEntry]], list[RepoEntry]]
# The weight formats SGLang loads, in its order of preference (see `select_like_sglang`).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


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
    for weights in WEIGHT_PATTERNS:
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


def check_hub_endpoint() -> None:
    """Raise PullError (error + fix) when HF_ENDPOINT is set but is not an http(s) URL with a
    host and a valid port.

    huggingface_hub (1.x, `constants.py`) parses HF_ENDPOINT with `urlsplit` when it is
    imported, so a malformed value would end in a ValueError traceback; a value with another
    scheme fails later in httpx as `UnsupportedProtocol`, which is no network problem.
    """
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        return
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise PullError(
            f"HF_ENDPOINT={endpoint!r} is not a valid http(s) URL",
            remedy="export HF_ENDPOINT=https://HOST[:PORT] (a Hub mirror), or `unset HF_ENDPOINT` "
            "to use https://huggingface.co",
        )


def _folder_name(text: str) -> str | None:
    """`text` when it can name one folder inside another (no `/`, not `.` or `..`, no NUL)."""
    if not text or "/" in text or "\0" in text or text in (".", ".."):
        return None
    return text


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
        expected_bytes: int | None = None,
        profile_name: str = "NAME",
    ) -> None:
        self.repo_id = repo_id
        self.kind = kind
        self.name = repo_id
        self.revision = revision
        self.selector = selector
        self.cache_dir = cache_dir or hf_hub_cache()
        # The download size the profile's model facts give: judges the cache when the Hub
        # cannot be asked for the listing (offline, unreachable).
        self.expected_bytes = expected_bytes
        self.profile_name = profile_name  # the profile that needs it, for fix lines
        self._listing: list[RepoEntry] | None = None
        self._commit: str | None = None

    check = "model_cache"

    def disk_path(self) -> Path:
        return self.cache_dir

    @property
    def storage_folder(self) -> Path:
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    def _cached_commit(self) -> str | None:
        """The commit `refs/REVISION` names; None when there is none, or when its text is no
        snapshot folder's name (`/`, `..`: never a way out of `snapshots/`)."""
        ref = self.storage_folder / "refs" / self.revision
        try:
            return _folder_name(ref.read_text(errors="replace").strip())
        except OSError:
            return None

    def _remote(self) -> tuple[str, list[RepoEntry]]:
        """The revision's commit and its top-level files, asked of the Hub (cached per run)."""
        if self._listing is not None and self._commit is not None:
            return self._commit, self._listing
        check_hub_endpoint()  # before huggingface_hub is imported: its constants parse it
        from huggingface_hub import HfApi, constants
        from huggingface_hub.hf_api import RepoFile

        api = HfApi()
        try:
            # huggingface_hub's HTTP client has no timeout of its own; a Hub that does not
            # answer would hold `doctor` and `start` for as long as the OS lets a connection
            # hang. Its metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s by default) bounds it.
            info = api.model_info(self.repo_id, revision=self.revision,
                                  timeout=constants.HF_HUB_ETAG_TIMEOUT)
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
                f"(`llm-backend profiles show {self.profile_name}`)",
                failure_class="model_not_found",
            )
        if isinstance(error, hub_errors.HFValidationError):  # a malformed id, not the network
            return PullError(
                f"{self.repo_id!r} is neither a valid Hub id nor an existing local path: "
                f"{error}",
                remedy="set `model` / `speculative.draft_model` to a Hub id such as "
                '"Qwen/Qwen3-8B" or to the absolute path of a local model folder',
                failure_class="model_not_found",
            )
        if isinstance(error, hub_errors.OfflineModeIsEnabled):
            return PullError(
                f"{self.repo_id} is not in {self.cache_dir} and {_offline_name()} is set",
                remedy=f"unset {_offline_name()} and run `llm-backend pull` on a connected "
                "network, or copy the repository into the cache",
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
        if _folder_name(commit) is None or folder.is_symlink() or not folder.is_dir():
            return found  # huggingface_hub makes each snapshot a real folder
        for path in folder.rglob("*"):
            if path.is_file():  # follows the snapshot's symlink to its blob
                found[path.relative_to(folder).as_posix()] = path.stat().st_size
        return found

    def probe(self) -> Artifact:
        """Present when every file SGLang loads at the revision's commit is in the cache with
        the Hub's size. Without the Hub's listing (HF_HUB_OFFLINE, or the Hub unreachable),
        judged from the cache alone: the cached commit holds a weight file, and at least 95 %
        of `expected_bytes` when that is known."""
        if hub_offline():
            return self._probe_cache(f"{_offline_name()}: only the cache was looked at")
        try:
            commit, entries = self._remote()
        except PullError as error:
            return self._probe_cache(error.message)
        wanted = self.selector(entries)
        cached = self._cached_files(commit)
        missing = [entry for entry in wanted if cached.get(entry.path) != entry.size]
        total = sum(entry.size for entry in wanted)
        missing_bytes = sum(entry.size for entry in missing)
        return Artifact(self.kind, self.name, not missing and bool(wanted), total,
                        str(self.storage_folder), missing_bytes,
                        detail=f"{len(wanted)} files at {commit[:12]}",
                        cached_bytes=total - missing_bytes)

    def probe_local(self) -> Artifact:
        """Judged from the cache alone, never asking the Hub (for `status`)."""
        return self._probe_cache(None)

    def _newest_snapshot(self) -> str | None:
        """The snapshot folder written last: what an interrupted pull (which writes
        `refs/REVISION` only once every file is in) leaves behind."""
        try:
            folders = [(path.lstat().st_mtime, path.name)
                       for path in (self.storage_folder / "snapshots").iterdir()
                       if path.is_dir() and not path.is_symlink()]
        except OSError:
            return None
        return max(folders)[1] if folders else None

    def _probe_cache(self, why: str | None) -> Artifact:
        """Present when the snapshot of the revision holds a weight file, every shard its
        weight index names, and (when the model facts give a size) at least 95 % of it.

        SGLang loads only the shards that `model.safetensors.index.json`'s `weight_map`
        names (sglang 0.5.23 `python/sglang/srt/model_loader/weight_utils.py`
        `filter_duplicate_safetensors_files`), so a shard that is not cached is a model that
        cannot load. Without `refs/REVISION` (a pull that was interrupted: it writes the ref
        last) the newest snapshot's files count as cached, never as present.
        """
        commit = self._cached_commit()
        unreferenced = commit is None
        if unreferenced:
            commit = self._newest_snapshot()
        files = self._cached_files(commit) if commit else {}
        size = sum(files.values())
        weights = any(fnmatch.fnmatch(path, pattern) for path in files if "/" not in path
                      for pattern in WEIGHT_PATTERNS)
        absent_shards = _shards_not_cached(self.storage_folder / "snapshots" / commit, files) \
            if commit else []
        expected = self.expected_bytes
        present = (weights and not absent_shards and not unreferenced
                   and (expected is None or size >= 0.95 * expected))
        if present:
            missing: int | None = 0
        else:
            missing = max(expected - size, 0) if expected is not None else None
        if expected is not None:
            total: int | None = max(size, expected)
        else:  # the cache tells a whole model's size, not a partial one's
            total = size if present else None
        notes = [why] if why else []
        if absent_shards:
            count = len(absent_shards)
            notes.append(f"{count} weight shard{'s' if count > 1 else ''} named in its index "
                         f"{'are' if count > 1 else 'is'} not cached "
                         f"({absent_shards[0]}{', ...' if count > 1 else ''})")
        if unreferenced and files:
            notes.append(f"no refs/{self.revision}: a pull did not finish")
        return Artifact(self.kind, self.name, present, total, str(self.storage_folder), missing,
                        detail="; ".join(notes) or None, cached_bytes=size)

    def _check_no_links(self) -> None:
        """Refuse a repository folder whose `blobs`, `snapshots` or `refs` is a symbolic link:
        huggingface_hub never makes one, and it would write (as root) wherever it points."""
        for name in ("blobs", "snapshots", "refs"):
            folder = self.storage_folder / name
            if folder.is_symlink():
                raise PullError(
                    f"{folder} is a symbolic link (to {os.readlink(folder)}); the Hub cache "
                    "never makes one, and a download would write wherever it points",
                    remedy=f"rm {folder} (the link only), then run `llm-backend pull` again",
                )

    def _remove_stale_partials(self) -> None:
        """Delete the temporary files of downloads that are over, never one in progress.

        huggingface_hub (2.4 `file_download.py`) writes a blob to
        `blobs/<etag>.<random>.incomplete` while holding the file lock
        `.locks/<repo folder>/<etag>.lock` (`WeakFileLock`, flock); a partial whose lock can
        be taken belongs to a download that died. Another pull with another state dir, or a
        server downloading for itself, may share this cache.
        """
        import fcntl

        blobs = self.storage_folder / "blobs"
        if not blobs.is_dir() or blobs.is_symlink():  # never delete through a planted link
            return
        locks = self.cache_dir / ".locks" / self.storage_folder.name
        for partial in blobs.glob("*.incomplete"):
            etag = partial.name.split(".", 1)[0]
            try:
                descriptor = os.open(locks / f"{etag}.lock", os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                partial.unlink(missing_ok=True)  # no lock file: no download of it runs
                continue
            except OSError:
                continue  # a lock we cannot open: leave the partial alone
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(descriptor)
                continue  # held: a download is writing it
            try:
                partial.unlink(missing_ok=True)
            finally:
                os.close(descriptor)  # closing releases the lock

    def fetch(self, *, progress: ProgressCallback) -> None:
        check_hub_endpoint()
        from huggingface_hub import hf_hub_download

        if hub_offline():
            raise PullError(
                f"{self.repo_id} is incomplete in {self.cache_dir} and {_offline_name()} is "
                "set",
                remedy=f"unset {_offline_name()} and run `llm-backend pull` again",
                failure_class="model_not_found",
            )
        commit, entries = self._remote()
        wanted = self.selector(entries)
        cached = self._cached_files(commit)
        total = sum(entry.size for entry in wanted)
        done = sum(entry.size for entry in wanted if cached.get(entry.path) == entry.size)
        self._check_no_links()
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
            except OSError as error:  # disk full, a folder we cannot write: not the network
                # huggingface_hub's HfHubHTTPError (gated, 404) is an OSError without an
                # errno, and a refused or timed-out connection is one too: those are the Hub's.
                if error.errno is None or isinstance(error, (ConnectionError, TimeoutError)):
                    raise self._translate(error) from error
                raise PullError(
                    f"cannot write {error.filename or self.cache_dir}: {error.strerror}",
                    remedy=f"free space in {self.cache_dir} (or make it writable), then run "
                    "`llm-backend pull` again; complete files are kept",
                ) from error
            except Exception as error:
                raise self._translate(error) from error
            counter.file_done(entry.size)
        self._remember_commit(commit)
        progress(ProgressEvent(self.name, total, total, finished=True))

    def _remember_commit(self, commit: str) -> None:
        """Write `refs/REVISION` = the commit pulled, as huggingface_hub does when it is given
        a branch (`file_download.py` `_cache_commit_hash_for_specific_revision`): the files
        were fetched by commit, and without the ref an offline reader (HF_HUB_OFFLINE, the
        server's own `snapshot_download`) cannot find the snapshot of `main`.

        Written to a new file and renamed into place: never through a planted link.
        """
        if commit == self.revision:
            return
        ref = self.storage_folder / "refs" / self.revision
        if any(part.is_symlink() for part in (self.storage_folder, ref.parent)):
            return  # not ours to follow; huggingface_hub resolves the revision online
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            temporary = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                 | os.O_NOFOLLOW, 0o644)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(commit)
            os.replace(temporary, ref)
        except OSError as error:
            raise PullError(
                f"cannot write {ref}: {error.strerror}",
                remedy=f"make {self.cache_dir} writable, then run `llm-backend pull` again; "
                "the files are kept",
            ) from error


# The weight indexes that name a sharded checkpoint's files (transformers' SAFE_WEIGHTS_INDEX_NAME
# and WEIGHTS_INDEX_NAME, `utils/__init__.py`), whose `weight_map` maps tensor -> file.
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _shards_not_cached(snapshot: Path, files: dict[str, int]) -> list[str]:
    """The files a cached weight index names that the snapshot does not hold, sorted."""
    for index in WEIGHT_INDEXES:
        if index not in files:
            continue
        try:
            weight_map = json.loads((snapshot / index).read_text(encoding="utf-8"))["weight_map"]
            named = {str(name) for name in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # an index we cannot read says nothing
        return sorted(name for name in named if name not in files)
    return []


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
