"""Bad values and files from outside (issue 10): every one is `error:` naming the value and
`fix:` naming the command or setting, a non-zero exit, and nothing started on the host.

All through the real CLI as a subprocess; the unprivileged cases run it as `nobody` with
setpriv, because root reads any file.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, port_is_free


def assert_refused(world: Env, completed: subprocess.CompletedProcess[str], *needles: str,
                   code: int = 2) -> None:
    """`error:` with the value, then `fix:`, the exit code, no traceback, nothing started."""
    err = completed.stderr
    assert completed.returncode == code, (completed.returncode, completed.stdout, err)
    assert "Traceback" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error_lines, err
    for needle in needles:
        assert needle in error_lines[0], (needle, err)
    fix = [line for line in err.splitlines() if line.startswith("fix: ")]
    assert fix and len(fix[0]) > len("fix: ") + 5, err
    assert not (world.state_dir / "instance.json").exists()
    assert not list((world.state_dir / "logs").glob("*.log")) if (
        world.state_dir / "logs").is_dir() else True
    assert port_is_free(world.port)


# --- config files ----------------------------------------------------------------------------


def test_config_saved_with_a_byte_order_mark_is_read(world: Env) -> None:
    """Notepad's "UTF-8" puts a BOM first; tomllib called it an invalid statement at 1:1."""
    (world.cwd / "llm-backend.toml").write_bytes(
        b'\xef\xbb\xbf[profiles.a]\nextends = "smollm2-cpu"\nport = 31999\n')
    shown = json.loads(world.run("profiles", "show", "a", "--json", check=True).stdout)
    assert shown["port"]["value"] == 31999


def test_config_not_utf8_names_the_file_and_line(world: Env) -> None:
    path = world.cwd / "llm-backend.toml"
    path.write_bytes(b'[profiles.a]\nextends = "smollm2-cpu"\ndescription = "\xff\xfe"\n')
    completed = world.run("start", "--profile", "a")
    assert_refused(world, completed, str(path), "not UTF-8", "0xff", "line 3")
    assert "UTF-8" in completed.stderr.split("fix: ")[1]


def test_profiles_entry_that_is_not_a_table_is_named(world: Env) -> None:
    world.write_config("[profiles]\na = 5\n")
    for args in (("profiles",), ("start", "--profile", "a"), ("doctor", "--profile", "a")):
        completed = world.run(*args)
        assert_refused(world, completed, "profiles.a = 5", "not a table")
        assert "[profiles.a]" in completed.stderr.split("fix: ")[1]


@pytest.mark.parametrize("where", ["local", "user"])
def test_config_path_that_is_a_directory_is_an_error(world: Env, where: str) -> None:
    if where == "local":
        path = world.cwd / "llm-backend.toml"
    else:
        path = world.config_home / "llm-backend" / "config.toml"
    path.mkdir(parents=True)
    completed = world.run("profiles")
    assert_refused(world, completed, str(path), "is a directory")
    assert str(path) in completed.stderr.split("fix: ")[1]


