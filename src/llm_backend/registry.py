"""A registry of named implementations (engines, runtimes): built-in ones and plugins.

Built-in implementations are listed as `name -> "module:Class"` and imported only when
asked for, so a command that needs one engine does not import the others. Plugins add
more, two ways:

- an installed package declares an entry point in the group the registry names
  (`llm_backend.engines` or `llm_backend.runtimes`), `name = "module:Class"`;
- the environment variable the registry names (`LLM_BACKEND_ENGINES`,
  `LLM_BACKEND_RUNTIMES`) lists `module:Class` items separated by commas; each class
  registers under its own `name` attribute. This is how a test (or a one-off local
  plugin on PYTHONPATH) adds one to the CLI it runs as a subprocess.

Plugins are read only when a name is not built in, or when every name is listed.
A plugin cannot replace a built-in name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from llm_backend.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to factories of one kind (`engine`, `runtime`); `get` builds a fresh instance.

    Built-ins are `module:Class` strings, imported on first use; plugins must subclass
    `llm_backend.<kind>s.base.<Kind>`.
    """

    def __init__(self, kind: str, builtins: dict[str, str], *, remedy: str) -> None:
        self.kind = kind
        self.env_var = f"LLM_BACKEND_{kind.upper()}S"  # LLM_BACKEND_ENGINES, ..._RUNTIMES
        self.entry_point_group = f"llm_backend.{kind}s"
        self._base_target = f"llm_backend.{kind}s.base:{kind.capitalize()}"
        self.remedy = remedy
        self._builtins = dict(builtins)
        self._factories: dict[str, Callable[[], T]] = {}
        self._plugins_loaded = False

    # --- registering --------------------------------------------------------------------

    def register(self, name: str, factory: Callable[[], T]) -> None:
        """Add (or, for a name registered in code, replace) one implementation."""
        self._factories[name] = factory

    def _load_target(self, target: str, *, origin: str) -> type[T]:
        module_name, _, attribute = target.partition(":")
        if module_name.startswith("."):
            # importlib.import_module raises TypeError for a relative name without a package.
            raise ConfigError(
                f"{origin} names {self.kind} {target!r}, a relative module, which cannot be "
                "imported without a package",
                remedy=f"give the module's full dotted name (module:Class); {self.remedy}",
            )
        try:
            loaded = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigError(
                f"{origin} names {self.kind} {target!r}, which cannot be imported: {error}",
                remedy=f"correct or remove it (the form is module:Class); {self.remedy}",
            ) from None
        module_name, _, class_name = self._base_target.partition(":")
        base = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(loaded, type) and issubclass(loaded, base)):
            raise ConfigError(
                f"{origin} names {target!r}, which is not a subclass of {class_name}",
                remedy=f"point it at a {class_name} subclass; {self.remedy}",
            )
        return cast(type[T], loaded)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in importlib.metadata.entry_points(group=self.entry_point_group):
            if entry.name not in self._builtins:
                self._factories.setdefault(
                    entry.name,
                    self._load_target(entry.value, origin=f"entry point {entry.name!r}"),
                )
        for target in os.environ.get(self.env_var, "").split(","):
            target = target.strip()
            if not target:
                continue
            cls = self._load_target(target, origin=f"${self.env_var}")
            name = str(getattr(cls, "name", "") or "")
            if not name or name in self._builtins:
                raise ConfigError(
                    f"${self.env_var}: {target} has name {name!r}, which is empty or the "
                    f"name of a built-in {self.kind}",
                    remedy=f"give the class its own `name`; {self.remedy}",
                )
            self._factories[name] = cls

    # --- asking -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name, built-in ones first in their listed order, then plugins."""
        self._load_plugins()
        return [*self._builtins, *(n for n in self._factories if n not in self._builtins)]

    def get(self, name: str) -> T:
        """A new instance of `name`; an unknown name is a ConfigError naming the known ones."""
        if name in self._factories:
            return self._factories[name]()
        if name in self._builtins:
            cls = self._load_target(self._builtins[name], origin="the built-in registry")
            self._factories[name] = cls
            return cls()
        self._load_plugins()
        if name not in self._factories:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}",
                remedy=self.remedy,
            )
        return self._factories[name]()

    def all(self) -> list[T]:
        """One instance of every registered implementation, in `names()` order."""
        return [self.get(name) for name in self.names()]

    def unknown(self, name: str) -> str | None:
        """None when `name` is registered, else the message `get` would raise."""
        if name in self._builtins or name in self._factories:
            return None
        known = self.names()
        if name in known:
            return None
        return f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(known)}"
