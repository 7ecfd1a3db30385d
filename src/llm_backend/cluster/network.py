"""This node's network interfaces, for multi-node settings and `doctor`."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import psutil

from llm_backend.errors import ConfigError


@dataclass(frozen=True)
class InterfaceInfo:
    """One interface as the kernel reports it."""

    name: str
    up: bool
    mtu: int
    ipv4: list[str]


def interfaces() -> dict[str, InterfaceInfo]:
    stats = psutil.net_if_stats()
    addresses = psutil.net_if_addrs()
    found = {}
    for name, stat in stats.items():
        ipv4 = [a.address for a in addresses.get(name, []) if a.family == socket.AF_INET]
        found[name] = InterfaceInfo(name=name, up=stat.isup, mtu=stat.mtu, ipv4=ipv4)
    return found


def interface_ipv4(name: str) -> str:
    """The first IPv4 address of interface `name`; a ConfigError naming the interfaces
    this node has when it does not exist or has no IPv4 address."""
    known = interfaces()
    info = known.get(name)
    if info is None:
        names = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"network interface {name!r} (distributed.interface) does not exist on this node "
            f"(interfaces here: {names})",
            remedy="set distributed.interface to the fast link's interface "
            "(`ip -br addr`; on a DGX Spark `ibdev2netdev` shows which ConnectX-7 port is up)",
        )
    if not info.ipv4:
        raise ConfigError(
            f"network interface {name!r} (distributed.interface) has no IPv4 address",
            remedy=f"give {name} an address (netplan, or `ip addr add 192.168.100.10/24 dev "
            f"{name}`), then start again",
        )
    return info.ipv4[0]