@pytest.fixture
def nobody_world(world: Env) -> Iterator[tuple[Env, Path]]:
    """A world `nobody` can use: its own 0700 state dir, a cwd and config home it can read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    if shutil.which("setpriv") is None:
        pytest.fail("needs setpriv (util-linux)")
    shared = Path(tempfile.mkdtemp(prefix="llm-backend-badinput-", dir="/tmp"))
    try:
        for sub in ("state", "cwd", "config", "home"):
            (shared / sub).mkdir()
        shared.chmod(0o755)
        for sub in ("cwd", "config", "home"):
            (shared / sub).chmod(0o755)
        os.chown(shared / "state", pwd.getpwnam("nobody").pw_uid, -1)
        (shared / "state").chmod(0o700)
        world.env.update({"LLM_BACKEND_STATE_DIR": str(shared / "state"),
                          "XDG_CONFIG_HOME": str(shared / "config"),
                          "HOME": str(shared / "home")})
        world.state_dir = shared / "state"
        world.cwd = shared / "cwd"
        yield world, shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def run_as_nobody(world: Env, *args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         "-m", "llm_backend", *args],
        cwd=world.cwd, env=env or world.env, capture_output=True, text=True, timeout=120,
    )


def test_unreadable_config_file_is_an_error_not_skipped(nobody_world: tuple[Env, Path]) -> None:
    world, _ = nobody_world
    path = world.cwd / "llm-backend.toml"
    path.write_text('[profiles.a]\nextends = "smollm2-cpu"\n')
    path.chmod(0o600)  # root's, unreadable for nobody
    completed = run_as_nobody(world, "start", "--profile", "a")
    assert_refused(world, completed, "cannot read the config file", str(path),
                   "Permission denied")
    assert f"chmod u+r {path}" in completed.stderr


def test_unreadable_home_is_an_error(nobody_world: tuple[Env, Path]) -> None:
    world, shared = nobody_world
    home = shared / "home"
    home.chmod(0o700)  # root's: nobody cannot look inside
    env = {key: value for key, value in world.env.items()
           if key not in ("XDG_CONFIG_HOME", "LLM_BACKEND_STATE_DIR", "XDG_STATE_HOME")}
    completed = run_as_nobody(world, "status", env=env)
    assert_refused(world, completed, str(home), "Permission denied", code=1)
    assert "LLM_BACKEND_STATE_DIR" in completed.stderr.split("fix: ")[1]
    # with a usable state dir the user config under the unreadable HOME is the error
    env["LLM_BACKEND_STATE_DIR"] = str(world.state_dir)
    completed = run_as_nobody(world, "profiles", env=env)
    assert_refused(world, completed, str(home / ".config" / "llm-backend" / "config.toml"),
                   "Permission denied")
    assert "XDG_CONFIG_HOME" in completed.stderr.split("fix: ")[1]


def test_unusable_home_names_the_state_dir(nobody_world: tuple[Env, Path]) -> None:
    world, _ = nobody_world
    env = {key: value for key, value in world.env.items()
           if key not in ("XDG_CONFIG_HOME", "LLM_BACKEND_STATE_DIR", "XDG_STATE_HOME")}
    env["HOME"] = "/nonexistent"
    completed = run_as_nobody(world, "status", env=env)
    assert_refused(world, completed, "/nonexistent/.local/state/llm-backend", code=1)
    assert "LLM_BACKEND_STATE_DIR" in completed.stderr.split("fix: ")[1]


# --- the model path ----------------------------------------------------------------------------


def test_empty_model_is_refused_as_a_value(world: Env) -> None:
    world.write_config('[profiles.a]\nextends = "smollm2-cpu"\nmodel = ""\n')
    completed = world.run("start", "--profile", "a")
    assert_refused(world, completed, "'model' = ''", "must not be empty")
    assert "./llm-backend.toml" in completed.stderr.split("fix: ")[1]


@pytest.mark.parametrize("value", ["org/model ", " org/model", "   "])
def test_model_with_white_space_at_an_end_is_refused(world: Env, value: str) -> None:
    world.write_config(f'[profiles.a]\nextends = "smollm2-cpu"\nmodel = "{value}"\n'
                       f'[profiles.a.speculative]\ndraft_model = "{value}"\n')
    for command in (("start", "--profile", "a"), ("pull", "--profile", "a", "--dry-run")):
        completed = world.run(*command)
        assert_refused(world, completed, f"'model' = {value!r}")
        assert f"'speculative.draft_model' = {value!r}" in completed.stderr
        if value.strip():
            assert "begins or ends with white space; write 'org/model'" in completed.stderr


@pytest.mark.parametrize("key", ["model", "draft_model"])
def test_sglang_model_neither_hub_id_nor_path_is_refused(world: Env, key: str) -> None:
    """`a/b/c` is no Hub id (huggingface_hub takes one `org/name`) and no folder here: pull
    said "everything is present" and start passed `--model-path a/b/c` to SGLang."""
    model = "a/b/c" if key == "model" else "org/model"
    draft = "org/draft" if key == "model" else "a/b/c"
    world.write_config(f"""
