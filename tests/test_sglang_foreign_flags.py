"""Other servers' flags given to SGLang: each maps to SGLang's flag or says why there is none.

The equivalences (`data/foreign_flags.json`) come from vLLM's EngineArgs CLI, llama.cpp's
common/arg.cpp and torchrun; every SGLang flag they name must exist in the 0.5.23 table, and
SGLang's own parser (when SGLANG_PARSER_PYTHON points at it) must refuse each foreign flag.
"""

from __future__ import annotations

import pytest

from llm_backend.config import Profile
from llm_backend.engines.sglang_flags import (
    UNRECOGNIZED,
    check_profile_flags,
    check_with_table,
    image_is_release,
    load_foreign,
    load_table,
    near_typo,
    run_parser,
)
from tests.test_sglang_flags import parser_python

TABLE = load_table()
FOREIGN = load_foreign()


def test_every_equivalence_names_a_real_sglang_flag_or_a_reason() -> None:
    assert len(FOREIGN.flags) > 200
    for foreign in FOREIGN.flags.values():
        assert foreign.flag not in TABLE.by_flag, foreign.flag
        # A unique prefix of an SGLang flag is accepted by SGLang (an abbreviation), not foreign.
        prefixed = {TABLE.by_flag[f].dest for f in TABLE.by_flag if f.startswith(foreign.flag)}
        assert len(prefixed) != 1, foreign.flag
        assert foreign.why
        if foreign.sglang is not None:
            assert foreign.sglang in TABLE.by_flag, foreign
    kv = next(o for o in TABLE.options if o.flags[0] == "--kv-cache-dtype")
    for flag, by_value in FOREIGN.values.items():
        option = TABLE.by_flag[flag]
        assert option.choices, flag
        for value, (use, _) in by_value.items():
            assert value not in option.choices or (option is kv and value == "bf16")
            assert all(choice in option.choices for choice in use), (flag, value)


@pytest.mark.parametrize(
    ("flags", "wrong", "right"),
    [
        (["--num-nodes", "2"], "--num-nodes", "--nnodes"),
        (["--max-model-len", "65536"], "--max-model-len", "--context-length"),
        (["--gpu-memory-utilization", "0.85"], "--gpu-memory-utilization", "--mem-fraction-static"),
        (["-tp", "4"], "-tp", "--tp-size"),
        (["--enforce-eager"], "--enforce-eager", "--disable-cuda-graph"),
        (["--tokenizer", "t"], "--tokenizer", "--tokenizer-path"),
        (["-c", "8192"], "-c", "--context-length"),
        (["-md", "draft.gguf"], "-md", "--speculative-draft-model-path"),
        (["--fp8-gemm-runner-backend", "auto"], "--fp8-gemm-runner-backend", "--fp8-gemm-backend"),
    ],
)
def test_foreign_flags_name_sglangs_flag(flags: list[str], wrong: str, right: str) -> None:
    check = check_with_table(["--model-path", "m", *flags], TABLE)
    assert [(p.flag, p.suggestion) for p in check.problems] == [(wrong, right)]
    assert "numa" not in check.problems[0].message


def test_flags_with_no_equivalent_say_why() -> None:
    check = check_with_table(["--model-path", "m", "-ngl", "99", "--swap-space", "4"], TABLE)
    assert [p.flag for p in check.problems] == ["-ngl", "--swap-space"]
    assert all("no equivalent" in p.message and p.suggestion is None for p in check.problems)
    assert "--cpu-offload-gb" in check.problems[0].message


def test_master_addr_and_port_become_one_dist_init_addr() -> None:
    check = check_with_table(
        ["--model-path", "m", "--master-addr", "10.0.0.1", "--master-port", "5000"], TABLE
    )
    assert [p.suggestion for p in check.problems] == ["--dist-init-addr 10.0.0.1:5000"]


