"""Host values to URLs and sockets: IPv6 literals bracketed, probed with their own family."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from llm_backend.config import Profile
from llm_backend.net import (
    bind_family,
    can_bind,
    connect_url,
    host_port,
    http_url,
    is_ipv6_literal,
    parse_host_port,
    publish_spec,
    url_host,
)
from llm_backend.runtimes.compose import build_compose
from tests.conftest import Env, free_port, wait_for


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("localhost", "localhost"),
        ("node-0.company.net", "node-0.company.net"),
        ("::", "[::]"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("2001:db8::5", "[2001:db8::5]"),
        ("fe80::1%eth0", "[fe80::1%25eth0]"),
    ],
)
def test_url_host_brackets_only_ipv6_literals(host: str, expected: str) -> None:
    assert url_host(host) == expected


def test_urls_for_wildcard_and_loopback_binds() -> None:
    assert http_url("::", 40000) == "http://[::]:40000"
    assert connect_url("::", 40000) == "http://[::1]:40000"
    assert connect_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert connect_url("::1", 8080) == "http://[::1]:8080"
    assert connect_url("10.0.0.5", 8080) == "http://10.0.0.5:8080"
    assert is_ipv6_literal("::") and not is_ipv6_literal("0.0.0.0")
    assert bind_family("::") == socket.AF_INET6 and bind_family("0.0.0.0") == socket.AF_INET


def test_profile_endpoint_for_ipv6_host() -> None:
    profile = Profile(name="v6", engine="sglang", model="m", host="::", port=40000)
    assert profile.endpoint == "http://[::]:40000"
    assert profile.client_endpoint == "http://[::1]:40000"


def test_free_port_on_ipv6_wildcard_is_free_and_a_taken_one_is_not() -> None:
    port = free_port()
    assert can_bind("::", port)
    assert can_bind("::1", port)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::1", port))
        holder.listen()
        assert not can_bind("::1", port)
        assert not can_bind("::", port)
    # Linux binds `::` dual-stack, so an IPv4 listener takes the port for `::` too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        assert not can_bind("0.0.0.0", port)
        assert not can_bind("::", port)


def test_an_address_this_machine_lacks_is_not_reported_as_a_taken_port(world: Env) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737), never an address of this machine; the port is free.
    world.write_config("""
[profiles.far]
extends = "smollm2-cpu"
host = "192.0.2.1"
""")
    report = json.loads(world.run("doctor", "--profile", "far", "--json").stdout)
    port = {check["name"]: check for check in report["checks"]}["port"]
    assert port["status"] == "fail", port
    assert port["summary"] == (f"cannot listen on 192.0.2.1 port {world.port}: Cannot assign "
                               "requested address (host = '192.0.2.1' is not an address of "
                               "this machine)")
    assert "in use" not in port["summary"] and "ip addr" in port["fix"]
    refused = world.run("start", "--profile", "far", "--skip-checks", "port")
    assert refused.returncode == 1, refused.stderr  # refused before launch, as a taken port is
    assert "error: cannot listen on 192.0.2.1" in refused.stderr
    assert not (world.state_dir / "logs" / "far.log").exists()  # nothing was launched


def test_a_link_local_host_with_a_zone_is_refused_naming_it(world: Env) -> None:
    world.write_config("""
[profiles.zone]
extends = "smollm2-cpu"
host = "fe80::1%eth0"
""")
    refused = world.run("start", "--profile", "zone", "--dry-run")
    assert refused.returncode == 2, refused.stderr
    assert "error: profile 'zone': key 'host' = 'fe80::1%eth0'" in refused.stderr
    assert "is a link-local IPv6 address with a zone" in refused.stderr
    assert "fix: correct that key in ./llm-backend.toml" in refused.stderr
    assert "in use" not in refused.stderr
    world.write_config("""
