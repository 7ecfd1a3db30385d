"""One model across several nodes: per-node checks for `doctor`, and the stop-order note.

Facts (SGLang 0.5.23 source): only rank 0 serves the API; a rank >= 1 answers /health with a
dummy 200 once its weights are in (`entrypoints/engine.py`, `utils/common.py`), ignores
SIGTERM and waits for rank 0's ShutdownReq broadcast (`entrypoints/engine.py`: "Non-zero
ranks cannot drain on their own ... the orchestrator's kill timeout is the backstop"). So
stop rank 0 first; a follower stopped alone is killed after its `stop_grace_s`.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import httpx

from llm_backend.checks import CheckResult, Context
from llm_backend.checks import result as _result
from llm_backend.cluster.network import interfaces
from llm_backend.config import Profile
from llm_backend.engines import get_engine
from llm_backend.net import http_url

# Jumbo frames are what the two-Spark playbooks configure on the ConnectX-7 link; a smaller
# MTU works but costs bandwidth on the tensor-parallel all-reduces.
JUMBO_MTU = 9000


def rank0_host(profile: Profile) -> str | None:
    addr = profile.distributed.dist_init_addr
    return addr.rpartition(":")[0] if addr else None


def rank0_api(profile: Profile) -> str | None:
    """Rank 0's HTTP API (same port on every node: the profile is the same but for the rank)."""
    host = rank0_host(profile)
    return http_url(host, profile.port) if host else None


def rank0_serving(profile: Profile, timeout_s: float = 1.0) -> bool:
    url = rank0_api(profile)
    if url is None:
        return False
    engine = get_engine(profile.engine)
    try:
        return httpx.get(url + engine.health_path, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def follower_stop_note(profile: Profile) -> str | None:
    """What to tell a user who stops a follower while rank 0 still serves."""
    dist = profile.distributed
    if not dist.enabled or dist.node_rank == 0 or not rank0_serving(profile):
        return None
    return (
        f"rank 0 ({rank0_api(profile)}) still serves: stop it first, it tells every rank to "
        f"shut down; this rank ignores SIGTERM and is killed after {profile.stop_grace_s:.0f}s"
    )


def check_fast_link(ctx: Context) -> CheckResult | None:
    """The interface exists, is up, has an IPv4 address (rank 0: the dist-init address),
    and says its MTU."""
    dist = ctx.profile.distributed
    if not dist.enabled:
        return None
    if not dist.dist_init_addr:
        return _result("fast_link", "fail", "distributed.nnodes > 1 but no dist_init_addr",
                       'set distributed.dist_init_addr = "NODE0-IP:20000" (same on every node)')
    if not dist.interface:
        return _result("fast_link", "warn",
                       "distributed.interface is not set: SGLang guesses its own address "
                       "(it can pick the Wi-Fi one, and both ranks then hang)",
                       "set distributed.interface to the fast link's interface (ip -br addr)")
    info = interfaces().get(dist.interface)
    if info is None:
        return _result("fast_link", "fail",
                       f"interface {dist.interface!r} does not exist on this node",
                       "set distributed.interface to one of: " + ", ".join(sorted(interfaces())))
    details: dict[str, Any] = {"interface": info.name, "up": info.up, "mtu": info.mtu,
                               "ipv4": info.ipv4}
    if not info.up:
        return _result("fast_link", "fail", f"interface {info.name} is down",
                       f"ip link set {info.name} up (or check the cable)", **details)
    if not info.ipv4:
        return _result("fast_link", "fail", f"interface {info.name} has no IPv4 address",
                       f"give it one: ip addr add 192.168.100.10/24 dev {info.name}", **details)
    host = rank0_host(ctx.profile)
    if dist.node_rank == 0 and host not in info.ipv4:
        return _result("fast_link", "fail",
                       f"this is rank 0 but dist_init_addr's host {host} is not an address of "
                       f"{info.name} ({', '.join(info.ipv4)})",
                       f"set distributed.dist_init_addr to {info.ipv4[0]}:PORT on every node",
                       **details)
    summary = f"{info.name} is up, {info.ipv4[0]}, MTU {info.mtu}"
    if info.mtu < JUMBO_MTU:
        return _result("fast_link", "warn", summary + " (not jumbo frames)",
                       f"ip link set {info.name} mtu {JUMBO_MTU} on both nodes (and the netplan)",
                       **details)
    return _result("fast_link", "pass", summary, **details)


def check_rank0(ctx: Context) -> CheckResult | None:
    """From a follower: node 0 answers on the dist-init port (or at least its host is up),
    and reports the same engine version as this node would run."""
    dist = ctx.profile.distributed
    if not dist.enabled or dist.node_rank == 0 or not dist.dist_init_addr:
        return None
    host, _, port = dist.dist_init_addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            reach = "listening"
    except ConnectionRefusedError:
        reach = "refused"  # the host answered: nothing listens yet (rank 0 not started)
    except OSError as error:
        return _result("rank0", "fail", f"node 0 ({host}:{port}) is unreachable: {error}",
                       f"check the link and addresses: ping {host}; ip route get {host}")
    engine = get_engine(ctx.profile.engine)
    local = engine.installed_version(profile=ctx.profile)
    remote = None
    url = rank0_api(ctx.profile)
    for path in engine.info_paths if url else ():
        try:
            response = httpx.get(f"{url}{path}", timeout=2)
        except httpx.HTTPError:
            break
        if response.status_code == 404:
            continue
        with contextlib.suppress(ValueError):
            info = response.json()
            remote = engine.version_from_info(info=info) if isinstance(info, dict) else None
        break
    details = {"dist_init": reach, "local_version": local, "rank0_version": remote}
    if remote and local and remote.lstrip("v") != local.lstrip("v"):
        return _result("rank0", "fail",
                       f"node 0 runs {ctx.profile.engine} {remote}, this node {local}",
                       "run the same image (or package version) on every node", **details)
    if reach == "refused":
        return _result("rank0", "warn",
                       f"node 0 ({host}) answers, nothing listens on {port} yet",
                       "start rank 0 first (llm-backend start on node 0)", **details)
    same = f"; same version {local}" if remote and local else \
        "; versions compared once rank 0 serves" if not remote else ""
    return _result("rank0", "pass", f"node 0 listens on {host}:{port}{same}", **details)
