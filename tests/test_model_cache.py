"""One answer to "is the model there, and does it fit": `doctor`, `start` and `pull` agree.

The cache they look at is the one the server reads (a Docker profile's mounted host folder,
not this machine's HF_HOME), judged by the pull plan (`HubRepository.probe`), and free disk
is summed per filesystem by one function (`pull.by_filesystem`). The Hub is the stand-in of
tests/hub_standin.py behind the real huggingface_hub (the real Hub is unreachable here).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env
from tests.hub_standin import HubStandin
from tests.pull_data import DRAFT, MODEL, model_files, snapshot, use_hub


def cache_world(world: Env, hub: HubStandin, appdata: Path) -> Path:
    """A Docker profile whose Hub cache is the host folder `appdata` (as in sglang#11751's
    compose file), and `hubnative`, the same natively; returns this machine's hub cache."""
    cache = use_hub(world.env, hub, world.root)
    world.env["DOCKER_HOST"] = f"unix://{world.root / 'no-docker.sock'}"  # the image: unknown
    world.write_config(f"""
[profiles.hubdocker]
engine = "sglang"
runtime = "docker"
model = "{MODEL}"
python = "{sys.executable}"
[profiles.hubdocker.speculative]
enabled = true
algorithm = "EAGLE3"
draft_model = "{DRAFT}"
[profiles.hubdocker.docker]
image = "lmsysorg/sglang:v0.5.23"
volumes = ["{appdata}:/root/.cache/huggingface"]
[profiles.hubnative]
extends = "hubdocker"
runtime = "native"
""")
    return cache


def doctor_checks(world: Env, profile: str) -> dict[str, dict[str, Any]]:
    report = json.loads(world.run("doctor", "--profile", profile, "--json", timeout=120).stdout)
    return {check["name"]: check for check in report["checks"]}


def dry_run(world: Env, profile: str, *extra: str) -> dict[str, dict[str, Any]]:
    completed = world.run("pull", "--profile", profile, *extra, "--dry-run", "--json",
                          check=True)
    return {item["name"]: item for item in json.loads(completed.stdout)["artifacts"]}


def test_doctor_looks_at_the_folder_a_docker_profile_mounts(
    world: Env, hub: HubStandin
) -> None:
    appdata = world.root / "appdata" / "hf_cache"
    local = cache_world(world, hub, appdata)
    mounted = appdata / "hub"

    planned = dry_run(world, "hubdocker")
    assert planned[MODEL]["location"] == str(mounted / "models--acme--tiny-moe")
    checks = doctor_checks(world, "hubdocker")
    model_cache, disk = checks["model_cache"], checks["disk"]
    assert model_cache["status"] == "warn"
    assert model_cache["summary"].endswith(f"in {mounted}; `start` pulls it first")
    assert f"{MODEL} not cached" in model_cache["summary"]
    assert [item["present"] for item in model_cache["details"]["artifacts"]] == [False, False]
    for repo in (MODEL, DRAFT):  # the draft lands there too
        need = disk["details"][f"model cache for {repo}"]
        assert need["path"] == str(mounted)
        assert need["need"] == planned[repo]["missing_bytes"] > 0

    # Fill the mounted folder (what `pull` does for this profile, here without the image),
    # leaving this machine's own HF_HOME empty.
    world.env["HF_HOME"] = str(appdata)
    world.run("pull", "--profile", "hubnative", check=True)
    world.env["HF_HOME"] = str(local.parent)
    assert not local.exists()
    snapshot(mounted, MODEL)

    checks = doctor_checks(world, "hubdocker")
    assert checks["model_cache"]["status"] == "pass", checks["model_cache"]
    assert checks["model_cache"]["summary"].startswith(f"{MODEL} cached (")
    assert checks["disk"]["details"][f"model cache for {MODEL}"]["need"] == 0
    assert dry_run(world, "hubdocker")[MODEL]["present"] is True
    # The same profile run natively reads this machine's (empty) cache: not cached there.
    native = doctor_checks(world, "hubnative")["model_cache"]
    assert native["status"] == "warn" and native["summary"].endswith(
        f"in {local}; `start` pulls it first")


def test_doctor_pull_and_start_agree_on_a_partial_cache(world: Env, hub: HubStandin) -> None:
    appdata = world.root / "appdata"
    cache_world(world, hub, appdata)
    world.env["HF_HOME"] = str(appdata)
    world.run("pull", "--profile", "hubnative", check=True)
    shard = "model-00002-of-00002.safetensors"
    (snapshot(appdata / "hub", MODEL) / shard).unlink()  # a shard lost since

    planned = dry_run(world, "hubnative")[MODEL]
    assert planned["present"] is False
    assert planned["missing_bytes"] == len(model_files()[shard])
    model_cache = doctor_checks(world, "hubnative")["model_cache"]
    assert model_cache["status"] == "warn"
    assert f"{MODEL} partly cached" in model_cache["summary"]
    assert model_cache["details"]["artifacts"][0] == planned
    world.env["LLM_BACKEND_SKIP_CHECKS"] = "gpu,memory,sglang"  # no GPU, no sglang here
    refused = world.run("start", "--profile", "hubnative", "--no-pull")
    assert refused.returncode == 7, refused.stderr
    assert f"model {MODEL}" in refused.stderr and DRAFT not in refused.stderr.split("fix:")[0]
    assert not (world.state_dir / "instance.json").exists()


