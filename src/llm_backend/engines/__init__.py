"""The engine registry: one line per built-in engine, plugins by entry point or environment.

Adding an engine: its module under `engines/`, one line in `BUILTIN_ENGINES`, and a profile
TOML under `profiles/`. A plugin outside this package registers through the entry point
group `llm_backend.engines` (`name = "module:Class"`) or the environment variable
`LLM_BACKEND_ENGINES` (`module:Class[,module:Class...]`); see `llm_backend.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_backend.registry import Registry

if TYPE_CHECKING:
    from llm_backend.engines.base import Engine

# Listed order is the order `diagnose` prefers when two engines' markers tie.
BUILTIN_ENGINES = {
    "sglang": "llm_backend.engines.sglang:SGLangEngine",
    "llamacpp": "llm_backend.engines.llamacpp:LlamaCppEngine",
}

REGISTRY: Registry[Engine] = Registry(
    "engine", BUILTIN_ENGINES, remedy="set `engine` in the profile to one of those"
)


def register(name: str, factory: Callable[[], Engine]) -> None:
    """Register an engine in this process (a plugin in another process: see the module doc)."""
    REGISTRY.register(name, factory)


def get_engine(name: str) -> Engine:
    """A new instance of the engine called `name`; ConfigError naming the known ones if none."""
    return REGISTRY.get(name)


def engine_names() -> list[str]:
    """Every engine name: built-in ones, then plugins."""
    return REGISTRY.names()


def installable_engine(name: str) -> Engine | None:
    """The engine that `llm-backend engine install NAME` installs (by its `install_names`)."""
    for engine in REGISTRY.all():
        if name in engine.install_names:
            return engine
    return None


def guess_engine(lines: list[str]) -> str:
    """The engine whose log markers match the most lines; ties go to the earlier-listed one."""
    counts: list[tuple[int, str]] = []
    for engine in REGISTRY.all():
        markers = engine.log_markers
        count = sum(1 for line in lines if markers.search(line)) if markers else 0
        counts.append((count, engine.name))
    best = max(count for count, _ in counts)
    return next(name for count, name in counts if count == best)
