"""The compose file: what `llm-backend compose` writes for a profile, checked key by key and
by Compose itself (`docker compose config`, and docker-compose v1 for the fallback)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_backend.config import load_config
from llm_backend.errors import ConfigError
from llm_backend.runtimes.compose import build_compose, go_duration, image_for, project_name
from tests.conftest import Env
from tests.docker_env import inspect as docker_inspect
from tests.docker_env import require_compose_v1, require_docker, unique_names

GPU_PROFILE = """
[profiles.big]
extends = "smollm2-cpu"
runtime = "docker"
port = 30123
load_timeout_s = 1200
stop_grace_s = 45
env = { SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN = "1" }

[profiles.big.docker]
image = "example/server:x86"
image_aarch64 = "example/server:arm"
container_name = "big-server"
network = "big-network"
ipc = "host"
shm_size = "32g"
gpus = "all"
restart = "unless-stopped"
publish_host = "0.0.0.0"
volumes = ["~/.cache/huggingface:/root/.cache/huggingface", "./encodings:/enc:ro", "hub:/hub"]
"""


def compose_file(world: Env, *args: str) -> dict[str, Any]:
    out = world.cwd / "docker-compose.yml"
    completed = world.run("compose", *args, "-o", str(out), check=True)
    assert str(out) in completed.stdout
    data = yaml.safe_load(out.read_text())
    assert isinstance(data, dict)
    return data


def compose_config_ok(path: Path, *, v1: bool = False) -> None:
    """Compose's own parser accepts the file (no engine needed)."""
    argv = ["docker-compose", "-p", "check"] if v1 else ["docker", "compose"]
    completed = subprocess.run(
        [*argv, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr


def test_smollm2_compose_file_content(world: Env) -> None:
    data = compose_file(world, "--profile", "smollm2-cpu")
    assert data["name"] == "llm-backend-llamacpp"
    service = data["services"]["server"]
    assert service["image"] == "llm-backend/llama-server:local"
    assert service["container_name"] == "llm-backend-llamacpp"
    command = service["command"]
    assert command[0] == "/usr/local/bin/llama-server"
    assert command[command.index("--model") + 1] == "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(world.port)
    assert service["ports"] == [f"127.0.0.1:{world.port}:{world.port}"]
    assert service["networks"] == ["llm-backend-network"]
    assert data["networks"] == {"llm-backend-network": {"name": "llm-backend-network"}}
    health = service["healthcheck"]
    assert health["test"] == [
        "CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{world.port}/health",
    ]
    assert health["start_period"] == "300s"  # the profile's load_timeout_s
    assert service["stop_grace_period"] == "10s"
    assert service["stop_signal"] == "SIGTERM"
    assert service["restart"] == "no"
    assert service["init"] is True
    assert service["labels"]["llm-backend.profile"] == "smollm2-cpu"
    assert len(service["labels"]["llm-backend.spec-hash"]) == 16
    assert "deploy" not in service and "ipc" not in service


def test_gpu_profile_compose_file_content(world: Env) -> None:
    world.write_config(GPU_PROFILE)
    data = compose_file(world, "--profile", "big", "--port", "30124")
    service = data["services"]["server"]
    assert data["name"] == "big-server"
    arm = platform.machine() in ("aarch64", "arm64")
    assert service["image"] == ("example/server:arm" if arm else "example/server:x86")
    assert service["ports"] == ["0.0.0.0:30124:30124"]
    assert service["ipc"] == "host"
    assert service["shm_size"] == "32g"
    assert service["restart"] == "unless-stopped"
    assert service["stop_grace_period"] == "45s"
    assert service["healthcheck"]["start_period"] == "1200s"
    assert service["environment"] == {"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1"}
    assert service["deploy"] == {
        "resources": {
            "reservations": {
                "devices": [{"driver": "nvidia", "capabilities": ["gpu"], "count": "all"}]
            }
        }
    }
    home = str(Path(world.env.get("HOME", os.path.expanduser("~"))))
    assert service["volumes"] == [
        f"{home}/.cache/huggingface:/root/.cache/huggingface",
        f"{(world.cwd / 'encodings').resolve()}:/enc:ro",
        "hub:/hub",
    ]
    assert data["volumes"] == {"hub": {}}
    assert service["networks"] == ["big-network"]


def test_compose_files_pass_compose_config(world: Env) -> None:
    require_docker(image=None)
    require_compose_v1()
    world.write_config(GPU_PROFILE)
    for profile in ("smollm2-cpu", "big"):
        out = world.cwd / f"{profile}.yml"
        world.run("compose", "--profile", profile, "-o", str(out), check=True)
        compose_config_ok(out)
        data = yaml.safe_load(out.read_text())
        data.pop("name")
        v1_file = world.cwd / f"{profile}-v1.yml"
        v1_file.write_text(yaml.safe_dump(data))
        compose_config_ok(v1_file, v1=True)


def test_compose_to_stdout_is_the_same_document(world: Env) -> None:
    written = compose_file(world, "--profile", "smollm2-cpu")
    printed = world.run("compose", "--profile", "smollm2-cpu", check=True).stdout
    assert printed.startswith("# Generated by llm-backend")
    assert yaml.safe_load(printed) == written


def test_image_by_platform_and_host_network() -> None:
    config = load_config()
    profile = config.resolve(
        "smollm2-cpu",
        {"docker.image_aarch64": "example/arm:1", "docker.network": "host"},
    ).profile
    assert image_for(profile, "aarch64") == "example/arm:1"
    assert image_for(profile, "arm64") == "example/arm:1"
    assert image_for(profile, "x86_64") == "llm-backend/llama-server:local"
    document = build_compose(profile=profile, argv=["/bin/server"], machine="aarch64")
    service = document.data["services"]["server"]
    assert service["image"] == "example/arm:1"
    assert service["network_mode"] == "host"
    assert "ports" not in service and "networks" not in document.data


def test_names_and_durations() -> None:
    profile = load_config().resolve(
        "smollm2-cpu", {"docker.container_name": "My.Server_1"}
    ).profile
    assert project_name(profile) == "my-server_1"
    assert go_duration(45) == "45s"
    assert go_duration(0.5) == "500ms"
    assert go_duration(1.5) == "1500ms"


def test_spec_hash_changes_with_the_settings() -> None:
    config = load_config()
    base = config.resolve("smollm2-cpu").profile
    other = config.resolve("smollm2-cpu", {"port": 30555}).profile
    first = build_compose(profile=base, argv=["/bin/server"])
    again = build_compose(profile=base, argv=["/bin/server"])
    changed = build_compose(profile=other, argv=["/bin/server"])
    assert first.spec_hash == again.spec_hash
    assert first.spec_hash != changed.spec_hash


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("restart", "sometimes", "allowed: no, always, unless-stopped"),
        ("container_name", "has space", "is not a Docker name"),
        ("shm_size", "lots", "is not a size"),
        ("stop_signal", "SIGNOPE", "is not a signal name"),
    ],
)
def test_bad_docker_values_are_refused_with_a_fix(
    world: Env, key: str, value: str, named: str
) -> None:
    world.write_config(f'[profiles.smollm2-cpu.docker]\n{key} = "{value}"\n')
    out = world.cwd / "docker-compose.yml"
    completed = world.run("compose", "--profile", "smollm2-cpu", "-o", str(out))
    assert completed.returncode == 2
    assert f"key 'docker.{key}' = '{value}'" in completed.stderr
    assert named in completed.stderr
    assert "fix:" in completed.stderr
    assert not out.exists()


