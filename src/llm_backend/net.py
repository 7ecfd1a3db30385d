"""Host values to URLs and sockets, for IPv4, IPv6 and names alike.

Every place that builds a URL from a profile's `host`, probes a port, or publishes one
goes through these helpers, so an IPv6 literal (`::`, `fd00::2`) is bracketed in
URLs (RFC 3986 section 3.2.2; a zone's `%` would be written `%25`, RFC 6874, but a profile's
`host` refuses zones: config.py), a port is
probed with the address family of the host, and a wildcard bind is reached through the
loopback address of its own family.
"""

from __future__ import annotations

import ipaddress
import socket

# Wildcard binds and the loopback address that reaches a server bound to each.
_WILDCARD_TO_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ipv6_literal(host: str) -> bool:
    """Whether `host` is an IPv6 address (brackets and a `%zone` allowed), not a name."""
    address = _unbracket(host).split("%", 1)[0]
    try:
        return isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address)
    except ValueError:
        return False


def bind_host(host: str) -> str:
    """`host` as a server's `--host` takes it: `[::1]` (URL form) -> `::1`."""
    return _unbracket(host)


def url_host(host: str) -> str:
    """`host` as written in a URL's authority: `::1` -> `[::1]`, names and IPv4 unchanged."""
    bare = _unbracket(host)
    if is_ipv6_literal(bare):
        address, percent, zone = bare.partition("%")
        return f"[{address}%25{zone}]" if percent else f"[{address}]"
    return bare


def http_url(host: str, port: int) -> str:
    """`http://HOST:PORT` with `host` bracketed when it is an IPv6 literal."""
    return f"http://{url_host(host)}:{port}"


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`.

    A wildcard bind (`0.0.0.0`, `::`, empty) is reached at the loopback address of the same
    family (`127.0.0.1`, `::1`); any other host as given.
    """
    bare = _unbracket(host)
    return _WILDCARD_TO_LOOPBACK.get(bare, bare)


def connect_url(host: str, port: int) -> str:
    """The URL a client on this machine polls for a server bound to `host:port`."""
    return http_url(connect_host(host), port)


def bind_family(host: str) -> socket.AddressFamily:
    """The address family a server bound to `host` listens with (names: their first address)."""
    bare = _unbracket(host)
    if bare in ("", "0.0.0.0"):
        return socket.AF_INET
    if is_ipv6_literal(bare):
        return socket.AF_INET6
    try:
        ipaddress.IPv4Address(bare)
        return socket.AF_INET
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
    except OSError:
        return socket.AF_INET
    return infos[0][0] if infos else socket.AF_INET


def bind_error(host: str, port: int) -> OSError | None:
    """Why a TCP listener could not bind `host:port` now (None: it could); the family follows
    the host.

    `::` binds dual-stack where the kernel allows it (Linux `bindv6only=0`), as the servers
    do, so a port taken on IPv4 only also counts as taken. The error's errno tells a taken
    port (EADDRINUSE) from an address this machine does not have (EADDRNOTAVAIL).
    """
    bare = _unbracket(host) or "0.0.0.0"
    family = bind_family(bare)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if family == socket.AF_INET6:
                address, _, zone = bare.partition("%")
                scope = socket.if_nametoindex(zone) if zone else 0
                probe.bind((address, port, 0, scope))
            else:
                probe.bind((bare, port))
        except OSError as error:
            return error
    return None


def can_bind(host: str, port: int) -> bool:
    """Whether a TCP listener could bind `host:port` now (see `bind_error`)."""
    return bind_error(host, port) is None


def publish_spec(publish_host: str | None, host_port: int, container_port: int) -> str:
    """A Compose short-syntax `ports` entry: `[::1]:8000:8000`, `127.0.0.1:8000:8000`, `8000:8000`.

    The Compose specification writes an IPv6 host address in brackets in this syntax.
    """
    if not publish_host:
        return f"{host_port}:{container_port}"
    return f"{url_host(publish_host)}:{host_port}:{container_port}"


def host_port(host: str, port: int | str) -> str:
    """`HOST:PORT` for a rendezvous address: `10.0.0.1:5000`, `[fd00::1]:5000`.

    An IPv6 literal is bracketed (its `%zone` kept as is, not URL-encoded), the form SGLang
    0.5.23's `NetworkAddress.parse` (`srt/utils/network.py`) requires for `--dist-init-addr`.
    """
    bare = _unbracket(host)
    return f"[{bare}]:{port}" if is_ipv6_literal(bare) else f"{bare}:{port}"


def parse_host_port(value: str) -> tuple[str, int]:
    """`(host, port)` of a `HOST:PORT` value, by SGLang 0.5.23's `NetworkAddress.parse` rules
    (`srt/utils/network.py`): an IPv6 host must be bracketed (`[fd00::1]:5000`; a bare
    `fd00::1:5000` is ambiguous), the port is required and within 0-65535.

    Raises ValueError saying what is wrong, with the value.
    """
    if not value:
        raise ValueError("the address is empty")
    if value.startswith("["):
        close = value.find("]")
        if close == -1:
            raise ValueError(f"{value!r} has no closing bracket")
        host, rest = value[1:close], value[close + 1:]
        if not is_ipv6_literal(host):
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
        if not rest.startswith(":") or len(rest) < 2:
            raise ValueError(f"{value!r} has no :PORT after the brackets")
        return host, _port(rest[1:], value)
    if ":" not in value:
        raise ValueError(f"{value!r} has no port (HOST:PORT)")
    host, _, port = value.rpartition(":")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if is_ipv6_literal(host):
        raise ValueError(f"{value!r} is an IPv6 address without brackets (ambiguous): write "
                         f"{host_port(host, port)}")
    if is_ipv6_literal(value):
        raise ValueError(f"{value!r} is an IPv6 address with no port: write [{value}]:PORT")
    return host, _port(port, value)


def _port(text: str, value: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{value!r} has no valid port ({text!r})") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range (0-65535)")
    return port
