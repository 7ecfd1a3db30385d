"""The CUDA build of llama-server and the embedded model on a GPU: what can run without a GPU.

The CUDA build itself needs cuBLAS and a GPU to be worth anything; it ran on an H200
(docs/benchmarks.md, benchmarks/bench_gpu.py). Here: the CMake options chosen, the separate cache
key, the binary each profile finds, and the error + fix when nvcc or the GPU is missing.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from llm_backend.config import ConfigSet, builtin_layer
from llm_backend.engines.llamacpp import (
    LLAMA_CPP_PYTHON_VERSION,
    LlamaCppEngine,
    cached_binary_path,
    find_binary,
    needs_cuda,
)
from llm_backend.engines.llamacpp_build import (
    CMAKE_OPTIONS,
    find_llama_cpp_source,
    gpu_architectures,
    install_llama_cpp,
    plan_build,
)
from llm_backend.errors import BackendError, ConfigError
from llm_backend.gpu import GpuDevice, GpuReport
from tests.conftest import Env

H200 = GpuDevice(
    index=0, name="NVIDIA H200", uuid=None, unified_memory=False, memory_source="nvml",
    memory_total_bytes=150754820096, memory_used_bytes=0, memory_available_bytes=150754820096,
    utilization_percent=0, temperature_c=33, power_w=77.0, compute_capability="9.0",
)
NO_GPU = GpuReport(nvml_available=False, problem="NVML could not start: NVML Shared Library "
                   "Not Found")


def profile(name: str):  # type: ignore[no-untyped-def]
    return ConfigSet(layers=[builtin_layer()]).resolve(name).profile


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: 0 (test)'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG cache, PATH without llama-server or nvcc, no CUDA variables."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "CMAKE_ARGS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache" / "llm-backend" / "llama.cpp"


def test_cpu_plan_is_the_plain_build_under_the_version_key(cache: Path) -> None:
    plan = plan_build(cuda=False)
    assert plan.cmake_options == CMAKE_OPTIONS
    assert not any("CUDA" in option for option in plan.cmake_options)
    assert plan.binary == cache / LLAMA_CPP_PYTHON_VERSION / "llama-server"
    assert plan.build_argv(Path("/b"), 16) == [
        "cmake", "--build", "/b", "--target", "llama-server", "-j", "16"
    ]


def test_cuda_plan_targets_this_machines_gpu_under_its_own_key(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvcc = executable(tmp_path / "cuda" / "bin" / "nvcc")
    monkeypatch.setenv("CUDACXX", str(nvcc))
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA_FA=OFF")
    plan = plan_build(cuda=True, gpu_report=GpuReport(nvml_available=True, devices=(H200,)))
    assert plan.cuda_architectures == "90"
    assert plan.cmake_options[: len(CMAKE_OPTIONS)] == CMAKE_OPTIONS
    assert plan.cmake_options[len(CMAKE_OPTIONS):] == (
        "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DGGML_CUDA_FA=OFF",  # CMAKE_ARGS last, so the user's word wins
    )
    assert plan.binary == cache / f"{LLAMA_CPP_PYTHON_VERSION}-cuda-sm90" / "llama-server"
    assert plan.binary != plan_build(cuda=False).binary
    assert plan.configure_argv(Path("/s"), Path("/b"))[:5] == ["cmake", "-S", "/s", "-B", "/b"]
    # An explicit architecture needs no GPU; a list gets its own key.
    two = plan_build(cuda=True, cuda_architectures="80;90", gpu_report=NO_GPU)
    assert two.binary.parent.name == f"{LLAMA_CPP_PYTHON_VERSION}-cuda-sm80_90"
    assert "-DCMAKE_CUDA_ARCHITECTURES=80;90" in two.cmake_options


def test_gpu_architectures_from_compute_capabilities() -> None:
    assert gpu_architectures(GpuReport(nvml_available=True, devices=(H200,))) == "90"
    assert gpu_architectures(NO_GPU) is None


def test_missing_nvcc_is_an_error_with_a_fix(cache: Path) -> None:
    with pytest.raises(BackendError) as raised:
        plan_build(cuda=True, gpu_report=GpuReport(nvml_available=True, devices=(H200,)),
                   cuda_homes=())
    assert "needs nvcc" in raised.value.message
    assert "llm-backend engine install llama.cpp --cpu" in raised.value.remedy
    assert not cache.exists()


def test_missing_gpu_is_an_error_that_names_the_architecture_option(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDACXX", str(executable(tmp_path / "nvcc")))
    with pytest.raises(BackendError) as raised:
        plan_build(cuda=True, gpu_report=NO_GPU)
    assert "no NVIDIA GPU was found (NVML could not start" in raised.value.message
    assert "--cuda --cuda-arch 90" in raised.value.remedy
    with pytest.raises(ConfigError, match="not a CMAKE_CUDA_ARCHITECTURES list"):
        plan_build(cuda=True, cuda_architectures="sm_90", gpu_report=NO_GPU)
    with pytest.raises(ConfigError, match="only applies to a CUDA build"):
        plan_build(cuda=False, cuda_architectures="90")
    assert not cache.exists()


def test_each_profile_finds_only_its_own_build(cache: Path) -> None:
    cpu, gpu = profile("smollm2-cpu"), profile("smollm2-gpu")
    assert not needs_cuda(cpu) and needs_cuda(gpu)
    assert find_binary(cpu) is None and find_binary(gpu) is None
    cuda_binary = executable(cached_binary_path(cuda_architectures="90"))
    assert find_binary(gpu) == cuda_binary
    assert find_binary(cpu) is None, "a CPU profile never runs the CUDA build"
    cpu_binary = executable(cached_binary_path())
    assert find_binary(cpu) == cpu_binary
    assert find_binary(gpu) == cuda_binary
    cuda_binary.unlink()
    assert find_binary(gpu) is None, "a GPU profile never falls back to the CPU build"


def test_gpu_profile_without_a_cuda_build_says_how_to_make_one(cache: Path) -> None:
    executable(cached_binary_path())  # only the CPU build exists
    with pytest.raises(BackendError) as raised:
        LlamaCppEngine().check_profile(profile=profile("smollm2-gpu"))
    assert "no CUDA build of llama-server" in raised.value.message
    assert raised.value.remedy == "llm-backend engine install llama.cpp --cuda"


def test_gpu_profile_offloads_every_layer() -> None:
    argv = LlamaCppEngine().build_argv(profile=profile("smollm2-gpu"))
    assert argv[argv.index("--gpu-layers") + 1] == "all"
    assert "--gpu-layers" not in LlamaCppEngine().build_argv(profile=profile("smollm2-cpu"))


def test_source_is_found_in_the_sdist_layout_or_refused(tmp_path: Path, cache: Path) -> None:
    vendored = tmp_path / "sdist" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    (vendored / "tools" / "server").mkdir(parents=True)
    (vendored / "CMakeLists.txt").write_text("")
    (vendored / "tools" / "server" / "CMakeLists.txt").write_text("")
    assert find_llama_cpp_source(tmp_path / "sdist") == vendored
    assert find_llama_cpp_source(vendored) == vendored
    with pytest.raises(ConfigError, match=r"no llama\.cpp source"):
        find_llama_cpp_source(tmp_path / "sdist" / "llama_cpp_python-0.3.36" / "vendor" / "x")
    # An sdist of another version is refused before anything is built.
    other = tmp_path / "llama_cpp_python-0.3.2.tar.gz"
    with tarfile.open(other, "w:gz") as archive:
        archive.add(vendored.parent.parent, arcname="llama_cpp_python-0.3.2")
    with pytest.raises(ConfigError, match=r"is llama-cpp-python 0\.3\.2"):
        install_llama_cpp(source=other)
    with pytest.raises(ConfigError, match="does not exist"):
        install_llama_cpp(source=tmp_path / "missing.tar.gz")
    assert not (cache / LLAMA_CPP_PYTHON_VERSION / "llama-server").exists()


def test_cli_cuda_install_without_nvcc_says_what_and_how(world: Env, tmp_path: Path) -> None:
    env = {**world.env, "CUDACXX": str(tmp_path / "no" / "nvcc"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    world.env = env
    result = world.run("engine", "install", "llama.cpp", "--cuda")
    assert result.returncode == 1
    assert "error: building llama-server with CUDA needs nvcc" in result.stderr
    assert "fix: install the CUDA toolkit" in result.stderr
    assert not (tmp_path / "cache").exists(), "nothing was written"


def test_cli_cuda_install_on_a_machine_without_gpu(world: Env, tmp_path: Path) -> None:
    from llm_backend.gpu import read_gpus

    if read_gpus(with_processes=False).devices:
        pytest.skip("this machine has a GPU: the no-GPU path is covered by the plan test")
    world.env = {**world.env, "CUDACXX": str(executable(tmp_path / "nvcc")),
                 "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = world.run("engine", "install", "llama.cpp", "--cuda")
    assert result.returncode == 1
    assert "no NVIDIA GPU was found" in result.stderr
    assert "fix: run it on the machine with the GPU" in result.stderr
    # Without --cuda, a machine with nvcc but no GPU keeps the CPU build (no CUDA attempt).
    cached = executable(Path(tmp_path / "cache" / "llm-backend" / "llama.cpp"
                             / LLAMA_CPP_PYTHON_VERSION / "llama-server"))
    result = world.run("engine", "install", "llama.cpp")
    assert result.returncode == 0, result.stderr
    assert "llama-server already installed" in result.stdout
    assert str(cached) in result.stdout.replace("\n", "")
    assert os.access(cached, os.X_OK)
