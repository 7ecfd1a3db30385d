"""The Docker runtime end to end against a real Docker engine, Compose and llama-server image.

Each test gives the smollm2-cpu profile its own container and network names (through
./llm-backend.toml in the test's world) and removes them by those names afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import Env, port_is_free, wait_for
from tests.docker_env import (
    LLAMA_IMAGE,
    DockerNames,
    containers_named,
    docker,
    inspect,
    networks_named,
    require_compose_v1,
    require_docker,
    unique_names,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def names(world: Env) -> Iterator[DockerNames]:
    require_docker()
    chosen = unique_names()
    world.write_config(chosen.config())
    yield chosen
    chosen.cleanup()


def status_json(world: Env) -> dict[str, object]:
    completed = world.run("status", "--json", timeout=60)
    data = json.loads(completed.stdout)
    assert isinstance(data, dict)
    return data


def assert_nothing_left(world: Env, names: DockerNames, follower_pid: int | None) -> None:
    assert containers_named(names.container) == []
    assert networks_named(names.network) == []
    assert port_is_free(world.port)
    if follower_pid is not None:
        assert not psutil.pid_exists(follower_pid) or (
            psutil.Process(follower_pid).status() == psutil.STATUS_ZOMBIE
        )
    assert status_json(world)["state"] == "stopped"


def test_smollm2_runs_in_docker_start_chat_status_stop(world: Env, names: DockerNames) -> None:
    started = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    assert "ready" in started.stdout
    assert "(llamacpp, docker)" in started.stdout

    status = status_json(world)
    assert status["state"] == "ready"
    assert status["runtime"] == "docker"
    assert status["models"] == ["smollm2-135m-instruct"]
    facts = status["docker"]
    assert isinstance(facts, dict)
    assert facts["container"] == names.container
    assert facts["state"] == "running"
    assert facts["adopted"] is False

    # The container is ours, published on 127.0.0.1 only, with the healthcheck on /health.
    container = inspect(names.container)
    assert container is not None
    assert container["Config"]["Labels"]["llm-backend.profile"] == "smollm2-cpu"
    bindings = container["HostConfig"]["PortBindings"][f"{world.port}/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(world.port)}]
    assert "/health" in " ".join(container["Config"]["Healthcheck"]["Test"])
    assert container["HostConfig"]["Init"] is True

    # Docker's own healthcheck turns healthy (interval 1 s in this test's profile).
    assert wait_for(
        lambda: (inspect(names.container) or {}).get("State", {}).get("Health", {}).get("Status")
        == "healthy",
        timeout=30,
        interval=0.5,
    )
    text = world.run("status", timeout=60).stdout
    assert f"container {names.container} (running, healthy)" in text

    chat = world.run("chat", "What is the capital of France?", "--max-tokens", "24", check=True)
    assert len(chat.stdout.strip()) > 0
    assert "tokens/s" in chat.stderr

    # The container's output reached the instance log through the `docker logs -f` follower.
    log_text = Path(str(status["log_path"])).read_text()
    assert "load_model" in log_text
    assert wait_for(lambda: "print_timing" in Path(str(status["log_path"])).read_text(), 10)

    # `start` ran the compose file kept in the state dir; `compose` writes the same file.
    kept = world.state_dir / "compose" / "smollm2-cpu" / "docker-compose.yml"
    assert kept.is_file()
    written = world.cwd / "written.yml"
    world.run("compose", "--profile", "smollm2-cpu", "-o", str(written), check=True)
    assert yaml.safe_load(written.read_text()) == yaml.safe_load(kept.read_text())

    record = json.loads((world.state_dir / "instance.json").read_text())
    follower_pid = record["runtime_info"]["log_follower_pid"]
    assert psutil.pid_exists(follower_pid)

    stopped = world.run("stop", check=True, timeout=120)
    assert "stopped smollm2-cpu" in stopped.stdout
    assert_nothing_left(world, names, follower_pid)


def test_adopts_a_running_container_of_ours(world: Env, names: DockerNames) -> None:
    compose_file = world.cwd / "docker-compose.yml"
    world.run("compose", "--profile", "smollm2-cpu", "-o", str(compose_file), check=True)
    # The user runs the file by hand, as the header of the file says.
    docker("compose", "-f", str(compose_file), "up", "-d")
    before = inspect(names.container)
    assert before is not None and before["State"]["Running"]

    started = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    assert "ready" in started.stdout
    status = status_json(world)
    assert status["state"] == "ready"
    facts = status["docker"]
    assert isinstance(facts, dict)
    assert facts["adopted"] is True
    after = inspect(names.container)
    assert after is not None
    assert after["Id"] == before["Id"], "adopting must not recreate the container"

    chat = world.run("chat", "Say one word.", "--max-tokens", "8", check=True)
    assert chat.stdout.strip()
    world.run("stop", check=True, timeout=120)
    assert_nothing_left(world, names, None)


def test_adopts_our_container_when_the_record_is_lost(world: Env, names: DockerNames) -> None:
    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    first = inspect(names.container)
    assert first is not None
    (world.state_dir / "instance.json").unlink()  # e.g. another state dir, or a wiped one

    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    second = inspect(names.container)
    assert second is not None and second["Id"] == first["Id"]
    world.run("stop", check=True, timeout=120)
    assert_nothing_left(world, names, None)


def test_foreign_container_with_the_same_name_is_refused(world: Env, names: DockerNames) -> None:
    docker("run", "-d", "--name", names.container, "--network", "none", LLAMA_IMAGE)
    foreign = inspect(names.container)
    assert foreign is not None

    refused = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert refused.returncode != 0
    assert f"a container named '{names.container}' already exists" in refused.stderr
    assert "not started by llm-backend" in refused.stderr
    assert f"fix: remove it if it is not needed: docker rm -f {names.container}" in (
        refused.stderr.replace("\n", " ")
    )
    # Nothing changed: the foreign container runs on untouched, nothing was recorded.
    still = inspect(names.container)
    assert still is not None and still["Id"] == foreign["Id"] and still["State"]["Running"]
    assert not (world.state_dir / "compose").exists()
    assert status_json(world)["state"] == "stopped"


def test_stop_waits_the_grace_period_then_kills(world: Env, names: DockerNames) -> None:
    # llama-server ignores SIGWINCH: as the stop signal it stands for a server that does not
    # stop on the signal, so Docker must kill it when the grace period runs out.
    world.write_config(names.config(stop_signal="SIGWINCH") + STOP_GRACE_2S)
    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    began = time.monotonic()
    stopped = world.run("stop", check=True, timeout=120)
    took = time.monotonic() - began
    assert "killed smollm2-cpu" in stopped.stdout
    assert took >= 2.0, f"stop returned after {took:.1f}s, before the 2 s grace period"
    assert took < 20
    assert_nothing_left(world, names, None)


def test_graceful_stop_is_not_a_kill_and_force_kills(world: Env, names: DockerNames) -> None:
    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    began = time.monotonic()
    graceful = world.run("stop", check=True, timeout=120)
    assert "stopped smollm2-cpu" in graceful.stdout
    assert time.monotonic() - began < 10  # llama-server exits on SIGTERM at once
    assert_nothing_left(world, names, None)

    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    forced = world.run("stop", "--force", check=True, timeout=120)
    assert "killed smollm2-cpu" in forced.stdout
    assert_nothing_left(world, names, None)


STOP_GRACE_2S = "\n[profiles.smollm2-cpu]\nstop_grace_s = 2\n"


def test_compose_v1_fallback_runs_the_same_lifecycle(world: Env, names: DockerNames) -> None:
    require_compose_v1()
    world.env["LLM_BACKEND_COMPOSE"] = "docker-compose"
    started = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert started.returncode == 0, started.stderr
    facts = status_json(world)["docker"]
    assert isinstance(facts, dict)
    assert str(facts["compose"]).startswith("docker-compose 1.")
    kept = world.state_dir / "compose" / "smollm2-cpu" / "docker-compose.yml"
    assert "name" not in yaml.safe_load(kept.read_text())  # v1 rejects the top-level name
    world.run("stop", check=True, timeout=120)
    assert_nothing_left(world, names, None)


def test_bad_flag_in_the_container_fails_the_start_and_removes_it(
    world: Env, names: DockerNames
) -> None:
    world.write_config(
        names.config() + '\n[profiles.smollm2-cpu]\nextra_args = ["--no-such-flag"]\n'
    )
    failed = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", timeout=120)
    assert failed.returncode == 5, failed.stderr
    assert "failure: bad_flag" in failed.stderr
    assert "--no-such-flag" in failed.stderr  # the log tail, read from the container
    assert containers_named(names.container) == []
    assert networks_named(names.network) == []
    status = status_json(world)
    assert status["state"] == "failed"
    facts = status["docker"]
    assert isinstance(facts, dict)
    assert facts["state"] == "gone"  # the failed start removed its container


def test_container_gone_after_ready_is_noticed_and_stop_cleans_up(
    world: Env, names: DockerNames
) -> None:
    world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", check=True)
    docker("kill", names.container)
    status = status_json(world)
    assert status["state"] == "failed"
    failure = status["failure"]
    assert isinstance(failure, dict)
    assert failure["message"] == "the server exited after it was ready"
    facts = status["docker"]
    assert isinstance(facts, dict)
    assert (facts["state"], facts["exit_code"]) == ("exited", 137)  # docker kill: SIGKILL
    assert containers_named(names.container) == [names.container]  # exited, not removed yet
    world.run("stop", check=True, timeout=120)
    assert_nothing_left(world, names, None)


def test_missing_image_and_missing_compose_are_refused_before_any_change(
    world: Env, names: DockerNames
) -> None:
    world.write_config(names.config(image="llm-backend/no-such-image:1"))
    # start pulls a missing image first (docs/pull.md); one that no registry has is refused.
    refused = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert refused.returncode == 7, refused.stderr
    assert "error: the Docker engine could not pull llm-backend/no-such-image:1" in refused.stderr
    assert "fix:" in refused.stderr
    assert containers_named(names.container) == []
    # With --no-pull it is refused at once, named.
    refused = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", "--no-pull")
    assert refused.returncode == 7, refused.stderr
    assert "needs what is not on this machine yet: image llm-backend/no-such-image:1" \
        in refused.stderr
    assert "fix: llm-backend pull --profile smollm2-cpu" in refused.stderr
    assert containers_named(names.container) == []

    world.write_config(names.config())
    world.env["LLM_BACKEND_COMPOSE"] = "/nonexistent/compose"
    refused = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert refused.returncode != 0
    assert "Docker Compose is not installed" in refused.stderr
    assert "fix: install the Compose v2 plugin" in refused.stderr
    assert containers_named(names.container) == []
    assert not (world.state_dir / "compose").exists()
    assert status_json(world)["state"] == "stopped"


def test_unreachable_engine_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llm_backend.config import load_config
    from llm_backend.errors import BackendError
    from llm_backend.runtimes.docker import DockerRuntime

    require_docker()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    profile = load_config().resolve("smollm2-cpu", {"runtime": "docker"}).profile
    with pytest.raises(BackendError) as raised:
        DockerRuntime().check(profile=profile)
    assert "the Docker engine does not answer" in raised.value.message
    assert "no-engine.sock" in raised.value.message
    assert "dockerd" in raised.value.remedy


def test_failed_compose_up_leaves_no_container_or_network(
    world: Env, names: DockerNames
) -> None:
    import socket

    from llm_backend.config import load_config
    from llm_backend.errors import CommandFailed
    from llm_backend.runtimes.base import LaunchSpec
    from llm_backend.runtimes.docker import DockerRuntime

    profile = load_config(cwd=world.cwd).resolve(
        "smollm2-cpu", {"runtime": "docker", "port": world.port}
    ).profile
    assert profile.docker.container_name == names.container
    runtime = DockerRuntime()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", world.port))  # the port is taken after the preflight
        holder.listen()
        with pytest.raises(CommandFailed) as raised:
            runtime.launch(
                spec=LaunchSpec(
                    profile=profile,
                    argv=["/usr/local/bin/llama-server", "--version"],
                    env={},
                    log_path=world.state_dir / "logs" / "x.log",
                    state_dir=world.state_dir,
                )
            )
    assert "up -d" in raised.value.message
    assert raised.value.remedy.startswith("read the error above; the compose file is")
    assert containers_named(names.container) == []
    assert networks_named(names.network) == []


def test_ipv6_wildcard_host_is_polled_where_the_port_is_published(
    world: Env, names: DockerNames
) -> None:
    """`host = "::"` binds every address in the container, but Docker publishes the port on
    `docker.publish_host` (127.0.0.1): health, status and chat go there, not to [::1]."""
    world.write_config('[profiles.smollm2-cpu]\nhost = "::"\n' + names.config())
    dry = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker", "--dry-run",
                    check=True)
    assert f"health polled at http://127.0.0.1:{world.port}/health" in dry.stdout
    assert "the port is published on 127.0.0.1" in dry.stdout
    assert f"would serve smollm2-135m-instruct at http://127.0.0.1:{world.port};" in dry.stdout
    started = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker",
                        "--timeout", "120", timeout=240)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        status = status_json(world)
        assert status["state"] == "ready"
        assert status["models"] == ["smollm2-135m-instruct"]
        assert f"endpoint: http://127.0.0.1:{world.port}/v1" in world.run("status").stdout
    finally:
        stopped = world.run("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert_nothing_left(world, names, None)
