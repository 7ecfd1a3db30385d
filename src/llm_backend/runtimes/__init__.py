"""The runtime registry: one line per built-in runtime, plugins by entry point or environment.

Adding a runtime: its module under `runtimes/` and one line in `BUILTIN_RUNTIMES`. A plugin
outside this package registers through the entry point group `llm_backend.runtimes` or the
environment variable `LLM_BACKEND_RUNTIMES` (`module:Class[,...]`); see `llm_backend.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_backend.registry import Registry

if TYPE_CHECKING:
    from llm_backend.runtimes.base import Runtime

BUILTIN_RUNTIMES = {
    "native": "llm_backend.runtimes.native:NativeRuntime",
    "docker": "llm_backend.runtimes.docker:DockerRuntime",
}

REGISTRY: Registry[Runtime] = Registry(
    "runtime", BUILTIN_RUNTIMES, remedy="use --runtime with one of those, or set `runtime`"
)


def get_runtime(name: str) -> Runtime:
    """A new instance of the runtime called `name`; ConfigError naming the known ones if none."""
    return REGISTRY.get(name)


def runtime_names() -> list[str]:
    """Every runtime name: built-in ones, then plugins."""
    return REGISTRY.names()