[profiles.s]
engine = "sglang"
runtime = "native"
model = "{model}"
python = "{sys.executable}"
[profiles.s.speculative]
enabled = true
algorithm = "EAGLE3"
draft_model = "{draft}"
""")
    name = "model" if key == "model" else "speculative.draft_model"
    for command in (("pull", "--profile", "s"), ("start", "--profile", "s", "--dry-run")):
        completed = world.run(*command)
        assert_refused(world, completed,
                       f"{name} = 'a/b/c' is neither a Hub id (org/name) nor an existing "
                       "local path")
        assert "absolute path of a local model folder" in completed.stderr
    (world.cwd / "a" / "b" / "c").mkdir(parents=True)  # an existing relative folder is a path
    assert "neither a Hub id" not in world.run("start", "--profile", "s", "--dry-run").stderr


@pytest.mark.parametrize("value", ["-rf/x", "../missing", "a/.."])
def test_sglang_model_the_hub_refuses_is_named_before_start(world: Env, value: str) -> None:
    """`-rf/x` read as a flag ("--model-path needs a value", fix: extra_args) and `../missing`
    passed the checks to fail in the pull (review F1/F2): both are the model's error now."""
    world.write_config(f"""
[profiles.s]
engine = "sglang"
runtime = "native"
model = "{value}"
python = "{sys.executable}"
""")
    completed = world.run("start", "--profile", "s", "--dry-run")
    assert_refused(world, completed,
                   f"model = {value!r} is neither a Hub id (org/name) nor an existing local path")
    assert "extra_args" not in completed.stderr


def test_model_that_is_a_directory_is_named_a_directory(world: Env) -> None:
    folder = world.root / "models"
    folder.mkdir()
    world.write_config(
        f'[profiles.a]\nextends = "smollm2-cpu"\nmodel = "{folder}"\nmodel_package = ""\n')
    completed = world.run("start", "--profile", "a")
    assert_refused(world, completed, str(folder), "is a directory", code=1)
    assert "does not exist" not in completed.stderr


def test_non_gguf_model_is_refused_before_launch(world: Env) -> None:
    fake = world.root / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 100)
    world.write_config(
        f'[profiles.a]\nextends = "smollm2-cpu"\nmodel = "{fake}"\nmodel_package = ""\n')
    completed = world.run("start", "--profile", "a")
    assert_refused(world, completed, str(fake), "not a GGUF file", "PK", code=1)
    assert "nothing on the host was changed" in completed.stderr
    doctor = world.run("doctor", "--profile", "a")
    assert doctor.returncode == 1 and "not a GGUF file" in doctor.stdout


# --- absurd values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("threads = 1000000", "'threads' = 1000000"),
        ("threads = 0", "'threads' = 0"),
        ("stop_grace_s = inf", "'stop_grace_s' = inf"),
        ("stop_grace_s = -1", "'stop_grace_s' = -1"),
        ("load_timeout_s = nan", "'load_timeout_s' = nan"),
        ("load_timeout_s = 1e12", "'load_timeout_s' = 1000000000000.0"),
        ("stall_timeout_s = 0", "'stall_timeout_s' = 0"),
        ("expected_load_s = inf", "'expected_load_s' = inf"),
        ("drain_timeout_s = 1e9", "'drain_timeout_s' = 1000000000.0"),
        ("context_length = 1000000000", "'context_length' = 1000000000"),
        ("port = 0", "'port' = 0"),
        ("port = 70000", "'port' = 70000"),
        ("replicas = 1000", "'replicas' = 1000"),
        ('host = ""', "'host' = ''"),
        ('served_model_name = " "', "'served_model_name' = ' '"),
        ('binary = ""', "'binary' = ''"),
        ('extra_args = ["--x\\u0000y"]', "NUL byte"),
        ('model = "a\\nb.gguf"', "control character"),
        ("speculative.num_steps = 1000", "'speculative.num_steps' = 1000"),
        ("docker.healthcheck_retries = 100000", "'docker.healthcheck_retries' = 100000"),
        ("docker.healthcheck_interval_s = inf", "'docker.healthcheck_interval_s' = inf"),
        ("host_prep.swapoff_timeout_s = inf", "'host_prep.swapoff_timeout_s' = inf"),
        ("host_prep.guard_interval_s = nan", "'host_prep.guard_interval_s' = nan"),
        ("serve.max_wait_s = inf", "'serve.max_wait_s' = inf"),
        ("serve.idle_stop_s = 1e30", "'serve.idle_stop_s' = 1e+30"),
        ("distributed.node_rank = 5000", "'distributed.node_rank' = 5000"),
        ("model_facts.moe_layers = 1000000", "'model_facts.moe_layers' = 1000000"),
    ],
)
def test_absurd_profile_value_is_refused(world: Env, setting: str, shown: str) -> None:
    key, _, value = setting.partition(" = ")
    table, _, leaf = key.rpartition(".")
    header = "[profiles.a]\nextends = \"smollm2-cpu\"\n"
    body = f"[profiles.a.{table}]\n{leaf} = {value}\n" if table else f"{key} = {value}\n"
    world.write_config(header + body)
    completed = world.run("start", "--profile", "a", "--dry-run")
    assert_refused(world, completed, "profile 'a'", shown)
    assert "./llm-backend.toml" in completed.stderr.split("fix: ")[1]


