"""What the Docker tests share: a real engine or a clear failure, unique names, cleanup by name.

The Docker tests run against a real Docker engine with Compose and the local image
`llm-backend/llama-server:local`. Where there is none they fail with the fix, unless
LLM_BACKEND_SKIP_DOCKER is set (for a laptop without Docker); CI must not set it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

LLAMA_IMAGE = "llm-backend/llama-server:local"
SKIP_VARIABLE = "LLM_BACKEND_SKIP_DOCKER"
SETUP_FIX = "fix: sudo scripts/ci-docker.sh (starts dockerd, installs Compose v2, builds the image)"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {completed.returncode}: {completed.stderr}"
        )
    return completed


def require_docker(*, image: str | None = LLAMA_IMAGE) -> None:
    """Fail (not skip) when the engine, Compose or the image is missing, unless opted out."""
    if os.environ.get(SKIP_VARIABLE):
        pytest.skip(f"{SKIP_VARIABLE} is set: Docker tests skipped")
    if shutil.which("docker") is None:
        pytest.fail(f"the docker CLI is not installed\n{SETUP_FIX}", pytrace=False)
    engine = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    if engine.returncode != 0:
        pytest.fail(
            f"the Docker engine does not answer: {engine.stderr.strip()}\n{SETUP_FIX}\n"
            f"(on a laptop without Docker: {SKIP_VARIABLE}=1 skips these tests)",
            pytrace=False,
        )
    compose = docker("compose", "version", "--short", timeout=30, check=False)
    if compose.returncode != 0:
        pytest.fail(f"Docker Compose v2 is not installed\n{SETUP_FIX}", pytrace=False)
    if image and docker("image", "inspect", image, timeout=30, check=False).returncode != 0:
        pytest.fail(
            f"the image {image} is not built\nfix: scripts/build-llamacpp-image.sh",
            pytrace=False,
        )


def require_compose_v1() -> None:
    """The docker-compose v1 fallback is tested too; Debian's docker-compose provides it."""
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose (v1, the fallback) is not installed\n"
            "fix: apt-get install docker-compose (scripts/ci-docker.sh does)",
            pytrace=False,
        )


def inspect(container: str) -> dict[str, Any] | None:
    completed = docker("container", "inspect", container, check=False)
    if completed.returncode != 0:
        return None
    data = json.loads(completed.stdout)
    return dict(data[0]) if data else None


def containers_named(name: str) -> list[str]:
    completed = docker("ps", "-a", "--filter", f"name=^/{name}$", "--format", "{{.Names}}")
    return [line for line in completed.stdout.splitlines() if line]


def networks_named(name: str) -> list[str]:
    completed = docker("network", "ls", "--filter", f"name=^{name}$", "--format", "{{.Name}}")
    return [line for line in completed.stdout.splitlines() if line]


@dataclass
class DockerNames:
    """Container and network names that belong to one test only."""

    container: str
    network: str

    def config(self, profile: str = "smollm2-cpu", **extra: Any) -> str:
        """A ./llm-backend.toml that gives `profile` this test's names (tables merge by key)."""
        lines = [
            f"[profiles.{profile}.docker]",
            f'container_name = "{self.container}"',
            f'network = "{self.network}"',
            "healthcheck_interval_s = 1",
        ]
        for key, value in extra.items():
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    def cleanup(self) -> None:
        """Remove this test's container and network, by their exact names."""
        with contextlib.suppress(Exception):
            if containers_named(self.container):
                docker("rm", "-f", self.container, check=False)
        with contextlib.suppress(Exception):
            if networks_named(self.network):
                docker("network", "rm", self.network, check=False)


def unique_names() -> DockerNames:
    token = uuid.uuid4().hex[:8]
    return DockerNames(container=f"lbtest-{token}", network=f"lbtest-{token}-net")