def test_values_with_choices_map_to_sglangs_choices_never_mxfp8() -> None:
    check = check_with_table(["--model-path", "m", "--kv-cache-dtype", "fp8"], TABLE)
    (problem,) = check.problems
    assert "fp8_e4m3" in problem.message and "fp8_e5m2" in problem.message
    assert "mxfp8" not in (problem.suggestion or "")
    assert "did you mean mxfp8" not in problem.message
    parser = check_with_table(["--model-path", "m", "--reasoning-parser", "openai_gptoss"], TABLE)
    assert parser.problems[0].suggestion == "--reasoning-parser gpt-oss"


def test_spelling_is_suggested_only_for_near_typos() -> None:
    assert near_typo("--speculative-algoritm", "--speculative-algorithm")
    assert near_typo("--fp8-gemm-runner-backend", "--fp8-gemm-backend")
    assert near_typo("--size-tp", "--tp-size")
    assert not near_typo("--num-nodes", "--numa-node")
    assert not near_typo("fp8", "mxfp8")
    check = check_with_table(["--model-path", "m", "--speculative-algoritm", "EAGLE3"], TABLE)
    assert check.problems[0].suggestion == "--speculative-algorithm"
    unknown = check_with_table(["--model-path", "m", "--frobnicate-nodes", "2"], TABLE)
    assert unknown.problems[0].suggestion is None


def test_negative_numbers_are_values_not_flags() -> None:
    check = check_with_table(["--model-path", "m", "--chunked-prefill-size", "-1"], TABLE)
    assert check.ok, check.problems


def test_an_image_of_another_release_warns_instead_of_refusing() -> None:
    assert image_is_release("lmsysorg/sglang:v0.5.23", "0.5.23")
    assert image_is_release("lmsysorg/sglang:v0.5.23-cu129", "0.5.23")
    assert not image_is_release("lmsysorg/sglang:latest", "0.5.23")
    assert not image_is_release("lmsysorg/sglang:v0.5.2", "0.5.23")
    profile = Profile.model_validate({
        "name": "p", "engine": "sglang", "model": "m", "runtime": "docker",
        "docker": {"image": "registry.invalid/llm-backend-test/sglang:latest"},
    })
    flags = ["--model-path", "m", "--cuda-graph-max-bs", "2", "--max-model-len", "4096"]
    check = check_profile_flags(profile, flags, table=TABLE)
    assert [p.flag for p in check.warnings] == ["--cuda-graph-max-bs"]
    assert [p.flag for p in check.problems] == ["--max-model-len"]  # vLLM's in every release
    text = " ".join(check.notes)
    assert "0.5.23" in text and "registry.invalid/llm-backend-test/sglang:latest" in text
    pinned = Profile.model_validate({
        "name": "p", "engine": "sglang", "model": "m", "runtime": "docker",
        "docker": {"image": "registry.invalid/llm-backend-test/sglang:v0.5.23"},
    })
    strict = check_profile_flags(pinned, flags, table=TABLE)
    assert {p.flag for p in strict.problems} == {"--cuda-graph-max-bs", "--max-model-len"}


def test_sglangs_own_parser_refuses_every_foreign_flag() -> None:
    """One run of SGLang's parser: argparse lists every unrecognized argument at once."""
    python = parser_python()  # fails in CI when the parser venv is missing, skips elsewhere
    plain = [
        flag for flag in sorted(FOREIGN.flags)
        if not any(name.startswith(flag) for name in TABLE.by_flag)  # prefixes: ambiguous
        # argparse reads `-hf` as `-h` with the value `f` (a different error, still refused)
        and not (flag.startswith("-h") and not flag.startswith("--"))
    ]
    result = run_parser([python], ["--model-path", "m", *plain], timeout_s=300)
    assert not isinstance(result, str), result
    assert result["exit_code"] == 2
    refused = set(UNRECOGNIZED.search(result["stderr"]).group(1).split())  # type: ignore[union-attr]
    assert set(plain) <= refused, sorted(set(plain) - refused)


def test_a_unique_prefix_is_an_abbreviation_not_a_foreign_flag() -> None:
    check = check_with_table(["--model-path", "m", "--tensor-parallel", "2"], TABLE)
    assert check.ok
    assert check.notes == (
        "--tensor-parallel is an abbreviation of --tp-size; write the full name",
    )
