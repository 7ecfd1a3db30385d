"""The Hugging Face hub cache, for engines that download models at start (SGLang, vLLM).

The cache layout (`$HF_HUB_CACHE` or `$HF_HOME/hub`, `models--ORG--NAME/blobs` and
`snapshots/REV/...`) is huggingface_hub's (`constants.py`, `file_download.py`). The checks
here are engine checks: an engine lists them in its `checks()` and names its repos in
`hub_models()`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from llm_backend.checks import CheckResult, Context, result
from llm_backend.config import Profile
from llm_backend.pull import hf_home
from llm_backend.units import format_bytes


def hf_hub_cache() -> Path:
    """Where downloaded repos live: HF_HUB_CACHE (or its old name), else HF_HOME/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "hub"


@dataclass(frozen=True)
class CachedModel:
    """What the Hugging Face cache holds of one repo (sizes in bytes)."""

    repo: str
    path: Path
    present: bool
    cached_bytes: int
    expected_bytes: int | None

    @property
    def missing_bytes(self) -> int | None:
        if self.expected_bytes is None:
            return None if not self.present else 0
        return max(self.expected_bytes - self.cached_bytes, 0)

    @property
    def complete(self) -> bool:
        if self.expected_bytes is None:
            return self.present
        return self.cached_bytes >= 0.95 * self.expected_bytes


def expected_download_bytes(profile: Profile, repo: str) -> int | None:
    """The download size of `repo` when it is the profile's model and the profile says it."""
    return profile.model_facts.bytes_of("download_size") if repo == profile.model else None


def cached_model(repo: str, expected_bytes: int | None = None) -> CachedModel:
    """Look up `org/name` in the Hugging Face hub cache (models--org--name/blobs)."""
    folder = hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    blobs = folder / "blobs"
    size = 0
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.is_file() and not blob.name.endswith(".incomplete"):
                size += blob.stat().st_size
    present = any((folder / "snapshots").glob("*/*.safetensors")) or any(
        (folder / "snapshots").glob("*/*/*.safetensors")
    )
    return CachedModel(repo, folder, present, size, expected_bytes)


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
    """`model_cache`: whether the engine's repos are already downloaded."""
    repos = ctx.engine.hub_models(profile=ctx.profile)
    if not repos:
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    parts, missing = [], []
    for repo in repos:
        model = cached_model(repo, expected_download_bytes(ctx.profile, repo))
        if model.complete:
            parts.append(f"{repo} cached ({format_bytes(model.cached_bytes)})")
            continue
        size = model.missing_bytes
        to_download = f"about {size / 10**9:.0f} GB to download" if size else "size unknown"
        state = "partly cached" if model.cached_bytes else "not cached"
        parts.append(f"{repo} {state} ({to_download})")
        missing.append(repo)
    summary = "; ".join(parts) + f" in {hf_hub_cache()}"
    if not missing:
        return result("model_cache", "pass", summary)
    fix = "; ".join(f"huggingface-cli download {repo}" for repo in missing)
    if offline:
        return result("model_cache", "fail", summary + "; HF_HUB_OFFLINE is set",
                      fix + " (on a machine with internet, then copy the cache)")
    return result("model_cache", "warn", summary + "; start downloads it first", fix)
