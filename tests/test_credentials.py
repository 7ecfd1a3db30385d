"""API keys and secrets: never on a command line, never shown, never world-readable.

Real CLI subprocesses and real files; the Docker part runs `docker compose config` with the
real Compose to show the secret comes from the environment, not the file.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from llm_backend.config import Profile
from tests.conftest import Env

SECRET = "hf_test_SECRET_value_42"


def test_secret_env_is_masked_in_profiles_show_and_kept_out_of_the_compose_file(
    world: Env,
) -> None:
    world.write_config(f"""
[profiles.tokened]
extends = "smollm2-cpu"
runtime = "docker"
[profiles.tokened.env]
HF_TOKEN = "{SECRET}"
OPENAI_API_KEY = "{SECRET}"
PLAIN_SETTING = "visible"
""")
    shown = world.run("profiles", "show", "tokened", check=True)
    assert SECRET not in shown.stdout + shown.stderr
    assert "visible" in shown.stdout
    as_json = json.loads(world.run("profiles", "show", "tokened", "--json", check=True).stdout)
    assert as_json["env.HF_TOKEN"]["value"] == "********"
    assert as_json["env.OPENAI_API_KEY"]["value"] == "********"
    assert as_json["env.PLAIN_SETTING"]["value"] == "visible"

    out = world.root / "compose.yml"
    world.run("compose", "--profile", "tokened", "-o", str(out), check=True)
    text = out.read_text()
    assert SECRET not in text
    assert "HF_TOKEN: null" in text and "PLAIN_SETTING: visible" in text
    assert stat.S_IMODE(out.stat().st_mode) & 0o077 == 0
    # Compose takes the value from the environment `docker compose` runs in.
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        config = subprocess.run(["docker", "compose", "-f", str(out), "config"],
                                capture_output=True, text=True,
                                env={**os.environ, "HF_TOKEN": SECRET})
        assert f"HF_TOKEN: {SECRET}" in config.stdout, config.stderr


@pytest.mark.parametrize("flag", ["--api-key", "--api-key=abc", "--admin-api-key", "--hf-token",
                                  "-hft", "-hft=abc"])
def test_secret_flags_in_extra_args_are_refused(world: Env, flag: str) -> None:
    world.write_config(f"""
[profiles.leaky]
extends = "smollm2-cpu"
extra_args = ["{flag}", "abc"]
""")
    refused = world.run("start", "--profile", "leaky", "--dry-run")
    assert refused.returncode == 2, refused.stderr
    name = flag.split("=")[0]
    assert f"error: profile 'leaky': extra_args has {name}, which would put a secret on the " \
        "server's command line" in refused.stderr
    assert "fix: remove" in refused.stderr and "api_key_file" in refused.stderr
    assert "abc" not in refused.stderr.split("fix:")[0].replace(name, "")


def test_api_key_file_must_be_private(world: Env) -> None:
    key_file = world.root / "key"
    key_file.write_text("# the key\nsk-local-123\n")
    key_file.chmod(0o644)
    world.write_config(f"""
[profiles.keyed]
extends = "smollm2-cpu"
host = "0.0.0.0"
api_key_file = "{key_file}"
""")
    report = json.loads(world.run("doctor", "--profile", "keyed", "--json").stdout)
    access = {check["name"]: check for check in report["checks"]}["access"]
    assert access["status"] == "fail"
    assert f"api_key_file {key_file} is readable by others (mode 0644)" in access["summary"]
    assert access["fix"] == f"chmod 600 {key_file}"
    key_file.chmod(0o600)
    report = json.loads(world.run("doctor", "--profile", "keyed", "--json").stdout)
    access = {check["name"]: check for check in report["checks"]}["access"]
    assert access["status"] == "pass"
    assert "sk-local-123" not in json.dumps(report)


def test_public_bind_without_key_is_warned(world: Env) -> None:
    world.write_config("""
