"""`status` says what is pulled and what is missing, judged from the local cache alone.

The Hub is the stand-in of tests/hub_standin.py behind the real huggingface_hub (the real Hub
is unreachable here); it records every request, which is how these tests show that `status`
asks it nothing. The encoding is OpenAI's real file served by a real local HTTP server, and
the running backend is a real llama-server.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, wait_for
from tests.hub_standin import HubStandin, Repo
from tests.pull_data import DRAFT, ENCODING_NAME, MODEL, model_files, snapshot, use_hub

SHARD_1, SHARD_2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def pulled_world(world: Env, hub: HubStandin, encodings_url: str) -> Path:
    """A native SGLang profile (model, draft, gpt-oss's encoding) that a plain `start` would
    use; the model's weight index names both shards, as a real sharded checkpoint's does."""
    files = model_files()
    files["model.safetensors.index.json"] = json.dumps({
        "metadata": {"total_size": len(files[SHARD_1]) + len(files[SHARD_2])},
        "weight_map": {"model.embed_tokens.weight": SHARD_1, "lm_head.weight": SHARD_2},
    }).encode()
    hub.repos[MODEL] = Repo(files)
    cache = use_hub(world.env, hub, world.root)
    world.env["LLM_BACKEND_ENCODINGS_URL"] = encodings_url
    world.write_config(f"""
default_profile = "hubtest"
[profiles.hubtest]
engine = "sglang"
runtime = "native"
model = "{MODEL}"
python = "{sys.executable}"
[profiles.hubtest.env]
TIKTOKEN_ENCODINGS_BASE = "{world.root / 'encodings'}"
[profiles.hubtest.speculative]
enabled = true
algorithm = "EAGLE3"
draft_model = "{DRAFT}"
""")
    return cache


def settled(hub: HubStandin) -> None:
    """Wait until the stand-in has logged no new request for a second."""
    seen = [len(hub.requests), time.monotonic()]

    def quiet() -> bool:
        if len(hub.requests) != seen[0]:
            seen[:] = [len(hub.requests), time.monotonic()]
        return time.monotonic() - seen[1] >= 1.0

    assert wait_for(quiet, 60), "the Hub stand-in kept getting requests"


def status(world: Env, hub: HubStandin) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """`status --json` and `status`: the JSON, its artifacts by kind, the text. Asserts that
    neither asked the Hub anything."""
    asked = len(hub.requests)
    data = json.loads(world.run("status", "--json").stdout)
    text = world.run("status").stdout
    assert hub.requests[asked:] == [], "status asked the Hub"
    report = data["artifacts"]
    assert report["judged_from"] == "local cache" and "judged from the local cache" in text
    return data, {item["kind"]: item for item in report["items"]}, text


def test_status_reports_missing_partial_and_present_without_asking_the_hub(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    cache = pulled_world(world, hub, encoding_server[0])

    data, items, text = status(world, hub)
    assert data["state"] == "stopped" and data["artifacts"]["profile"] == "hubtest"
    assert [(kind, item["state"]) for kind, item in items.items()] == [
        ("model", "missing"), ("draft_model", "missing"), ("encoding", "missing")]
    assert data["artifacts"]["missing"] == [MODEL, DRAFT, ENCODING_NAME]
    assert data["artifacts"]["fix"] == "llm-backend pull --profile hubtest"
    assert "pulled:   hubtest (native): 3 of 3 missing" in text
    assert f"model       missing  {MODEL}" in text
    assert "fix:      llm-backend pull --profile hubtest" in text

    # A pull killed after the first shard: that shard is here, the rest is not.
    hub.delay_per_chunk_s = 0.05
    process = world.popen("pull", "--profile", "hubtest")
    try:
        assert wait_for(lambda: any((cache / "models--acme--tiny-moe").rglob(SHARD_1)), 60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    hub.delay_per_chunk_s = 0.0
    settled(hub)  # the killed pull's last requests are answered before status is watched
    _, items, text = status(world, hub)
    model = items["model"]
    assert model["state"] == "partial" and model["present"] is False
    assert model["cached_bytes"] >= len(model_files()[SHARD_1])
    assert "no refs/main" in model["detail"] and "no refs/main" in text
    assert f"model       partial  {MODEL} (" in text and " here" in text

    world.run("pull", "--profile", "hubtest", check=True)
    data, items, text = status(world, hub)
    assert all(item["state"] == "present" for item in items.values()), items
    assert data["artifacts"]["missing"] == [] and data["artifacts"]["fix"] is None
    served = hub.repos[MODEL].files
    loads = [name for name in served if "/" not in name and not name.startswith(
        ("README", ".git"))]
    assert items["model"]["bytes"] == sum(len(served[name]) for name in loads)
    assert "pulled:   hubtest (native): everything present" in text
    assert "fix:" not in text

    # A shard lost since: the cached index names it, so the model cannot load.
    (snapshot(cache, MODEL) / SHARD_2).unlink()
    data, items, text = status(world, hub)
    assert items["model"]["state"] == "partial"
    assert SHARD_2 in items["model"]["detail"]
    assert data["artifacts"]["missing"] == [MODEL]
    # pull and doctor (which ask the Hub) agree, and pull brings it back.
    dry = json.loads(world.run("pull", "--dry-run", "--json", check=True).stdout)
    assert [item["state"] for item in dry["artifacts"]] == ["partial", "present", "present"]
    doctor = json.loads(world.run("doctor", "--json").stdout)["artifacts"]
    assert doctor["items"] == dry["artifacts"] and doctor["judged_from"] == "sources"
    assert doctor["missing"] == [MODEL] and doctor["fix"] == "llm-backend pull --profile hubtest"
    assert f"model       partial  {MODEL}" in world.run("doctor").stdout
    world.run("pull", check=True)
    assert status(world, hub)[0]["artifacts"]["missing"] == []


def test_status_of_a_running_backend_is_about_its_own_profile(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    pulled_world(world, hub, encoding_server[0])  # `start` alone would use hubtest
    world.run("start", "--profile", "smollm2-cpu", check=True)
    try:
        ready = world.run("status", "--json")
        assert ready.returncode == 0, ready.stdout + ready.stderr
        report = json.loads(ready.stdout)["artifacts"]
        assert report["profile"] == "smollm2-cpu" and report["runtime"] == "native"
        kinds = [(item["kind"], item["state"]) for item in report["items"]]
        assert kinds == [("binary", "present"), ("model_file", "present")]
        binary = report["items"][0]
        assert binary["location"] == world.env["LLM_BACKEND_BINARY"]
        assert binary["bytes"] == Path(binary["location"]).stat().st_size
        assert hub.requests == []
    finally:
        world.run("stop", check=True)


def test_a_profile_that_does_not_resolve_is_named_not_a_crash(world: Env) -> None:
    world.write_config('default_profile = "nosuch"\n')
    completed = world.run("status", "--json")
    assert completed.returncode == 1, completed.stderr  # stopped, not a traceback
    report = json.loads(completed.stdout)["artifacts"]
    assert report["profile"] == "nosuch" and report["items"] == []
    assert "nosuch" in report["error"] and report["remedy"]
    text = world.run("status").stdout
    assert "pulled:   nosuch: cannot tell:" in text and "fix:" in text


def test_status_watch_looks_at_the_caches_again_only_every_30_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status --watch` refreshes every second; the artifacts are judged again only when the
    state or profile changes, or PULLED_REFRESH_S later (the clock here is the test's)."""
    import llm_backend.cli.status as status_command
    from llm_backend.lifecycle import Lifecycle

    monkeypatch.setenv("LLM_BACKEND_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLM_BACKEND_PROFILE", "smollm2-cpu")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    clock = [1000.0]
    refreshes: list[float] = []
    probes: list[float] = []
    judge = Lifecycle.pulled

    def counted(self: Lifecycle, **kwargs: Any) -> Any:
        probes.append(clock[0])
        return judge(self, **kwargs)

    def sleep(seconds: float) -> None:
        refreshes.append(clock[0])
        if len(refreshes) == 40:
            raise KeyboardInterrupt  # the user's Ctrl-C ends --watch
        clock[0] += seconds

    monkeypatch.setattr(Lifecycle, "pulled", counted)
    monkeypatch.setattr(status_command.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(status_command.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        status_command.status(as_json=True, watch=True)
    assert len(refreshes) == 40
    assert probes == [1000.0, 1030.0], probes  # 40 refreshes, 2 looks at the caches