def test_doctor_and_pull_sum_the_same_bytes_for_the_disk(world: Env, hub: HubStandin) -> None:
    hub.repos[MODEL].listed_only["model-00003-of-00003.safetensors"] = 2**50  # 1 PiB
    cache_world(world, hub, world.root / "appdata")
    disk = doctor_checks(world, "hubnative")["disk"]
    assert disk["status"] == "fail"
    assert "1024.0 TiB needed" in disk["summary"]
    assert disk["fix"] and "volumes" in disk["fix"]
    refused = world.run("pull", "--profile", "hubnative")
    assert refused.returncode == 7
    assert "the pull needs 1024.0 TiB" in refused.stderr


def test_without_the_hub_the_cache_is_judged_against_the_expected_size(
    tmp_path: Path, hub: HubStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE: no listing, so a cached snapshot counts when it holds weights and (when
    the model facts give a size) at least 95 % of it."""
    from llm_backend.engines.hub import HubRepository

    env: dict[str, str] = {}
    cache = use_hub(env, hub, tmp_path)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    HubRepository(MODEL, cache_dir=cache).fetch(progress=lambda event: None)
    cached = sum(len(model_files()[name]) for name in model_files()
                 if (snapshot(cache, MODEL) / name).is_file())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(hub.requests)

    def probe(expected: int | None) -> Any:
        return HubRepository(MODEL, cache_dir=cache, expected_bytes=expected).probe()

    assert probe(None).present is True
    assert probe(cached).present is True and probe(cached).missing_bytes == 0
    short = probe(cached * 2)
    assert short.present is False and short.missing_bytes == cached
    assert short.bytes == cached * 2
    for weights in snapshot(cache, MODEL).glob("*.safetensors"):
        weights.unlink()
    assert probe(None).present is False  # configs alone are no model
    assert len(hub.requests) == requests  # offline: the Hub was not asked
    shutil.rmtree(cache)
    nothing = probe(cached)
    assert nothing.present is False and nothing.missing_bytes == cached


def test_needs_on_one_filesystem_are_summed(tmp_path: Path) -> None:
    from llm_backend.pull import DiskNeed, by_filesystem

    free = shutil.disk_usage(tmp_path).free
    needs = [DiskNeed("a", tmp_path / "not" / "yet", 5), DiskNeed("b", tmp_path, 7),
             DiskNeed("c", tmp_path, None)]
    (filesystem,) = by_filesystem(needs)
    assert filesystem.total == 12 and filesystem.where == tmp_path
    assert not filesystem.short
    (over,) = by_filesystem([DiskNeed("a", tmp_path, free // 2 + 1),
                             DiskNeed("b", tmp_path, free // 2 + 1)])
    assert over.short  # each fits alone; together they do not


@pytest.mark.parametrize("planted", ["ref-root", "ref-parent", "snapshot-link"])
def test_a_damaged_cache_never_leads_the_probe_out_of_its_snapshots(
    tmp_path: Path, planted: str
) -> None:
    """`refs/main` holding `/` or `..`, or a snapshot that is a link to `/`: the cache judge
    (every `status`) looks only inside the repository's own snapshot folders; it used to walk
    the whole filesystem (and fail on /proc)."""
    from llm_backend.engines.hub import HubRepository

    repo = HubRepository("org/m", cache_dir=tmp_path / "hub")
    (repo.storage_folder / "refs").mkdir(parents=True)
    (repo.storage_folder / "snapshots").mkdir()
    if planted == "ref-root":
        (repo.storage_folder / "refs" / "main").write_text("/")
    elif planted == "ref-parent":
        (repo.storage_folder / "refs" / "main").write_text("..\n")
    else:
        (repo.storage_folder / "snapshots" / "abc").symlink_to("/")
    artifact = repo.probe_local()
    assert not artifact.present
    assert artifact.cached_bytes == 0


@pytest.mark.parametrize(("name", "value", "offline"), [
    ("TRANSFORMERS_OFFLINE", "yes", True),  # huggingface_hub reads it when HF_HUB_OFFLINE is unset
    ("HF_HUB_OFFLINE", "0", False),
])
def test_offline_is_judged_as_huggingface_hub_judges_it(
    world: Env, hub: HubStandin, name: str, value: str, offline: bool
) -> None:
    """huggingface_hub 2.4 (`constants.py`) is offline with HF_HUB_OFFLINE, else
    TRANSFORMERS_OFFLINE; `pull` and `doctor` judge (and name) the same variable, so the
    fix unsets the one that is set."""
    use_hub(world.env, hub, world.root)
    world.write_config(f"""
[profiles.hubtest]
engine = "sglang"
runtime = "native"
model = "{MODEL}"
python = "{sys.executable}"
""")
    world.env[name] = value
    pulled = world.run("pull", "--profile", "hubtest")
    if offline:
        assert pulled.returncode == 7, pulled.stderr
        assert f"{name} is set" in pulled.stderr and f"fix: unset {name}" in pulled.stderr
        assert hub.requests == []  # judged from the cache alone
    else:
        assert pulled.returncode == 0, pulled.stderr
        assert hub.requests
