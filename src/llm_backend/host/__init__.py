"""Host preparation: journaled, reversible swap, OOM-daemon and page-cache steps; memory guard."""

from __future__ import annotations

from llm_backend.config import Profile
from llm_backend.host.prepare import HostPrep, RecoveryReport, host_status, recover
from llm_backend.host.sudoers import sudoers_text
from llm_backend.state import StateStore


def host_preparation_factory(profile: Profile, store: StateStore) -> HostPrep:
    """What `cli.make_lifecycle()` hands to the lifecycle."""
    return HostPrep(profile, store)


__all__ = [
    "HostPrep",
    "RecoveryReport",
    "host_preparation_factory",
    "host_status",
    "recover",
    "sudoers_text",
]
