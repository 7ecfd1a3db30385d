"""The Docker runtime: the server as a Docker Compose service, driven through the Docker CLI.

`launch` writes the profile's compose file into the state dir, runs `docker compose up -d`
(or `docker-compose` where Compose v2 is missing), and starts a detached `docker logs -f`
follower that appends the container's output to the instance log, which the monitor tails.
`stop` stops with the grace period, removes the container (`down`) and verifies that no
container of the project is left. It knows nothing of LLMs: the engine gives the command.

Every container it starts carries labels (`runtimes.compose`): the state dir it was launched
from and the start (instance) that made it. It adopts, stops and removes only containers
whose state-dir label names this state dir; a container of another name-sake (or one that a
forged record names) is refused, never touched. A container whose `start` died before the
record named it is found by those labels (`find_launched`, `unrecorded`) and stopped.
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
from llm_backend.errors import BackendError, CommandFailed, NotOurs
from llm_backend.locks import FileLock
from llm_backend.processes import marker_value, process_matches
from llm_backend.pull import Source
from llm_backend.runtimes.base import Launched, LaunchSpec, Runtime, StopResult
from llm_backend.runtimes.compose import (
    CONTAINER_SECRET_DIR,
    INSTANCE_ENV,
    LABEL_INSTANCE,
    LABEL_PROFILE,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    LABEL_STATE_DIR,
    ROLE_SERVER,
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
from llm_backend.state import INSTANCE_FILE, InstanceRecord, open_log
from llm_backend.state import state_dir as default_state_dir
from llm_backend.toml_names import profile_table

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine
    from llm_backend.hardware import HardwareDescription

FOLLOWER_LOCK = "docker-follower.lock"  # in the state dir: one log follower per container
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
    def by_llm_backend(self) -> bool:
        """Labelled by some llm-backend (of any state dir, or of a version without the mark)."""
        return LABEL_PROFILE in self.labels

    def owned_by(self, root: str) -> bool:
        """Launched from the state dir `root` (`processes.marker_value`): ours to act on."""
        return self.labels.get(LABEL_STATE_DIR) == root

    @property
    def profile(self) -> str | None:
        return self.labels.get(LABEL_PROFILE)

    @property
    def instance(self) -> str | None:
        return self.labels.get(LABEL_INSTANCE) or None

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


class ForeignContainer(NotOurs):
    """A container that the record (or the profile's name) points at is not ours to touch."""


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

    # --- whose a container is ----------------------------------------------------------

    def _root(self) -> str:
        """This state dir as our containers' LABEL_STATE_DIR names it."""
        return marker_value(self.state_dir if self.state_dir is not None else default_state_dir())

    def _foreign(self, existing: ContainerState, *, profile: Profile) -> ForeignContainer:
        """The refusal for a container of the profile's name that is not ours."""
        name = existing.name
        rename = (f"give this profile another name: container_name = \"{name}-2\" under "
                  f"{profile_table(profile.name, 'docker')} in ./llm-backend.toml")
        seen = f"image {existing.image}, {existing.status}"
        if not existing.by_llm_backend:
            return ForeignContainer(
                f"a container named {name!r} already exists and was not started by llm-backend "
                f"({seen})",
                remedy=f"remove it if it is not needed: docker rm -f {name}; or {rename}",
            )
        other = existing.labels.get(LABEL_STATE_DIR)
        if other:
            return ForeignContainer(
                f"a container named {name!r} already exists and was not started by llm-backend "
                f"from this state dir ({self._root()}): its {LABEL_STATE_DIR} label is "
                f"{other!r} ({seen})",
                remedy=f"stop it from its own state dir: LLM_BACKEND_STATE_DIR="
                f"{shlex.quote(other)} llm-backend stop; or {rename}",
            )
        return ForeignContainer(
            f"a container named {name!r} already exists and was not started by llm-backend "
            f"from this state dir ({self._root()}): it has no {LABEL_STATE_DIR} label (an "
            f"older llm-backend, or a compose file run by hand) ({seen})",
            remedy=f"remove it if it is not needed: docker rm -f {name}; or {rename}",
        )

    def _foreign_record(self, existing: ContainerState, named: str) -> ForeignContainer:
        """The refusal for a record (forged or stale) that names a container not ours."""
        record_path = Path(self._root()) / INSTANCE_FILE
        label = existing.labels.get(LABEL_STATE_DIR)
        why = f"its {LABEL_STATE_DIR} label is {label!r}" if label else \
            f"it has no {LABEL_STATE_DIR} label"
        return ForeignContainer(
            f"the record {record_path} names container {named!r} ({existing.name}, image "
            f"{existing.image}, {existing.status}), which was not started from this state dir "
            f"({why}); it was left alone",
            remedy=f"set the record aside: mv {record_path} {record_path}.foreign  (and if "
            f"that container is yours, stop it by hand: docker stop {existing.name})",
        )

    def _recorded(self, record: InstanceRecord, *, cached: bool = False) -> ContainerState | None:
        """The container the record names, if it still exists; ForeignContainer when it
        exists but was not launched from this state dir."""
        container = self._container_of(record)
        if container is None:
            return None
        state = self._inspect_cached(container) if cached else self.inspect(container)
        if state is not None and not state.owned_by(self._root()):
            raise self._foreign_record(state, container)
        return state

    def verify(self, *, record: InstanceRecord) -> None:
        """ForeignContainer when the container the record names is not labelled as ours."""
        self._recorded(record)

    def differences(self, *, record: InstanceRecord, profile: Profile) -> list[str]:
        """Another container name or another image than the recorded container's."""
        info = record.runtime_info
        found: list[str] = []
        recorded_name = info.get("container")
        if recorded_name and recorded_name != profile.docker.container_name:
            found.append(f"container {recorded_name}, you asked for "
                          f"{profile.docker.container_name}")
        try:
            image = image_for(profile)
        except BackendError:
            image = None
        if info.get("image") and image and info.get("image") != image:
            found.append(f"image {info.get('image')}, you asked for {image}")
        return found

    def _labelled(self) -> list[ContainerState]:
        """Every server container labelled with this state dir, running or not.

        Only asks the engine when this state dir has ever run a compose file (the file is
        written before `up`), so native-only use never calls Docker; no engine: none."""
        if self.state_dir is None or not (self.state_dir / "compose").is_dir():
            return []
        if shutil.which(self._docker) is None:
            return []
        root = self._root()
        try:
            completed = self._run(
                [self._docker, "ps", "-a", "-q", "--no-trunc",
                 "--filter", f"label={LABEL_STATE_DIR}={root}"],
                remedy=START_DAEMON_REMEDY, check=False, timeout=30,
            )
        except BackendError:
            return []
        if completed.returncode != 0:
            return []
        found = []
        for container_id in completed.stdout.split():
            with contextlib.suppress(BackendError):
                state = self.inspect(container_id)
                # The engine's filter, checked again, and only servers (not a flag check).
                if (state is not None and state.owned_by(root)
                        and state.labels.get(LABEL_ROLE, ROLE_SERVER) == ROLE_SERVER):
                    found.append(state)
        return found

    def unrecorded(self, *, record: InstanceRecord | None) -> list[str]:
        """Running containers of this state dir other than the one an active record names."""
        named = self._container_of(record) if record is not None else None
        return [
            f"container {state.name} ({state.status})"
            for state in self._labelled()
            if state.running and named not in (state.container_id, state.name)
        ]

    def find_launched(self, *, record: InstanceRecord) -> Launched | None:
        """The container whose instance label is this record's (its `start` died between
        `compose up` and the record), with a log follower; None when there is none."""
        mine = [state for state in self._labelled() if state.instance == record.instance_id]
        if len(mine) != 1:
            return None
        state = mine[0]
        # Two commands at once (`status` and `serve`, say) must not both start one.
        root = self.state_dir if self.state_dir is not None else default_state_dir()
        with FileLock(root / FOLLOWER_LOCK):
            follower_pid = self._follower_of(state.container_id)
            if follower_pid is None:
                follower_pid = self._start_follower(state.container_id,
                                                    Path(record.log_path)).pid
        return Launched(
            pid=state.pid or None,
            pid_create_time=_create_time(state.pid) if state.pid else None,
            runtime_info={
                "container": state.name,
                "container_id": state.container_id,
                "project": state.project,
                "compose_file": str(self._compose_file(record.profile) or ""),
                "image": state.image,
                "adopted": False,
                "instance": state.instance,
                "log_follower_pid": follower_pid,
                "log_follower_create_time": _create_time(follower_pid),
            },
        )

    def _follower_of(self, container_id: str) -> int | None:
        """A `docker logs --follow ID` of ours still at work (its `start` was killed)."""
        wanted = ["logs", "--follow", container_id]
        for process in psutil.process_iter(["cmdline"]):
            command = process.info.get("cmdline") or []
            if command[1:] == wanted and os.path.basename(command[0]) == \
                    os.path.basename(self._docker):
                return int(process.pid)
        return None

    def _compose_file(self, profile_name: str) -> Path | None:
        """Our compose file for a profile; None for a name that is not a plain file name."""
        if not profile_name or Path(profile_name).name != profile_name or profile_name in (
                ".", ".."):
            return None
        root = self.state_dir if self.state_dir is not None else default_state_dir()
        return root / "compose" / profile_name / "docker-compose.yml"

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
                remedy=f"llm-backend pull --profile {profile.name}" if not build else
                "scripts/build-llamacpp-image.sh  (in the llm-backend source tree)",
            )
        existing = self.inspect(profile.docker.container_name)
        if existing is None:
            return
        name = profile.docker.container_name
        if not existing.owned_by(self._root()):
            raise self._foreign(existing, profile=profile)
        if existing.profile != profile.name and existing.running:
            raise BackendError(
                f"container {name!r} already runs llm-backend profile {existing.profile!r}",
                remedy=f"stop it first: llm-backend stop (or docker rm -f {name})",
            )

    def will_adopt(self, *, profile: Profile) -> bool:
        existing = self.inspect(profile.docker.container_name)
        return bool(
            existing is not None
            and existing.owned_by(self._root())
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
        """The host side of the `host:container` bind mount that holds `path`, if any: the
        deepest one (`/b:/root/.cache/huggingface` over `/a:/root/.cache`), as in the
        container, where the deeper mount hides what the outer one has there."""
        best: tuple[int, Path] | None = None
        for volume in profile.docker.volumes:
            host, _, rest = volume.partition(":")
            target = rest.split(":")[0].rstrip("/") or "/"
            if not host.startswith(("/", "~", ".")) or not rest.startswith("/"):
                continue  # a named volume: not a folder of this machine we can write into
            if path == target or path.startswith(target.rstrip("/") + "/"):
                inside = path[len(target):].lstrip("/")
                folder = Path(os.path.expanduser(host))
                if best is None or len(target) > best[0]:
                    best = (len(target), folder / inside if inside else folder)
        return best[1] if best is not None else None

    def compose_file_path(self, *, spec: LaunchSpec) -> Path:
        root = spec.state_dir or spec.log_path.parent.parent
        return root / "compose" / spec.profile.name / "docker-compose.yml"

    def launch(self, *, spec: LaunchSpec) -> Launched:
        profile = spec.profile
        if spec.state_dir is not None:
            self.state_dir = spec.state_dir
        document = build_compose(profile=profile, argv=spec.argv, health_path=spec.health_path,
                                 secret_dir=spec.secret_dir, state_dir=Path(self._root()))
        tool = self.compose_tool()
        compose_file = document.write(
            self.compose_file_path(spec=spec), with_name=tool.supports_project_name_key
        )
        existing = self.inspect(document.container_name)
        adopted = False
        if existing is not None:
            if not existing.owned_by(self._root()):
                raise self._foreign(existing, profile=profile)
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
                    env={**os.environ, **secret_environment(profile),
                         INSTANCE_ENV: spec.instance_id or ""},
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
                    if self._project_is_ours(document.project):
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
                "instance": state.instance,
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
        """True while the recorded container runs; a container not ours is not our server."""
        container = self._container_of(record)
        if container is None:
            return False
        follower = self._followers.get(_int_or(record.runtime_info.get("log_follower_pid")))
        # `docker logs -f` ends when the container stops: an exited follower means "look now".
        fresh = follower is not None and follower.poll() is not None
        try:
            state = self._recorded(record, cached=not fresh)
        except ForeignContainer:
            return False
        return state is not None and state.running

    def exit_code(self, *, record: InstanceRecord) -> int | None:
        try:
            state = self._recorded(record)
        except ForeignContainer:
            return None
        if state is None or state.running:
            return None
        return state.exit_code

    def details(self, *, record: InstanceRecord) -> dict[str, Any]:
        info = record.runtime_info
        container = self._container_of(record)
        if container is None:
            return {}
        try:
            state = self._recorded(record)
        except BackendError as error:
            return {"docker": {"container": info.get("container"), "error": error.message}}
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
        """Stop (with the grace period) and remove a container directly, without Compose.
        Only a container of ours: one that is not (any more) is left alone."""
        existing = self.inspect(container)
        if existing is None or not existing.owned_by(self._root()):
            return
        target = existing.container_id
        self._run(
            [self._docker, "stop", "-t", str(math.ceil(grace_s)), target],
            remedy=f"docker rm -f {container}",
            check=False,
            timeout=grace_s + COMMAND_TIMEOUT_S,
        )
        self._run(
            [self._docker, "rm", "-f", target],
            remedy=f"docker rm -f {container}",
            check=False,
        )
        self._inspect_cache.pop(container, None)

    def _project_is_ours(self, project: str) -> bool:
        """Every container of the Compose project is ours, so `down --remove-orphans` (which
        removes the project's other containers too) touches nothing else."""
        completed = self._run(
            [self._docker, "ps", "-a", "-q", "--no-trunc",
             "--filter", f"label=com.docker.compose.project={project}"],
            remedy=START_DAEMON_REMEDY, check=False,
        )
        if completed.returncode != 0:
            return False
        root = self._root()
        for container_id in completed.stdout.split():
            state = self.inspect(container_id)
            if state is not None and not state.owned_by(root):
                return False
        return True

    def _stop_container(
        self, state: ContainerState, *, project: str, compose_file: Path | None,
        grace_s: float, force: bool,
    ) -> tuple[bool, bool]:
        """Stop (grace, then kill) and remove one container of ours, through Compose when
        its project is ours alone (so its network goes too). Returns (was_running, killed)."""
        target = state.container_id
        was_running = state.running
        killed = False
        use_compose = (bool(project) and compose_file is not None and compose_file.is_file()
                       and state.project == project and self._project_is_ours(project))
        if force:
            if was_running:
                self._run([self._docker, "kill", target], remedy="", check=False)
            killed = was_running
        elif was_running:
            timeout = str(math.ceil(grace_s))
            argv = (
                self._compose_argv(project, compose_file, "stop", "-t", timeout)
                if use_compose and compose_file is not None
                else [self._docker, "stop", "-t", timeout, target]
            )
            stop_began = time.monotonic()
            self._run(
                argv,
                remedy=f"docker rm -f {state.name}",
                check=False,
                timeout=grace_s + COMMAND_TIMEOUT_S,
            )
            after = self.inspect(target)
            # 137 = 128 + SIGKILL. Docker sends it only once the grace period ran out;
            # a server that SIGKILLs its own tree sooner (SGLang does) was not killed.
            killed = (
                after is not None
                and after.exit_code == 137
                and time.monotonic() - stop_began >= grace_s - 0.5
            )
        if use_compose and compose_file is not None:
            self._run(
                self._compose_argv(project, compose_file, "down", "--remove-orphans"),
                remedy=f"docker rm -f {state.name}",
                check=False,
                timeout=COMMAND_TIMEOUT_S,
            )
        if self.inspect(target) is not None:  # adopted from another project, or no file
            self._run([self._docker, "rm", "-f", target], remedy=f"docker rm -f {state.name}",
                      check=False)
        self._inspect_cache.pop(state.name, None)
        return was_running, killed

    def stop(self, *, record: InstanceRecord, grace_s: float, force: bool = False) -> StopResult:
        """Stop and remove the recorded container (ForeignContainer, touching nothing, when
        it is not labelled as launched from this state dir), then its log follower."""
        started = time.monotonic()
        info = record.runtime_info
        container = str(info.get("container") or "") or None
        if container is None:
            self._stop_follower(record)
            return StopResult(was_running=False, killed=False, duration_s=0.0)
        project = str(info.get("project") or "")
        state = self._recorded(record)
        was_running = killed = False
        if state is not None:
            was_running, killed = self._stop_container(
                state, project=project, compose_file=self._compose_file(record.profile),
                grace_s=grace_s, force=force,
            )
        self._stop_follower(record)
        leftovers: list[str] = []
        remaining = self.inspect(state.container_id) if state is not None else None
        if remaining is not None:
            leftovers.append(f"container {remaining.name} ({remaining.status})")
        if project:
            leftovers += [
                f"container {line}"
                for line in self._project_containers(project)
                if state is None or not line.startswith(f"{state.name} ")
            ]
        follower = process_matches(
            info.get("log_follower_pid"), info.get("log_follower_create_time")
        )
        if follower is not None and self._is_follower(
                follower, str(info.get("container_id") or "")):
            leftovers.append(f"pid {follower.pid} (docker logs follower)")
        return StopResult(
            was_running=was_running,
            killed=killed,
            duration_s=time.monotonic() - started,
            leftovers=leftovers,
        )

    def stop_unrecorded(self, *, grace_s: float, force: bool = False) -> StopResult:
        """Stop and remove every server container labelled with this state dir (their
        `docker logs` followers end with them)."""
        started = time.monotonic()
        was_running = killed = False
        leftovers: list[str] = []
        for state in self._labelled():
            running, was_killed = self._stop_container(
                state, project=state.project or "",
                compose_file=self._compose_file(state.profile or ""),
                grace_s=grace_s, force=force,
            )
            was_running = was_running or running
            killed = killed or was_killed
            remaining = self.inspect(state.container_id)
            if remaining is not None:
                leftovers.append(f"container {remaining.name} ({remaining.status})")
        return StopResult(was_running=was_running, killed=killed,
                          duration_s=time.monotonic() - started, leftovers=leftovers)

    def _is_follower(self, process: psutil.Process, container_id: str) -> bool:
        """`docker logs --follow CONTAINER_ID` of the recorded container (what
        `_start_follower` runs); nothing without the recorded container's id."""
        try:
            command = process.cmdline()
        except psutil.Error:
            return False
        return (bool(container_id) and command[1:] == ["logs", "--follow", container_id]
                and os.path.basename(command[0]) == os.path.basename(self._docker))

    def _stop_follower(self, record: InstanceRecord) -> None:
        info = record.runtime_info
        pid = info.get("log_follower_pid")
        process = process_matches(pid, info.get("log_follower_create_time"))
        container_id = str(info.get("container_id") or "")
        if process is not None and not self._is_follower(process, container_id):
            # The record names some other process (another state dir's follower, say):
            # not ours to signal.
            process = None
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
        child = self._followers.pop(_int_or(pid), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)


def _int_or(value: Any, default: int = -1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


__all__ = ["ComposeDocument", "ComposeTool", "ContainerState", "DockerRuntime"]