[profiles.zone]
extends = "smollm2-cpu"
runtime = "docker"
[profiles.zone.docker]
publish_host = "fe80::1%eth0"
""")
    refused = world.run("compose", "--profile", "zone")
    assert refused.returncode == 2, refused.stderr
    assert "key 'docker.publish_host' = 'fe80::1%eth0'" in refused.stderr


@pytest.fixture
def ipv6_server() -> Iterator[int]:
    """A real HTTP server bound to the IPv6 wildcard, answering /health with 200."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    class V6Server(http.server.HTTPServer):
        address_family = socket.AF_INET6

    server = V6Server(("::", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_wildcard_ipv6_bind_is_reached_at_the_loopback_url(ipv6_server: int) -> None:
    response = httpx.get(connect_url("::", ipv6_server) + "/health", timeout=5, trust_env=False)
    assert response.status_code == 200
    assert not can_bind("::", ipv6_server)


def test_compose_publishes_ipv6_host_in_brackets() -> None:
    assert publish_spec("::1", 8000, 8000) == "[::1]:8000:8000"
    assert publish_spec("127.0.0.1", 8000, 8000) == "127.0.0.1:8000:8000"
    assert publish_spec(None, 8000, 8000) == "8000:8000"
    profile = Profile.model_validate(
        {"name": "v6", "engine": "sglang", "model": "m", "runtime": "docker", "port": 31000,
         "docker": {"image": "lmsysorg/sglang:v0.5.23", "publish_host": "::"}}
    )
    document = build_compose(profile=profile, argv=["python3", "-m", "sglang.launch_server"])
    service = document.data["services"][document.service]
    assert service["ports"] == ["[::]:31000:31000"]


def test_a_real_server_on_the_ipv6_wildcard_starts_answers_and_stops(world: Env) -> None:
    """llama-server bound to `::`: start polls [::1], status and chat reach it, stop frees it."""
    world.write_config(
        f'[profiles.v6]\nextends = "smollm2-cpu"\nhost = "::"\nport = {world.port}\n'
        "[profiles.v6.host_prep]\nenabled = false\n"
    )
    started = world.run("start", "--profile", "v6", timeout=240)
    assert started.returncode == 0, started.stderr
    assert f"http://[::]:{world.port}/v1" in started.stdout
    try:
        status = json.loads(world.run("status", "--json").stdout)
        assert status["state"] == "ready" and status["health_ms"] > 0
        assert status["endpoint"] == f"http://[::]:{world.port}"
        answer = httpx.get(f"http://[::1]:{world.port}/v1/models", timeout=10, trust_env=False)
        assert answer.status_code == 200
        chat = world.run("chat", "Say hi.", "--max-tokens", "8")
        assert chat.returncode == 0, chat.stderr
        assert not can_bind("::", world.port)
    finally:
        stopped = world.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for(lambda: can_bind("::", world.port), timeout=10)


def test_rendezvous_host_port_is_written_and_read_as_sglang_does() -> None:
    """SGLang 0.5.23 `srt/utils/network.py` NetworkAddress.parse: IPv6 bracketed, port needed;
    a zone stays as written (not URL-encoded, unlike `url_host`)."""
    assert host_port("10.0.0.1", 5000) == "10.0.0.1:5000"
    assert host_port("fd00::1", 5000) == "[fd00::1]:5000"
    assert host_port("[fd00::1]", "5000") == "[fd00::1]:5000"
    assert host_port("fe80::1%eth0", 5000) == "[fe80::1%eth0]:5000"
    assert host_port("node-0.example", 20000) == "node-0.example:20000"
    assert parse_host_port("[fd00::1]:5000") == ("fd00::1", 5000)
    assert parse_host_port("node-0.example:20000") == ("node-0.example", 20000)
    for bad, words in [("fd00::1:5000", "without brackets"), ("fd00::1", "no port"),
                       ("10.0.0.1", "no port"), ("[fd00::1]", "no :PORT"),
                       ("[10.0.0.1]:5000", "not an IPv6"), ("10.0.0.1:99999", "out of range"),
                       ("10.0.0.1:x", "no valid port"), (":5000", "no host"), ("", "empty")]:
        with pytest.raises(ValueError, match=words):
            parse_host_port(bad)