@pytest.mark.parametrize(
    ("args", "shown", "fix"),
    [
        (("chat", "hi", "--max-tokens", "0"), "--max-tokens 0", "llm-backend chat --max-tokens"),
        (("chat", "hi", "--max-tokens", "-5"), "--max-tokens -5", "llm-backend chat"),
        (("chat", "hi", "--temperature", "nan"), "--temperature nan", "llm-backend chat"),
        (("chat", "hi", "--temperature", "-1"), "--temperature -1", "llm-backend chat"),
        (("stop", "--timeout", "-1"), "--timeout -1", "llm-backend stop --timeout"),
        (("stop", "--timeout", "inf"), "--timeout inf", "llm-backend stop --timeout"),
        (("bench", "--temperature", "9"), "--temperature 9", "llm-backend bench"),
        (("bench", "--duration", "inf"), "--duration inf", "llm-backend bench"),
        (("recover", "--swapoff-timeout", "0"), "--swapoff-timeout 0", "llm-backend recover"),
        (("recover", "--swapoff-timeout", "nan"), "--swapoff-timeout nan", "llm-backend recover"),
        (("logs", "-n", "-3"), "-n -3", "llm-backend logs -n"),
        (("router", "logs", "-n", "-3"), "-n -3", "llm-backend router logs -n"),
        (("start", "--timeout", "inf"), "'load_timeout_s' = inf", "command line"),
        (("start", "--timeout", "0"), "'load_timeout_s' = 0", "command line"),
        (("start", "--port", "70000"), "'port' = 70000", "command line"),
        (("compose", "--port", "0"), "'port' = 0", "command line"),
    ],
)
def test_absurd_command_line_value_is_refused(
    world: Env, args: tuple[str, ...], shown: str, fix: str
) -> None:
    completed = world.run(*args)
    assert_refused(world, completed, shown)
    assert fix in completed.stderr.split("fix: ")[1]


@pytest.mark.parametrize(
    ("args", "shown", "fix"),
    [
        (("start", "--port", "abc"), "Invalid value 'abc' for '--port'",
         "llm-backend start --help"),
        (("stop", "--bogus"), "No such option: --bogus", "llm-backend stop --help"),
        (("bogus",), "No such command 'bogus'", "llm-backend --help"),
        (("logs", "-n", "x"), "Invalid value 'x' for '-n'", "llm-backend logs --help"),
        (("profiles", "show"), "Missing argument 'name'", "llm-backend profiles show --help"),
    ],
)
def test_unparsable_command_line_is_error_and_fix(
    world: Env, args: tuple[str, ...], shown: str, fix: str
) -> None:
    completed = world.run(*args)
    assert_refused(world, completed, shown)
    assert fix in completed.stderr.split("fix: ")[1]


def test_a_bad_value_from_the_environment_gets_a_fix_for_the_environment(world: Env) -> None:
    """The fix said "correct that key in env LLM_BACKEND_THREADS (see `llm-backend profiles
    show ...`)", and `profiles show` stops at the same error."""
    world.env["LLM_BACKEND_THREADS"] = "600"
    completed = world.run("start", "--profile", "smollm2-cpu", "--dry-run")
    assert_refused(world, completed, "'threads' = '600' (from env LLM_BACKEND_THREADS)")
    assert "fix: export LLM_BACKEND_THREADS=<a valid value>, or `unset LLM_BACKEND_THREADS`" \
        in completed.stderr
    assert "profiles show" not in completed.stderr
