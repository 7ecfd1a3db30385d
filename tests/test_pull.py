"""`llm-backend pull`: weights from a Hub endpoint, gpt-oss's encoding, and their failures.

The Hub is the stand-in in tests/hub_standin.py (the real Hub is unreachable here), driven by
the real huggingface_hub through HF_ENDPOINT; the encoding is OpenAI's real file (rebuilt by
scripts/make-test-encoding.py, SHA-256 checked) served by a real local HTTP server. Images
and the Docker registry are in test_pull_image.py.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import pytest

from llm_backend.engines.sglang import HARMONY_ENCODING_BYTES as ENCODING_BYTES
from tests.conftest import Env, wait_for
from tests.hub_standin import HubStandin
from tests.pull_data import (
    DRAFT,
    ENCODING_NAME,
    ENCODING_SHA256,
    MODEL,
    SGLANG_LOADS,
    model_files,
    seeded_bytes,
    snapshot,
    use_hub,
)


def hub_world(world: Env, hub: HubStandin, *, extra: str = "", env: str = "") -> Path:
    cache = use_hub(world.env, hub, world.root)
    world.write_config(f"""
[profiles.hubtest]
engine = "sglang"
runtime = "native"
model = "{MODEL}"
python = "{sys.executable}"
{extra}
[profiles.hubtest.env]
{env}
[profiles.hubtest.speculative]
enabled = true
algorithm = "EAGLE3"
draft_model = "{DRAFT}"
""")
    return cache


def artifacts_of(stdout: str) -> dict[str, dict[str, object]]:
    data = json.loads(stdout)
    return {item["kind"]: item for item in data["artifacts"]}


def test_pull_fetches_only_what_sglang_loads_and_dry_run_changes_nothing(
    world: Env, hub: HubStandin
) -> None:
    cache = hub_world(world, hub)
    dry = world.run("pull", "--profile", "hubtest", "--dry-run", "--json", check=True)
    planned = artifacts_of(dry.stdout)
    expected = sum(len(model_files()[name]) for name in SGLANG_LOADS)
    assert planned["model"] == {
        "kind": "model", "name": MODEL, "present": False, "state": "missing",
        "bytes": expected, "cached_bytes": 0,
        "location": str(cache / "models--acme--tiny-moe"), "missing_bytes": expected,
        "detail": "8 files at 0123456789ab",
    }
    assert planned["draft_model"]["present"] is False
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))

    pulled = world.run("pull", "--profile", "hubtest", "--json", check=True)
    after = artifacts_of(pulled.stdout)
    assert after["model"]["present"] is True and after["model"]["missing_bytes"] == 0
    assert after["draft_model"]["present"] is True
    folder = snapshot(cache, MODEL)
    got = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert got == SGLANG_LOADS  # no original/, metal/, README or .gitattributes
    for name in SGLANG_LOADS:
        assert (folder / name).read_bytes() == model_files()[name], name
    draft = snapshot(cache, DRAFT)
    assert (draft / "model.safetensors").read_bytes() == seeded_bytes("draft", 600_000)

    again = world.run("pull", "--profile", "hubtest", "--json", check=True)
    assert json.loads(again.stdout)["fetched"] == []


def test_interrupted_pull_resumes_with_the_files_already_there(
    world: Env, hub: HubStandin
) -> None:
    cache = hub_world(world, hub)
    hub.delay_per_chunk_s = 0.05  # the second shard takes about a second
    process = world.popen("pull", "--profile", "hubtest")
    first = cache / "models--acme--tiny-moe" / "snapshots"
    try:
        assert wait_for(lambda: any(first.rglob("model-00001-of-00002.safetensors")), 60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    folder = snapshot(cache, MODEL)
    assert not (folder / "config.json").exists(), "killed before the small files"
    shard_gets = [path for method, path in hub.requests
                  if method == "GET" and path.endswith("model-00001-of-00002.safetensors")]
    assert len(shard_gets) == 1

    hub.delay_per_chunk_s = 0.0
    resumed = world.run("pull", "--profile", "hubtest", "--json", check=True)
    assert json.loads(resumed.stdout)["fetched"] == [MODEL, DRAFT]
    shard_gets = [path for method, path in hub.requests
                  if method == "GET" and path.endswith("model-00001-of-00002.safetensors")]
    assert len(shard_gets) == 1, "the finished shard was downloaded again"
    for name in SGLANG_LOADS:
        assert (folder / name).read_bytes() == model_files()[name], name
    leftovers = list((cache / "models--acme--tiny-moe" / "blobs").glob("*.incomplete"))
    assert leftovers == [], "a killed pull's partial file was not cleaned up"


def test_gated_repository_needs_a_token(world: Env, hub: HubStandin) -> None:
    hub.repos[MODEL].gated_token = "hf_right"
    cache = hub_world(world, hub)
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert f"error: {MODEL} is gated or private on {hub.endpoint} and no token is set" \
        in refused.stderr
    assert "fix: accept the licence" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert "hf_right" not in refused.stderr + refused.stdout
    assert not any(cache.rglob("*.safetensors"))

    world.env["HF_TOKEN"] = "hf_wrong"
    wrong = world.run("pull", "--profile", "hubtest")
    assert wrong.returncode == 7 and "the token was refused" in wrong.stderr
    assert "hf_wrong" not in wrong.stderr + wrong.stdout

    world.env["HF_TOKEN"] = "hf_right"
    world.run("pull", "--profile", "hubtest", check=True)
    assert (snapshot(cache, MODEL) / "model-00002-of-00002.safetensors").is_file()


def test_unknown_repository_and_unreachable_hub(world: Env, hub: HubStandin) -> None:
    hub_world(world, hub)
    text = (world.cwd / "llm-backend.toml").read_text().replace(MODEL, "acme/no-such-model")
    world.write_config(text)
    missing = world.run("pull", "--profile", "hubtest")
    assert missing.returncode == 7
    assert f"error: no repository 'acme/no-such-model' (revision main) on {hub.endpoint}" \
        in missing.stderr
    assert "fix: check `model` / `speculative.draft_model`" in missing.stderr
    assert "(`llm-backend profiles show hubtest`)" in missing.stderr  # the name, not NAME

    world.env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens
    down = world.run("pull", "--profile", "hubtest", timeout=240)
    assert down.returncode == 7
    assert "error: could not reach http://127.0.0.1:9 for acme/no-such-model" in down.stderr
    assert "fix: check the network (or HF_ENDPOINT)" in down.stderr


def test_a_malformed_hf_endpoint_is_named_with_a_fix(world: Env, hub: HubStandin) -> None:
    """huggingface_hub parses HF_ENDPOINT when imported: a bad one was a ValueError traceback
    (`http://[::1`, a port out of range) or blamed on the network (`ftp://`, no scheme)."""
    cache = hub_world(world, hub)
    for endpoint in ("http://[::1", "http://127.0.0.1:99999", "ftp://mirror", "not a url"):
        world.env["HF_ENDPOINT"] = endpoint
        refused = world.run("pull", "--profile", "hubtest")
        assert refused.returncode == 7, refused.stderr
        assert "Traceback" not in refused.stderr
        assert f"error: HF_ENDPOINT={endpoint!r} is not a valid http(s) URL" in refused.stderr
        assert "fix: export HF_ENDPOINT=https://HOST[:PORT]" in refused.stderr
        assert "check the network" not in refused.stderr
    assert not cache.exists() or not any(cache.rglob("*"))
    assert hub.requests == []


def test_an_invalid_hub_id_is_not_blamed_on_the_network(world: Env, hub: HubStandin) -> None:
    """`-rf/x` and `../missing` look like org/name but huggingface_hub refuses them as ids
    (its validate_repo_id): the answer names the value, not the network, and comes from the
    profile's check before anything is fetched (exit 2)."""
    hub_world(world, hub)
    text = (world.cwd / "llm-backend.toml").read_text()
    for model in ("-rf/x", "../no-such-folder-here"):
        world.write_config(text.replace(f'model = "{MODEL}"', f'model = "{model}"'))
        refused = world.run("pull", "--profile", "hubtest")
        assert refused.returncode == 2, refused.stderr
        assert (f"error: profile 'hubtest': model = {model!r} is neither a Hub id (org/name) "
                "nor an existing local path") in refused.stderr
        assert 'fix: set model to a Hub id such as "Qwen/Qwen3-8B"' in refused.stderr
        assert "check the network" not in refused.stderr and "Traceback" not in refused.stderr
        assert not hub.requests  # refused before the Hub was asked


