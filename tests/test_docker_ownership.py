"""Whose a container is: every container llm-backend starts is labelled with its state dir
and the start that made it, and the tool acts only on containers labelled with its own
state dir. Against a real Docker engine, Compose and the local images; each test removes
its containers and network by their exact names, also when it fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llm_backend.runtimes.compose import run_labels
from tests.conftest import Env, port_is_free, wait_for
from tests.docker_env import (
    DockerNames,
    containers_named,
    docker,
    inspect,
    networks_named,
    require_docker,
    unique_names,
)

pytestmark = pytest.mark.docker

PYTHON_IMAGE = "llm-backend/python:local"
SLEEPER = ["--entrypoint", "python3", PYTHON_IMAGE, "-c", "import time; time.sleep(900)"]


@pytest.fixture
def names(world: Env) -> Iterator[DockerNames]:
    require_docker()
    require_docker(image=PYTHON_IMAGE)
    chosen = unique_names()
    world.write_config(chosen.config())
    yield chosen
    chosen.cleanup()


def status_json(world: Env) -> tuple[int, dict[str, object]]:
    completed = world.run("status", "--json", timeout=120)
    data = json.loads(completed.stdout)
    assert isinstance(data, dict)
    return completed.returncode, data


def read_instance(world: Env) -> dict[str, object] | None:
    path = world.state_dir / "instance.json"
    return json.loads(path.read_text()) if path.exists() else None


def stopped_by_signal(process: subprocess.Popen[str]) -> bool:
    try:
        return psutil.Process(process.pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def kill_start_after_launch(world: Env, names: DockerNames) -> dict[str, object]:
    """Run `start --runtime docker`, stop it right after `compose up` returned (before the
    record names the container: the `launch.done` fault point), SIGKILL it; the record."""
    env = dict(world.env)
    world.env = {**env, "LLM_BACKEND_FAULT_POINT": "launch.done"}
    starter = world.popen("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    world.env = env
    try:
        assert wait_for(lambda: stopped_by_signal(starter), timeout=180, interval=0.2), (
            starter.poll(), starter.stderr.read() if starter.poll() is not None else "")
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=30)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(timeout=30)
    record = read_instance(world)
    assert record is not None and record["state"] == "launching"
    info = record["runtime_info"]
    assert isinstance(info, dict) and "container" not in info  # the record does not name it
    return record


def assert_labelled(world: Env, names: DockerNames, record: dict[str, object]) -> str:
    """The container carries this state dir and the killed start's instance; its id."""
    container = inspect(names.container)
    assert container is not None, "compose up returned, so the container exists"
    labels = container["Config"]["Labels"]
    assert labels["llm-backend.state-dir"] == str(world.state_dir.resolve())
    created_at = record["created_at"]
    assert isinstance(created_at, float)
    assert labels["llm-backend.instance"] == f"{created_at:.6f}"
    assert labels["llm-backend.profile"] == "smollm2-cpu"
    return str(container["Id"])


