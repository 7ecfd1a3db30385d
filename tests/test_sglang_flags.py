"""SGLang flag validation: the committed table, SGLang's real parser, and the preflight order.

The real-parser tests need a Python that can import `sglang` (0.5.23, installed with
`--no-deps` plus the light packages in scripts/generate_sglang_flags.py). Point
SGLANG_PARSER_PYTHON at it; `python scripts/generate_sglang_flags.py --make-venv DIR` makes
one. In CI (CI=true) a missing SGLANG_PARSER_PYTHON is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llm_backend.config import load_config
from llm_backend.engines.sglang import SGLangEngine
from llm_backend.engines.sglang_flags import (
    FlagTable,
    check_profile_flags,
    check_with_parser,
    check_with_table,
    load_table,
    problems_from_parser_error,
)
from llm_backend.runtimes.compose import image_for

REPO = Path(__file__).resolve().parent.parent
FLAGSHIP_ARGV = shlex.split(
    "python3 -m sglang.launch_server --model-path openai/gpt-oss-120b "
    "--speculative-algorithm EAGLE3 --speculative-draft-model-path "
    "lmsys/EAGLE3-gpt-oss-120b-bf16 --speculative-num-steps 3 --speculative-eagle-topk 1 "
    "--speculative-num-draft-tokens 4 --reasoning-parser gpt-oss --tool-call-parser gpt-oss "
    "--host 0.0.0.0 --port 30000"
)


@pytest.fixture(scope="module")
def table() -> FlagTable:
    return load_table()


def parser_python() -> str:
    python = os.environ.get("SGLANG_PARSER_PYTHON")
    if not python:
        message = (
            "SGLANG_PARSER_PYTHON is not set: make the venv with "
            "`python scripts/generate_sglang_flags.py --make-venv DIR` and export "
            "SGLANG_PARSER_PYTHON=DIR/bin/python"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def test_flagship_argv_is_exactly_the_documented_command() -> None:
    profile = load_config().resolve("gpt-oss-120b-eagle3").profile
    assert SGLangEngine().build_argv(profile=profile, for_container=True) == FLAGSHIP_ARGV
    twenty = load_config().resolve("gpt-oss-20b-eagle3").profile
    argv = SGLangEngine().build_argv(profile=twenty, for_container=True)
    assert argv[argv.index("--model-path") + 1] == "openai/gpt-oss-20b"
    assert argv[argv.index("--speculative-draft-model-path") + 1] == (
        "zhuyksir/EAGLE3-gpt-oss-20b-bf16"
    )
    assert twenty.docker.container_name == "trollama-sglang"
    assert twenty.host_prep.swap_size == "50G"


def test_flagship_profile_fields() -> None:
    profile = load_config().resolve("gpt-oss-120b-eagle3").profile
    assert profile.runtime == "docker"
    assert profile.env["SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"] == "1"
    encodings = profile.env["TIKTOKEN_ENCODINGS_BASE"]
    assert any(volume.endswith(":" + encodings) for volume in profile.docker.volumes)
    assert any(":/root/.cache/huggingface" in volume for volume in profile.docker.volumes)
    assert (profile.docker.network, profile.docker.ipc, profile.docker.gpus) == (
        "trollama-network", "host", "all"
    )
    assert profile.docker.shm_size and profile.host_prep.enabled
    assert profile.stop_grace_s >= 30
    assert profile.load_timeout_s >= 900 and profile.stall_timeout_s >= 120
    assert image_for(profile, "x86_64") == profile.docker.image
    assert image_for(profile, "aarch64") == profile.docker.image_aarch64
    assert profile.docker.image != profile.docker.image_aarch64


def test_table_accepts_the_flagship_flags(table: FlagTable) -> None:
    check = check_with_table(FLAGSHIP_ARGV[3:], table)
    assert check.ok, check.problems
    assert table.sglang_version == "0.5.23"


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        (["--max-model-len", "8192"], "--context-length"),
        (["--max-batch-size", "8"], "--max-running-requests"),
        (["--gpu-memory-utilization", "0.9"], "--mem-fraction-static"),
        (["--reasoning_parser", "gpt-oss"], "--reasoning-parser"),
        (["--speculative-draft", "lmsys/EAGLE3-gpt-oss-120b-bf16"],
         "--speculative-draft-model-path"),
    ],
)
def test_table_names_the_right_flag(table: FlagTable, wrong: list[str], right: str) -> None:
    check = check_with_table(["--model-path", "m", *wrong], table)
    assert len(check.problems) == 1
    problem = check.problems[0]
    assert problem.flag == wrong[0]
    assert right in problem.message


def test_table_parses_like_argparse(table: FlagTable) -> None:
    # A unique prefix works (with a note), a value outside the choices does not.
    check = check_with_table(["--model-path", "m", "--tp", "2", "--speculative-algo", "EAGLE3"],
                             table)
    assert check.ok
    assert any("--tp-size" in note for note in check.notes)
    bad_choice = check_with_table(["--model-path", "m", "--reasoning-parser", "gpt_oss"], table)
    assert [p.flag for p in bad_choice.problems] == ["--reasoning-parser"]
    assert "gpt-oss" in bad_choice.problems[0].message
    missing = check_with_table(["--port", "30000"], table)
    assert [p.flag for p in missing.problems] == ["--model-path"]
    not_a_number = check_with_table(["--model-path", "m", "--port", "x"], table)
    assert not not_a_number.ok


def test_parser_error_text_is_mapped(table: FlagTable) -> None:
    # argparse's exact wording for the two cases.
    problems = problems_from_parser_error(
        "usage: sglang serve [-h] --model-path MODEL_PATH\n"
        "sglang serve: error: unrecognized arguments: --max-model-len 8192\n",
        table,
    )
    assert [(p.flag, p.suggestion) for p in problems] == [("--max-model-len", "--context-length")]
    problems = problems_from_parser_error(
        "sglang serve: error: ambiguous option: --speculative-draft could match "
        "--speculative-draft-model-path, --speculative-draft-model\n",
        table,
    )
    assert [(p.flag, p.suggestion) for p in problems] == [
        ("--speculative-draft", "--speculative-draft-model-path")
    ]


def test_missing_image_and_plain_python_fall_back_to_the_table(table: FlagTable) -> None:
    profile = load_config().resolve(
        "gpt-oss-120b-eagle3",
        {"docker.image": "llm-backend-test/no-such-image:0", "docker.image_aarch64": None},
    ).profile
    check = check_profile_flags(profile, FLAGSHIP_ARGV[3:], table=table)
    assert check.ok
    assert "table" in check.source
    assert any("not present locally" in note for note in check.notes)
    native = load_config().resolve(
        "gpt-oss-120b-eagle3", {"runtime": "native", "python": sys.executable}
    ).profile
    check = check_profile_flags(native, FLAGSHIP_ARGV[3:], table=table)
    assert "table" in check.source
    assert any("not importable" in note for note in check.notes)


# `doctor`'s preflight checks for a GPU, an installed sglang and gpt-oss's encoding file
# (TIKTOKEN_ENCODINGS_BASE is set, nothing is there on this machine) would fail too; skip
# those so the flag check itself is what refuses the start.
NO_GPU_CHECKS = "gpu,memory,sglang,tiktoken"


def write_bad_profile(world: Any, extra: str, tmp_path: Path) -> Path:
    world.env["LLM_BACKEND_SKIP_CHECKS"] = NO_GPU_CHECKS
    swap_file = tmp_path / "never-made.swap"
    world.write_config(
        f"""