def test_offline_with_nothing_cached(world: Env, hub: HubStandin) -> None:
    cache = hub_world(world, hub)
    world.env["HF_HUB_OFFLINE"] = "1"
    dry = world.run("pull", "--profile", "hubtest", "--dry-run", "--json", check=True)
    assert artifacts_of(dry.stdout)["model"]["present"] is False
    offline = world.run("pull", "--profile", "hubtest")
    assert offline.returncode == 7
    assert f"error: {MODEL} is incomplete in {cache} and HF_HUB_OFFLINE is set" in offline.stderr
    assert "fix: unset HF_HUB_OFFLINE" in offline.stderr
    # The fix re-runs this profile's pull (a bare `llm-backend pull` pulls the default one).
    assert "`llm-backend pull --profile hubtest`" in offline.stderr, offline.stderr
    assert [request for request in hub.requests] == []


def test_no_disk_space_for_the_download_changes_nothing(world: Env, hub: HubStandin) -> None:
    hub.repos[MODEL].listed_only["model-00003-of-00003.safetensors"] = 2**50  # 1 PiB
    cache = hub_world(world, hub)
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7
    assert "error: not enough disk space in" in refused.stderr
    assert "the pull needs 1024.0 TiB" in refused.stderr
    assert "fix: free" in refused.stderr
    assert not any(cache.rglob("*.safetensors")), "a download started before the disk check"


