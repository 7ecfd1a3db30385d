"""Fix lines that point at the right place (new-user run 2, finding 2): the value's own
source (environment, not a file), the command that was run (`serve`, not `start`), a table
header that TOML reads back as written, and the pull of the profile under check.

All through the real CLI as a subprocess.
"""

from __future__ import annotations

import json
import socket
import tomllib

from llm_backend.toml_names import profile_table
from tests.conftest import Env


def fix_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("fix: ")]
    assert lines, stderr
    return lines[0]


def test_profile_table_header_reads_back_as_the_same_profile() -> None:
    for name in ("llama3.2", "smollm2-cpu", "my model"):
        parsed = tomllib.loads(f"{profile_table(name, 'docker')}\nimage = \"x\"\n")
        assert parsed == {"profiles": {name: {"docker": {"image": "x"}}}}
    assert profile_table("llama3.2") == '[profiles."llama3.2"]'
    assert profile_table("smollm2-cpu") == "[profiles.smollm2-cpu]"


def test_unknown_dotted_profile_fix_quotes_the_table_and_following_it_works(world: Env) -> None:
    completed = world.run("start", "--profile", "llama3.2", "--dry-run")
    assert completed.returncode != 0
    fix = fix_line(completed.stderr)
    assert '[profiles."llama3.2"]' in fix, fix
    # Follow the fix literally: the header it names makes that profile, not `llama3`.
    world.write_config('[profiles."llama3.2"]\nextends = "smollm2-cpu"\n')
    shown = world.run("profiles", "show", "llama3.2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"]["value"] == "llama3.2"


def test_missing_model_from_the_environment_gets_the_environment_fix(world: Env) -> None:
    world.env["LLM_BACKEND_MODEL"] = str(world.root / "nope.gguf")
    completed = world.run("start", "--profile", "smollm2-cpu", "--dry-run")
    assert completed.returncode != 0
    assert "nope.gguf does not exist" in completed.stderr, completed.stderr
    fix = fix_line(completed.stderr)
    assert "unset LLM_BACKEND_MODEL" in fix and "export LLM_BACKEND_MODEL=" in fix, fix
    assert "llm-backend.toml" not in fix, fix


def test_serve_on_a_taken_port_suggests_serve_on_the_next_port(world: Env) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        completed = world.run("serve", "--profile", "smollm2-cpu", "--port", str(port))
    assert completed.returncode != 0
    assert f"port {port}" in completed.stderr, completed.stderr
    fix = fix_line(completed.stderr)
    assert f"llm-backend serve --port {port + 1}" in fix, fix
    assert "llm-backend start" not in fix, fix


def test_doctor_pull_fixes_name_the_profile_under_check(world: Env) -> None:
    """A bare `llm-backend pull` pulls the default profile, not the one doctor checked."""
    encodings = world.root / "encodings"
    world.write_config(
        '[profiles."gpt.big"]\nextends = "gpt-oss-120b-eagle3"\nruntime = "native"\n'
        f'[profiles."gpt.big".env]\nTIKTOKEN_ENCODINGS_BASE = "{encodings}"\n')
    world.env["HF_HUB_OFFLINE"] = "1"  # judged from the local cache alone
    completed = world.run("doctor", "--profile", "gpt.big", "--json")
    report = json.loads(completed.stdout)
    fixes = {check["name"]: check.get("fix") for check in report["checks"]}
    for name in ("model_cache", "tiktoken"):
        assert fixes[name] and "llm-backend pull --profile gpt.big" in fixes[name], fixes