def test_bad_volume_and_missing_image_are_refused(world: Env) -> None:
    world.write_config('[profiles.smollm2-cpu.docker]\nvolumes = ["just-a-name"]\n')
    completed = world.run("compose", "--profile", "smollm2-cpu")
    assert completed.returncode == 2
    assert "docker.volumes entry 'just-a-name'" in completed.stderr
    assert "fix: write volumes = [" in completed.stderr

    profile = load_config().resolve("smollm2-cpu", {"docker.image": None}).profile
    with pytest.raises(ConfigError) as raised:
        image_for(profile, "x86_64")
    assert "has no docker image" in raised.value.message
    assert "[profiles.smollm2-cpu.docker]" in raised.value.remedy


def test_dollar_signs_reach_the_container_as_written(tmp_path: Path) -> None:
    """Compose reads `$NAME` as a variable: a state dir, an argument, a variable's value and
    a path with `$` in them reach the container the engine creates as written (a state-dir
    label emptied by interpolation made our own container 'not ours')."""
    require_docker()
    names = unique_names()
    state_dir = tmp_path / "a$HOME" / "state"
    state_dir.mkdir(parents=True)
    volume_dir = tmp_path / "m$x"
    volume_dir.mkdir()
    profile = load_config().resolve(
        "smollm2-cpu",
        {"env": {"PROMPT_PREFIX": "cost: $5 ${HOME}"},
         "docker.container_name": names.container, "docker.network": names.network,
         "docker.volumes": [f"{volume_dir}:/models-extra:ro"]},
    ).profile
    document = build_compose(profile=profile, argv=["llama-server", "--alias", "a$USER"],
                             state_dir=state_dir)
    path = document.write(tmp_path / "docker-compose.yml")
    compose = ["docker", "compose", "-p", document.project, "-f", str(path)]
    try:
        created = subprocess.run(
            [*compose, "create"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "LLM_BACKEND_INSTANCE": "42.000000"},
        )
        assert created.returncode == 0, created.stderr
        container = docker_inspect(names.container)
        assert container is not None
        labels = container["Config"]["Labels"]
        assert labels["llm-backend.state-dir"] == str(state_dir.resolve())
        assert labels["llm-backend.instance"] == "42.000000"  # still interpolated
        assert container["Config"]["Cmd"][-2:] == ["--alias", "a$USER"]
        assert "PROMPT_PREFIX=cost: $5 ${HOME}" in container["Config"]["Env"]
        assert f"{volume_dir}:/models-extra:ro" in container["HostConfig"]["Binds"]
    finally:
        subprocess.run([*compose, "down", "--remove-orphans"], capture_output=True,
                       timeout=120, check=False)
        names.cleanup()


