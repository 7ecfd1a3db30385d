"""Settings SGLang 0.5.23 accepts at parse time and fails on at load, refused before launch.

Each rule comes from SGLang's own checks (arg_groups/speculative_hook.py, server_args.py), its
docs, or an issue where the load crashed; the test builds the smallest profile that hits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_backend.config import Profile
from llm_backend.engines.sglang import SGLangEngine, setting_problems
from llm_backend.errors import ConfigError


def profile(**fields: Any) -> Profile:
    spec = fields.pop("speculative", {})
    return Profile.model_validate({
        "name": "p", "engine": "sglang", "model": fields.pop("model", "Qwen/Qwen2.5-7B-Instruct"),
        "speculative": {"enabled": True, **spec}, **fields,
    })


def statuses(problems: list[Any]) -> list[tuple[str, str]]:
    return [(problem.status, problem.message.split(":")[0]) for problem in problems]


def test_eagle3_without_a_draft_is_refused() -> None:
    problems = setting_problems(profile(speculative={"algorithm": "EAGLE3"}))
    assert [p.status for p in problems] == ["fail"]
    assert "draft" in problems[0].message and "36528" in problems[0].source
    assert "draft_model" in problems[0].fix
    with pytest.raises(ConfigError) as caught:
        SGLangEngine().check_profile(profile=profile(speculative={"algorithm": "EAGLE3"}))
    assert caught.value.failure_class == "bad_flag"


def test_eagle_without_a_draft_is_fine_for_a_model_with_its_own_mtp_layers(tmp_path: Path) -> None:
    assert setting_problems(profile(model="deepseek-ai/DeepSeek-V3",
                                    speculative={"algorithm": "EAGLE"})) == []
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text('{"architectures": ["Glm4MoeForCausalLM"]}')
    assert setting_problems(profile(model=str(local), speculative={"algorithm": "EAGLE"})) == []
    (local / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert [p.status for p in setting_problems(
        profile(model=str(local), speculative={"algorithm": "EAGLE"}))] == ["fail"]
    # EAGLE3 always needs its own draft, MTP layers or not.
    assert setting_problems(profile(model="deepseek-ai/DeepSeek-V3",
                                    speculative={"algorithm": "EAGLE3"}))[0].status == "fail"


@pytest.mark.parametrize("algorithm", ["STANDALONE", "DFLASH"])
def test_draft_model_algorithms_need_a_draft(algorithm: str) -> None:
    assert [p.status for p in setting_problems(
        profile(speculative={"algorithm": algorithm}))] == ["fail"]


def test_the_draft_may_come_from_extra_args() -> None:
    assert setting_problems(profile(
        speculative={"enabled": False},
        extra_args=["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "d",
                    "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                    "--speculative-num-draft-tokens", "4"],
    )) == []


def test_tree_drafting_with_spec_v2_is_warned() -> None:
    spec = {"algorithm": "EAGLE3", "draft_model": "d", "num_steps": 5, "eagle_topk": 4,
            "num_draft_tokens": 8}
    problems = setting_problems(profile(speculative=spec, env={"SGLANG_ENABLE_SPEC_V2": "1"}))
    # 0.5.23 does not read the variable (no check refuses it): a warning for older images.
    assert [p.status for p in problems] == ["warn"]
    assert "14077" in problems[0].source and "eagle_topk = 1" in problems[0].fix
    assert setting_problems(profile(speculative=spec)) == []
    assert setting_problems(profile(speculative=spec, env={"SGLANG_ENABLE_SPEC_V2": "0"})) == []
    # Older releases read it as srt/environ.py EnvBool: "on" was no true value there.
    assert setting_problems(profile(speculative=spec, env={"SGLANG_ENABLE_SPEC_V2": "on"})) == []
    assert [p.status for p in setting_problems(
        profile(speculative=spec, env={"SGLANG_ENABLE_SPEC_V2": "yes"}))] == ["warn"]


def test_tree_drafting_at_0_5_23_fails_only_where_sglang_refuses_it() -> None:
    """At 0.5.23 EAGLE3 always runs the V2 worker, which drafts trees: topk 4 on triton (the
    #14077 profile's backend) passes; on aiter its spec v2 path raises NotImplementedError."""
    spec = {"algorithm": "EAGLE3", "draft_model": "d", "num_steps": 5, "eagle_topk": 4,
            "num_draft_tokens": 8}
    triton = profile(speculative=spec, extra_args=["--attention-backend", "triton"])
    assert setting_problems(triton) == []
    aiter = setting_problems(profile(speculative=spec, extra_args=["--attention-backend", "aiter"]))
    assert [p.status for p in aiter] == ["fail"]
    assert "_ensure_spec_v2_topk_supported" in aiter[0].source
    one = dict(spec, eagle_topk=1, num_draft_tokens=6)
    aiter_one = profile(speculative=one, extra_args=["--attention-backend", "aiter"])
    assert setting_problems(aiter_one) == []


@pytest.mark.parametrize(
    ("extra_args", "words"),
    [
        (["--attention-backend", "trtllm_mha"], "trtllm_mha"),
        (["--page-size", "16", "--attention-backend", "flashmla"], "--page-size 16"),
        (["--speculative-use-rejection-sampling"], "rejection-sampling"),
    ],
)
def test_topk_above_one_with_backends_that_do_not_tree_draft(
    extra_args: list[str], words: str
) -> None:
    spec = {"algorithm": "EAGLE3", "draft_model": "d", "num_steps": 5, "eagle_topk": 4,
            "num_draft_tokens": 8}
    problems = setting_problems(profile(speculative=spec, extra_args=extra_args))
    assert [p.status for p in problems] == ["fail"] and words in problems[0].message


def test_topk_one_with_other_draft_tokens_is_a_warning() -> None:
    problems = setting_problems(profile(speculative={
        "algorithm": "EAGLE3", "draft_model": "d", "num_steps": 3, "eagle_topk": 1,
        "num_draft_tokens": 8}))
    assert [p.status for p in problems] == ["warn"]
    assert "num_draft_tokens = 4" in problems[0].fix


def test_gpt_oss_attention_backends_and_dp_attention() -> None:
    gpt_oss = setting_problems(profile(
        model="unsloth/gpt-oss-120b", speculative={"enabled": False},
        extra_args=["--attention-backend", "flashinfer"]))
    assert [p.status for p in gpt_oss] == ["fail"]  # with or without speculative decoding
    gpt_oss = setting_problems(profile(
        model="unsloth/gpt-oss-120b",
        speculative={"algorithm": "EAGLE3", "draft_model": "d"},
        extra_args=["--attention-backend", "flashinfer"]))
    assert [p.status for p in gpt_oss] == ["fail"] and "gpt-oss" in gpt_oss[0].message
    dp = setting_problems(profile(
        speculative={"algorithm": "NGRAM"}, extra_args=["--enable-dp-attention"]))
    assert [p.status for p in dp] == ["fail"]
    dflash = {"algorithm": "DFLASH", "draft_model": "d"}
    assert [p.status for p in setting_problems(profile(
        speculative=dflash, extra_args=["--enable-dp-attention"]))] == ["fail"]
    assert setting_problems(profile(
        speculative=dflash, extra_args=["--enable-dp-attention", "--enable-dp-lm-head"])) == []


def test_speculative_set_twice_is_a_warning() -> None:
    problems = setting_problems(profile(
        speculative={"algorithm": "EAGLE3", "draft_model": "d"},
        extra_args=["--speculative-algorithm", "EAGLE3"]))
    assert [p.status for p in problems] == ["warn"]


# --- model facts: recognised by the model's config, not its repo id --------------------------


def test_model_facts_follow_the_model_not_the_repo_id(tmp_path: Path) -> None:
    from llm_backend.engines.hub import model_facts_for

    def fresh(model: str, **fields: Any) -> Profile:
        return Profile.model_validate({"name": "m", "engine": "sglang", "model": model, **fields})

    # Another org's copy of the same checkpoint, with no facts of its own.
    copy = model_facts_for(fresh("unsloth/gpt-oss-120b"))
    assert copy.min_gpu_memory == "75G" and copy.moe_layers == 36
    # A local folder, recognised by its config.json whatever its name.
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 24}'
    )
    assert model_facts_for(fresh(str(folder))).min_gpu_memory == "22G"
    # A different model extending the gpt-oss profile does not inherit its facts.
    qwen = tmp_path / "Qwen3-4B"
    qwen.mkdir()
    (qwen / "config.json").write_text(
        '{"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 36}'
    )
    from llm_backend.config import ConfigSet, Layer, builtin_layer

    user = Layer(label="x", profiles={
        "q": {"extends": "gpt-oss-120b-eagle3", "model": str(qwen)},
        "q-hub": {"extends": "gpt-oss-120b-eagle3", "model": "Qwen/Qwen3-4B"},
    })
    config = ConfigSet(layers=[builtin_layer(), user])
    assert model_facts_for(config.resolve("q").profile).min_gpu_memory is None
    assert model_facts_for(config.resolve("q-hub").profile).min_gpu_memory is None
    # The built-in profile itself keeps its facts; own facts of a user profile are kept.
    assert model_facts_for(config.resolve("gpt-oss-120b-eagle3").profile).moe_layers == 36
    own = fresh("Qwen/Qwen3-4B", model_facts={"min_gpu_memory": "12G"})
    assert model_facts_for(own).min_gpu_memory == "12G"