# --- gpt-oss's encoding ------------------------------------------------------------------


def encoding_world(world: Env, hub: HubStandin, url: str) -> Path:
    folder = world.root / "tiktoken"
    hub_world(world, hub, env=f'TIKTOKEN_ENCODINGS_BASE = "{folder}"')
    world.env["LLM_BACKEND_ENCODINGS_URL"] = url
    return folder


def test_encoding_missing_or_wrong_is_fetched_and_checked(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, _ = encoding_server
    folder = encoding_world(world, hub, url)
    dry = artifacts_of(world.run("pull", "--profile", "hubtest", "--dry-run", "--json",
                                 check=True).stdout)
    assert dry["encoding"]["present"] is False
    assert dry["encoding"]["location"] == str(folder / ENCODING_NAME)

    world.run("pull", "--profile", "hubtest", check=True)
    target = folder / ENCODING_NAME
    assert hashlib.sha256(target.read_bytes()).hexdigest() == ENCODING_SHA256

    target.write_bytes(b"not the encoding\n")  # a damaged or wrong file
    wrong = artifacts_of(world.run("pull", "--profile", "hubtest", "--dry-run", "--json",
                                   check=True).stdout)["encoding"]
    assert wrong["present"] is False and "has SHA-256" in str(wrong["detail"])
    world.run("pull", "--profile", "hubtest", check=True)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == ENCODING_SHA256


def doctor_check(world: Env, name: str) -> dict[str, object]:
    report = json.loads(world.run("doctor", "--profile", "hubtest", "--json").stdout)
    return {check["name"]: check for check in report["checks"]}[name]


def test_doctor_fails_on_a_missing_or_wrong_encoding_and_pull_repairs_it(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, _ = encoding_server
    folder = encoding_world(world, hub, url)
    missing = doctor_check(world, "tiktoken")
    assert missing["status"] == "fail"
    assert missing["summary"].startswith(f"{folder / ENCODING_NAME} does not exist")  # type: ignore[union-attr]
    assert missing["fix"] == "llm-backend pull --profile hubtest"
    model_cache = doctor_check(world, "model_cache")
    assert model_cache["status"] == "warn"
    assert model_cache["fix"] == "llm-backend pull --profile hubtest"

    folder.mkdir(parents=True)
    (folder / ENCODING_NAME).write_bytes(b"wrong\n")
    wrong = doctor_check(world, "tiktoken")
    assert wrong["status"] == "fail" and "has SHA-256" in str(wrong["summary"])

    world.run("pull", "--profile", "hubtest", check=True)
    repaired = doctor_check(world, "tiktoken")
    assert repaired["status"] == "pass", repaired
    assert repaired["summary"] == f"{ENCODING_NAME} in {folder} (SHA-256 checked)"
    assert doctor_check(world, "model_cache")["status"] == "pass"


def test_encoding_server_with_a_wrong_file_leaves_nothing_in_place(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, served = encoding_server
    (served / ENCODING_NAME).write_bytes(b"tampered\n" * 1000)
    folder = encoding_world(world, hub, url)
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7
    assert f"error: {url}{ENCODING_NAME} gave a file with SHA-256" in refused.stderr
    assert f"expected {ENCODING_SHA256}" in refused.stderr
    assert not (folder / ENCODING_NAME).exists()
    assert not list(folder.glob("*.partial"))


def test_encoding_folder_not_mounted_in_docker_is_a_config_error(
    world: Env, hub: HubStandin
) -> None:
    hub_world(world, hub, extra='runtime = "docker"\n', env='TIKTOKEN_ENCODINGS_BASE = "/enc"')
    text = (world.cwd / "llm-backend.toml").read_text().replace('runtime = "native"\n', "", 1)
    world.write_config(text + """
[profiles.hubtest.docker]
image = "lmsysorg/sglang:v0.5.23"
volumes = ["~/.cache/huggingface:/root/.cache/huggingface"]
""")
    refused = world.run("pull", "--profile", "hubtest", "--dry-run")
    assert refused.returncode == 2, refused.stderr
    assert "sets TIKTOKEN_ENCODINGS_BASE=/enc, but no volume mounts a host folder there" \
        in refused.stderr
    assert 'fix: add "~/tiktoken_encodings:/enc" to volumes under [profiles.hubtest.docker]' \
        in refused.stderr
    assert "None" not in refused.stderr
    check = doctor_check(world, "tiktoken")
    assert check["status"] == "fail"
    assert "no volume mounts a host folder there" in str(check["summary"])
    assert "None" not in str(check["summary"])


def test_llamacpp_profile_needs_only_binary_and_model_file(world: Env) -> None:
    dry = world.run("pull", "--profile", "smollm2-cpu", "--dry-run", "--json", check=True)
    data = json.loads(dry.stdout)
    assert data["profile"] == "smollm2-cpu"
    kinds = [(item["kind"], item["present"]) for item in data["artifacts"]]
    assert kinds == [("binary", True), ("model_file", True)]
    model = data["artifacts"][1]
    assert model["bytes"] == Path(str(model["location"])).stat().st_size
    pulled = world.run("pull", "--profile", "smollm2-cpu", "--json", check=True)
    assert json.loads(pulled.stdout)["fetched"] == []


def test_pull_is_interruptible_by_sigint(world: Env, hub: HubStandin) -> None:
    cache = hub_world(world, hub)
    hub.delay_per_chunk_s = 0.2
    process = world.popen("pull", "--profile", "hubtest")
    try:
        assert wait_for(lambda: any(hub_path.endswith(".safetensors")
                                    for _, hub_path in hub.requests), 60)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "error: interrupted by SIGINT" in stderr
    blobs = cache / "models--acme--tiny-moe" / "blobs"
    assert not list(blobs.glob("*.incomplete")), "an interrupted pull left a partial file"


def test_a_planted_partial_symlink_is_not_written_through(
    world: Env, hub: HubStandin, encoding_server: tuple[str, Path]
) -> None:
    url, _ = encoding_server
    folder = encoding_world(world, hub, url)
    folder.mkdir(parents=True)
    victim = world.root / "victim"
    victim.write_text("keep me\n")
    (folder / (ENCODING_NAME + ".partial")).symlink_to(victim)
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert "error: cannot write" in refused.stderr and "fix: make" in refused.stderr
    assert victim.read_text() == "keep me\n"
    assert not (folder / ENCODING_NAME).exists()


def test_a_second_pull_waits_its_turn(world: Env, hub: HubStandin) -> None:
    hub_world(world, hub)
    hub.delay_per_chunk_s = 0.2
    first = world.popen("pull", "--profile", "hubtest")
    try:
        assert wait_for(lambda: any(path.endswith(".safetensors")
                                    for _, path in hub.requests), 60)
        second = world.run("pull", "--profile", "hubtest")
        assert second.returncode == 7, second.stderr
        assert f"error: another pull is running (pid {first.pid})" in second.stderr
        assert "fix: wait for it to finish" in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)


def test_a_bad_encoding_url_or_a_file_in_the_folder_s_place_is_named_with_a_fix(
    world: Env, hub: HubStandin
) -> None:
    folder = encoding_world(world, hub, "http://[::1")
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert "error: LLM_BACKEND_ENCODINGS_URL='http://[::1' is not a valid http(s) URL" \
        in refused.stderr
    assert "fix: export LLM_BACKEND_ENCODINGS_URL=https://" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not folder.exists()  # nothing made on the host

    world.env["LLM_BACKEND_ENCODINGS_URL"] = "ftp://mirror/"  # no network problem either
    refused = world.run("pull", "--profile", "hubtest")
    assert "error: LLM_BACKEND_ENCODINGS_URL='ftp://mirror/' is not a valid" in refused.stderr

    world.env["LLM_BACKEND_ENCODINGS_URL"] = "http://127.0.0.1:9/"  # never asked: see below
    folder.write_text("a file where the folder should be\n")
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert f"error: {folder} is a file, not a folder" in refused.stderr
    assert f"fix: move it away (mv {folder} {folder}.old) or set TIKTOKEN_ENCODINGS_BASE" \
        in refused.stderr
    check = doctor_check(world, "tiktoken")  # the same answer, not "fix: llm-backend pull"
    assert check["status"] == "fail" and check["fix"] == refused.stderr.split("fix: ")[-1].strip()


class _BadEncodingServer:
    """A real HTTP server that misbehaves as review F4/F5 found: `huge` announces and sends far
    more than the file's size; `trickle` announces the right size and sends a byte at a time."""

    def __init__(self, mode: str) -> None:
        import http.server
        import threading

        self.stop = threading.Event()
        stop = self.stop

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length",
                                 str(10**12 if mode == "huge" else ENCODING_BYTES))
                self.end_headers()
                try:
                    while not stop.is_set():
                        if mode == "huge":
                            self.wfile.write(b"a" * 65536)
                        else:
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            stop.wait(0.05)
                except OSError:
                    return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{ENCODING_NAME}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _encoding_source(folder: Path, url: str) -> object:
    from llm_backend.pull import VerifiedFile

    return VerifiedFile(kind="encoding", name=ENCODING_NAME, folder=folder,
                        filename=ENCODING_NAME, url=url, sha256=ENCODING_SHA256,
                        size=ENCODING_BYTES)


def test_an_encoding_server_sending_too_much_is_stopped_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    from llm_backend.pull import PullError, VerifiedFile

    server = _BadEncodingServer("huge")
    try:
        source = _encoding_source(tmp_path / "enc", server.url)
        assert isinstance(source, VerifiedFile)
        try:
            source.fetch(progress=lambda event: None)
            raise AssertionError("a 1 TB answer for a 3.4 MiB file was accepted")
        except PullError as error:
            assert "announced 931.3 GiB for a file of 3.4 MiB; nothing was kept" in error.message
    finally:
        server.close()
    assert not (tmp_path / "enc").exists()  # no partial, and not the folder it made


def test_a_trickling_encoding_server_shows_progress_and_meets_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from llm_backend import pull
    from llm_backend.pull import PullError, VerifiedFile

    monkeypatch.setattr(pull, "DOWNLOAD_DEADLINE_S", 2.0)
    server = _BadEncodingServer("trickle")
    seen: list[int] = []
    outcome: list[BaseException] = []
    source = _encoding_source(tmp_path / "enc", server.url)
    assert isinstance(source, VerifiedFile)

    def fetch() -> None:
        try:
            source.fetch(progress=lambda event: seen.append(event.done))
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout=60)  # a chunked read would wait for 64 KiB: hours at this rate
    server.close()
    assert not thread.is_alive(), "the pull did not give up on a trickling server"
    assert outcome and isinstance(outcome[0], PullError), outcome
    assert "took longer than 2 s" in outcome[0].message
    assert any(0 < done < 100 for done in seen), seen  # progress as single bytes came in


