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


# --- reading logs ------------------------------------------------------------------------


def diagnose(world: Env, log: str, *args: str) -> dict[str, Any]:
    completed = world.run("diagnose", *args, str(CASES / log), "--json", timeout=60)
    data: dict[str, Any] = json.loads(completed.stdout)
    return data


def test_compose_prefixed_llama_server_log(world: Env) -> None:
    data = diagnose(world, "openmono-23-llamaserver-compose.log", "--engine", "llamacpp")
    assert data["failure"]["class"] == "bad_flag"
    assert data["failure"]["line"] == "error: invalid argument: 0.0.0.0"
    assert any("restarted" in note for note in data["notes"]), data["notes"]


def test_invalid_hf_flag_stays_bad_flag(world: Env) -> None:
    data = diagnose(world, "llamavim-36-invalid-hf.log", "--engine", "llamacpp")
    assert data["failure"]["class"] == "bad_flag"


def test_nccl_cases(world: Env) -> None:
    assert diagnose(world, "sglang-5594-nccl-socket-abort.log")["failure"]["class"] == "nccl"
    data = diagnose(world, "sglang-4289-nccl-unhandled-system-error.log")
    assert data["failure"]["class"] == "nccl"
    assert data["failure"]["line"].startswith("RuntimeError: NCCL error: unhandled system error")


def test_hang_before_load_is_init_without_failure(world: Env) -> None:
    data = diagnose(world, "sglang-7478-ipv6-hang-before-load.log")
    assert [phase["name"] for phase in data["phases"]] == ["init"]
    assert data["ready"] is False and data["failure"] is None


def test_crash_after_model_info(world: Env) -> None:
    data = diagnose(world, "sglang-33943-crash-after-model-info.log")
    names = [phase["name"] for phase in data["phases"]]
    assert "server_up" in names and data["failure"]["class"] == "child_crash"


def test_not_enough_memory_remedies_use_the_shown_value(world: Env) -> None:
    low = diagnose(world, "gpustack-3831-not-enough-memory-0.2.log")["failure"]
    assert low["class"] == "out_of_memory" and "from 0.2" in low["remedy"]
    plain = diagnose(world, "sglang-4330-not-enough-memory-0.84.log")["failure"]
    assert plain["class"] == "out_of_memory"
    assert "0.85" not in plain["remedy"] and "current value" in plain["remedy"]


def test_other_ranks_did_not_finish_loading(world: Env) -> None:
    failure = diagnose(world, "ktransformers-1666-rank-did-not-finish-loading.log")["failure"]
    assert failure["class"] == "rank_not_loaded"
    assert "--dist-timeout" in failure["remedy"] and "first error" in failure["remedy"]
    assert "attention-backend" not in failure["remedy"]


# --- flags ----------------------------------------------------------------------------------


def test_abbreviated_speculative_draft_is_refused_with_the_full_name(world: Env) -> None:
    in_case(world, "sglang-3362-abbrev-flags")
    completed = world.run("start", "--dry-run", "--profile", "case3362", timeout=120)
    assert completed.returncode != 0
    assert "replace --speculative-draft with --speculative-draft-model-path" in completed.stderr


def test_other_servers_flags_name_sglangs(world: Env) -> None:
    in_case(world, "alengr-spark-vllm-flags")
    completed = world.run("start", "--dry-run", "--profile", "spark-old-flags", timeout=120)
    assert completed.returncode != 0
    err = completed.stderr
    assert "replace `--num-nodes 2` with `--nnodes 2`" in err
    assert ("replace `--master-addr 10.0.0.1` and `--master-port 20000` with "
            "`--dist-init-addr 10.0.0.1:20000`") in err
    assert "fp8_e4m3" in err and "fp8_e5m2" in err and "mxfp8;" not in err
    assert "did you mean mxfp8" not in err and "numa" not in err
    # The value comes along, changed where SGLang's flag means something else (F8).
    assert "replace `--gpu-memory-utilization 0.85` with `--mem-fraction-static 0.8`" in err
    assert "replace `--max-model-len 65536` with `--context-length 65536`" in err
    assert "replace `--kv-cache-dtype fp8` with `--kv-cache-dtype fp8_e4m3`" in err
    assert "replace `--fp8-gemm-runner-backend` with `--fp8-gemm-backend`" in err


def test_an_image_of_another_release_is_a_warning(world: Env) -> None:
    in_case(world, "eagle284-qwen3-eagle3-flags")
    completed = world.run("start", "--dry-run", "--profile", "qwen3-eagle3", timeout=120)
    out = completed.stdout + completed.stderr
    # No flag is refused (exit 2, bad_flag); the GPU checks fail on a machine without one.
    assert completed.returncode != 2 and "failure: bad_flag" not in out, out
    assert "0.5.23" in out and "lmsysorg/sglang:latest" in out
    assert "warning: --cuda-graph-max-bs is ambiguous" in out
    assert "would refuse" not in out


