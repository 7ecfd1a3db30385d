"""Network namespaces as "boxes" for the scale-out tests: our own names, our own addresses.

Topology (all of it created here and removed again, also when a test fails):

    root ns  --veth 10.N.9.1/30 <-> 10.N.9.2/30--  hub ns (bridge 10.N.0.1/24)
                                                    |-- veth -- box 1: 10.N.0.11/24
                                                    |-- veth -- box 2: 10.N.0.12/24
                                                    `-- veth -- box 3: 10.N.0.13/24

N (100-199) comes from the test process id, so two test runs at once do not collide.

The router runs in the hub namespace; each box runs one server. Traffic stays on these
veth pairs and the bridge; nothing is routed to or from the host's own networks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

SUBNET = f"10.{100 + os.getpid() % 100}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def namespaces_usable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (scripts/setup.sh --test installs it)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    routes = _ip("-4", "route", "show", check=False).stdout
    if f"{SUBNET}." in routes:
        return f"the host already routes {SUBNET}.0.0/16; the test will not touch it"
    return None


@dataclass
class Boxes:
    """The namespaces made for one test."""

    tag: str
    hub: str
    boxes: list[str]
    root_veth: str
    made: list[str] = field(default_factory=list)

    hub_ip = f"{SUBNET}.0.1"
    hub_from_root = f"{SUBNET}.9.2"

    def box_ip(self, index: int) -> str:
        return f"{SUBNET}.0.{11 + index}"

    def exec_prefix(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def run_in(self, namespace: str, *argv: str, check: bool = True) -> None:
        subprocess.run(
            [*self.exec_prefix(namespace), *argv], check=check, capture_output=True, timeout=20
        )

    def set_link(self, index: int, up: bool) -> None:
        """Bring box `index`'s cable up or down (an unreachable member)."""
        self.run_in(self.boxes[index], "ip", "link", "set", "eth0", "up" if up else "down")


@contextlib.contextmanager
def make_boxes(count: int) -> Iterator[Boxes]:
    reason = namespaces_usable()
    if reason:
        pytest.skip(reason)
    tag = f"lbc{os.getpid() % 100000}"
    boxes = Boxes(
        tag=tag,
        hub=f"{tag}-hub",
        boxes=[f"{tag}-box{i + 1}" for i in range(count)],
        root_veth=f"{tag}r",
    )
    try:
        _ip("netns", "add", boxes.hub)
        boxes.made.append(boxes.hub)
        hub = boxes.exec_prefix(boxes.hub)
        subprocess.run([*hub, "ip", "link", "set", "lo", "up"], check=True, timeout=20)
        subprocess.run([*hub, "ip", "link", "add", "br0", "type", "bridge"], check=True,
                       timeout=20)
        subprocess.run([*hub, "ip", "addr", "add", f"{boxes.hub_ip}/24", "dev", "br0"],
                       check=True, timeout=20)
        subprocess.run([*hub, "ip", "link", "set", "br0", "up"], check=True, timeout=20)
        # The test process (root namespace) reaches the router over one veth pair.
        _ip("link", "add", boxes.root_veth, "type", "veth", "peer", "name", "up0",
            "netns", boxes.hub)
        _ip("addr", "add", f"{SUBNET}.9.1/30", "dev", boxes.root_veth)
        _ip("link", "set", boxes.root_veth, "up")
        subprocess.run([*hub, "ip", "addr", "add", f"{boxes.hub_from_root}/30", "dev", "up0"],
                       check=True, timeout=20)
        subprocess.run([*hub, "ip", "link", "set", "up0", "up"], check=True, timeout=20)
        for index, name in enumerate(boxes.boxes):
            _ip("netns", "add", name)
            boxes.made.append(name)
            inside = boxes.exec_prefix(name)
            subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True, timeout=20)
            _ip("link", "add", f"{tag}b{index}", "netns", boxes.hub, "type", "veth",
                "peer", "name", "eth0", "netns", name)
            subprocess.run([*hub, "ip", "link", "set", f"{tag}b{index}", "master", "br0"],
                           check=True, timeout=20)
            subprocess.run([*hub, "ip", "link", "set", f"{tag}b{index}", "up"], check=True,
                           timeout=20)
            subprocess.run(
                [*inside, "ip", "addr", "add", f"{boxes.box_ip(index)}/24", "dev", "eth0"],
                check=True, timeout=20,
            )
            subprocess.run([*inside, "ip", "link", "set", "eth0", "up"], check=True, timeout=20)
        yield boxes
    finally:
        _ip("link", "del", boxes.root_veth, check=False)
        for name in reversed(boxes.made):
            _ip("netns", "del", name, check=False)