def test_flags_the_profile_writes_itself_are_warned_when_repeated() -> None:
    problems = setting_problems(profile(
        speculative={"enabled": False}, extra_args=["--port", "8000", "--model", "other"]))
    assert [(p.status, p.message.split(" ")[0]) for p in problems] == [
        ("warn", "--model-path"), ("warn", "--port")]
    assert "`port`" in problems[1].fix


def test_an_ipv6_host_reaches_the_server_without_brackets() -> None:
    bracketed = Profile.model_validate(
        {"name": "v6", "engine": "sglang", "model": "m", "host": "[::1]", "port": 31000})
    argv = SGLangEngine().build_argv(profile=bracketed)
    assert argv[argv.index("--host") + 1] == "::1"
    assert bracketed.endpoint == "http://[::1]:31000"


def test_an_ipv6_rendezvous_in_extra_args_is_held_to_the_distributed_rule() -> None:
    """`distributed.dist_init_addr` refuses IPv6 (this tool's multi-node checks are IPv4); the
    same address in extra_args, which SGLang 0.5.23 parses ([IPv6]:PORT), is a warning that
    says so. A bare IPv6 one is the flag check's (SGLang refuses it at parse time)."""
    spec = {"enabled": False}
    ipv6 = setting_problems(profile(speculative=spec, extra_args=[
        "--dist-init-addr", "[fd00::1]:5000", "--nnodes", "2", "--node-rank", "0"]))
    assert [p.status for p in ipv6] == ["warn"]
    assert ipv6[0].message.startswith("--dist-init-addr [fd00::1]:5000 is IPv6")
    assert "#7478" in ipv6[0].source and "NetworkAddress.parse" in ipv6[0].source
    ipv4 = profile(speculative=spec, extra_args=["--dist-init-addr", "10.0.0.1:5000"])
    assert setting_problems(ipv4) == []
    with pytest.raises(Exception, match=r"IPv6 address without brackets.*\[fd00::1\]:5000"):
        profile(speculative=spec, distributed={"nnodes": 2, "dist_init_addr": "fd00::1:5000"})
    with pytest.raises(Exception, match="IPv6 address; llm-backend's multi-node setup"):
        profile(speculative=spec, distributed={"nnodes": 2, "dist_init_addr": "[fd00::1]:5000"})
    twice = setting_problems(profile(
        speculative=spec, distributed={"nnodes": 2, "dist_init_addr": "10.0.0.1:20000"},
        extra_args=["--dist-init-addr", "10.0.0.2:20000"]))
    assert statuses(twice) == [("warn", "--dist-init-addr 10.0.0.2")]
    assert "repeats `distributed.dist_init_addr`" in twice[0].message


def test_context_length_in_extra_args_repeats_the_profile_key() -> None:
    """The engine writes --context-length from `context_length`: vLLM's --max-model-len fixed
    to --context-length in extra_args is one more flag the profile already owns."""
    problems = setting_problems(profile(speculative={"enabled": False}, context_length=8192,
                                        extra_args=["--context-length", "4096"]))
    assert [(p.status, p.fix) for p in problems] == [(
        "warn", "set `context_length` in [profiles.p] and remove --context-length from extra_args",
    )]
