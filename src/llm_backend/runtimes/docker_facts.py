"""What Docker on this host can do, and the Docker runtime's preflight checks.

Discovery honours `LLM_BACKEND_DOCKER` (the docker CLI to use) and `LLM_BACKEND_COMPOSE`
(the Compose command, e.g. `docker-compose`) everywhere, so `doctor`, `--profile auto` and
`start` look at the same binaries; `DOCKER_HOST` is passed through to the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from llm_backend.checks import Check, CheckResult, Context, result
from llm_backend.errors import ConfigError
from llm_backend.toml_names import profile_table
from llm_backend.units import format_bytes

COMPOSE_ENV = "LLM_BACKEND_COMPOSE"  # e.g. "docker-compose" to force the v1 fallback
DOCKER_ENV = "LLM_BACKEND_DOCKER"  # the docker CLI to use (default: docker on PATH)
COMPOSE_REMEDY = (
    "install the Compose v2 plugin into /usr/local/lib/docker/cli-plugins (see docs/docker.md), "
    "or apt-get install docker-compose"
)


def docker_cli() -> str:
    """The docker CLI to run: `$LLM_BACKEND_DOCKER`, else `docker` (looked up on PATH)."""
    return os.environ.get(DOCKER_ENV) or "docker"


def compose_candidates(docker: str | None = None) -> list[tuple[str, ...]]:
    """Compose commands to try, best first: `$LLM_BACKEND_COMPOSE` alone when it is set,
    else the `docker compose` plugin, then the standalone `docker-compose`."""
    forced = os.environ.get(COMPOSE_ENV)
    if forced:
        return [tuple(shlex.split(forced))]
    return [(docker or docker_cli(), "compose"), ("docker-compose",)]


def compose_version(argv: tuple[str, ...], timeout_s: float = 30.0) -> str | None:
    """`ARGV version --short` without a leading `v`; None when it does not run."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True,
            timeout=timeout_s, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0 or not completed.stdout.strip():
        return None
    return completed.stdout.strip()


@dataclass(frozen=True)
class DockerFacts:
    """Whether Docker can run a GPU container here: engine, NVIDIA runtime, Compose."""

    cli_found: bool = False
    engine_reachable: bool = False
    engine_problem: str | None = None
    server_version: str | None = None
    runtimes: tuple[str, ...] = ()
    default_runtime: str | None = None
    cdi_devices: tuple[str, ...] = ()
    compose_version: str | None = None
    compose_command: tuple[str, ...] = ()
    docker_host: str | None = None

    @property
    def nvidia_runtime(self) -> bool:
        """The NVIDIA container runtime is registered, or NVIDIA CDI devices are known."""
        return "nvidia" in self.runtimes or any(
            device.startswith("nvidia.com/gpu") for device in self.cdi_devices
        )

    @property
    def gpu_ready(self) -> bool:
        return self.engine_reachable and self.nvidia_runtime and self.compose_version is not None


def _compose() -> tuple[str | None, tuple[str, ...]]:
    """Compose's version and how it is called (`docker compose`, `docker-compose`, ...)."""
    for command in compose_candidates():
        version = compose_version(command)
        if version is not None:
            label = ("docker", *command[1:]) if command[0] == docker_cli() else command
            return version.removeprefix("v"), label
    return None, ()


