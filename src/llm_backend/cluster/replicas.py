"""`replicas = N`: N copies of one profile on one box, started and stopped as one group.

Replica i gets its own port (`port + i`), its own device (`device_ids[i]`, default `i`, as
CUDA_VISIBLE_DEVICES), its own container name and its own state dir (`replicas/i` under the
state dir), so each has a lifecycle of its own. With a `router_url` each joins the router
once ready. Host preparation (swap, OOM daemons) is per machine, not per copy: replicas
start without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_backend.config import ConfigSet, Profile
from llm_backend.errors import BackendError, ConfigError
from llm_backend.lifecycle import Lifecycle, StartResult, Status, StopOutcome
from llm_backend.state import StateStore
from llm_backend.toml_names import profile_table

GROUP_DIR = "replicas"


def replica_overrides(profile: Profile, index: int, base: dict[str, Any]) -> dict[str, Any]:
    """The command-line overrides that make replica `index` of `profile`."""
    if profile.device_ids and len(profile.device_ids) < profile.replicas:
        raise ConfigError(
            f"profile {profile.name!r}: replicas = {profile.replicas} but device_ids has "
            f"{len(profile.device_ids)} entries ({profile.device_ids})",
            remedy=f"list one device per replica in {profile_table(profile.name)} device_ids, "
            "or remove device_ids to use 0..N-1",
        )
    device = profile.device_ids[index] if profile.device_ids else str(index)
    return {
        **base,
        "port": profile.port + index,
        "replicas": 1,
        "env": {**profile.env, "CUDA_VISIBLE_DEVICES": device},
        "docker.container_name": f"{profile.docker.container_name}-{index}",
        "host_prep.enabled": False,
    }


@dataclass(frozen=True)
class Replica:
    index: int
    lifecycle: Lifecycle


class ReplicaGroup:
    """The replicas recorded under `<state dir>/replicas/`."""

    def __init__(self, *, store: StateStore, config: ConfigSet) -> None:
        self.root = store.root / GROUP_DIR
        self.config = config

    def replica(self, index: int) -> Replica:
        store = StateStore(self.root / str(index))
        return Replica(index=index, lifecycle=Lifecycle(store=store, config=self.config))

    def recorded(self) -> list[Replica]:
        """Replicas that have a record (running, failed or left over)."""
        if not self.root.is_dir():
            return []
        indexes = sorted(
            int(path.name) for path in self.root.iterdir()
            if path.name.isdigit() and (path / "instance.json").exists()
        )
        return [self.replica(index) for index in indexes]

    def exists(self) -> bool:
        return bool(self.recorded())

    def start(
        self,
        *,
        profile_name: str,
        overrides: dict[str, Any],
        on_notice: Callable[[str], None] = lambda text: None,
        **start_kwargs: Any,
    ) -> list[StartResult]:
        """Start every replica in turn; if one fails, stop those already started and raise."""
        profile = self.config.resolve(profile_name, overrides).profile
        if profile.host_prep.enabled:
            on_notice("host preparation is per machine: the replicas start without it")
        started: list[Replica] = []
        results = []
        try:
            for index in range(profile.replicas):
                replica = self.replica(index)
                results.append(
                    replica.lifecycle.start(
                        profile_name=profile_name,
                        overrides=replica_overrides(profile, index, overrides),
                        host_prep=False,
                        on_notice=on_notice,
                        **start_kwargs,
                    )
                )
                started.append(replica)
        except BaseException:
            for replica in reversed(started):
                try:
                    replica.lifecycle.stop()
                except BackendError:
                    replica.lifecycle.stop(force=True)
            raise
        return results

    def stop(self, *, force: bool = False, grace_s: float | None = None) -> list[StopOutcome]:
        """Stop every replica (each leaves its router first); records are cleared."""
        outcomes = []
        errors = []
        for replica in self.recorded():
            try:
                outcomes.append(replica.lifecycle.stop(force=force, grace_s=grace_s))
            except BackendError as error:
                errors.append(f"replica {replica.index}: {error.message}")
        if errors:
            raise BackendError("; ".join(errors), remedy="llm-backend stop --force")
        return outcomes

    def status(self) -> list[Status]:
        return [replica.lifecycle.status() for replica in self.recorded()]


def group_path(store: StateStore) -> Path:
    return store.root / GROUP_DIR