[profiles.open]
extends = "smollm2-cpu"
host = "0.0.0.0"
""")
    world.env.pop("LLM_BACKEND_API_KEY", None)
    report = json.loads(world.run("doctor", "--profile", "open", "--json").stdout)
    access = {check["name"]: check for check in report["checks"]}["access"]
    assert access["status"] == "warn"
    assert "open listens on 0.0.0.0" in access["summary"] and "without an API key" in \
        access["summary"]
    assert "api_key_file" in access["fix"]


def test_secret_names_are_whole_words_not_substrings() -> None:
    """TIKTOKEN_ENCODINGS_BASE is a folder that Compose must get as written, not a secret."""
    from llm_backend.credentials import is_secret_name

    for name in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
                 "GOOGLE_APPLICATION_CREDENTIALS", "LLM_BACKEND_API_KEY"):
        assert is_secret_name(name), name
    for name in ("TIKTOKEN_ENCODINGS_BASE", "TOKENIZERS_PARALLELISM", "SGLANG_HOST_IP"):
        assert not is_secret_name(name), name


def test_secrets_by_name_or_by_value_shape_are_masked_and_plain_values_are_not() -> None:
    """A cookie, a session, a URL with a password, or an `hf_`/`sk-` shaped value under any
    name is a secret (review F14); a proxy URL without a password is not."""
    from llm_backend.credentials import is_secret_env, masked_env
    from llm_backend.runtimes.compose import secret_environment

    secret = {"MY_COOKIE": "c1", "WEB_SESSION": "s1", "SSH_PRIVATE": "p1", "DB_PASS": "p2",
              "GITHUB_PAT": "p3", "OPENAI_APIKEY": "p4",
              "PROXY_URL": "http://user:pw123@proxy:3128",
              "SOME_VALUE": "hf_abcdefghijklmnopqrstuvwx"}
    plain = {"HTTPS_PROXY": "http://proxy:3128", "TIKTOKEN_ENCODINGS_BASE": "/enc",
             "NCCL_DEBUG": "INFO", "HF_HUB_ENABLE_HF_TRANSFER": "1"}
    for name, value in secret.items():
        assert is_secret_env(name, value), name
    for name, value in plain.items():
        assert not is_secret_env(name, value), name
    shown = masked_env({**secret, **plain})
    assert all(shown[name] == "********" for name in secret)
    assert shown["HTTPS_PROXY"] == "http://proxy:3128"
    profile = Profile(name="p", engine="llamacpp", runtime="docker", model="m.gguf",
                      env={**secret, **plain})
    assert secret_environment(profile) == secret  # through the environment, not the YAML


def test_secret_flags_are_whole_words_not_substrings() -> None:
    """`--skip-tokenizer-init` (sgl-project/sglang#7478's profile) carries no secret."""
    from llm_backend.credentials import SECRET_FLAG

    for flag in ("--api-key", "--api-key=x", "--admin-api-key", "--hf-token",
                 "--ssl-keyfile-password"):
        assert SECRET_FLAG.match(flag), flag
    for flag in ("--skip-tokenizer-init", "--tokenizer-path", "--max-total-tokens",
                 "--speculative-num-draft-tokens", "--api-key-file"):
        assert not SECRET_FLAG.match(flag), flag


def test_api_key_reaches_llama_server_through_a_file_and_our_clients_send_it(
    world: Env,
) -> None:
    import httpx
    import psutil

    key = "sk-local-test-key-771"
    key_file = world.root / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    world.write_config(f"""
[profiles.keyed]
extends = "smollm2-cpu"
api_key_file = "{key_file}"
""")
    started = world.run("start", "--profile", "keyed", check=True, timeout=180)
    try:
        # The curl line shown reads the key from our 0600 copy (it was a 401 without it).
        copy = world.state_dir / "secrets" / "api-key"
        assert f'-H "Authorization: Bearer $(cat {copy})"' in started.stdout, started.stdout
        assert copy.read_text().strip() == key and key not in started.stdout
        record = json.loads((world.state_dir / "instance.json").read_text())
        cmdline = " ".join(psutil.Process(record["pid"]).cmdline())
        assert "--api-key-file" in cmdline and key not in cmdline
        assert key not in (world.state_dir / "instance.json").read_text()
        endpoint = f"http://127.0.0.1:{world.port}"
        assert httpx.get(endpoint + "/v1/models", timeout=10).status_code == 401
        authorized = httpx.get(endpoint + "/v1/models", timeout=10,
                               headers={"Authorization": f"Bearer {key}"})
        assert authorized.status_code == 200
        secrets = world.state_dir / "secrets"
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        for path in secrets.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        status = json.loads(world.run("status", "--json").stdout)
        assert status["state"] == "ready"
        assert status["models"], "status could not list the models: no key sent"
        chat = world.run("chat", "Say hi.", "--max-tokens", "8", timeout=120)
        assert chat.returncode == 0, chat.stderr
        for output in (status, chat.stdout, chat.stderr,
                       world.run("logs", "-n", "200").stdout):
            assert key not in str(output)
    finally:
        world.run("stop", timeout=60)


def test_docker_port_published_beyond_loopback_without_key_is_warned(world: Env) -> None:
    world.write_config("""
[profiles.published]
extends = "smollm2-cpu"
runtime = "docker"
[profiles.published.docker]
publish_host = "0.0.0.0"
""")
    world.env.pop("LLM_BACKEND_API_KEY", None)
    report = json.loads(world.run("doctor", "--profile", "published", "--json").stdout)
    access = {check["name"]: check for check in report["checks"]}["access"]
    assert access["status"] == "warn"
    assert "published listens on 0.0.0.0" in access["summary"]


@pytest.mark.parametrize("flag", ["--api", "--api-ke", "--admin-api"])
def test_abbreviated_secret_flags_are_refused(world: Env, flag: str) -> None:
    world.write_config(f"""
[profiles.leaky]
extends = "smollm2-cpu"
extra_args = ["{flag}", "sk-abbrev-secret"]
""")
    refused = world.run("start", "--profile", "leaky", "--dry-run")
    assert refused.returncode == 2, refused.stderr
    assert f"extra_args has {flag}, which would put a secret" in refused.stderr
    assert "sk-abbrev-secret" not in refused.stderr + refused.stdout


@pytest.mark.parametrize("table", [
    'HF_TOKEN = ["hf_LISTSECRET_2"]',  # a type error under a secret name
    'HF_TOKEN = "hf_LISTSECRET_2\\u0000"',  # a NUL byte: the whole env table is named
    'SOME_NAME = ["hf_LISTSECRETLISTSECRET_2"]',  # a plain name, a token-shaped value
])
def test_a_bad_secret_value_is_not_echoed_in_the_error(world: Env, table: str) -> None:
    world.write_config(f'[profiles.f]\nextends = "smollm2-cpu"\n[profiles.f.env]\n{table}\n'
                       'PLAIN = "visible-value"\n')
    for command in (("start", "--dry-run", "--profile", "f"), ("doctor", "--profile", "f"),
                    ("profiles", "show", "f")):
        refused = world.run(*command)
        assert refused.returncode == 2, refused.stderr
        assert "error: profile 'f': key 'env" in refused.stderr and "********" in refused.stderr
        assert "LISTSECRET" not in refused.stdout + refused.stderr
        assert "fix: correct that key in ./llm-backend.toml" in refused.stderr


def test_a_key_pasted_as_api_key_file_is_never_shown(world: Env) -> None:
    world.write_config('[profiles.g]\nextends = "smollm2-cpu"\n'
                       'api_key_file = "sk-LITERAL-KEY-3"\n')
    for command in (("doctor", "--profile", "g"), ("doctor", "--profile", "g", "--json"),
                    ("start", "--profile", "g"), ("profiles", "show", "g"),
                    ("profiles", "show", "g", "--json")):
        completed = world.run(*command)
        assert "sk-LITERAL" not in completed.stdout + completed.stderr, command
        assert "Traceback" not in completed.stderr
    doctor = world.run("doctor", "--profile", "g")
    assert "api_key_file (********, not shown) is no readable file; it must be the path of " \
        "a file that holds the key" in doctor.stdout
    assert 'api_key_file = "~/.config/llm-backend/api-key"' in doctor.stdout
    started = world.run("start", "--profile", "g")
    assert started.returncode != 0 and "profile 'g': api_key_file (********" in started.stderr
    assert "fix: umask 077" in started.stderr
    assert not (world.state_dir / "instance.json").exists()


@pytest.mark.parametrize(("key", "items", "named"), [
    ("command", '["env", "HF_TOKEN=hf_CMDSECRET_1", "llama-server"]', "HF_TOKEN=..."),
    ("extra_args", '["--model-loader-extra-config", "{\\"hf_token\\": \\"hf_JSONSECRET_2\\"}"]',
     "a JSON value with key 'hf_token'"),
    ("extra_args", '["--lora", "hf_abcdefghijklmnopqrstuvwx"]', "a value shaped like an access"),
], ids=["env-assignment", "json-key", "token-shape"])
def test_secrets_inside_command_or_flag_values_are_refused(
    world: Env, key: str, items: str, named: str
) -> None:
    world.write_config(f'[profiles.leaky]\nextends = "smollm2-cpu"\n{key} = {items}\n')
    for command in (("start", "--profile", "leaky", "--dry-run"), ("profiles", "show", "leaky")):
        refused = world.run(*command)
        assert refused.returncode == 2, refused.stderr
        assert f"error: profile 'leaky': {key} item 2 holds {named}" in refused.stderr
        assert "fix: remove it from" in refused.stderr and "api_key_file" in refused.stderr
        assert "SECRET" not in refused.stdout + refused.stderr
        assert "abcdefghijklmnop" not in refused.stdout + refused.stderr


def test_flag_values_that_only_mention_tokens_pass(world: Env) -> None:
    world.write_config('[profiles.fine]\nextends = "smollm2-cpu"\n'
                       'extra_args = ["--override-kv", "tokenizer.ggml.add_bos_token=bool:false", '
                       '"--json-schema", "{\\"max_tokens\\": 5, \\"token_budget\\": \\"\\"}"]\n'
                       'command = ["env", "TIKTOKEN_ENCODINGS_BASE=/srv/enc", "llama-server"]\n')
    shown = world.run("profiles", "show", "fine")
    assert shown.returncode == 0, shown.stderr


def test_compose_and_dry_run_hand_the_key_to_the_server_as_start_does(world: Env) -> None:
    """Review F13 (Docker): `compose` wrote a file that started the server without its key,
    and `start --dry-run` showed no key flag, while doctor said "the server takes an API key"."""
    key = "sk-compose-test-key-314"
    key_file = world.root / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    world.write_config(f"""
[profiles.keyed]
extends = "smollm2-cpu"
runtime = "docker"
api_key_file = "{key_file}"
""")
    secrets = world.state_dir / "secrets"
    dry = world.run("start", "--profile", "keyed", "--dry-run")
    assert "--api-key-file /run/llm-backend-secrets/" in dry.stdout, dry.stdout + dry.stderr
    assert key not in dry.stdout + dry.stderr
    assert not secrets.exists()  # a dry run writes nothing

    out = world.root / "compose.yml"
    world.run("compose", "--profile", "keyed", "-o", str(out), check=True)
    text = out.read_text()
    assert key not in text
    assert "- --api-key-file" in text and f"- {secrets}:/run/llm-backend-secrets:ro" in text
    files = {path.name: path for path in secrets.iterdir()}
    assert files, "compose wrote no key file for the server to read"
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert any(key in path.read_text() for path in files.values())
