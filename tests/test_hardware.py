"""Hardware description and `--profile auto`: the pure choice on recorded machines and this one."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from llm_backend.config import ConfigSet, builtin_layer
from llm_backend.doctor import auto_profile
from llm_backend.gpu import read_gpus
from llm_backend.hardware import (
    GIB,
    PROFILE_20B,
    PROFILE_120B,
    PROFILE_CPU,
    PROFILE_GPU,
    HardwareDescription,
    describe_host,
    docker_facts,
    select_profile,
)
from llm_backend.host.meminfo import read_meminfo

DATA = Path(__file__).parent / "data" / "hardware"
# Hardware descriptions carry "schema"; h200-nvml-status.json is an NVML answer (test_doctor).
RECORDED = sorted(p for p in DATA.glob("*.json") if "schema" in json.loads(p.read_text()))


def load(name: str) -> HardwareDescription:
    return HardwareDescription.load(DATA / f"{name}.json")


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("h100-80gb", PROFILE_120B),
        ("h200-141gb", PROFILE_120B),
        ("dgx-spark-gb10", PROFILE_120B),
        ("h100-80gb-x2", PROFILE_120B),
        ("laptop-cpu-only", PROFILE_CPU),
        ("h200-141gb-no-docker", PROFILE_CPU),
        ("h200-141gb-llamacpp-cuda", PROFILE_GPU),
    ],
)
def test_selection_on_recorded_machines(machine: str, expected: str) -> None:
    choice = select_profile(load(machine))
    assert choice.profile == expected
    assert choice.reasons, "every choice says why"
    assert any(reason.startswith(f"chose {expected}") for reason in choice.reasons)
    if expected == PROFILE_CPU:
        # It says why each bigger one was passed over, and how to force one anyway.
        assert any(reason.startswith(f"not {PROFILE_120B}:") for reason in choice.reasons)
        assert any(reason.startswith(f"not {PROFILE_20B}:") for reason in choice.reasons)
        assert any(f"--profile {PROFILE_120B}" in reason for reason in choice.reasons)
        assert any("default_profile" in reason for reason in choice.reasons)


def test_gpu_without_an_sglang_runtime_gets_the_embedded_model_on_the_gpu() -> None:
    # Recorded on an H200 with nvcc and the CUDA build, no Docker, no SGLang.
    cuda = load("h200-141gb-llamacpp-cuda")
    choice = select_profile(cuda)
    assert choice.profile == PROFILE_GPU and choice.runtime is None
    assert choice.reasons[-1].startswith(f"chose {PROFILE_GPU}: NVIDIA H200, all layers")
    assert "CUDA build of llama-server at" in choice.reasons[-1]
    assert any(reason.startswith(f"not {PROFILE_120B}:") and "no working runtime" in reason
               for reason in choice.reasons)
    # nvcc alone is enough: `start` builds the CUDA llama-server first.
    compiler_only = dataclasses.replace(cuda, llama_server_cuda=None)
    assert select_profile(compiler_only).profile == PROFILE_GPU
    assert "builds llama-server with CUDA on first start" in select_profile(
        compiler_only).reasons[-1]
    # Neither: the CPU profile, saying what would make the GPU one possible.
    bare = dataclasses.replace(cuda, llama_server_cuda=None, cuda_compiler=None)
    choice = select_profile(bare)
    assert choice.profile == PROFILE_CPU
    assert any(reason.startswith(f"not {PROFILE_GPU}: NVIDIA H200 found, but no CUDA build")
               and "engine install llama.cpp --cuda" in reason for reason in choice.reasons)
    # A GPU with a working SGLang runtime still gets SGLang.
    assert select_profile(dataclasses.replace(cuda, sglang_version="0.5.23")
                          ).profile == PROFILE_120B
    # No GPU: the GPU profile is passed over for that reason.
    laptop = select_profile(dataclasses.replace(load("laptop-cpu-only"),
                                                cuda_compiler="/usr/local/cuda/bin/nvcc"))
    assert laptop.profile == PROFILE_CPU
    assert f"not {PROFILE_GPU}: no NVIDIA GPU found" in laptop.reasons


def test_recorded_descriptions_round_trip() -> None:
    assert len(RECORDED) >= 6
    for path in RECORDED:
        description = HardwareDescription.load(path)
        assert description.source == path.stem
        again = HardwareDescription.from_json(json.loads(json.dumps(description.to_json())))
        assert again == description


def test_unified_memory_uses_meminfo_total_not_gpu_memory() -> None:
    spark = load("dgx-spark-gb10")
    assert spark.unified_memory and spark.gpus[0].memory_total_bytes is None
    choice = select_profile(spark)
    assert "unified memory" in choice.reasons[-1]
    # A 64 GB unified box is too small for 120b but fits 20b.
    small = dataclasses.replace(spark, memory_total_bytes=64 * GIB)
    choice = select_profile(small)
    assert choice.profile == PROFILE_20B
    assert "less than" in choice.reasons[0]


def test_smaller_gpu_gets_the_20b_profile() -> None:
    h100 = load("h100-80gb")
    l4 = dataclasses.replace(
        h100, gpus=(dataclasses.replace(h100.gpus[0], name="NVIDIA L4",
                                        memory_total_bytes=23034 * 1024**2),)
    )
    choice = select_profile(l4)
    assert choice.profile == PROFILE_20B
    assert "NVIDIA L4 (22.5 GiB)" in choice.reasons[0]
    tiny = dataclasses.replace(
        l4, gpus=(dataclasses.replace(l4.gpus[0], memory_total_bytes=8 * GIB),)
    )
    assert select_profile(tiny).profile == PROFILE_CPU


def test_native_sglang_is_a_working_runtime_when_docker_is_not() -> None:
    bare = load("h200-141gb-no-docker")
    native = dataclasses.replace(bare, sglang_version="0.5.23")
    choice = select_profile(native)
    assert choice.profile == PROFILE_120B
    assert choice.runtime == "native"
    assert any("--runtime native" in reason for reason in choice.reasons)
    # Docker that works is kept as the profile's own runtime (no override).
    assert select_profile(dataclasses.replace(load("h200-141gb"), sglang_version="0.5.23")
                          ).runtime is None


def test_docker_without_nvidia_runtime_is_not_enough() -> None:
    h100 = load("h100-80gb")
    no_toolkit = dataclasses.replace(
        h100, docker=dataclasses.replace(h100.docker, runtimes=("runc",))
    )
    choice = select_profile(no_toolkit)
    assert choice.profile == PROFILE_CPU
    assert "no NVIDIA container runtime" in choice.reasons[0]


def test_profiles_that_are_not_defined_are_passed_over() -> None:
    choice = select_profile(load("h100-80gb"), available=[PROFILE_20B, PROFILE_CPU])
    assert choice.profile == PROFILE_20B
    assert choice.reasons[0] == f"not {PROFILE_120B}: no profile of that name is defined"


def test_auto_profile_uses_the_builtin_profiles_and_their_runtimes() -> None:
    config = ConfigSet(layers=[builtin_layer()])
    assert {PROFILE_120B, PROFILE_20B, PROFILE_GPU, PROFILE_CPU} <= set(config.profile_names())
    assert auto_profile(config, load("dgx-spark-gb10")).profile == PROFILE_120B
    assert auto_profile(config, load("laptop-cpu-only")).profile == PROFILE_CPU
    assert auto_profile(config, load("h200-141gb-llamacpp-cuda")).profile == PROFILE_GPU


# --- the live machine ---------------------------------------------------------------------


def test_live_description_matches_this_machine() -> None:
    live = describe_host()
    assert live.source == "live"
    assert live.cpu_count == os.cpu_count()
    assert live.memory_total_bytes == psutil.virtual_memory().total
    assert live.swap_total_bytes == psutil.swap_memory().total
    report = read_gpus()
    assert len(live.gpus) == len(report.devices)
    if not report.devices:
        assert live.nvml_problem  # a finding, not a crash
    docker = shutil.which("docker")
    if docker:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=60, check=False)
        assert live.docker.engine_reachable == (info.returncode == 0)
    choice = select_profile(live)
    expected = PROFILE_CPU if not live.gpus else choice.profile
    assert choice.profile == expected
    assert json.loads(json.dumps(live.to_json()))["schema"] == 1


def test_meminfo_matches_psutil() -> None:
    meminfo = read_meminfo()
    assert meminfo.mem_total == psutil.virtual_memory().total
    assert meminfo.swap_total == psutil.swap_memory().total
    assert 0 < meminfo.mem_available <= meminfo.mem_total
    assert meminfo.allocatable() == meminfo.mem_available + meminfo.swap_free


def test_meminfo_with_hugepages_counts_only_free_huge_pages(tmp_path: Path) -> None:
    text = Path("/proc/meminfo").read_text()
    text = re.sub(r"(?m)^HugePages_Total:.*$", "HugePages_Total:     512", text)
    text = re.sub(r"(?m)^HugePages_Free:.*$", "HugePages_Free:      100", text)
    sample = tmp_path / "meminfo"
    sample.write_text(text)
    meminfo = read_meminfo(sample)
    assert meminfo.hugepages_total == 512
    assert meminfo.allocatable() == 100 * meminfo.hugepage_size


def test_docker_host_without_an_engine_is_reported(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is needed for this test (apt-get install docker.io)")
    socket_path = tmp_path / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    facts = docker_facts()
    assert facts.cli_found and not facts.engine_reachable
    assert facts.docker_host == f"unix://{socket_path}"
    assert facts.engine_problem
    assert not facts.gpu_ready
