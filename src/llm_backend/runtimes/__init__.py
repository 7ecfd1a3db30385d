"""Built-in runtimes, by name."""

from __future__ import annotations

from llm_backend.errors import ConfigError
from llm_backend.runtimes.base import Runtime


def get_runtime(name: str) -> Runtime:
    """The runtime called `name` (`native` or `docker`)."""
    if name == "native":
        from llm_backend.runtimes.native import NativeRuntime

        return NativeRuntime()
    if name == "docker":
        from llm_backend.runtimes.docker import DockerRuntime

        return DockerRuntime()
    raise ConfigError(
        f"unknown runtime {name!r}; known runtimes: docker, native",
        remedy="use --runtime native or --runtime docker",
    )
