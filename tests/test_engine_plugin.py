"""A third engine (and a third runtime), defined here and registered as plugins.

`TinyLlamaEngine` wraps the real `llama-server` with its own argv (short flags, its own
alias and context size), its own log reader and markers, and its own preflight check. It
reaches the CLI subprocess through `LLM_BACKEND_ENGINES=tests.test_engine_plugin:...`:
no module of llm_backend is edited or patched to add it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from llm_backend.checks import Check, CheckResult, Context, result
from llm_backend.config import ConfigSet, Profile, builtin_layer
from llm_backend.engines.base import Engine, Failure, LogReader, PhaseEvent, SpecStats
from llm_backend.engines.llamacpp import model_path
from llm_backend.runtimes.native import NativeRuntime
from tests.conftest import Env, port_is_free, processes_with_exe, wait_for

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "tests.test_engine_plugin:TinyLlamaEngine"
ALIAS = "tiny-plugin-model"


def check_tiny_binary(ctx: Context) -> CheckResult | None:
    """The plugin's own check: the profile names an executable llama-server."""
    binary = ctx.profile.binary
    if binary and os.access(binary, os.X_OK):
        return result("tiny_binary", "pass", f"llama-server at {binary}")
    return result("tiny_binary", "fail", f"no executable llama-server at {binary!r}",
                  "set `binary` (or LLM_BACKEND_BINARY) to llama-server")