def test_a_partial_another_download_holds_is_kept_and_a_dead_one_removed(
    world: Env, hub: HubStandin
) -> None:
    """huggingface_hub holds `.locks/<repo>/<etag>.lock` while it writes
    `blobs/<etag>.<random>.incomplete`; a pull of another state dir (or the server itself)
    may share the cache, so only a partial whose lock is free is deleted (review F6)."""
    import fcntl

    cache = hub_world(world, hub)
    repo = cache / "models--acme--tiny-moe"
    (repo / "blobs").mkdir(parents=True)
    locks = cache / ".locks" / repo.name
    locks.mkdir(parents=True)
    live = repo / "blobs" / "aaaa1111.0123abcd.incomplete"
    dead = repo / "blobs" / "bbbb2222.4567cdef.incomplete"
    live.write_bytes(b"being written")
    dead.write_bytes(b"left by a killed pull")
    (locks / "bbbb2222.lock").touch()
    with (locks / "aaaa1111.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as huggingface_hub's WeakFileLock does
        world.run("pull", "--profile", "hubtest", check=True)
        assert live.read_bytes() == b"being written"
    assert not dead.exists()


def test_a_linked_blobs_folder_is_refused_and_nothing_written_through_it(
    world: Env, hub: HubStandin
) -> None:
    cache = hub_world(world, hub)
    repo = cache / "models--acme--tiny-moe"
    repo.mkdir(parents=True)
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "important.incomplete").write_text("keep\n")
    (repo / "blobs").symlink_to(elsewhere)
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert f"error: {repo / 'blobs'} is a symbolic link (to {elsewhere})" in refused.stderr
    assert f"fix: rm {repo / 'blobs'} (the link only)" in refused.stderr
    assert [path.name for path in elsewhere.iterdir()] == ["important.incomplete"]


