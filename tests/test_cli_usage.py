"""The command line's answers to mistakes: exit codes a script can rely on, the value named,
and a direct fix for what users of other local LLM tools type first. Real CLI subprocesses;
none starts a server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import Env


def test_dry_run_exits_as_the_real_start_when_a_check_fails(world: Env) -> None:
    """`start --dry-run` on a taken port said "would serve" and exited 0 while `start`
    exited 1: the dry run now fails with the same code and says it would not start."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", world.port))
        holder.listen()
        dry = world.run("start", "--dry-run")
        real = world.run("start")
    assert dry.returncode == real.returncode == 1, dry.stderr + real.stderr
    assert "would NOT start" in dry.stdout and "would serve" not in dry.stdout
    error = dry.stderr.partition("error: ")[2]
    assert error.startswith("dry run: a real start would fail: preflight for"), dry.stderr
    assert f"port {world.port}" in error and "fix: " in error
    assert "failure: port_in_use" in dry.stderr
    status = json.loads(world.run("status", "--json").stdout)
    assert status["state"] == "stopped"
    free = world.run("start", "--dry-run")
    assert free.returncode == 0, free.stderr
    assert "would serve" in free.stdout and "error:" not in free.stderr


def _values(tmp: Path) -> list[tuple[list[str], str]]:
    return [
        (["bench", "--workload", "chatt"], "'chatt'"),
        (["bench", "--concurrency", "0"], "--concurrency '0'"),
        (["bench", "--concurrency", "2,2"], "--concurrency '2,2'"),
        (["bench", "--ab", "speculative"], "--ab 'speculative'"),
        (["bench", "--json", str(tmp)], f"--json {tmp}"),
        (["bench", "--json", str(tmp / "no" / "x.json")], f"--json {tmp / 'no' / 'x.json'}"),
        (["bench", "--dataset", str(tmp / "none.jsonl")], str(tmp / "none.jsonl")),
        (["diagnose", "--engine", "vllm", "/dev/null"], "'vllm'"),
        (["diagnose", str(tmp / "none.log")], str(tmp / "none.log")),
        (["engine", "install", "vllm"], "'vllm'"),
        (["start", "--port", "abc"], "'abc'"),
        (["serve", "--port", "3o000"], "'3o000'"),
        (["bench", "--temperature", "warm"], "'warm'"),
    ]


@pytest.mark.parametrize("case", range(len(_values(Path("/x")))))
def test_a_bad_command_line_value_exits_2_naming_it(world: Env, case: int) -> None:
    """docs/cli.md: a bad value exits 2 with `error:` naming it and a `fix:`, in every
    command (bench and diagnose exited 1)."""
    args, named = _values(world.root)[case]
    completed = world.run(*args, timeout=60)
    assert completed.returncode == 2, completed.stderr
    error, _, fix = completed.stderr.partition("\nfix: ")
    assert error.startswith("error: ") and named in error, completed.stderr
    assert fix.strip(), completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["run", "smollm2"], 'llm-backend start (loads and serves the model'),
        (["list"], "llm-backend profiles"),
        (["ps"], "llm-backend status"),
        (["profiles", "list"], "llm-backend profiles (lists them"),
        (["start", "smollm2-cpu"], "llm-backend start --profile smollm2-cpu"),
        (["pull", "smollm2"], "llm-backend pull --profile smollm2"),
        (["start", "/models/x.gguf"], "LLM_BACKEND_MODEL=/models/x.gguf llm-backend start"),
        (["start", "--model", "/models/x.gguf"], "LLM_BACKEND_MODEL=PATH.gguf llm-backend start"),
        (["lsit"], "see `llm-backend --help`"),  # a typo of nothing known: the generic fix
    ],
)
def test_other_tools_commands_get_the_llm_backend_command(
    world: Env, args: list[str], fix: str
) -> None:
    """What Ollama / LM Studio users type first is refused (exit 2) with the command that
    does it here, not only "see --help"."""
    completed = world.run(*args, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "error: " in completed.stderr
    assert f"fix: {fix}" in completed.stderr, completed.stderr


def test_a_replica_groups_dry_run_fails_on_a_copys_taken_port(world: Env) -> None:
    """Each copy's checks run in the dry run of `replicas = 2`; copy 1's taken port fails it
    as the real start would (exit 1), before anything starts."""
    world.write_config(f"""
[profiles.pair]
extends = "smollm2-cpu"
port = {world.port}
replicas = 2
""")
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", world.port + 1))
            holder.listen()
        except OSError:  # taken by someone else already: the dry run must fail all the same
            pass
        dry = world.run("start", "--profile", "pair", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    error = dry.stderr.partition("error: ")[2]
    assert error.startswith("dry run: a real start would fail: preflight for pair"), dry.stderr
    assert f"port {world.port + 1}" in error
    assert "replica 0 would serve" not in dry.stdout
