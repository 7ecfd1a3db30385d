"""The SGLang engine through the Docker runtime, without a GPU: the SGLang stand-in
(tests/sglang_standin.py, which replays a real SGLang startup log and serves SGLang's
endpoints; it is not SGLang) runs in a real container of the local python image
(scripts/build-python-image.sh), started from a profile that extends the flagship.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Env, port_is_free
from tests.docker_env import DockerNames, containers_named, networks_named, require_docker
from tests.docker_env import unique_names as make_names
from tests.pull_data import seed_flagship

pytestmark = pytest.mark.docker

PYTHON_IMAGE = "llm-backend/python:local"
READY_LOG = "/standin/fixtures/sglang/startup-old-format-ready.log"


def standin_profile(world: Env, names: DockerNames, stall_timeout_s: int = 60,
                    **env: str) -> str:
    """The flagship profile, run by the stand-in in the python image, on this test's names,
    with this test's hub cache and encodings folder mounted where the flagship mounts them."""
    encodings = seed_flagship(world.root, world.env)
    variables = {"SGLANG_STANDIN_LOG": READY_LOG, "SGLANG_STANDIN_LINE_DELAY_S": "0.02", **env}
    env_table = ", ".join(f"{key} = {json.dumps(value)}" for key, value in variables.items())
    return f"""
[profiles.standin]
extends = "gpt-oss-120b-eagle3"
runtime = "docker"
command = ["python3", "/standin/sglang_standin.py"]
stop_grace_s = 10
load_timeout_s = 120
stall_timeout_s = {stall_timeout_s}
env = {{ {env_table} }}

[profiles.standin.host_prep]
enabled = false

[profiles.standin.docker]
image = "{PYTHON_IMAGE}"
image_aarch64 = "{PYTHON_IMAGE}"
container_name = "{names.container}"
network = "{names.network}"
gpus = ""
shm_size = "1g"
healthcheck_interval_s = 1
volumes = ["{REPO / 'tests'}:/standin:ro", "{world.root / 'hf'}:/root/.cache/huggingface",
           "{encodings}:/tiktoken_encodings"]
"""


@pytest.fixture
def names(world: Env) -> Iterator[DockerNames]:
    require_docker(image=PYTHON_IMAGE)
    chosen = make_names()
    yield chosen
    chosen.cleanup()


def assert_nothing_left(world: Env, names: DockerNames) -> None:
    assert containers_named(names.container) == []
    assert networks_named(names.network) == []
    assert port_is_free(world.port)


def test_sglang_standin_in_docker_progress_ready_chat_stop(
    world: Env, names: DockerNames
) -> None:
    world.write_config(standin_profile(world, names))
    started = world.run("start", "--profile", "standin", check=True)
    assert "(sglang, docker)" in started.stdout
    # Progress from the replayed log, read through `docker logs -f` into the monitor.
    assert "phase load_weights 14/14" in started.stderr
    assert "phase cuda_graph" in started.stderr
    assert "ready" in started.stderr

    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "ready"
    assert (status["engine"], status["runtime"]) == ("sglang", "docker")
    assert status["health_status"] == 200
    assert status["docker"]["state"] == "running"
    log_path = Path(status["log_path"])
    assert "The server is fired up and ready to roll!" in log_path.read_text()

    # The compose file carries the flagship's SGLang flags and Docker settings.
    kept = world.state_dir / "compose" / "standin" / "docker-compose.yml"
    service = yaml.safe_load(kept.read_text())["services"]["server"]
    command = service["command"]
    assert command[:2] == ["python3", "/standin/sglang_standin.py"]
    assert command[command.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(world.port)
    assert service["ipc"] == "host"
    assert service["stop_grace_period"] == "10s"
    assert service["healthcheck"]["start_period"] == "120s"

    chat = world.run("chat", "Hello?", "--max-tokens", "16", check=True)
    assert "SGLang stand-in" in chat.stdout

    stopped = world.run("stop", check=True, timeout=120)
    # The stand-in drains and ends its own tree, as SGLang does: not a kill by Docker.
    assert "stopped standin" in stopped.stdout
    assert "SIGTERM received" in log_path.read_text()
    assert_nothing_left(world, names)


def test_sglang_standin_in_docker_stall_fails_and_cleans_up(
    world: Env, names: DockerNames
) -> None:
    world.write_config(
        standin_profile(world, names, stall_timeout_s=3, SGLANG_STANDIN_STALL_AFTER="8")
    )
    failed = world.run("start", "--profile", "standin", timeout=120)
    assert failed.returncode == 5, failed.stderr
    assert "failure: stalled" in failed.stderr
    assert "no progress for 3 s" in failed.stderr
    assert "fix:" in failed.stderr
    assert_nothing_left(world, names)
    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "failed"
    assert status["failure"]["class"] == "stalled"