def test_a_local_write_failure_in_the_hub_cache_is_not_blamed_on_the_network(
    world: Env, hub: HubStandin
) -> None:
    """Review F18: an OSError while huggingface_hub writes the cache (disk full, read-only, a
    file in a folder's place) said "could not reach ... check the network"."""
    cache = hub_world(world, hub)
    repo = cache / "models--acme--tiny-moe"
    repo.mkdir(parents=True)
    (repo / "blobs").write_text("a file where huggingface_hub makes a folder\n")
    refused = world.run("pull", "--profile", "hubtest")
    assert refused.returncode == 7, refused.stderr
    assert f"error: cannot write {repo / 'blobs'}: File exists" in refused.stderr
    assert "check the network" not in refused.stderr and "could not reach" not in refused.stderr


def test_an_encoding_partial_another_pull_writes_is_left_to_it(tmp_path: Path) -> None:
    """Review F6b: two pulls (one pull lock per state dir, so two state dirs) appended to one
    `.partial`; the second now stops at the first's lock and changes nothing."""
    import fcntl

    from llm_backend.pull import PullError, VerifiedFile

    folder = tmp_path / "enc"
    folder.mkdir()
    partial = folder / (ENCODING_NAME + ".partial")
    partial.write_bytes(b"first bytes")
    source = _encoding_source(folder, "http://127.0.0.1:9/" + ENCODING_NAME)
    assert isinstance(source, VerifiedFile)
    with partial.open("ab") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # the other pull, mid-download
        try:
            source.fetch(progress=lambda event: None)
            raise AssertionError("a second writer was let in")
        except PullError as error:
            assert error.message == (f"another pull is fetching {ENCODING_NAME} into {folder} "
                                     "right now")
    assert partial.read_bytes() == b"first bytes"


