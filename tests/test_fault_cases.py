"""The bug-report cases in tests/data/faults (see CASES.md there): each right answer, run for real.

Each folder holds the `llm-backend.toml` a user wrote (from a public report, names replaced);
the command runs from inside a copy of it, as the user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import Env

CASES = Path(__file__).parent / "data" / "faults"


def in_case(world: Env, case: str) -> Env:
    shutil.copy(CASES / case / "llm-backend.toml", world.cwd / "llm-backend.toml")
    return world


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


# --- IPv6 (sgl-project/sglang#7478) -----------------------------------------------------


def test_ipv6_wildcard_host_endpoint_and_free_port(world: Env) -> None:
    in_case(world, "sglang-7478-ipv6-host")
    dry = world.run("start", "--dry-run", "--profile", "r1-ipv6", timeout=120)
    out = dry.stdout + dry.stderr
    assert "http://[::]:40000" in out, out
    assert "http://[::1]:40000/health" in out, out
    assert ":::40000" not in out
    assert "already in use" not in out, out
    completed = world.run("doctor", "--json", "--profile", "r1-ipv6", timeout=120)
    port = checks_by_name(json.loads(completed.stdout))["port"]
    assert port["status"] == "pass", port
