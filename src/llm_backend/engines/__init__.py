"""Built-in engines, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from llm_backend.engines.base import Engine
from llm_backend.errors import ConfigError

_FACTORIES: dict[str, Callable[[], Engine]] = {}


def register(name: str, factory: Callable[[], Engine]) -> None:
    _FACTORIES[name] = factory


def get_engine(name: str) -> Engine:
    """The engine called `name`; an unknown one is a config error naming the known ones."""
    if not _FACTORIES:
        _register_builtins()
    if name not in _FACTORIES:
        raise ConfigError(
            f"unknown engine {name!r}; known engines: {', '.join(sorted(_FACTORIES))}",
            remedy="set `engine` in the profile to one of those",
        )
    return _FACTORIES[name]()


def _register_builtins() -> None:
    from llm_backend.engines.llamacpp import LlamaCppEngine
    from llm_backend.engines.sglang import SGLangEngine

    register("llamacpp", LlamaCppEngine)
    register("sglang", SGLangEngine)
