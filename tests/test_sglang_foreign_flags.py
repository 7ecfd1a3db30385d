"""Other servers' flags given to SGLang: each maps to SGLang's flag or says why there is none.

The equivalences (`data/foreign_flags.json`) come from vLLM's EngineArgs CLI, llama.cpp's
common/arg.cpp and torchrun; every SGLang flag they name must exist in the 0.5.23 table, and
SGLang's own parser (when SGLANG_PARSER_PYTHON points at it) must refuse each foreign flag.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from llm_backend.config import Profile
from llm_backend.credentials import MASK
from llm_backend.engines.sglang_flags import (
    _PARSER_PRELUDE,
    UNRECOGNIZED,
    FlagCheck,
    check_profile_flags,
    check_with_parser,
    check_with_table,
    fix_text,
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


@pytest.mark.parametrize(
    ("extra", "fix"),
    [
        (["--master-addr", "10.0.0.1", "--master-port", "5000"],
         "replace `--master-addr 10.0.0.1` and `--master-port 5000` with "
         "`--dist-init-addr 10.0.0.1:5000`"),
        # SGLang 0.5.23 NetworkAddress.parse refuses a bare IPv6 host: net.host_port brackets it.
        (["--master-addr", "fd00::1", "--master-port", "5000"],
         "replace `--master-addr fd00::1` and `--master-port 5000` with "
         "`--dist-init-addr [fd00::1]:5000`"),
        # A --dist-init-addr is already there: a second one would be wrong; drop the port flag.
        (["--master-port", "5000", "--dist-init-addr", "10.0.0.1:20000"],
         "remove `--master-port 5000`"),
        # One node, a port alone: the port of its process group.
        (["--master-port", "5000"], "replace `--master-port 5000` with `--nccl-port 5000`"),
        (["--master-addr", "10.0.0.1"],
         "replace `--master-addr 10.0.0.1` with `--dist-init-addr 10.0.0.1:29500`"),
    ],
)
def test_master_addr_and_port_become_one_dist_init_addr(extra: list[str], fix: str) -> None:
    check = check_with_table(["--model-path", "m", *extra], TABLE)
    assert len(check.problems) == 1
    assert fix_text(check.problems, "p") == fix
    assert check_with_table(follow(["--model-path", "m", *extra], fix), TABLE).ok


@pytest.mark.parametrize(
    ("value", "right"),
    [("fd00::1:5000", "[fd00::1]:5000"), ("10.0.0.1", None), ("fd00::1", None),
     ("[fd00::1]", None), ("[10.0.0.1]:5000", "10.0.0.1:5000"), ("10.0.0.1:70000", None)],
)
def test_dist_init_addr_is_read_as_sglang_reads_it(value: str, right: str | None) -> None:
    """SGLang 0.5.23 `srt/utils/network.py` NetworkAddress.parse: bracketed IPv6, port required."""
    check = check_with_table(["--model-path", "m", "--dist-init-addr", value], TABLE)
    (problem,) = check.problems
    assert problem.certain and "NetworkAddress.parse" in problem.message
    assert problem.right == (("--dist-init-addr", right) if right else None)
    for good in ("[fd00::1]:5000", "10.0.0.1:5000", "node-0.example:20000"):
        assert check_with_table(["--model-path", "m", "--dist-init-addr", good], TABLE).ok


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


# --- every fix, followed literally, gives an argv SGLang's own parser accepts (F8) ----------

FIX_CLAUSE = re.compile(
    r"^(?P<verb>replace|remove) (?P<spans>`[^`]*`(?: and `[^`]*`)*)(?: with `(?P<right>[^`]*)`)?"
)


def masked_match(shown: str, given: str) -> bool:
    """A fix's token stands for the argv's: the same, or the value masked (`********`,
    `--flag=********`)."""
    flag, inline, value = shown.partition("=")
    return shown in (given, MASK) or (inline == "=" and value == MASK
                                      and given.startswith(flag + "="))


def follow(argv: list[str], fix: str) -> list[str]:
    """Apply a `fix:` text literally, as a user would: every "replace `A` with `B`" and
    "remove `A`" clause (separated by "; ") edits the argv's tokens; nothing else is read."""
    out = list(argv)
    for clause in fix.split("; "):
        match = FIX_CLAUSE.match(clause)
        assert match, f"not a literal edit: {clause!r}"
        spans = [shlex.split(span) for span in re.findall(r"`([^`]*)`", match["spans"])]
        right = shlex.split(match["right"]) if match["right"] else []
        for number, span in enumerate(spans):
            # A masked secret (********) stands for the value the user wrote there.
            at = next(i for i in range(len(out)) if len(out[i:i + len(span)]) == len(span)
                      and all(masked_match(x, y) for x, y in zip(span, out[i:], strict=False)))
            out[at:at + len(span)] = right if number == 0 else []
    return out