def followers_of(container_id: str) -> list[int]:
    """`docker logs --follow ID` processes (the log followers `start` leaves running)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info.get("cmdline") or []
        if command[1:] == ["logs", "--follow", container_id]:
            found.append(process.pid)
    return found


def assert_nothing_left(world: Env, names: DockerNames, container_id: str) -> None:
    assert containers_named(names.container) == []
    assert wait_for(lambda: followers_of(container_id) == [], timeout=30, interval=0.5)
    assert networks_named(names.network) == []
    assert wait_for(lambda: port_is_free(world.port), timeout=30, interval=0.5)
    _, data = status_json(world)
    assert data["state"] == "stopped", data


def test_start_killed_before_the_record_named_its_container_is_found_and_stopped(
    world: Env, names: DockerNames
) -> None:
    record = kill_start_after_launch(world, names)
    container_id = assert_labelled(world, names, record)
    assert len(followers_of(container_id)) == 1  # the killed start's, still at work

    # Another container name is another backend (the runtime's own terms), even though
    # profile, runtime, host and port are the same; the found container is named in the
    # record by then (its labels matched the record's instance).
    world.write_config(names.config().replace(names.container, f"{names.container}-other"))
    other = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    world.write_config(names.config())
    assert other.returncode == 1, other.stderr
    assert f"it runs container {names.container}, you asked for {names.container}-other" in (
        " ".join(other.stderr.split()))
    assert "fix: llm-backend stop" in other.stderr
    assert containers_named(f"{names.container}-other") == []
    found = read_instance(world)
    assert found is not None
    info = found["runtime_info"]
    assert isinstance(info, dict) and info["container"] == names.container
    # The killed start's log follower is taken over, not doubled.
    assert followers_of(container_id) == [info["log_follower_pid"]]

    stopped = world.run("stop", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped smollm2-cpu" in stopped.stdout or "killed smollm2-cpu" in stopped.stdout
    assert_nothing_left(world, names, container_id)


def test_stop_without_a_record_finds_our_labelled_container(
    world: Env, names: DockerNames
) -> None:
    record = kill_start_after_launch(world, names)
    container_id = assert_labelled(world, names, record)
    (world.state_dir / "instance.json").unlink()  # lost: only the labels say whose it is

    code, data = status_json(world)
    assert (code, data["state"]) == (1, "failed"), data
    message = data["failure"]["message"]  # type: ignore[index]
    assert f"container {names.container} (running)" in message
    assert data["failure"]["remedy"] == "llm-backend stop"  # type: ignore[index]

    stopped = world.run("stop", timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "without a record" in stopped.stdout
    assert f"container {names.container}" in stopped.stdout
    assert inspect(container_id) is None
    assert_nothing_left(world, names, container_id)


def test_a_container_of_another_state_dir_with_the_same_name_is_never_touched(
    world: Env, names: DockerNames
) -> None:
    # Started by llm-backend, but from another state dir: labelled, not ours.
    elsewhere = str(world.root / "other-state")
    docker("run", "-d", "--name", names.container, "--network", "none",
           "--label", "llm-backend.profile=smollm2-cpu",
           "--label", f"llm-backend.state-dir={elsewhere}", *SLEEPER)
    foreign = inspect(names.container)
    assert foreign is not None and foreign["State"]["Running"]
    # This state dir has run Docker before, so stop and status ask the engine.
    (world.state_dir / "compose").mkdir(mode=0o700)

    refused = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert refused.returncode != 0
    text = " ".join(refused.stderr.split())
    assert f"a container named '{names.container}' already exists" in text
    assert "not started by llm-backend from this state dir" in text
    assert f"its llm-backend.state-dir label is '{elsewhere}'" in text
    assert f"fix: stop it from its own state dir: LLM_BACKEND_STATE_DIR={elsewhere}" in text

    stopped = world.run("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "nothing was running" in stopped.stdout
    _, data = status_json(world)
    assert data["state"] == "stopped", data

    still = inspect(names.container)
    assert still is not None and still["Id"] == foreign["Id"] and still["State"]["Running"]
    assert still["State"]["StartedAt"] == foreign["State"]["StartedAt"]  # never restarted


def write_ready_record(world: Env, names: DockerNames, container_id: str) -> Path:
    """An instance record saying that `container_id` serves, ready (written by the test)."""
    record = {
        "profile": "smollm2-cpu", "engine": "llamacpp", "runtime": "docker", "state": "ready",
        "host": "127.0.0.1", "port": world.port, "served_model_name": "x", "argv": [],
        "log_path": str(world.state_dir / "logs" / "smollm2-cpu.log"),
        "created_at": time.time(), "ready_at": time.time(),
        "runtime_info": {"container": names.container, "container_id": container_id,
                         "project": names.container},
    }
    record_path = world.state_dir / "instance.json"
    record_path.write_text(json.dumps(record))
    record_path.chmod(0o600)
    return record_path


def test_an_engine_that_does_not_answer_proves_no_record_forged(
    world: Env, names: DockerNames
) -> None:
    # Our own labelled container, recorded as ready; then the Docker CLI cannot reach the
    # engine for one `status` (a restarting daemon, a lost socket).
    docker("run", "-d", "--name", names.container, "--network", "none",
           *run_labels("server", world.state_dir), "--label", "llm-backend.profile=smollm2-cpu",
           *SLEEPER)
    ours = inspect(names.container)
    assert ours is not None and ours["State"]["Running"]
    record_path = write_ready_record(world, names, str(ours["Id"]))

    env = dict(world.env)
    world.env = {**env, "DOCKER_HOST": f"unix://{world.root}/no-engine.sock"}
    blind = world.run("status", timeout=120)
    world.env = env
    assert blind.returncode != 0
    assert "error: command docker container inspect" in blind.stderr
    assert "Cannot connect to the Docker daemon" in blind.stderr
    assert "fix: start the Docker engine" in blind.stderr
    assert json.loads(record_path.read_text())["state"] == "ready"  # not judged forged

    _, data = status_json(world)  # the engine answers again: still our backend, not failed
    assert data["state"] != "failed", data
    assert data["docker"]["state"] == "running"  # type: ignore[index]


def test_a_forged_record_naming_a_foreign_container_is_refused(
    world: Env, names: DockerNames
) -> None:
    docker("run", "-d", "--name", names.container, "--network", "none", *SLEEPER)
    foreign = inspect(names.container)
    assert foreign is not None and foreign["State"]["Running"]
    record_path = write_ready_record(world, names, str(foreign["Id"]))

    code, data = status_json(world)
    assert (code, data["state"]) == (1, "failed"), data
    failure = data["failure"]
    assert isinstance(failure, dict)
    assert f"names container '{foreign['Id']}'" in failure["message"]
    assert "was not started from this state dir" in failure["message"]
    assert "it has no llm-backend.state-dir label" in failure["message"]

    for force in ([], ["--force"]):
        refused = world.run("stop", *force, timeout=120)
        assert refused.returncode != 0, refused.stdout
        text = " ".join(refused.stderr.split())
        assert "error: the record" in text and "it was left alone" in text
        assert f"fix: set the record aside: mv {record_path} {record_path}.foreign" in text
    still = inspect(names.container)
    assert still is not None and still["Id"] == foreign["Id"] and still["State"]["Running"]
    assert still["State"]["StartedAt"] == foreign["State"]["StartedAt"]

    # The fix works, and still touches nothing of the foreign container.
    record_path.rename(record_path.with_name("instance.json.foreign"))
    _, data = status_json(world)
    assert data["state"] == "stopped", data
    assert (inspect(names.container) or {}).get("State", {}).get("Running") is True


def test_a_helper_container_is_labelled_but_never_taken_for_a_server(
    world: Env, names: DockerNames
) -> None:
    # The options the SGLang flag check gives its short-lived `docker run --rm`.
    docker("run", "-d", "--name", names.container, "--network", "none",
           *run_labels("flag-check", world.state_dir), *SLEEPER)
    created = inspect(names.container)
    assert created is not None and created["State"]["Running"]
    labels = created["Config"]["Labels"]
    assert labels["llm-backend.state-dir"] == str(world.state_dir.resolve())
    assert labels["llm-backend.role"] == "flag-check"
    (world.state_dir / "compose").mkdir(mode=0o700)

    _, data = status_json(world)
    assert data["state"] == "stopped", data  # not "running without a record"
    stopped = world.run("stop", timeout=120)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "nothing was running")
    still = inspect(names.container)
    assert still is not None and still["Id"] == created["Id"] and still["State"]["Running"]


def test_a_record_naming_another_containers_log_follower_never_signals_it(
    world: Env, names: DockerNames
) -> None:
    # A `docker logs --follow` of a container that is not the record's (another state dir's
    # follower); the record (forged) names it as its own follower, its container long gone.
    docker("run", "-d", "--name", names.container, "--network", "none", *SLEEPER)
    other = inspect(names.container)
    assert other is not None
    follower = subprocess.Popen(["docker", "logs", "--follow", str(other["Id"])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        record_path = write_ready_record(world, names, "0" * 64)
        record = json.loads(record_path.read_text())
        record["runtime_info"].update(
            container=f"{names.container}-gone", log_follower_pid=follower.pid,
            log_follower_create_time=psutil.Process(follower.pid).create_time())
        record_path.write_text(json.dumps(record))

        stopped = world.run("stop", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert "docker logs follower" not in stopped.stdout + stopped.stderr
        assert follower.poll() is None  # never signalled
        assert followers_of(str(other["Id"])) == [follower.pid]
    finally:
        follower.kill()
        follower.wait(timeout=30)


def test_two_commands_finding_a_killed_starts_container_start_one_log_follower(
    world: Env, names: DockerNames
) -> None:
    """`status` and `serve` (say) both reconciling a start killed between `compose up` and
    its log follower: looking for a follower and starting one is done under one lock, so the
    second finds the first's instead of starting its own (which doubled every log line)."""
    import threading

    from llm_backend.locks import FileLock
    from llm_backend.runtimes.docker import FOLLOWER_LOCK, DockerRuntime
    from llm_backend.state import InstanceRecord

    created_at = time.time()
    docker("run", "-d", "--name", names.container, "--network", "none",
           *run_labels("server", world.state_dir), "--label", "llm-backend.profile=smollm2-cpu",
           "--label", f"llm-backend.instance={created_at:.6f}", *SLEEPER)
    ours = inspect(names.container)
    assert ours is not None and followers_of(str(ours["Id"])) == []
    (world.state_dir / "compose").mkdir(mode=0o700)
    record = InstanceRecord.from_json({
        "profile": "smollm2-cpu", "engine": "llamacpp", "runtime": "docker",
        "state": "launching", "host": "127.0.0.1", "port": world.port,
        "served_model_name": "x", "argv": [], "created_at": created_at,
        "log_path": str(world.state_dir / "logs" / "smollm2-cpu.log"), "runtime_info": {},
    })
    found: list[int | None] = []

    def reconcile() -> None:
        runtime = DockerRuntime()
        runtime.state_dir = world.state_dir
        launched = runtime.find_launched(record=record)
        found.append(launched.runtime_info["log_follower_pid"] if launched else None)

    other = FileLock(world.state_dir / FOLLOWER_LOCK)  # the other command, at work
    assert other.acquire(timeout_s=30)
    first = threading.Thread(target=reconcile)
    try:
        first.start()
        first.join(timeout=3)
        assert first.is_alive() and found == []  # it waits for the other one
        assert followers_of(str(ours["Id"])) == []
        other.release()
        first.join(timeout=120)
        second = threading.Thread(target=reconcile)
        second.start()
        second.join(timeout=120)
        assert len(found) == 2 and found[0] is not None and found[0] == found[1], found
        assert followers_of(str(ours["Id"])) == [found[0]]
    finally:
        other.release()
        for pid in followers_of(str(ours["Id"])):
            psutil.Process(pid).kill()