def docker_facts(timeout: float = 10.0) -> DockerFacts:
    """Ask the Docker CLI (honouring DOCKER_HOST) about the engine, runtimes and Compose."""
    docker = shutil.which(docker_cli())
    docker_host = os.environ.get("DOCKER_HOST")
    compose_version_found, compose_command = _compose()
    if docker is None:
        return DockerFacts(
            engine_problem=f"the `{docker_cli()}` command is not on PATH",
            compose_version=compose_version_found,
            compose_command=compose_command,
            docker_host=docker_host,
        )
    try:
        completed: subprocess.CompletedProcess[str] | None = subprocess.run(
            [docker, "info", "--format", "{{json .}}"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        completed = None
    info: dict[str, Any] = {}
    if completed is None:
        problem: str | None = f"`docker info` did not answer within {timeout:.0f}s"
    else:
        with contextlib.suppress(ValueError):
            info = json.loads(completed.stdout.strip() or "{}")
        server_errors = info.get("ServerErrors") or []
        if completed.returncode != 0 or server_errors or not info.get("ServerVersion"):
            detail = "; ".join(str(item) for item in server_errors) or completed.stderr.strip()
            problem = (
                detail.splitlines()[-1] if detail
                else f"`docker info` exited {completed.returncode}"
            )
        else:
            problem = None
    cdi = tuple(str(item.get("ID", item)) if isinstance(item, dict) else str(item)
                for item in (info.get("DiscoveredDevices") or []))
    return DockerFacts(
        cli_found=True,
        engine_reachable=problem is None,
        engine_problem=problem,
        server_version=info.get("ServerVersion"),
        runtimes=tuple(sorted((info.get("Runtimes") or {}).keys())),
        default_runtime=info.get("DefaultRuntime"),
        cdi_devices=cdi,
        compose_version=compose_version_found,
        compose_command=compose_command,
        docker_host=docker_host,
    )


def image_present(image: str, timeout_s: float = 30.0) -> bool:
    """True when the Docker engine here has `image` (False when Docker does not answer)."""
    docker = shutil.which(docker_cli())
    if docker is None:
        return False
    try:
        completed = subprocess.run(
            [docker, "image", "inspect", image], capture_output=True,
            timeout=timeout_s, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


# --- the Docker runtime's preflight checks ----------------------------------------------------


def check_docker_engine(ctx: Context) -> CheckResult | None:
    facts = ctx.fact(docker_facts)
    where = facts.docker_host or "the default socket"
    if facts.engine_reachable:
        return result("docker_engine", "pass",
                      f"Docker engine {facts.server_version} reachable at {where}")
    if not facts.cli_found:
        fix = "install Docker (Debian: apt-get install docker.io), or use --runtime native"
    elif facts.docker_host:
        fix = (f"start the engine behind DOCKER_HOST={facts.docker_host}, or unset DOCKER_HOST; "
               "or use --runtime native")
    else:
        fix = "start the Docker engine (sudo systemctl start docker), or use --runtime native"
    return result("docker_engine", "fail",
                  f"no Docker engine at {where}: {facts.engine_problem}", fix)


def check_nvidia_runtime(ctx: Context) -> CheckResult | None:
    if not ctx.profile.docker.gpus:
        return None
    facts = ctx.fact(docker_facts)
    if not facts.engine_reachable:
        return result("nvidia_runtime", "warn", "not checked: the Docker engine is not reachable",
                      "fix the docker_engine check first")
    if facts.nvidia_runtime:
        how = "runtime 'nvidia'" if "nvidia" in facts.runtimes else "NVIDIA CDI devices"
        return result("nvidia_runtime", "pass", f"Docker knows the NVIDIA GPUs through {how}")
    return result(
        "nvidia_runtime", "fail",
        f"Docker has no NVIDIA container runtime (runtimes: {', '.join(facts.runtimes) or 'none'})"
        f", so `gpus: {ctx.profile.docker.gpus}` cannot work",
        "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure "
        "--runtime=docker && sudo systemctl restart docker`",
    )


def check_compose(ctx: Context) -> CheckResult | None:
    facts = ctx.fact(docker_facts)
    if facts.compose_version:
        return result("compose", "pass",
                      f"{' '.join(facts.compose_command)} {facts.compose_version}")
    tried = " or ".join(f"`{' '.join(argv)}`" for argv in compose_candidates())
    forced = f" (${COMPOSE_ENV} names it)" if os.environ.get(COMPOSE_ENV) else ""
    return result("compose", "fail",
                  f"Docker Compose is not installed ({tried} did not run){forced}",
                  COMPOSE_REMEDY)


def check_image(ctx: Context) -> CheckResult | None:
    from llm_backend.runtimes.compose import image_for

    try:
        image = image_for(ctx.profile)
    except ConfigError:
        return result("image", "fail", f"profile {ctx.profile.name} has no docker.image",
                      f"set {profile_table(ctx.profile.name, 'docker')} image = \"...\"")
    facts = ctx.fact(docker_facts)
    if not facts.engine_reachable:
        return result("image", "warn", f"not checked: no Docker engine to look for {image} in",
                      "fix the docker_engine check first")
    docker = shutil.which(docker_cli()) or docker_cli()
    try:
        completed = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return result("image", "fail", f"`docker image inspect {image}` failed: {error}",
                      "check the Docker engine with `docker info`")
    if completed.returncode == 0:
        image_id, _, size = completed.stdout.strip().partition(" ")
        size_text = f", {format_bytes(int(size))}" if size.isdigit() else ""
        return result("image", "pass", f"{image} is present ({image_id[:19]}{size_text})",
                      image=image, id=image_id)
    if image.startswith("llm-backend/"):  # built here, in no registry
        return result("image", "warn", f"{image} is not present locally (it is built here)",
                      "scripts/build-llamacpp-image.sh  (in the llm-backend source tree)",
                      image=image)
    return result("image", "warn",
                  f"{image} is not present locally; `start` pulls it first "
                  "(GPU engine images are often 10-20 GB)",
                  ctx.pull_command, image=image)


DOCKER_CHECKS: tuple[Check, ...] = (
    Check("docker_engine", check_docker_engine),
    Check("nvidia_runtime", check_nvidia_runtime),
    Check("compose", check_compose),
    Check("image", check_image),
)
