"""`start` pulls what is missing before it prepares the host or starts a load timer.

SGLang is the stand-in (tests/sglang_standin.py, replaying a real SGLang log; SGLang needs a
big GPU), the Hub is the stand-in of tests/hub_standin.py behind the real huggingface_hub,
and the encoding is OpenAI's real file served by a real HTTP server.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tests.conftest import Env
from tests.hub_standin import HubStandin
from tests.pull_data import (
    DRAFT,
    ENCODING_NAME,
    ENCODING_SHA256,
    MODEL,
    SGLANG_LOADS,
    model_files,
    snapshot,
    use_hub,
)

STANDIN = Path(__file__).resolve().parent / "sglang_standin.py"


def standin_world(world: Env, hub: HubStandin, url: str) -> tuple[Path, Path]:
    """The flagship's shape (SGLang, EAGLE3 draft, gpt-oss encoding) on the stand-ins."""
    cache = use_hub(world.env, hub, world.root)
    encodings = world.root / "tiktoken"
    world.env.update({
        "LLM_BACKEND_ENCODINGS_URL": url,
        # No GPU and no sglang package here: the stand-in needs neither.
        "LLM_BACKEND_SKIP_CHECKS": "gpu,memory,sglang",
    })
    world.write_config(f"""
[profiles.firststart]
extends = "gpt-oss-120b-eagle3"
runtime = "native"
model = "{MODEL}"
command = ["{sys.executable}", "{STANDIN}"]
load_timeout_s = 60
stall_timeout_s = 10
stop_grace_s = 15
[profiles.firststart.speculative]
draft_model = "{DRAFT}"
[profiles.firststart.env]
TIKTOKEN_ENCODINGS_BASE = "{encodings}"
SGLANG_STANDIN_LINE_DELAY_S = "0.02"
[profiles.firststart.host_prep]
enabled = false
""")
    return cache, encodings


def test_first_start_pulls_model_draft_and_encoding_then_loads(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, _ = encoding_server
    cache, encodings = standin_world(world, hub, url)
    started = world.run("start", "--profile", "firststart", timeout=300)
    assert started.returncode == 0, started.stderr
    err = started.stderr
    assert (f"pulling what firststart needs first: model {MODEL}, draft_model {DRAFT}, "
            f"encoding {ENCODING_NAME}") in err
    assert f"pull: {MODEL}: done" in err and f"pull: {ENCODING_NAME}: done" in err
    # The pull came before the load: its lines precede the first load phase.
    assert err.index(f"pull: {MODEL}: done") < err.index("phase load_weights")
    folder = snapshot(cache, MODEL)
    for name in SGLANG_LOADS:
        assert (folder / name).read_bytes() == model_files()[name], name
    digest = hashlib.sha256((encodings / ENCODING_NAME).read_bytes()).hexdigest()
    assert digest == ENCODING_SHA256
    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "ready"
    world.run("stop", check=True)

    requests_before = len(hub.requests)
    again = world.run("start", "--profile", "firststart", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "pulling what" not in again.stderr  # everything is there now
    downloads = [path for method, path in hub.requests[requests_before:]
                 if method == "GET" and "/resolve/" in path]
    assert downloads == []
    world.run("stop", check=True)


def test_no_pull_refuses_and_names_what_is_missing(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, _ = encoding_server
    cache, encodings = standin_world(world, hub, url)
    refused = world.run("start", "--profile", "firststart", "--no-pull", timeout=120)
    assert refused.returncode != 0
    assert "tiktoken" in refused.stderr  # doctor's check runs before anything is pulled
    assert "fix: llm-backend pull" in refused.stderr
    assert not (world.state_dir / "instance.json").exists() or json.loads(
        (world.state_dir / "instance.json").read_text()).get("state") != "ready"
    assert not any(cache.rglob("*.safetensors"))
    assert not (encodings / ENCODING_NAME).exists()
    downloads = [path for method, path in hub.requests
                 if method == "GET" and "/resolve/" in path]
    assert downloads == []

    # With only the encoding in place the refusal names the weights.
    world.run("pull", "--profile", "firststart", check=True)
    for blob in (cache / "models--acme--tiny-eagle3").rglob("*"):
        if blob.is_file() or blob.is_symlink():
            blob.unlink()
    refused = world.run("start", "--profile", "firststart", "--no-pull", timeout=120)
    assert refused.returncode == 7, refused.stderr
    assert f"error: firststart needs what is not on this machine yet: draft_model {DRAFT}" \
        in refused.stderr
    assert "fix: llm-backend pull --profile firststart (or start without --no-pull)" \
        in refused.stderr