class TinyLogReader(LogReader):
    """Only three of llama-server's lines, as this engine's own phases."""

    PHASES = (
        (re.compile(r"load_model: loading model"), "load_weights"),
        (re.compile(r"main: server is listening|HTTP server is listening"), "server_up"),
        (re.compile(r"all slots are idle"), "ready"),
    )

    def read_line(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        if "couldn't bind HTTP server socket" in line:
            return [Failure("port_in_use", "the tiny engine's port is taken",
                            "start with --port N", line=line)]
        return [PhaseEvent(name=phase, line=line)
                for pattern, phase in self.PHASES if pattern.search(line)][:1]


class TinyLlamaEngine(Engine):
    """llama-server with short flags and a fixed small context."""

    name = "tiny"
    log_markers = re.compile(r"load_model: loading model|all slots are idle")

    def build_argv(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        return [str(profile.binary), "-m", profile.model, "--host", profile.host,
                "--port", str(profile.port), "-a", ALIAS, "-c", "512", "-t", "1"]

    def log_reader(self) -> LogReader:
        return TinyLogReader()

    def checks(self) -> tuple[Check, ...]:
        return (Check("tiny_binary", check_tiny_binary),)


def use_plugin(world: Env) -> None:
    """Register the plugin in the CLI's environment and write a profile that uses it."""
    world.env["LLM_BACKEND_ENGINES"] = PLUGIN
    world.env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    smollm2 = ConfigSet(layers=[builtin_layer()]).resolve("smollm2-cpu").profile
    world.write_config(
        f'[profiles.tiny]\nengine = "tiny"\nmodel = "{model_path(smollm2)}"\n'
        "load_timeout_s = 120\nstall_timeout_s = 60\n"
    )


def test_a_plugin_engine_runs_start_status_stop(world: Env) -> None:
    use_plugin(world)
    started = world.run("start", "--profile", "tiny", timeout=180)
    assert started.returncode == 0, started.stderr
    # The plugin's reader named the phase (health may say ready before its later lines).
    assert "phase load_weights" in started.stderr and "ready" in started.stderr

    models = httpx.get(f"http://127.0.0.1:{world.port}/v1/models", timeout=10).json()
    assert [model["id"] for model in models["data"]] == [ALIAS]
    status = json.loads(world.run("status", "--json").stdout)
    assert (status["state"], status["engine"], status["profile"]) == ("ready", "tiny", "tiny")
    pid = status["pid"]
    record = json.loads((world.state_dir / "instance.json").read_text())
    assert record["argv"][1:3] == ["-m", str(model_path(ConfigSet(
        layers=[builtin_layer()]).resolve("smollm2-cpu").profile))]

    stopped = world.run("stop", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for(lambda: port_is_free(world.port), timeout=10)
    binary = Path(world.env["LLM_BACKEND_BINARY"])
    assert all(process.pid != pid for process in processes_with_exe(binary))
    assert json.loads(world.run("status", "--json").stdout)["state"] == "stopped"


def test_a_plugin_engine_brings_its_checks_to_doctor(world: Env) -> None:
    use_plugin(world)
    completed = world.run("doctor", "--profile", "tiny", "--json", timeout=120)
    report = json.loads(completed.stdout)
    assert completed.returncode == 0, report
    checks = {check["name"]: check for check in report["checks"]}
    assert report["engine"] == "tiny"
    assert checks["tiny_binary"]["status"] == "pass"
    # The general checks still run; llama.cpp's own do not (this is not llama.cpp).
    assert checks["port"]["status"] == "pass"
    assert "llama_server" not in checks and "model_file" not in checks
    # Its check name is one --skip-checks knows, and the gpu warning is not needed here.
    world.env["LLM_BACKEND_BINARY"] = str(world.root / "missing-llama-server")
    refused = world.run("start", "--profile", "tiny", "--dry-run")
    assert "fail    tiny_binary" in refused.stderr
    skipped = world.run("start", "--profile", "tiny", "--skip-checks", "tiny_binary", "--dry-run")
    assert "unknown check" not in skipped.stderr
    assert "skipped tiny_binary" in skipped.stderr, skipped.stderr


def test_a_plugin_engine_reads_its_own_logs_in_diagnose(world: Env) -> None:
    use_plugin(world)
    log = world.cwd / "tiny.log"
    log.write_text(
        "load_model: loading model '/models/x.gguf'\n"
        "main: server is listening on http://127.0.0.1:8080\n"
        "srv  update_slots: all slots are idle\n"
    )
    completed = world.run("diagnose", "--engine", "tiny", str(log), "--json")
    data = json.loads(completed.stdout)
    assert completed.returncode == 0, completed.stderr
    assert data["engine"] == "tiny" and data["ready"] is True
    assert [phase["name"] for phase in data["phases"]] == ["load_weights", "server_up", "ready"]
    # Guessed by its markers when they match more lines than any other engine's.
    log.write_text("load_model: loading model 'x'\nall slots are idle\n")
    guessed = json.loads(world.run("diagnose", str(log), "--json").stdout)
    assert guessed["engine"] == "tiny"
    bind = world.cwd / "bind.log"
    bind.write_text("couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 1\n")
    failed = json.loads(world.run("diagnose", "--engine", "tiny", str(bind), "--json").stdout)
    assert failed["failure"]["class"] == "port_in_use"


def test_a_broken_plugin_setting_is_an_error_with_a_fix(world: Env) -> None:
    world.env["LLM_BACKEND_ENGINES"] = "no_such_module:Engine"
    world.write_config('[profiles.other]\nextends = "smollm2-cpu"\nengine = "other"\n')
    completed = world.run("doctor", "--profile", "other")
    assert completed.returncode == 2
    assert "$LLM_BACKEND_ENGINES names engine 'no_such_module:Engine'" in completed.stderr
    assert "fix:" in completed.stderr
    # A relative module cannot be imported without a package: error + fix, not a traceback.
    world.write_config('[profiles.other]\nextends = "smollm2-cpu"\nengine = "other"\n'
                       '[profiles.otherrt]\nextends = "smollm2-cpu"\nruntime = "otherrt"\n')
    for variable, target, profile in (("LLM_BACKEND_ENGINES", "..x:Y", "other"),
                                      ("LLM_BACKEND_RUNTIMES", ".x:Y", "otherrt")):
        world.env.pop("LLM_BACKEND_ENGINES", None)
        world.env[variable] = target
        relative = world.run("doctor", "--profile", profile)
        del world.env[variable]
        assert relative.returncode == 2, relative.stderr
        assert "Traceback" not in relative.stderr
        assert f"${variable} names" in relative.stderr and f"'{target}', a relative module" \
            in relative.stderr and "fix: give the module's full dotted name" in relative.stderr
    # A plugin may not take a built-in engine's name.
    world.env["LLM_BACKEND_ENGINES"] = "tests.test_engine_plugin:Sglang"
    world.env["PYTHONPATH"] = str(REPO)
    taken = world.run("doctor", "--profile", "other")
    assert taken.returncode == 2 and "name of a built-in engine" in taken.stderr


class Sglang(TinyLlamaEngine):
    """A plugin that tries to replace a built-in engine (refused)."""

    name = "sglang"


def test_plugin_names_are_listed_in_the_unknown_engine_error() -> None:
    env = {**os.environ, "LLM_BACKEND_ENGINES": PLUGIN,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-c",
         "from llm_backend.engines import engine_names; print(engine_names())"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert completed.stdout.strip() == "['sglang', 'llamacpp', 'tiny']"


# --- a runtime plugin -----------------------------------------------------------------------


def check_plain(ctx: Context) -> CheckResult | None:
    """The plugin runtime's own check."""
    return result("plain_runtime", "pass", f"{ctx.profile.name} runs as a plain process group")


class PlainRuntime(NativeRuntime):
    """A runtime defined here: the native process group under its own name and check."""

    name = "plain"

    def checks(self) -> tuple[Check, ...]:
        return (Check("plain_runtime", check_plain),)


def test_a_plugin_runtime_runs_start_status_stop_and_doctor(world: Env) -> None:
    world.env["LLM_BACKEND_RUNTIMES"] = "tests.test_engine_plugin:PlainRuntime"
    world.env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    world.write_config('[profiles.plain]\nextends = "smollm2-cpu"\nruntime = "plain"\n')
    report = json.loads(world.run("doctor", "--profile", "plain", "--json", timeout=120).stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["runtime"] == "plain" and checks["plain_runtime"]["status"] == "pass"
    assert checks["model_file"]["status"] == "pass"  # the engine's checks still run
    started = world.run("start", "--profile", "plain", timeout=180)
    assert started.returncode == 0, started.stderr
    status = json.loads(world.run("status", "--json").stdout)
    assert (status["state"], status["runtime"]) == ("ready", "plain")
    assert world.run("stop", timeout=60).returncode == 0
    assert wait_for(lambda: port_is_free(world.port), timeout=10)


def test_an_installed_package_registers_an_engine_by_entry_point(tmp_path: Path) -> None:
    """What `pip install` of a plugin leaves: a dist-info with an entry point, found on the path."""
    dist = tmp_path / "tiny_engine_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiny-engine-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(f"[llm_backend.engines]\ntiny = {PLUGIN}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLM_BACKEND_ENGINES", None)
    completed = subprocess.run(
        [sys.executable, "-c",
         "from llm_backend.engines import engine_names, get_engine; "
         "print(engine_names(), type(get_engine('tiny')).__name__)"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert completed.stdout.strip() == "['sglang', 'llamacpp', 'tiny'] TinyLlamaEngine"
