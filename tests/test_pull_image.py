"""`llm-backend pull` of a container image from a real registry through a real Docker engine.

The registry is Debian's `docker-registry` (the CNCF distribution), started here on a free
loopback port with its files in the test's folder; the image is the locally built llama.cpp
image, pushed to it and removed locally before the pull. Docker treats 127.0.0.0/8
registries as insecure by default, so no engine configuration is changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Env, free_port, wait_for
from tests.docker_env import LLAMA_IMAGE, docker, require_docker

pytestmark = pytest.mark.docker


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed\nfix: scripts/setup.sh --test "
                    "(apt-get install docker-registry)", pytrace=False)
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {tmp_path / "registry-data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                               start_new_session=True)
    address = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(answers, 30), (tmp_path / "registry.log").read_text()
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def pushed_image(registry: str, tmp_path: Path) -> Iterator[str]:
    """The llama.cpp image plus a layer of 20 MB of its own (so the pull has bytes to fetch),
    pushed to the registry under a unique tag, then removed locally."""
    require_docker()
    reference = f"{registry}/llm-backend/llama-server:pull-{uuid.uuid4().hex[:8]}"
    context = tmp_path / "image"
    context.mkdir()
    (context / "layer.bin").write_bytes(os.urandom(20_000_000))
    (context / "Dockerfile").write_text(f"FROM {LLAMA_IMAGE}\nCOPY layer.bin /pull-test.bin\n")
    try:
        docker("build", "-q", "-t", reference, str(context), timeout=300)
        docker("push", reference, timeout=300)
        docker("image", "rm", reference)
        yield reference
    finally:
        docker("image", "rm", "-f", reference, check=False)


def image_world(world: Env, image: str) -> None:
    world.write_config(f"""
[profiles.imagetest]
extends = "smollm2-cpu"
runtime = "docker"
[profiles.imagetest.docker]
image = "{image}"
container_name = "llm-backend-pull-{uuid.uuid4().hex[:8]}"
""")


def test_pull_brings_the_image_back_from_the_registry(world: Env, pushed_image: str) -> None:
    image_world(world, pushed_image)
    dry = json.loads(world.run("pull", "--profile", "imagetest", "--dry-run", "--json",
                               check=True).stdout)
    kinds = {item["kind"]: item for item in dry["artifacts"]}
    assert set(kinds) == {"image", "model_file"}  # the image has its own llama-server
    assert kinds["image"]["present"] is False
    assert docker("image", "inspect", pushed_image, check=False).returncode != 0

    started = time.monotonic()
    pulled = world.run("pull", "--profile", "imagetest", "--json", timeout=300, check=True)
    elapsed = time.monotonic() - started
    result = json.loads(pulled.stdout)
    assert result["fetched"] == [pushed_image]
    image = {item["kind"]: item for item in result["artifacts"]}["image"]
    assert image["present"] is True and image["bytes"] > 50_000_000
    assert docker("image", "inspect", pushed_image, check=False).returncode == 0
    assert elapsed < 300


def test_pull_shows_layer_progress_and_resumes_after_a_kill(
    world: Env, pushed_image: str
) -> None:
    image_world(world, pushed_image)
    process = world.popen("pull", "--profile", "imagetest")
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # plain lines (not a terminal): the first progress
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert first.startswith(f"pull: {pushed_image}: "), first
    resumed = world.run("pull", "--profile", "imagetest", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # The engine may finish the layers it had started on its own: either way the second pull
    # ends with the image there, fetching only what is still missing.
    assert "pull: imagetest: everything is present" in resumed.stdout
    assert docker("image", "inspect", pushed_image, check=False).returncode == 0


def test_missing_tag_and_unreachable_registry(world: Env, registry: str) -> None:
    require_docker()
    image_world(world, f"{registry}/llm-backend/llama-server:no-such-tag")
    missing = world.run("pull", "--profile", "imagetest", timeout=120)
    assert missing.returncode == 7, missing.stderr
    assert f"error: the Docker engine could not pull {registry}/llm-backend/llama-server:" \
        "no-such-tag" in missing.stderr
    assert "fix: check the image name and tag in the profile" in missing.stderr

    closed = f"127.0.0.1:{free_port()}"
    image_world(world, f"{closed}/llm-backend/llama-server:x")
    down = world.run("pull", "--profile", "imagetest", timeout=120)
    assert down.returncode == 7, down.stderr
    assert f"error: the Docker engine could not pull {closed}/llm-backend/llama-server:x" \
        in down.stderr
    assert "fix: check the registry address and the network" in down.stderr


def test_no_docker_engine(world: Env) -> None:
    world.env["DOCKER_HOST"] = f"unix://{world.root}/no-docker.sock"
    image_world(world, "127.0.0.1:1/none:tag")
    refused = world.run("pull", "--profile", "imagetest")
    assert refused.returncode == 7
    assert f"error: no Docker engine answers at unix://{world.root}/no-docker.sock" \
        in refused.stderr
    assert "fix: start the Docker engine" in refused.stderr


def test_start_pulls_the_missing_image_then_runs_it(world: Env, pushed_image: str) -> None:
    image_world(world, pushed_image)
    started = world.run("start", "--profile", "imagetest", timeout=400)
    try:
        assert started.returncode == 0, started.stderr
        assert f"pulling what imagetest needs first: image {pushed_image}" in started.stderr
        assert f"pull: {pushed_image}: done" in started.stderr
        assert started.stderr.index(f"pull: {pushed_image}: done") < \
            started.stderr.index("ready")
        assert json.loads(world.run("status", "--json").stdout)["state"] == "ready"
    finally:
        world.run("stop", timeout=120)
    assert docker("image", "inspect", pushed_image, check=False).returncode == 0
