"""What the `pull` tests share: a gpt-oss-shaped Hub repository on the Hub stand-in, and a
real HTTP server of gpt-oss's real encoding file (rebuilt by scripts/make-test-encoding.py,
SHA-256 checked)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.hub_standin import HubStandin, Repo

ENCODING_NAME = "o200k_base.tiktoken"
ENCODING_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
TEST_DATA = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
    "llm-backend" / "test-data"

MODEL = "acme/tiny-moe"
DRAFT = "acme/tiny-eagle3"


def seeded_bytes(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def model_files() -> dict[str, bytes]:
    """A gpt-oss-shaped repository: top-level shards + `original/` and `metal/` copies."""
    return {
        "config.json": b'{"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 2}',
        "generation_config.json": b"{}",
        "tokenizer.json": b'{"model": {}}',
        "tokenizer_config.json": b"{}",
        "chat_template.jinja": b"{{ messages }}",
        "model-00001-of-00002.safetensors": seeded_bytes("shard-1", 1_500_000),
        "model-00002-of-00002.safetensors": seeded_bytes("shard-2", 1_200_000),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        "original/model--00001-of-00001.safetensors": seeded_bytes("original", 400_000),
        "metal/model.bin": seeded_bytes("metal", 300_000),
        "README.md": b"# tiny",
        ".gitattributes": b"*.safetensors filter=lfs",
    }


SGLANG_LOADS = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json",
}


def snapshot(cache: Path, repo: str) -> Path:
    folder = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
    found = list(folder.iterdir()) if folder.is_dir() else []
    assert len(found) == 1, f"expected one snapshot in {folder}, found {found}"
    return found[0]


@pytest.fixture
def hub() -> Iterator[HubStandin]:
    """The Hub stand-in with MODEL (gpt-oss-shaped) and DRAFT."""
    standin = HubStandin({
        MODEL: Repo(model_files()),
        DRAFT: Repo({"config.json": b"{}", "model.safetensors": seeded_bytes("draft", 600_000)},
                    commit="fedcba9876543210fedcba9876543210fedcba98"),
    }).start()
    yield standin
    standin.stop()


@pytest.fixture
def encoding_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server over a folder; the real encoding file in it unless a test swaps it."""
    source = TEST_DATA / ENCODING_NAME
    if not source.is_file():
        pytest.fail(f"no {source}\nfix: scripts/setup.sh --test (it rebuilds the file)",
                    pytrace=False)
    served = tmp_path / "served"
    served.mkdir()
    (served / ENCODING_NAME).write_bytes(source.read_bytes())
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


FLAGSHIP_REPOS = ("openai/gpt-oss-120b", "lmsys/EAGLE3-gpt-oss-120b-bf16")


def seed_flagship(root: Path, env: dict[str, str]) -> Path:
    """Put what the flagship profile needs where `start` looks, so it pulls nothing: its Hub
    repositories in a hub cache of this test's own (HF_HOME in `env`; a config and a small
    safetensors file each, in huggingface_hub's cache layout) and gpt-oss's real encoding.
    Returns the encodings folder, for the profile's TIKTOKEN_ENCODINGS_BASE or a volume.

    The stand-in SGLang reads none of these files; they only make the cache say "present".
    """
    hf_home = root / "hf"
    commit = "0" * 40
    for repo in FLAGSHIP_REPOS:
        storage = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / "main").write_text(commit)
        snapshot_folder = storage / "snapshots" / commit
        snapshot_folder.mkdir(parents=True, exist_ok=True)
        (snapshot_folder / "config.json").write_text('{"architectures": ["GptOssForCausalLM"]}')
        (snapshot_folder / "model.safetensors").write_bytes(seeded_bytes(repo, 4096))
    env["HF_HOME"] = str(hf_home)
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        env.pop(name, None)
    encodings = root / "tiktoken_encodings"
    encodings.mkdir(exist_ok=True)
    source = TEST_DATA / ENCODING_NAME
    if not source.is_file():
        pytest.fail(f"no {source}\nfix: scripts/setup.sh --test (it rebuilds the file)",
                    pytrace=False)
    (encodings / ENCODING_NAME).write_bytes(source.read_bytes())
    return encodings


def use_hub(env: dict[str, str], hub: HubStandin, root: Path) -> Path:
    """Point huggingface_hub in `env` at the Hub stand-in, with a cache of this test's own
    (no token, not offline). Returns the hub cache folder."""
    hf_home = root / "hf"
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home),
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5"})
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    return hf_home / "hub"
