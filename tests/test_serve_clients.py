"""`status`, `chat` and `bench` under `llm-backend serve`: clients are shown and use the door.

A real llama-server behind the real door (both with API keys of their own), `llm-backend`
commands as subprocesses; the door's own /metrics counts what went through it.
"""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Env, port_is_free, wait_for
from tests.test_serve import (  # noqa: F401 - `served` is a fixture
    CHAT,
    FAST,
    Served,
    served,
    start_serve,
)

DOOR_KEY = "door-key-7f3a9c1e"
BACKEND_KEY = "backend-key-5d2b8e4f"


def chat_requests(door: Served) -> float:
    """How many chat completions the door answered 200, from its /metrics."""
    text = httpx.get(door.url + "/metrics", headers={"Authorization": f"Bearer {DOOR_KEY}"},
                     timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "llm_backend_requests_total"
                    and sample.labels == {"route": "/v1/chat/completions", "status": "200"}):
                return sample.value
    return 0.0


def door_requests(door: Served) -> list[str]:
    """The door's request counter lines, for an assertion message."""
    text = httpx.get(door.url + "/metrics", headers={"Authorization": f"Bearer {DOOR_KEY}"},
                     timeout=30).text
    return [line for line in text.splitlines() if line.startswith("llm_backend_requests_")]


def busy_slots(backend: str) -> int:
    """llama-server's slots that are generating now (`/slots`, `is_processing`)."""
    slots = httpx.get(backend + "/slots", timeout=30).json()
    return sum(1 for slot in slots if slot.get("is_processing"))


def test_status_chat_and_bench_use_the_door_with_its_key(
    world: Env, served: list[Served]  # noqa: F811 - the fixture
) -> None:
    door_keys = world.root / "door-keys"
    door_keys.write_text(DOOR_KEY + "\n")
    door_keys.chmod(0o600)
    backend_key = world.root / "backend-key"
    backend_key.write_text(BACKEND_KEY + "\n")
    backend_key.chmod(0o600)
    # The backend starts on the first request, so `chat` is held while it loads.
    world.write_config(
        FAST.replace('extends = "smollm2-cpu"',
                     f'extends = "smollm2-cpu"\napi_key_file = "{backend_key}"')
        + f'start_on_request = true\napi_keys_file = "{door_keys}"\n'
    )
    door = Served(world)
    served.append(door)
    assert wait_for(lambda: (world.state_dir / "serve.json").exists(), timeout=60)
    assert wait_for(lambda: not port_is_free(world.port), timeout=60)
    assert not (world.state_dir / "instance.json").exists()

    chatted = world.run("chat", "Say hello.", "--max-tokens", "4", timeout=180)
    assert chatted.returncode == 0, chatted.stderr
    assert wait_for(lambda: door.serve_record()["held"] == 1, timeout=30)
    assert door.serve_record()["max_wait_s"] == 60  # chat and bench wait this much longer
    # The door counts a request once its last byte is sent, which can be after the client
    # read [DONE].
    assert wait_for(lambda: chat_requests(door) == 1, timeout=30), door_requests(door)

    status = world.run("status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    instance = json.loads((world.state_dir / "instance.json").read_text())
    assert shown["endpoint"] == door.url
    assert shown["backend_endpoint"] == f"http://127.0.0.1:{instance['port']}"
    assert instance["port"] != world.port
    text = world.run("status").stdout
    assert f"endpoint: {door.url}/v1 (the door of `serve`)" in text
    assert f"backend:  http://127.0.0.1:{instance['port']}/v1" in text

    benched = world.run("bench", "--concurrency", "1", "--requests", "2", "--max-tokens", "2",
                        timeout=300)
    assert benched.returncode == 0, benched.stderr
    assert "through the door of serve" in " ".join(benched.stdout.split())
    assert wait_for(lambda: chat_requests(door) == 1 + 3, timeout=30), door_requests(door)

    refused = world.run("bench", "--ab", "spec", "--requests", "1", timeout=120)
    assert refused.returncode == 1 and "serve" in refused.stderr and "\nfix: " in refused.stderr
    assert refused.stderr.startswith("error:")

    direct = world.run("chat", "Say hello.", "--max-tokens", "2", "--direct", timeout=180)
    assert direct.returncode == 0, direct.stderr
    assert chat_requests(door) == 4  # around the door

    # A door key is checked at the door and replaced by the backend's own key behind it.
    chat = door.url + "/v1/chat/completions"
    assert httpx.post(chat, json=CHAT, timeout=30).status_code == 401
    with_key = httpx.post(chat, json=CHAT, headers={"Authorization": f"Bearer {DOOR_KEY}"},
                          timeout=120)
    assert with_key.status_code == 200, with_key.text
    backend = f"http://127.0.0.1:{instance['port']}/v1/chat/completions"
    refused = httpx.post(backend, json=CHAT, headers={"Authorization": f"Bearer {DOOR_KEY}"},
                         timeout=120)
    assert refused.status_code == 401  # the backend does not know the door's key

    client_key = world.state_dir / "serve-secrets" / "client-key"
    assert oct(client_key.stat().st_mode & 0o777) == "0o600"
    own_key = client_key.read_text().strip()
    assert len(own_key) >= 32
    assert door.terminate() == 0
    assert not client_key.exists()
    said = chatted.stdout + chatted.stderr + status.stdout + text + benched.stdout + door.output()
    assert DOOR_KEY not in said and BACKEND_KEY not in said and own_key not in said


def test_a_client_that_leaves_cancels_the_backends_generation(
    world: Env, served: list[Served]  # noqa: F811 - the fixture
) -> None:
    door = start_serve(world, served)
    port = json.loads((world.state_dir / "instance.json").read_text())["port"]
    backend = f"http://127.0.0.1:{port}"
    long_stream = {**CHAT, "stream": True, "max_tokens": 3000, "ignore_eos": True}
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", door.url + "/v1/chat/completions", json=long_stream
    ) as answer:
        assert answer.status_code == 200
        chunks = answer.iter_raw()
        events = next(chunks).count(b"data: ")
        began = time.monotonic()
        while events < 30:
            events += next(chunks).count(b"data: ")
        seconds_per_token = (time.monotonic() - began) / (events - 1)
        assert busy_slots(backend) == 1
    left_at = time.monotonic()
    # The door drops its upstream request, and llama-server stops generating for it: long
    # before the rest of the 3000 tokens could have been generated at the speed just seen.
    assert wait_for(lambda: busy_slots(backend) == 0, timeout=60)
    idle_after = time.monotonic() - left_at
    assert idle_after < (3000 - events) * seconds_per_token / 4, (idle_after, seconds_per_token)
    assert wait_for(lambda: client_closed(door) == 1, timeout=30)
    assert door.terminate() == 0


def client_closed(door: Served) -> float:
    """Requests the door counted as 499 (the client went away before the response ended)."""
    text = httpx.get(door.url + "/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "llm_backend_requests_total"
               and sample.labels.get("status") == "499")
