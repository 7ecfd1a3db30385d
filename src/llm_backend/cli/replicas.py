"""`start`, `stop` and `status` of a profile with `replicas = N`: one group of copies."""

from __future__ import annotations

from llm_backend.cli import render
from llm_backend.lifecycle import Lifecycle, Status


def replicas_wanted(lifecycle: Lifecycle, name: str, overrides: dict[str, object]) -> bool:
    """True when the profile asks for more than one copy."""
    return int(lifecycle.resolve(name, overrides).profile.replicas) > 1


def start_replicas(
    lifecycle: Lifecycle, name: str, overrides: dict[str, object], skip: list[str], *,
    dry_run: bool,
) -> None:
    """Preflight each copy (its own port), then start them as one group."""
    from llm_backend.cli.start import ensure_llama_server, run_preflight
    from llm_backend.cluster.replicas import ReplicaGroup, replica_overrides

    profile = lifecycle.resolve(name, overrides).profile
    for index in range(profile.replicas):
        run_preflight(lifecycle, name, replica_overrides(profile, index, overrides), skip,
                      host_prep=False, dry_run=dry_run)
    if dry_run:
        for index in range(profile.replicas):
            result = lifecycle.start(profile_name=name, dry_run=True, host_prep=False,
                                     overrides=replica_overrides(profile, index, overrides))
            render.render_replica_dry_run(index, result)
        return
    group = ReplicaGroup(store=lifecycle.store, config=lifecycle.config)
    render.notice(f"starting {profile.replicas} replicas of {name} ...")
    results = group.start(
        profile_name=name, overrides=overrides, ensure_binary=ensure_llama_server,
        on_notice=render.notice_plain,
    )
    render.render_replicas_started(results)


def stop_replicas(lifecycle: Lifecycle, *, force: bool, grace_s: float | None) -> bool:
    """Stop the replica group if there is one; False when there is none."""
    from llm_backend.cluster.replicas import ReplicaGroup, group_path

    if not group_path(lifecycle.store).is_dir():
        return False  # no group: and no need to read the config (it may be broken)
    group = ReplicaGroup(store=lifecycle.store, config=lifecycle.config)
    if not group.exists():
        return False
    render.render_replicas_stopped(group.stop(force=force, grace_s=grace_s))
    return True


def replica_statuses(lifecycle: Lifecycle) -> list[Status]:
    from llm_backend.cluster.replicas import ReplicaGroup, group_path

    if not group_path(lifecycle.store).is_dir():
        return []  # no group: and no need to read the config (it may be broken)
    return ReplicaGroup(store=lifecycle.store, config=lifecycle.config).status()