def test_compose_output_to_a_folder_or_a_missing_one_is_an_error_with_a_fix(
    world: Env,
) -> None:
    """`-o /tmp` ended in a traceback and left `/.tmp.PID.tmp` behind; `-o /no/such/x.yml`
    made the folders (as root) for a mistyped path."""
    folder = world.root / "out"
    folder.mkdir()
    refused = world.run("compose", "--profile", "smollm2-cpu", "-o", str(folder))
    assert refused.returncode == 2, refused.stderr
    assert f"error: -o {folder} is a folder" in refused.stderr
    assert f"fix: name a file in it: -o {folder / 'docker-compose.yml'}" in refused.stderr
    assert list(folder.iterdir()) == [] and not list(world.root.glob(".*.tmp"))

    missing = world.root / "no" / "such" / "compose.yml"
    refused = world.run("compose", "--profile", "smollm2-cpu", "-o", str(missing))
    assert refused.returncode == 2, refused.stderr
    assert f"the folder {missing.parent} does not exist" in refused.stderr
    assert not (world.root / "no").exists()
    assert "Traceback" not in refused.stderr


def test_the_host_folder_of_a_container_path_is_the_deepest_mount() -> None:
    """Docker shows a container path from the deepest bind mount that holds it; the cache
    `doctor` and `pull` judge must be that folder, whatever the order of `volumes`."""
    from llm_backend.runtimes.docker import DockerRuntime

    runtime = DockerRuntime()
    for volumes in (["/a:/root/.cache", "/b:/root/.cache/huggingface/"],
                    ["/b/:/root/.cache/huggingface:ro", "/a:/root/.cache"]):
        profile = load_config().resolve("smollm2-cpu", {"docker.volumes": volumes}).profile
        assert runtime.host_path(profile=profile, path="/root/.cache/huggingface/hub") == \
            Path("/b/hub")
        assert runtime.host_path(profile=profile, path="/root/.cache/huggingface") == \
            Path("/b")
        assert runtime.host_path(profile=profile, path="/root/.cache/x") == Path("/a/x")
        assert runtime.host_path(profile=profile, path="/root/.cachex") is None
    named = load_config().resolve("smollm2-cpu", {"docker.volumes": ["hf:/root/.cache"]}).profile
    assert runtime.host_path(profile=named, path="/root/.cache/huggingface") is None
