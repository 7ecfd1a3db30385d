"""The Docker runtime: the server as a Docker Compose service, driven through the Docker CLI.

`launch` writes the profile's compose file into the state dir, runs `docker compose up -d`
(or `docker-compose` where Compose v2 is missing), and starts a detached `docker logs -f`
follower that appends the container's output to the instance log, which the monitor tails.
`stop` stops with the grace period, removes the container (`down`) and verifies that no
container of the project is left. It knows nothing of LLMs: the engine gives the command.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from llm_backend.checks import Check
from llm_backend.config import Profile
from llm_backend.errors import BackendError, CommandFailed
from llm_backend.processes import process_matches
from llm_backend.pull import Source
from llm_backend.runtimes.base import Launched, LaunchSpec, Runtime, StopResult
from llm_backend.runtimes.compose import (
    CONTAINER_SECRET_DIR,
    LABEL_PROFILE,
    LABEL_SPEC_HASH,
    ComposeDocument,
    build_compose,
    image_for,
    project_name,
    secret_environment,
)
from llm_backend.runtimes.docker_facts import (
    COMPOSE_REMEDY,
    DOCKER_CHECKS,
    compose_candidates,
    compose_version,
    docker_cli,
)
from llm_backend.runtimes.docker_image import DockerImage
from llm_backend.state import InstanceRecord, open_log

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription

INSPECT_CACHE_S = 1.0  # how long a container state read stays fresh for `is_alive`
COMMAND_TIMEOUT_S = 120.0
ALIVE_STATES = frozenset({"created", "running"})
START_DAEMON_REMEDY = (
    "start the Docker engine: `sudo systemctl start docker`, or run `sudo dockerd &` "
    "(see docs/docker.md)"
)


@dataclass(frozen=True)
class ComposeTool:
    """How Compose is run here: `docker compose` (v2) or `docker-compose` (v1 or v2)."""

    argv: tuple[str, ...]
    version: str

    @property
    def supports_project_name_key(self) -> bool:
        """Compose v1 rejects the top-level `name` key of the Compose spec."""
        major = self.version.lstrip("v").split(".", 1)[0]
        return major.isdigit() and int(major) >= 2

    def label(self) -> str:
        return f"{' '.join(self.argv)} {self.version}"


@dataclass(frozen=True)
class ContainerState:
    """What `docker inspect` says about one container."""

    name: str
    container_id: str
    status: str  # created | running | restarting | paused | exited | dead | removing
    exit_code: int
    health: str | None  # starting | healthy | unhealthy, or None without a healthcheck
    pid: int
    labels: dict[str, str]
    image: str
    restart_count: int
    started_at: str

    @property
    def running(self) -> bool:
        return self.status in ALIVE_STATES

    @property
    def ours(self) -> bool:
        return LABEL_PROFILE in self.labels

    @property
    def profile(self) -> str | None:
        return self.labels.get(LABEL_PROFILE)

    @property
    def project(self) -> str | None:
        return self.labels.get("com.docker.compose.project")

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> ContainerState:
        state = data.get("State") or {}
        config = data.get("Config") or {}
        health = state.get("Health") or {}
        return cls(
            name=str(data.get("Name", "")).lstrip("/"),
            container_id=str(data.get("Id", "")),
            status=str(state.get("Status", "unknown")),
            exit_code=int(state.get("ExitCode") or 0),
            health=health.get("Status") if health else None,
            pid=int(state.get("Pid") or 0),
            labels=dict(config.get("Labels") or {}),
            image=str(config.get("Image", "")),
            restart_count=int(data.get("RestartCount") or 0),
            started_at=str(state.get("StartedAt", "")),
        )


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class DockerRuntime(Runtime):
    """Runs a profile as a one-service Compose project; the container is labelled as ours."""

    name = "docker"
    in_container = True
    systemd_after = ("docker.service",)

    def __init__(self) -> None:
        self._docker = docker_cli()
        self._compose: ComposeTool | None = None
        self._followers: dict[int, subprocess.Popen[bytes]] = {}
        self._inspect_cache: dict[str, tuple[float, ContainerState | None]] = {}

    # --- the Docker CLI --------------------------------------------------------------

    def _run(
        self,
        argv: list[str],
        *,
        remedy: str,
        timeout: float = COMMAND_TIMEOUT_S,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except FileNotFoundError:
            raise BackendError(
                f"{argv[0]} is not installed (needed to run: {shlex.join(argv)})",
                remedy="install Docker: apt-get install docker.io (see docs/docker.md)",
            ) from None
        except subprocess.TimeoutExpired as error:
            stderr = error.stderr.decode(errors="replace") if isinstance(
                error.stderr, bytes) else (error.stderr or "")
            raise CommandFailed(
                argv, -1, f"no answer after {timeout:.0f} s: {stderr}", remedy=remedy
            ) from None
        if check and completed.returncode != 0:
            raise CommandFailed(argv, completed.returncode, completed.stderr, remedy=remedy)
        return completed

    def _check_daemon(self) -> None:
        if shutil.which(self._docker) is None:
            raise BackendError(
                f"the Docker CLI {self._docker!r} is not installed",
                remedy="install Docker: apt-get install docker.io (Debian/Ubuntu), "
                "or use --runtime native",
            )
        completed = self._run(
            [self._docker, "version", "--format", "{{.Server.Version}}"],
            remedy=START_DAEMON_REMEDY,
            timeout=30,
            check=False,
        )
        if completed.returncode != 0:
            stderr = _tail(completed.stderr, 3)
            remedy = START_DAEMON_REMEDY
            if "permission denied" in stderr.lower():
                remedy = "add your user to the docker group: sudo usermod -aG docker $USER " \
                    "(then log in again), or run as root"
            raise BackendError(
                f"the Docker engine does not answer: {stderr or 'no output'}",
                remedy=remedy,
            )

    def compose_tool(self) -> ComposeTool:
        """`docker compose` (v2) when the plugin is there, else `docker-compose`."""
        if self._compose is not None:
            return self._compose
        candidates = compose_candidates(self._docker)
        for argv in candidates:
            version = compose_version(argv)
            if version is not None:
                self._compose = ComposeTool(argv=argv, version=version)
                return self._compose
        tried = " or ".join(f"`{' '.join(argv)}`" for argv in candidates)
        raise BackendError(
            f"Docker Compose is not installed ({tried} did not run)",
            remedy=COMPOSE_REMEDY,
        )

    def _compose_argv(self, project: str, compose_file: Path, *args: str) -> list[str]:
        tool = self.compose_tool()
        return [*tool.argv, "-p", project, "-f", str(compose_file), *args]

    def inspect(self, container: str) -> ContainerState | None:
        """The container's state, or None when no container has that name or id."""
        completed = self._run(
            [self._docker, "container", "inspect", container],
            remedy=START_DAEMON_REMEDY,
            check=False,
            timeout=30,
        )
        if completed.returncode != 0:
            if "no such" in completed.stderr.lower():
                state = None
            else:
                raise CommandFailed(
                    [self._docker, "container", "inspect", container],
                    completed.returncode,
                    completed.stderr,
                    remedy=START_DAEMON_REMEDY,
                )
        else:
            entries = json.loads(completed.stdout or "[]")
            state = ContainerState.from_inspect(entries[0]) if entries else None
        self._inspect_cache[container] = (time.monotonic(), state)
        return state

    def _inspect_cached(self, container: str) -> ContainerState | None:
        cached = self._inspect_cache.get(container)
        if cached is not None and time.monotonic() - cached[0] < INSPECT_CACHE_S:
            return cached[1]
        return self.inspect(container)

    def _project_containers(self, project: str) -> list[str]:
        completed = self._run(
            [
                self._docker, "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                "--format", "{{.Names}} ({{.Status}})",
            ],
            remedy=START_DAEMON_REMEDY,
            check=False,
        )
        return [line for line in completed.stdout.splitlines() if line.strip()]

    # --- preflight -------------------------------------------------------------------

    def checks(self) -> tuple[Check, ...]:
        """docker_engine, nvidia_runtime (with `docker.gpus`), compose, image."""
        return DOCKER_CHECKS

    def gpu_readiness(self, *, hardware: HardwareDescription, engine: Engine) -> tuple[bool, str]:
        """Docker runs a GPU engine with a reachable engine, the NVIDIA runtime and Compose."""
        docker = hardware.docker
        if docker.gpu_ready:
            return True, "Docker with the NVIDIA runtime and Compose"
        if not docker.engine_reachable:
            return False, f"no Docker engine ({docker.engine_problem or 'not reachable'})"
        if not docker.nvidia_runtime:
            return False, "Docker has no NVIDIA container runtime"
        return False, "Docker Compose is missing"

    def exposes_gpus(self, *, profile: Profile) -> bool:
        """The container sees GPUs only when the profile passes them (`docker.gpus`)."""
        return bool(profile.docker.gpus)

    def check(self, *, profile: Profile) -> None:
        """Engine up, Compose present, image here, and the container name free or ours."""
        self._check_daemon()
        self.compose_tool()
        image = image_for(profile)
        found = self._run(
            [self._docker, "image", "inspect", "--format", "{{.Id}}", image],
            remedy=START_DAEMON_REMEDY,
            check=False,
        )
        if found.returncode != 0:
            build = (
                " (this image is built locally: scripts/build-llamacpp-image.sh, "
                "see docs/docker.md)"
                if image.startswith("llm-backend/")
                else ""
            )
            raise BackendError(
                f"Docker image {image!r} is not present on this machine{build}",
                remedy=f"docker pull {image}" if not build else
                "scripts/build-llamacpp-image.sh  (in the llm-backend source tree)",
            )
        existing = self.inspect(profile.docker.container_name)
        if existing is None:
            return
        name = profile.docker.container_name
        if not existing.ours:
            raise BackendError(
                f"a container named {name!r} already exists and was not started by llm-backend "
                f"(image {existing.image}, {existing.status})",
                remedy=f"remove it if it is not needed: docker rm -f {name}; or give this "
                f"profile another name: container_name = \"{name}-2\" under "
                f"[profiles.{profile.name}.docker] in ./llm-backend.toml",
            )
        if existing.profile != profile.name and existing.running:
            raise BackendError(
                f"container {name!r} already runs llm-backend profile {existing.profile!r}",
                remedy=f"stop it first: llm-backend stop (or docker rm -f {name})",
            )

    def will_adopt(self, *, profile: Profile) -> bool:
        existing = self.inspect(profile.docker.container_name)
        return bool(
            existing is not None
            and existing.ours
            and existing.running
            and existing.profile == profile.name
        )

    def describe(self, *, profile: Profile, argv: list[str]) -> list[str]:
        project = project_name(profile)
        return [
            f"docker compose -p {project} -f STATE_DIR/compose/{profile.name}/docker-compose.yml "
            f"up -d  (image {image_for(profile)}, container {profile.docker.container_name})",
            f"command: {shlex.join(argv)}",
        ]

    # --- launch ----------------------------------------------------------------------

    def artifacts(self, *, profile: Profile) -> list[Source]:
        """The profile's image for this machine, fetched through the Docker engine."""
        return [DockerImage(image_for(profile))]

    def listen_host(self, *, profile: Profile) -> str:
        """Where the port is published on this machine (`docker.publish_host`); the whole
        machine's addresses with host networking."""
        if profile.docker.network == "host":
            return profile.host
        return profile.docker.publish_host or "0.0.0.0"

    def secret_path(self, *, profile: Profile, host_dir: Path) -> str:
        """Our key files are mounted read-only at one fixed place in the container."""
        return CONTAINER_SECRET_DIR

    def host_path(self, *, profile: Profile, path: str) -> Path | None:
        """The host side of the `host:container` bind mount that holds `path`, if any."""
        for volume in profile.docker.volumes:
            host, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if not host.startswith(("/", "~", ".")):
                continue  # a named volume: not a folder of this machine we can write into
            if target and (path == target or path.startswith(target.rstrip("/") + "/")):
                inside = path[len(target):].lstrip("/")
                return Path(os.path.expanduser(host)) / inside if inside else \
                    Path(os.path.expanduser(host))
        return None

    def compose_file_path(self, *, spec: LaunchSpec) -> Path:
        root = spec.state_dir or spec.log_path.parent.parent
        return root / "compose" / spec.profile.name / "docker-compose.yml"

    def launch(self, *, spec: LaunchSpec) -> Launched:
        profile = spec.profile
        document = build_compose(profile=profile, argv=spec.argv, health_path=spec.health_path,
                                 secret_dir=spec.secret_dir)
        tool = self.compose_tool()
        compose_file = document.write(
            self.compose_file_path(spec=spec), with_name=tool.supports_project_name_key
        )
        existing = self.inspect(document.container_name)
        adopted = False
        if existing is not None:
            if not existing.ours:
                raise BackendError(
                    f"a container named {document.container_name!r} already exists and was not "
                    "started by llm-backend",
                    remedy=f"docker rm -f {document.container_name}, or set another "
                    f"container_name under [profiles.{profile.name}.docker]",
                )
            same = existing.labels.get(LABEL_SPEC_HASH) == document.spec_hash
            if existing.running and existing.profile == profile.name and same:
                adopted = True
            else:
                # Ours but stale (stopped, or other settings): replace it.
                self._remove_container(document.container_name, grace_s=profile.stop_grace_s)
        try:
            if not adopted:
                self._run(
                    self._compose_argv(document.project, compose_file, "up", "-d"),
                    env={**os.environ, **secret_environment(profile)},
                    remedy=f"read the error above; the compose file is {compose_file} "
                    "(try it by hand: docker compose -f FILE up)",
                    timeout=max(COMMAND_TIMEOUT_S, profile.load_timeout_s),
                )
            state = self.inspect(document.container_name)
            if state is None:
                raise BackendError(
                    f"`compose up` returned but container {document.container_name!r} "
                    "does not exist",
                    remedy=f"docker compose -p {document.project} -f {compose_file} logs",
                )
            follower = self._start_follower(state.container_id, spec.log_path)
        except BaseException:
            # A failed or interrupted `up` can leave a created container and the network.
            if not adopted:
                with contextlib.suppress(Exception):
                    self._run(
                        self._compose_argv(
                            document.project, compose_file, "down", "--remove-orphans"
                        ),
                        remedy="",
                        check=False,
                    )
                with contextlib.suppress(Exception):
                    self._remove_container(document.container_name, grace_s=0)
            raise
        pid_create_time = None
        if state.pid:
            with contextlib.suppress(psutil.Error):
                pid_create_time = psutil.Process(state.pid).create_time()
        return Launched(
            pid=state.pid or None,
            pid_create_time=pid_create_time,
            runtime_info={
                "container": document.container_name,
                "container_id": state.container_id,
                "project": document.project,
                "compose_file": str(compose_file),
                "compose": tool.label(),
                "image": document.image,
                "adopted": adopted,
                "log_follower_pid": follower.pid,
                "log_follower_create_time": _create_time(follower.pid),
            },
        )

    def _start_follower(self, container_id: str, log_path: Path) -> subprocess.Popen[bytes]:
        """`docker logs -f` into the instance log, detached so it outlives `start`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(open_log(log_path), "ab") as log:
            follower = subprocess.Popen(
                [self._docker, "logs", "--follow", container_id],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._followers[follower.pid] = follower
        return follower

    # --- watch -----------------------------------------------------------------------

    def _container_of(self, record: InstanceRecord) -> str | None:
        info = record.runtime_info
        return str(info.get("container_id") or info.get("container") or "") or None

    def is_alive(self, *, record: InstanceRecord) -> bool:
        container = self._container_of(record)
        if container is None:
            return False
        follower = self._followers.get(int(record.runtime_info.get("log_follower_pid") or -1))
        # `docker logs -f` ends when the container stops: an exited follower means "look now".
        if follower is not None and follower.poll() is not None:
            state = self.inspect(container)
        else:
            state = self._inspect_cached(container)
        return state is not None and state.running

    def exit_code(self, *, record: InstanceRecord) -> int | None:
        container = self._container_of(record)
        state = self.inspect(container) if container else None
        if state is None or state.running:
            return None
        return state.exit_code

    def details(self, *, record: InstanceRecord) -> dict[str, Any]:
        info = record.runtime_info
        container = self._container_of(record)
        if container is None:
            return {}
        try:
            state = self.inspect(container)
        except BackendError as error:
            return {"docker": {"error": error.message}}
        facts: dict[str, Any] = {
            "container": info.get("container"),
            "project": info.get("project"),
            "compose_file": info.get("compose_file"),
            "compose": info.get("compose"),
            "image": info.get("image"),
            "adopted": bool(info.get("adopted")),
        }
        if state is None:
            facts["state"] = "gone"
        else:
            facts.update(
                container_id=state.container_id[:12],
                state=state.status,
                health=state.health,
                exit_code=None if state.running else state.exit_code,
                restart_count=state.restart_count,
                started_at=state.started_at,
            )
        return {"docker": facts}

    # --- stop ------------------------------------------------------------------------

    def _remove_container(self, container: str, *, grace_s: float) -> None:
        """Stop (with the grace period) and remove a container directly, without Compose."""
        self._run(
            [self._docker, "stop", "-t", str(math.ceil(grace_s)), container],
            remedy=f"docker rm -f {container}",
            check=False,
            timeout=grace_s + COMMAND_TIMEOUT_S,
        )
        self._run(
            [self._docker, "rm", "-f", container],
            remedy=f"docker rm -f {container}",
            check=False,
        )
        self._inspect_cache.pop(container, None)

    def stop(self, *, record: InstanceRecord, grace_s: float, force: bool = False) -> StopResult:
        started = time.monotonic()
        info = record.runtime_info
        container = str(info.get("container") or "") or None
        if container is None:
            self._stop_follower(record)
            return StopResult(was_running=False, killed=False, duration_s=0.0)
        project = str(info.get("project") or "")
        compose_file = Path(str(info.get("compose_file") or ""))
        state = self.inspect(container)
        was_running = state is not None and state.running
        killed = False
        use_compose = bool(project) and compose_file.is_file()
        if state is not None:
            if force:
                self._run([self._docker, "kill", container], remedy="", check=False)
                killed = was_running
            elif was_running:
                timeout = str(math.ceil(grace_s))
                argv = (
                    self._compose_argv(project, compose_file, "stop", "-t", timeout)
                    if use_compose and state.project == project
                    else [self._docker, "stop", "-t", timeout, container]
                )
                stop_began = time.monotonic()
                self._run(
                    argv,
                    remedy=f"docker rm -f {container}",
                    check=False,
                    timeout=grace_s + COMMAND_TIMEOUT_S,
                )
                after = self.inspect(container)
                # 137 = 128 + SIGKILL. Docker sends it only once the grace period ran out;
                # a server that SIGKILLs its own tree sooner (SGLang does) was not killed.
                killed = (
                    after is not None
                    and after.exit_code == 137
                    and time.monotonic() - stop_began >= grace_s - 0.5
                )
            if use_compose:
                self._run(
                    self._compose_argv(project, compose_file, "down", "--remove-orphans"),
                    remedy=f"docker rm -f {container}",
                    check=False,
                    timeout=COMMAND_TIMEOUT_S,
                )
            if self.inspect(container) is not None:  # adopted from another project, or no file
                self._remove_container(container, grace_s=0)
        self._stop_follower(record)
        leftovers: list[str] = []
        remaining = self.inspect(container)
        if remaining is not None:
            leftovers.append(f"container {container} ({remaining.status})")
        if project:
            leftovers += [
                f"container {line}"
                for line in self._project_containers(project)
                if not line.startswith(f"{container} ")
            ]
        follower = process_matches(
            info.get("log_follower_pid"), info.get("log_follower_create_time")
        )
        if follower is not None:
            leftovers.append(f"pid {follower.pid} (docker logs follower)")
        return StopResult(
            was_running=was_running,
            killed=killed,
            duration_s=time.monotonic() - started,
            leftovers=leftovers,
        )

    def _stop_follower(self, record: InstanceRecord) -> None:
        info = record.runtime_info
        pid = info.get("log_follower_pid")
        process = process_matches(pid, info.get("log_follower_create_time"))
        if process is not None:
            # It ends by itself once the container is gone; give it a moment to flush.
            _, alive = psutil.wait_procs([process], timeout=2)
            for survivor in alive:
                with contextlib.suppress(psutil.Error):
                    survivor.terminate()
            _, alive = psutil.wait_procs(alive, timeout=2)
            for survivor in alive:
                with contextlib.suppress(psutil.Error):
                    survivor.kill()
        child = self._followers.pop(int(pid or -1), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


__all__ = ["ComposeDocument", "ComposeTool", "ContainerState", "DockerRuntime"]
