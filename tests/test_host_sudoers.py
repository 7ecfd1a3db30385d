"""Nothing a profile says can widen the sudoers rules or what root's commands touch.

Refusals are checked through the CLI (`error:` + `fix:`, exit 2, nothing written). The
generated rules are checked with `visudo -c`, and then installed for the user `nobody` and
asked with `sudo -l -U nobody COMMAND` which command lines they allow: exactly the ones the
tool runs, and none of the lines an attacker would try (the test that installs rules is
marked hostprep: it adds a file to /etc/sudoers.d for its duration).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_backend.config import load_config
from llm_backend.errors import ConfigError
from llm_backend.host import sudoers_text
from llm_backend.host.privileges import tool
from tests.conftest import Env

UNSAFE_PATHS = [
    "/var/tmp/x *",
    "/var/tmp/x /etc/shadow",
    "/var/tmp/x\nnobody ALL=(ALL) NOPASSWD: ALL",
    "/var/tmp/x,/etc/shadow",
    "/var/tmp/sw?p",
    "/var/tmp/[a]",
    "/var/tmp/$(id)",
    "/var/tmp/x;rm",
    "/var/tmp/x\\ y",
    "/var/tmp/ünïcode",
    "/var/tmp/../../etc/shadow",
    "/var/tmp/./x",
    "/var/tmp//x",
    "/var/tmp/x/",
    "relative/swapfile",
    "",
]


def write_swap_file(world: Env, swap_file: str, **keys: object) -> None:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    world.write_config(
        "[profiles.prep]\n"
        'extends = "smollm2-cpu"\n'
        "[profiles.prep.host_prep]\n"
        "enabled = true\n"
        f"swap_file = {json.dumps(swap_file)}\n" + extra
    )


@pytest.mark.parametrize("swap_file", UNSAFE_PATHS)
def test_unsafe_swap_file_is_refused_at_validation(world: Env, swap_file: str) -> None:
    write_swap_file(world, swap_file, swap_size="16M")
    for args in (("host", "sudoers", "-p", "prep", "--user", "nobody"),
                 ("start", "-p", "prep", "--dry-run"),
                 ("profiles", "show", "prep")):
        result = world.run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
        assert "host_prep.swap_file" in result.stderr, result.stderr
        assert "NOPASSWD" not in result.stdout
    assert not (world.state_dir / "host-prep.json").exists()


@pytest.mark.parametrize("name", ["a b", "../../etc/x", "x/y", "-x", "x\ny", "é", "a" * 65])
def test_unsafe_profile_name_is_refused(world: Env, name: str) -> None:
    """A profile name becomes logs/NAME.log and a sudoers comment: plain names only."""
    world.write_config(f"[profiles.{json.dumps(name)}]\nextends = \"smollm2-cpu\"\n")
    result = world.run("start", "-p", name, "--dry-run")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    assert "not a plain profile name" in result.stderr


@pytest.mark.parametrize("user", ["alice ALL=(ALL) ALL", "a,b", "x\ny", "%admin", "#0", ""])
def test_unsafe_sudoers_user_is_refused(user: str) -> None:
    profile = load_config().resolve("smollm2-cpu", {"host_prep.swap_size": "16M"}).profile
    with pytest.raises(ConfigError) as caught:
        sudoers_text(profile, user)
    assert repr(user) in caught.value.message and "--user" in caught.value.remedy


def rules(swap_size: str, swap_file: str) -> str:
    profile = load_config().resolve(
        "smollm2-cpu",
        {"host_prep.enabled": True, "host_prep.swap_size": swap_size,
         "host_prep.swap_file": swap_file, "host_prep.pause_oom_daemons": ["earlyoom"]},
    ).profile
    return sudoers_text(profile, "nobody")


@pytest.mark.skipif(shutil.which("visudo") is None, reason="needs sudo's visudo (apt install sudo)")
@pytest.mark.parametrize("swap_size", ["256M", "auto"])
def test_generated_rules_pass_visudo_and_have_no_wildcard(tmp_path: Path, swap_size: str) -> None:
    text = rules(swap_size, "/var/lib/llm-backend-test/swapfile")
    staged = tmp_path / "rules"
    staged.write_text(text)
    checked = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("*" in line for line in body), text


@pytest.fixture
def installed_rules(request: pytest.FixtureRequest) -> Iterator[str]:
    """The rules for `nobody`, installed in /etc/sudoers.d for this test only."""
    if os.geteuid() != 0 or shutil.which("sudo") is None:
        pytest.skip("needs root and sudo (apt-get install sudo)")
    swap_size, swap_file = request.param
    text = rules(swap_size, swap_file)
    path = Path(f"/etc/sudoers.d/llm-backend-test-{uuid.uuid4().hex[:8]}")
    staged = path.with_name(path.name + "~")  # sudo skips names ending in '~'
    staged.write_text(text)
    try:
        checked = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        subprocess.run(["install", "-m", "0440", str(staged), str(path)], check=True)
        yield swap_file
    finally:
        staged.unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def allowed(*argv: str) -> bool:
    """Whether the installed rules let `nobody` run exactly this command line as root."""
    result = subprocess.run(["sudo", "-n", "-l", "-U", "nobody", *argv],
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0


SWAP = "/var/tmp/llm-backend-test.swap"


@pytest.mark.hostprep
@pytest.mark.parametrize("installed_rules", [("256M", SWAP), ("auto", SWAP)],
                         indirect=True, ids=["fixed-size", "auto-size"])
def test_rules_allow_exactly_the_tool_commands(installed_rules: str) -> None:
    path = installed_rules
    size_ok = "268435456"
    state_id = str(uuid.uuid4())
    for argv in (
        (tool("install"), "-m", "0600", "/dev/null", path),
        (tool("fallocate"), "-l", size_ok, path),
        (tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", "count=256", "status=none"),
        (tool("mkswap"), "-L", "llm-backend", path),
        (tool("swaplabel"), "-U", state_id, path),
        (tool("swapon"), path),
        (tool("swapoff"), path),
        (tool("rm"), "-f", "--", path),
        (tool("sync"),),
        (tool("kill"), "-STOP", "4242"),
        (tool("kill"), "-CONT", "4242"),
    ):
        assert allowed(*argv), f"the tool's own command is not allowed: {argv}"
    for argv in (
        (tool("rm"), "-f", "--", path, "/etc/shadow"),
        (tool("rm"), "-f", "--", "/etc/shadow"),
        (tool("rm"), "-rf", "--", path),
        (tool("fallocate"), "-l", "1", "/etc/shadow", path),
        (tool("fallocate"), "-l", "1", "/etc/shadow"),
        (tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", "count=1", "of=/etc/shadow",
         "status=none"),
        (tool("dd"), "if=/dev/zero", f"of={path}", "bs=1M", "count=1 of=/etc/shadow",
         "status=none"),
        (tool("dd"), "if=/dev/zero", "of=/etc/shadow", "bs=1M", "count=1", "status=none"),
        (tool("mkswap"), "-L", "llm-backend", "/dev/sda"),
        (tool("swaplabel"), "-U", state_id, "/dev/sda"),
        (tool("swaplabel"), "-U", "x /etc/shadow", path),
        (tool("swapon"), "-a"),
        (tool("swapoff"), "-a"),
        (tool("swapoff"), "/swap.img"),
        (tool("sync"), "/etc"),
        (tool("kill"), "-STOP", "-9", "1"),
        (tool("kill"), "-STOP", "1", "-KILL"),
        (tool("kill"), "-KILL", "1"),
        (tool("kill"), "-CONT", "1", "2"),
        (tool("tee"), "/etc/shadow"),
        (tool("tee"), "/proc/sys/vm/drop_caches", "/etc/shadow"),
    ):
        assert not allowed(*argv), f"the rules allow more than the tool runs: {argv}"