@pytest.mark.hostprep
def test_a_read_only_encoding_folder_is_named_before_the_pull(
    world: Env, hub: HubStandin
) -> None:
    """Review F18: `pull --dry-run` and doctor said "does not exist, fix: llm-backend pull"
    for a folder on a read-only filesystem, and the pull then failed writing there."""
    import os
    import subprocess
    import uuid

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem")
    mount = world.root / f"ro-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        folder = mount / "enc"
        folder.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        hub_world(world, hub, env=f'TIKTOKEN_ENCODINGS_BASE = "{folder}"')
        world.env["LLM_BACKEND_ENCODINGS_URL"] = "http://127.0.0.1:9/"  # never asked
        check = doctor_check(world, "tiktoken")
        assert check["status"] == "fail", check
        assert f"{folder} is on a read-only filesystem" in str(check["summary"])
        assert str(check["fix"]).startswith("remount it read-write or set TIKTOKEN_ENCODINGS_BASE")
        dry = artifacts_of(world.run("pull", "--profile", "hubtest", "--dry-run", "--json",
                                     check=True).stdout)
        assert "read-only filesystem" in str(dry["encoding"]["detail"])
        refused = world.run("pull", "--profile", "hubtest")
        assert refused.returncode == 7, refused.stderr
        assert f"error: {folder} is on a read-only filesystem" in refused.stderr
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