[profiles.bad-flags]
extends = "gpt-oss-120b-eagle3"
runtime = "native"
python = "{sys.executable}"
extra_args = [{extra}]

[profiles.bad-flags.host_prep]
enabled = true
swap_size = "64M"
swap_file = "{swap_file}"
pause_oom_daemons = []
drop_caches = false
"""
    )
    return swap_file


def test_wrong_flag_is_refused_before_any_host_change(world: Any, tmp_path: Path) -> None:
    swap_file = write_bad_profile(world, '"--max-model-len", "8192"', tmp_path)
    swaps_before = Path("/proc/swaps").read_text()
    completed = world.run("start", "--profile", "bad-flags", timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert "--max-model-len" in completed.stderr
    assert "fix:" in completed.stderr and "--context-length" in completed.stderr
    assert "failure: bad_flag" in completed.stderr
    # Nothing happened on the host: no swap file, no swap, no launch, no record, no journal.
    assert not swap_file.exists()
    assert Path("/proc/swaps").read_text() == swaps_before
    assert not (world.state_dir / "instance.json").exists()
    leftovers = [p for p in world.state_dir.rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert not [p for p in leftovers if "journal" in p.name or p.suffix == ".log"], leftovers


def test_dry_run_says_which_sglang_checked(world: Any, tmp_path: Path) -> None:
    write_bad_profile(world, '"--speculative-draft", "x"', tmp_path)
    refused = world.run("start", "--profile", "bad-flags", "--dry-run", timeout=120)
    assert refused.returncode == 2
    assert "--speculative-draft is ambiguous" in refused.stderr
    world.write_config("")
    ok = world.run(
        "start", "--profile", "gpt-oss-120b-eagle3", "--dry-run", "--no-host-prep", timeout=120
    )
    # The flags pass; on a machine without a GPU (or NVIDIA runtime) other checks fail, and
    # the dry run exits 1 as the real start would, never 2 (refused flags).
    assert ok.returncode in (0, 1), ok.stderr
    assert "bad_flag" not in ok.stderr and "would refuse" not in ok.stderr, ok.stderr
    flags_line = next(line for line in (ok.stdout + ok.stderr).splitlines()
                      if line.split()[1:2] == ["flags"] and line.split()[0] != "SGLang")
    assert flags_line.split()[0] == "pass", flags_line
    assert "SGLang flags checked with" in flags_line and "sglang 0.5.23" in flags_line


# --- SGLang's real parser (sglang 0.5.23 in a separate venv) -----------------------------


def test_committed_table_matches_the_real_parser() -> None:
    python = parser_python()
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_sglang_flags.py"),
         "--python", python, "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "matches sglang 0.5.23" in completed.stdout


def test_real_parser_agrees_with_the_table(table: FlagTable) -> None:
    python = parser_python()
    good = check_with_parser([python], FLAGSHIP_ARGV[3:], source="real", table=table,
                             timeout_s=120)
    assert not isinstance(good, str), good
    assert good.ok and good.sglang_version == "0.5.23"
    cases = [
        (["--max-model-len", "8192"], "--context-length"),
        (["--gpu-memory-utilization", "0.9"], "--mem-fraction-static"),
        (["--max-batch-size", "4"], "--max-running-requests"),
        (["--speculative-draft", "x"], "--speculative-draft-model-path"),
    ]
    # argparse stops at the first error, so one parser run per wrong flag (two at a time).
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(
            lambda case: check_with_parser([python], ["--model-path", "m", *case[0]],
                                           source="real", table=table, timeout_s=120),
            cases,
        ))
    for (wrong, right), bad in zip(cases, results, strict=True):
        assert not isinstance(bad, str), bad
        assert [p.flag for p in bad.problems] == [wrong[0]]
        assert bad.problems[0].suggestion == right
        assert not check_with_table(["--model-path", "m", *wrong], table).ok


def test_start_uses_the_installed_sglang(world: Any, tmp_path: Path) -> None:
    python = parser_python()
    swap_file = write_bad_profile(world, '"--gpu-memory-utilization", "0.9"', tmp_path)
    text = (world.cwd / "llm-backend.toml").read_text().replace(sys.executable, python)
    world.write_config(text)
    completed = world.run("start", "--profile", "bad-flags", timeout=120)
    assert completed.returncode == 2
    assert "installed sglang" in completed.stderr
    assert "--mem-fraction-static" in completed.stderr
    assert not swap_file.exists()
    profile = json.loads(world.run("profiles", "show", "bad-flags", "--json").stdout)
    assert profile["python"]["value"] == python