def parse_all(argvs: list[list[str]]) -> list[dict[str, object]]:
    """SGLang's own parser (the pinned 0.5.23 venv) on many argvs in one process."""
    script = _PARSER_PRELUDE + (
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            parser.parse_args(argv)\n"
        "            code = 0\n"
        "        except SystemExit as exit_:\n"
        "            code = exit_.code if isinstance(exit_.code, int) else 2\n"
        "        except Exception as error:  # an action's assert (LoRAPathAction)\n"
        "            code, _ = 3, err.write(repr(error))\n"
        "    results.append({'argv': argv, 'code': code, 'stderr': err.getvalue()[-400:]})\n"
        "print('RESULTS ' + json.dumps(results))\n"
    )
    completed = subprocess.run(
        [parser_python(), "-c", script, json.dumps(argvs)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    line = next((x for x in completed.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert line, completed.stderr[-2000:]
    results: list[dict[str, object]] = json.loads(line[len("RESULTS "):])
    return results


def samples() -> list[list[str]]:
    """Every table entry with its sample value, and with every value its map names."""
    cases: list[list[str]] = []
    for foreign in FOREIGN.flags.values():
        cases.append([foreign.flag, *foreign.sample])
        for value in foreign.value_map or {}:
            if value and [value] != list(foreign.sample):
                cases.append([foreign.flag, value])
    return cases


def test_every_entry_says_what_becomes_of_its_value() -> None:
    for foreign in FOREIGN.flags.values():
        assert foreign.takes in (0, 1, "?", "+"), foreign.flag
        if foreign.takes != 0:
            assert foreign.sample, f"{foreign.flag} takes a value: give it a sample"
        else:
            assert not foreign.sample, foreign.flag
        for tokens in [*(foreign.value_map or {}).values(), foreign.replace]:
            for token in tokens or ():
                assert not token.startswith("--") or token in TABLE.by_flag, (foreign.flag, token)
        if foreign.sglang is not None and foreign.takes == 0 and not (
            foreign.replace or foreign.from_flags or foreign.by_hand
        ):
            # A switch maps to a switch, or says where the value comes from.
            assert TABLE.by_flag[foreign.sglang].nargs == 0, foreign.flag


def test_following_every_fix_literally_parses_with_sglangs_own_parser() -> None:
    """Every entry of the equivalence table, with a sample value: the `fix:` text, followed
    word for word, leaves an argv that SGLang 0.5.23's real parser accepts and that the
    table finds nothing wrong with."""
    fixed: list[list[str]] = []
    for case in samples():
        argv = ["--model-path", "m", *case]
        check = check_with_table(argv, TABLE)
        assert check.problems, case
        assert all(problem.certain for problem in check.problems), (case, check.problems)
        fix = fix_text(check.problems, "p")
        assert fix, (case, [p.message for p in check.problems])
        after = follow(argv, fix)
        assert check_with_table(after, TABLE).ok, (case, fix, after)
        fixed.append(after)
    results = parse_all(fixed)
    refused = [(r["argv"], r["stderr"]) for r in results if r["code"] != 0]
    assert not refused, refused


@pytest.mark.parametrize(
    ("extra", "fix"),
    [
        (["--distributed-executor-backend", "mp"], "remove `--distributed-executor-backend mp`"),
        (["--distributed-executor-backend", "ray"],
         "replace `--distributed-executor-backend ray` with `--use-ray`"),
        (["--enable-expert-parallel", "--tp-size", "4"],
         "replace `--enable-expert-parallel` with `--ep-size 4`"),
        (["--flash-attn", "on"], "remove `--flash-attn on`"),
        (["-fa"], "remove `-fa`"),
        (["-fa", "off"], "replace `-fa off` with `--attention-backend triton`"),
        (["--gpu-memory-utilization", "0.9"],
         "replace `--gpu-memory-utilization 0.9` with `--mem-fraction-static 0.85`"),
        (["--max-model", "4096"], "replace `--max-model 4096` with `--context-length 4096`"),
        (["--max_model_len", "4096"],
         "replace `--max_model_len 4096` with `--context-length 4096`"),
        (["-O3"], "replace `-O3` with `--enable-torch-compile`"),
        (["-ctk", "q8_0"], "replace `-ctk q8_0` with `--kv-cache-dtype fp8_e4m3`"),
        (["-ts", "3,1"], "replace `-ts 3,1` with `--tp-size 2`"),
        (["--nproc-per-node", "8", "--nnodes", "2"],
         "replace `--nproc-per-node 8` with `--tp-size 16`"),
        (["--all2all-backend", "deepep_low_latency"],
         "replace `--all2all-backend deepep_low_latency` with "
         "`--moe-a2a-backend deepep --deepep-mode low_latency`"),
        # Several flags that become one SGLang flag become one fix (argparse keeps the last).
        (["--temp", "0.7", "--top-p", "0.9", "--top-k", "40"],
         "replace `--temp 0.7` and `--top-p 0.9` and `--top-k 40` with "
         "`--preferred-sampling-params '{\"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 40}'`"),
        (["-ctk", "q8_0", "-ctv", "q8_0"],
         "replace `-ctk q8_0` and `-ctv q8_0` with `--kv-cache-dtype fp8_e4m3`"),
        (["--rope-theta", "1000000"],
         "replace `--rope-theta 1000000` with "
         "`--json-model-override-args '{\"rope_theta\": 1000000}'`"),
    ],
)
def test_fix_lines_carry_the_right_value(extra: list[str], fix: str) -> None:
    check = check_with_table(["--model-path", "m", *extra], TABLE)
    assert fix_text(check.problems, "p") == fix


def test_speculative_config_points_at_the_speculative_table() -> None:
    config = '{"method": "eagle3", "model": "org/draft", "num_speculative_tokens": 3}'
    check = check_with_table(["--model-path", "m", "--speculative-config", config], TABLE)
    fix = fix_text(check.problems, "p")
    assert fix == (
        f"remove `--speculative-config '{config}'`, then set enabled = true, "
        'algorithm = "EAGLE3", draft_model = "org/draft", num_steps = 3, eagle_topk = 1, '
        "num_draft_tokens = 4 in [profiles.p.speculative]"
    )
    assert "--speculative-algorithm" not in fix


@pytest.mark.parametrize(
    ("flag", "value", "right"),
    [
        ("--kv-cache-dtype", "fp8e4m3", "fp8_e4m3"),  # separators dropped: a near-typo
        ("--kv-cache-dtype", "FP8_E4M3", "fp8_e4m3"),  # case
        ("--kv-cache-dtype", "FP8", "fp8_e4m3"),  # vLLM's fp8, in capitals: never mxfp8
        ("--kv-cache-dtype", "q8_0", "fp8_e4m3"),  # llama.cpp's cache type
        ("--attention-backend", "FLASHINFER", "flashinfer"),
        ("--attention-backend", "flashinfr", "flashinfer"),
        ("--attention-backend", "FLASH_ATTN", "fa3"),  # vLLM's AttentionBackendEnum names
        ("--attention-backend", "flash_attn", "fa3"),
        ("--attention-backend", "TRITON_ATTN", "triton"),
        ("--attention-backend", "TORCH_SDPA", "torch_native"),
        ("--dtype", "bf16", "bfloat16"),  # --dtype spells it out; --kv-cache-dtype takes bf16
        ("--dtype", "fp16", "float16"),
        ("--reasoning-parser", "deepseek_r1", "deepseek-r1"),
        ("--tool-call-parser", "openai", "gpt-oss"),
    ],
)
def test_values_with_choices_get_sglangs_choice(flag: str, value: str, right: str) -> None:
    """Choices are SGLang 0.5.23's (the committed table, from its own parser)."""
    check = check_with_table(["--model-path", "m", flag, value], TABLE)
    assert len(check.problems) == 1
    assert fix_text(check.problems) == f"replace `{flag} {value}` with `{flag} {right}`"
    assert right in TABLE.by_flag[flag].choices  # type: ignore[operator]
    assert "mxfp8" not in fix_text(check.problems)  # type: ignore[operator]


def test_a_value_with_no_near_choice_gets_no_guess() -> None:
    for value in ("fp8", "flash", "int4"):
        check = check_with_table(["--model-path", "m", "--kv-cache-dtype", value], TABLE)
        assert "mxfp8" not in (fix_text(check.problems) or "")
    check = check_with_table(["--model-path", "m", "--attention-backend", "banana"], TABLE)
    (problem,) = check.problems
    assert problem.right is None and fix_text(check.problems) is None


def test_sglangs_own_parser_gives_the_same_literal_fixes() -> None:
    """With SGLang's parser doing the check (the installed sglang of a native profile), the
    fix lines still carry the values, and --dist-init-addr (which the parser accepts and
    SGLang refuses when it starts) is still read."""
    profile = Profile.model_validate({
        "name": "p", "engine": "sglang", "model": "m", "runtime": "native",
        "python": parser_python(),
    })
    cases = {
        ("--gpu-memory-utilization", "0.9", "--attention-backend", "FLASH_ATTN"):
            "replace `--gpu-memory-utilization 0.9` with `--mem-fraction-static 0.85`; "
            "replace `--attention-backend FLASH_ATTN` with `--attention-backend fa3`",
        ("--dist-init-addr", "fd00::1:5000"):
            "replace `--dist-init-addr fd00::1:5000` with `--dist-init-addr [fd00::1]:5000`",
    }
    for extra, fix in cases.items():
        check = check_profile_flags(profile, ["--model-path", "m", *extra])
        assert check.source.startswith("the installed sglang"), check
        assert sorted((fix_text(check.problems, "p") or "").split("; ")) == sorted(fix.split("; "))


def test_fixes_for_missing_or_wrong_values_are_literal_too() -> None:
    """Every entry given no value, a value that is no number, a flag where its value should
    be, or `--flag=x`: the fix is still a literal edit, and following it leaves flags the
    table accepts (where no literal value exists it removes the flag and says what to add)."""
    followed: list[list[str]] = []
    for flag in FOREIGN.flags:
        # Values SGLang's typed flags refuse (int, float, human_readable_int, json.loads),
        # also in the `--flag=value` form, and numbers that cannot be scaled or rounded.
        for extra in ([flag], [flag, "junk value"], [flag, "--enable-metrics"], [flag + "=x"],
                      [flag, ""], [flag, "a=b"], [flag + "=true"], [flag, "1e3"],
                      [flag, "4,096"], [flag, "inf"], [flag, "nan"], [flag, "1e999"],
                      [flag, "{}"]):
            argv = ["--model-path", "m", *extra]
            fix = fix_text(check_with_table(argv, TABLE).problems, "p")
            assert fix, extra
            after = follow(argv, fix)
            assert check_with_table(after, TABLE).ok, (extra, fix)
            followed.append(after)
    refused = [(r["argv"], r["stderr"]) for r in parse_all(followed) if r["code"] != 0]
    assert not refused, refused[:5]


@pytest.mark.parametrize(
    ("extra", "fix"),
    [
        (["--max-model-len=true"], "remove `--max-model-len=true`, then add --context-length "
         "with an integer"),
        (["-b", "4,096"], "remove `-b 4,096`, then add --max-prefill-tokens with an integer"),
        (["--max-model-len", "32k"], "replace `--max-model-len 32k` with `--context-length 32k`"),
        (["--override-generation-config", "temperature=0.7"],
         "remove `--override-generation-config temperature=0.7`, then add "
         "--preferred-sampling-params with JSON"),
        (["--gpu-memory-utilization", "inf"], "remove `--gpu-memory-utilization inf`, then add "
         "--mem-fraction-static with a number"),
        # vLLM's JSON adapter form; SGLang asserts lora_name/lora_path in a JSON value.
        (["--lora-modules", '{"name": "a", "path": "/loras/a", "base_model_name": "m"}'],
         "replace `--lora-modules '{\"name\": \"a\", \"path\": \"/loras/a\", "
         "\"base_model_name\": \"m\"}'` with `--lora-paths a=/loras/a`"),
        (["--lora", "{}"],
         "remove `--lora {}`, then add --lora-paths with NAME=PATH for each adapter"),
        # torchrun's address with its port already in it: one port, not HOST:PORT:29500.
        (["--master-addr", "10.0.0.1:5000"],
         "replace `--master-addr 10.0.0.1:5000` with `--dist-init-addr 10.0.0.1:5000`"),
        (["--master-addr", "10.0.0.1:5000", "--master-port", "6000"],
         "replace `--master-addr 10.0.0.1:5000` and `--master-port 6000` with "
         "`--dist-init-addr 10.0.0.1:6000`"),
    ],
)
def test_values_sglangs_typed_flags_refuse_are_never_carried(extra: list[str], fix: str) -> None:
    """SGLang 0.5.23 types --context-length and --max-prefill-tokens with human_readable_int
    (srt/utils/common.py: 32k is fine, 4,096 is not) and the JSON flags with json.loads; a
    value they refuse is not carried into the fix, and `inf` is no number to scale."""
    argv = ["--model-path", "m", *extra]
    check = check_with_table(argv, TABLE)
    assert fix_text(check.problems, "p") == fix
    (result,) = parse_all([follow(argv, fix)])  # SGLang 0.5.23's own parser takes it
    assert result["code"] == 0, result


def test_a_secret_flags_value_is_never_shown_even_inline() -> None:
    """llama.cpp's -hft/--hf-token passes config's secret-flag refusal as `-hft=VALUE` (not a
    `*-token` long flag); the flag advice `doctor` prints must not echo the value."""
    secret = "abcdefsecretvalue123"
    entries = [foreign.flag for foreign in FOREIGN.flags.values() if foreign.secret]
    assert "-hft" in entries
    for flag in entries:
        for extra in ([flag, secret], [f"{flag}={secret}"]):
            argv = ["--model-path", "m", *extra]
            check = check_with_table(argv, TABLE)
            shown = " ".join([fix_text(check.problems, "p") or "",
                              *(problem.message for problem in check.problems)])
            assert secret not in shown, shown
            assert MASK in shown
            assert check_with_table(follow(argv, fix_text(check.problems, "p") or ""),
                                    TABLE).ok


def test_sglangs_parser_echo_of_a_secret_value_is_masked() -> None:
    """argparse echoes what it refuses (`-hft=V` is read as -h with `ft=V`): the problems from
    SGLang's own parser never carry the value of a secret flag."""
    secret = "abcdefsecretvalue123"
    for extra in (["-hft", secret], [f"-hft={secret}"]):
        checked = check_with_parser([parser_python()], ["--model-path", "m", *extra],
                                    source="sglang", table=TABLE, timeout_s=120)
        assert isinstance(checked, FlagCheck) and checked.problems, checked
        shown = " ".join([fix_text(checked.problems, "p") or "",
                          *(problem.message for problem in checked.problems)])
        assert secret not in shown and MASK in shown, shown