# --- profiles that load and then crash; env merging ------------------------------------------


def test_eagle3_without_draft_is_refused_by_doctor_and_dry_run(world: Env) -> None:
    in_case(world, "sglang-36528-eagle3-no-draft")
    completed = world.run("doctor", "--json", "--profile", "qwen-eagle3-nodraft", timeout=120)
    settings = checks_by_name(json.loads(completed.stdout))["settings"]
    assert settings["status"] == "fail" and "draft" in settings["summary"]
    assert "draft_model" in settings["fix"]
    dry = world.run("start", "--dry-run", "--profile", "qwen-eagle3-nodraft", timeout=120)
    assert dry.returncode == 2
    assert "draft_model" in dry.stderr and "failure: bad_flag" in dry.stderr


def test_spec_v2_with_tree_drafting_is_warned_and_the_parent_env_kept(world: Env) -> None:
    """SGLang 0.5.23's own checks do not refuse it (it no longer reads the variable): a
    warning that names the crash older releases had (#14077), not a refusal."""
    in_case(world, "sglang-14077-inline-flags")
    completed = world.run("doctor", "--json", "--profile", "oss120-specv2", timeout=120)
    checks = checks_by_name(json.loads(completed.stdout))
    assert checks["flags"]["status"] == "pass", checks["flags"]
    assert checks["settings"]["status"] == "warn"
    assert "SGLANG_ENABLE_SPEC_V2" in checks["settings"]["summary"]
    assert "14077" in checks["settings"]["summary"]
    dry = world.run("start", "--dry-run", "--profile", "oss120-specv2", timeout=120)
    # Not refused for its settings (the GPU checks fail on a machine without one).
    assert dry.returncode != 2 and "failure: bad_flag" not in dry.stderr, dry.stderr
    assert "settings:" not in dry.stderr.partition("error:")[2], dry.stderr
    shown = json.loads(world.run("profiles", "show", "oss120-specv2", "--json").stdout)
    assert shown["env.SGLANG_ENABLE_SPEC_V2"]["value"] == "1"
    assert shown["env.SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"]["value"] == "1"
    assert shown["env.TIKTOKEN_ENCODINGS_BASE"]["value"] == "/tiktoken_encodings"


def test_compose_env_is_merged_with_the_parents(world: Env) -> None:
    in_case(world, "sglang-23490-serve-json-arg")
    completed = world.run("compose", "--profile", "kimi-eagle3", timeout=120)
    assert completed.returncode == 0, completed.stderr
    import yaml

    document = yaml.safe_load(completed.stdout)
    (service,) = document["services"].values()
    assert service["environment"] == {
        "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1",
        "TIKTOKEN_ENCODINGS_BASE": "/tiktoken_encodings",
        "SGLANG_ENABLE_SPEC_V2": "1",
    }
    shown = json.loads(world.run("profiles", "show", "kimi-eagle3", "--json").stdout)
    assert shown["env.SGLANG_ENABLE_SPEC_V2"]["source"] == "./llm-backend.toml"
    assert shown["env.TIKTOKEN_ENCODINGS_BASE"]["source"].startswith("built-in")


def test_a_real_start_lists_every_problem_at_once(world: Env) -> None:
    """Flags are refused together with the machine's problems, not after they are fixed."""
    world.write_config(
        '[profiles.vllm-habits]\nengine = "sglang"\nruntime = "native"\n'
        'python = "/nonexistent/python3"\nmodel = "Qwen/Qwen2.5-0.5B-Instruct"\n'
        'extra_args = ["--max-model-len", "8192"]\n[profiles.vllm-habits.host_prep]\n'
        "enabled = false\n"
    )
    completed = world.run("start", "--profile", "vllm-habits", timeout=120)
    assert completed.returncode != 0
    err = completed.stderr
    assert "flags:" in err and "--max-model-len" in err and "--context-length" in err
    assert "sglang:" in err  # the package problem, in the same report
    assert not (world.state_dir / "instance.json").exists()


def test_a_copy_of_gpt_oss_120b_has_known_needs_and_an_unmounted_encoding_folder(
    world: Env,
) -> None:
    in_case(world, "sglang-11751-compose-offload")
    completed = world.run("doctor", "--json", "--profile", "oss120-3090-offload", timeout=120)
    checks = checks_by_name(json.loads(completed.stdout))
    assert "no known memory need" not in checks["memory"]["summary"]
    assert checks["memory"]["details"]["need"] == 75 * 1024**3, checks["memory"]
    assert "unsloth/gpt-oss-120b" in checks["disk"]["summary"]
    assert "60.5 GiB" in checks["disk"]["summary"]
    tiktoken = checks["tiktoken"]
    assert "in None" not in tiktoken["summary"]
    assert "mounts" in tiktoken["summary"] and "/tiktoken_encodings" in tiktoken["fix"]
