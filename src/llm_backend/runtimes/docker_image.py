"""A container image as a pull artifact, fetched through the Docker engine's own API.

The engine is asked over its socket (DOCKER_HOST, else /var/run/docker.sock), so its
layer-by-layer progress (`progressDetail.current/total` in the JSON stream of
`POST /images/create`, Docker Engine API v1.41+) is what the display shows. An interrupted
pull resumes: layers the engine already has are not downloaded again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from llm_backend.pull import Artifact, ProgressCallback, ProgressEvent, PullError, Source

DEFAULT_SOCKET = "/var/run/docker.sock"
START_ENGINE_REMEDY = (
    "start the Docker engine (`sudo systemctl start docker`, or `sudo dockerd &`), "
    "then run `llm-backend pull` again"
)


def split_reference(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', 'tag'); a digest stays whole; no tag means 'latest'."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = image.rpartition(":")
        return name, tag
    return image, "latest"


def engine_client(timeout: float = 30.0) -> httpx.Client:
    """An HTTP client for the Docker engine named by DOCKER_HOST (unix:// or tcp://)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("tcp://"):
        return httpx.Client(base_url="http://" + host[len("tcp://"):], timeout=timeout)
    socket_path = host[len("unix://"):] if host.startswith("unix://") else DEFAULT_SOCKET
    return httpx.Client(transport=httpx.HTTPTransport(uds=socket_path),
                        base_url="http://docker", timeout=timeout)


class DockerImage(Source):
    """One image reference the profile's runtime runs; present when the engine has it."""

    kind = "image"
    check = "image"

    def __init__(self, image: str, *, data_root: Path | None = None) -> None:
        self.image = image
        self.name = image
        self.data_root = data_root

    def disk_path(self) -> Path | None:
        return self.data_root

    def _engine_error(self, error: Exception) -> PullError:
        where = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
        return PullError(f"no Docker engine answers at {where}: {error}",
                         remedy=START_ENGINE_REMEDY)

    def probe(self) -> Artifact:
        return self._probe(timeout_s=10.0)

    def probe_local(self) -> Artifact:
        """The local engine's image store only (no registry is asked), with a short timeout:
        `status` must not wait on an engine that does not answer."""
        return self._probe(timeout_s=2.0)

    def _probe(self, *, timeout_s: float) -> Artifact:
        try:
            with engine_client(timeout=timeout_s) as client:
                response = client.get(f"/images/{quote(self.image, safe='')}/json")
        except httpx.HTTPError as error:
            return Artifact("image", self.image, False, None, "docker engine", None,
                            detail=self._engine_error(error).message)
        if response.status_code == 200:
            size = response.json().get("Size")
            return Artifact("image", self.image, True, size if isinstance(size, int) else None,
                            "docker engine", 0, detail=str(response.json().get("Id", ""))[:19])
        return Artifact("image", self.image, False, None, "docker engine", None,
                        detail="not present in the local engine")

    def fetch(self, *, progress: ProgressCallback) -> None:
        name, tag = split_reference(self.image)
        layers: dict[str, tuple[int, int]] = {}
        params = {"fromImage": name, "tag": tag}
        try:
            with engine_client(timeout=None) as client, client.stream(  # type: ignore[arg-type]
                "POST", "/images/create", params=params, headers=_registry_auth()
            ) as response:
                if response.status_code != 200:
                    body = response.read().decode(errors="replace")
                    raise self._refused(_message_of(body) or f"HTTP {response.status_code}")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event or "errorDetail" in event:
                        detail = event.get("errorDetail") or {}
                        raise self._refused(str(detail.get("message") or event.get("error")))
                    _account(layers, event)
                    done = sum(current for current, _ in layers.values())
                    total = sum(size for _, size in layers.values()) or None
                    progress(ProgressEvent(self.image, done, total,
                                           message=_status_line(event)))
        except httpx.HTTPError as error:
            raise self._engine_error(error) from error
        done = sum(size for _, size in layers.values())
        progress(ProgressEvent(self.image, done, done or None, finished=True))

    def _refused(self, message: str) -> PullError:
        lowered = message.lower()
        if "manifest unknown" in lowered or "not found" in lowered:
            fix = (f"check the image name and tag in the profile ([profiles.NAME.docker] "
                   f"image = \"{self.image}\"), or build/tag it locally")
        elif "unauthorized" in lowered or "denied" in lowered:
            fix = f"`docker login` to the registry of {self.image}, then `llm-backend pull`"
        else:
            fix = ("check the registry address and the network (`docker pull "
                   f"{self.image}` shows the same), then run `llm-backend pull` again")
        return PullError(f"the Docker engine could not pull {self.image}: {message}", remedy=fix)


def _registry_auth() -> dict[str, str]:
    """The engine API wants an X-Registry-Auth header; an empty credential means anonymous."""
    return {"X-Registry-Auth": "e30="}  # base64 of "{}"


def _message_of(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip() or None
    return str(data.get("message")) if isinstance(data, dict) and data.get("message") else None


def _account(layers: dict[str, tuple[int, int]], event: dict[str, Any]) -> None:
    """Keep per-layer (done, total) bytes from one JSON progress event of the engine."""
    layer = event.get("id")
    status = str(event.get("status", ""))
    if not layer or layer == "latest":
        return
    detail = event.get("progressDetail") or {}
    current, total = detail.get("current"), detail.get("total")
    known_total = layers.get(layer, (0, 0))[1]
    if status.startswith("Downloading") and isinstance(total, int) and total > 0:
        layers[layer] = (int(current or 0), total)
    elif status in ("Download complete", "Pull complete", "Already exists") and known_total:
        layers[layer] = (known_total, known_total)


def _status_line(event: dict[str, Any]) -> str:
    layer = event.get("id")
    status = str(event.get("status", ""))
    return f"{layer}: {status}" if layer else status
