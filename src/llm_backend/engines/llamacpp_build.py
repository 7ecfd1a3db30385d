"""`llm-backend engine install llama.cpp [--cuda]`: build `llama-server` from a pinned source.

The llama.cpp source comes from the PyPI sdist of `llama-cpp-python` (which vendors it), so
the CPU build needs only PyPI, CMake and a C++ compiler; `--source` takes that sdist (or its
`vendor/llama.cpp` folder) from disk on a machine without PyPI. The CUDA build adds llama.cpp's
own switches `-DGGML_CUDA=ON` and `-DCMAKE_CUDA_ARCHITECTURES=<sm>` (ggml/CMakeLists.txt and
ggml/src/ggml-cuda/CMakeLists.txt at the pinned version), needs `nvcc` and cuBLAS, and is
cached under its own key (`0.3.36-cuda-sm90`), beside the CPU build (`0.3.36`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_backend.engines.base import InstallResult
from llm_backend.engines.llamacpp import LLAMA_CPP_PYTHON_VERSION, cached_binary_path
from llm_backend.errors import BackendError, CommandFailed, ConfigError
from llm_backend.gpu import GpuReport, read_gpus

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)
TARGET = "llama-server"
PERCENT = re.compile(r"^\[\s*(\d+)%\]")
ARCHITECTURES = re.compile(r"^\d{2,3}[af]?(;\d{2,3}[af]?)*$")
SDIST_NAME = re.compile(r"^llama_cpp_python-(.+?)\.(?:tar\.gz|tgz|tar\.xz|tar)$")
# Where CMake itself looks for the CUDA toolkit when nvcc is not on PATH.
DEFAULT_CUDA_HOMES: tuple[Path, ...] = (Path("/usr/local/cuda"),)


@dataclass(frozen=True)
class BuildPlan:
    """One build, decided before anything runs: the CMake options and where the binary goes.

    `cuda_architectures` is CMake's CMAKE_CUDA_ARCHITECTURES list ("90" for Hopper: H100,
    H200); None for the CPU build.
    """

    version: str
    cuda_architectures: str | None
    nvcc: Path | None
    cmake_options: tuple[str, ...]
    binary: Path

    @property
    def variant(self) -> str | None:
        """"CUDA sm_90" for a CUDA build, None for the CPU build."""
        if self.cuda_architectures is None:
            return None
        return "CUDA " + ", ".join(f"sm_{arch}" for arch in self.cuda_architectures.split(";"))

    def configure_argv(self, source: Path, build_dir: Path) -> list[str]:
        return ["cmake", "-S", str(source), "-B", str(build_dir), *self.cmake_options]

    def build_argv(self, build_dir: Path, jobs: int) -> list[str]:
        """Only the `llama-server` target: the CUDA kernels it links are most of the work."""
        return ["cmake", "--build", str(build_dir), "--target", TARGET, "-j", str(jobs)]


def find_nvcc(*, cuda_homes: Sequence[Path] = DEFAULT_CUDA_HOMES) -> Path | None:
    """The CUDA compiler CMake would use: $CUDACXX, `nvcc` on PATH, $CUDA_HOME/bin or
    $CUDA_PATH/bin, then /usr/local/cuda/bin."""
    declared = os.environ.get("CUDACXX")
    if declared:
        return Path(declared) if Path(declared).is_file() else None
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    homes = [Path(os.environ[name]) for name in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(name)]
    for home in [*homes, *cuda_homes]:
        candidate = home / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def gpu_architectures(report: GpuReport) -> str | None:
    """CMAKE_CUDA_ARCHITECTURES for the GPUs NVML sees: compute capability 9.0 -> "90"."""
    found = sorted({
        device.compute_capability.replace(".", "")
        for device in report.devices
        if device.compute_capability
    })
    return ";".join(found) if found else None


def cuda_available(
    *, gpu_report: GpuReport | None = None, cuda_homes: Sequence[Path] = DEFAULT_CUDA_HOMES
) -> bool:
    """Whether a plain `engine install llama.cpp` builds with CUDA: nvcc and a GPU are here."""
    if find_nvcc(cuda_homes=cuda_homes) is None:
        return False
    report = gpu_report if gpu_report is not None else read_gpus(with_processes=False)
    return bool(report.devices)


def extra_cmake_args() -> tuple[str, ...]:
    """CMAKE_ARGS from the environment (llama-cpp-python's own variable), appended last."""
    return tuple(shlex.split(os.environ.get("CMAKE_ARGS", "")))


def plan_build(
    *,
    version: str = LLAMA_CPP_PYTHON_VERSION,
    cuda: bool = False,
    cuda_architectures: str | None = None,
    gpu_report: GpuReport | None = None,
    cuda_homes: Sequence[Path] = DEFAULT_CUDA_HOMES,
) -> BuildPlan:
    """Decide the build; raises BackendError (with a fix) when a CUDA build cannot be made here.

    Without `cuda_architectures`, a CUDA build targets the GPUs NVML sees on this machine.
    """
    if not cuda:
        if cuda_architectures is not None:
            raise ConfigError(
                f"--cuda-arch {cuda_architectures} only applies to a CUDA build",
                remedy=f"llm-backend engine install llama.cpp --cuda --cuda-arch "
                f"{cuda_architectures}",
            )
        return BuildPlan(
            version=version, cuda_architectures=None, nvcc=None,
            cmake_options=(*CMAKE_OPTIONS, *extra_cmake_args()),
            binary=cached_binary_path(version),
        )
    nvcc = find_nvcc(cuda_homes=cuda_homes)
    if nvcc is None:
        raise BackendError(
            "building llama-server with CUDA needs nvcc (the CUDA compiler), which was not "
            "found ($CUDACXX, PATH, $CUDA_HOME/bin, "
            + ", ".join(str(home / "bin") for home in cuda_homes) + ")",
            remedy="install the CUDA toolkit and put nvcc on PATH (or set CUDACXX=/path/to/nvcc),"
            " or build for the CPU: llm-backend engine install llama.cpp --cpu",
        )
    if cuda_architectures is None:
        report = gpu_report if gpu_report is not None else read_gpus(with_processes=False)
        cuda_architectures = gpu_architectures(report)
        if cuda_architectures is None:
            why = f" ({report.problem})" if report.problem else ""
            raise BackendError(
                f"--cuda builds for this machine's GPUs, and no NVIDIA GPU was found{why}",
                remedy="run it on the machine with the GPU, or name the architecture to build "
                "for: llm-backend engine install llama.cpp --cuda --cuda-arch 90 (H100, H200)",
            )
    if not ARCHITECTURES.match(cuda_architectures):
        raise ConfigError(
            f"--cuda-arch {cuda_architectures!r} is not a CMAKE_CUDA_ARCHITECTURES list",
            remedy="give compute capabilities without the dot, separated by ';': "
            "--cuda-arch 90 (Hopper), --cuda-arch '80;90'",
        )
    options = (
        *CMAKE_OPTIONS,
        "-DGGML_CUDA=ON",
        f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        *extra_cmake_args(),
    )
    return BuildPlan(
        version=version, cuda_architectures=cuda_architectures, nvcc=nvcc,
        cmake_options=options,
        binary=cached_binary_path(version, cuda_architectures=cuda_architectures),
    )


def installed_binary(
    version: str = LLAMA_CPP_PYTHON_VERSION, *, cuda_architectures: str | None = None
) -> Path | None:
    """The cached binary if it exists and runs."""
    binary = cached_binary_path(version, cuda_architectures=cuda_architectures)
    if not binary.is_file():
        return None
    try:
        subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return binary


def install_llama_cpp(
    *,
    version: str = LLAMA_CPP_PYTHON_VERSION,
    cuda: bool = False,
    cuda_architectures: str | None = None,
    source: Path | None = None,
    on_progress: Callable[[str, float | None], None] = lambda step, fraction: None,
    jobs: int | None = None,
    gpu_report: GpuReport | None = None,
) -> InstallResult:
    """Build `llama-server` into the cache; a no-op when a working binary is already there.

    `source`: the llama-cpp-python sdist (.tar.gz) or a llama.cpp source folder, instead of
    downloading the sdist from PyPI. Raises BackendError before anything is written when a
    tool (cmake, c++, nvcc for CUDA) or, for CUDA without `cuda_architectures`, a GPU is
    missing; CommandFailed (argv, exit code, output tail) when CMake or the compiler fails.
    """
    started = time.monotonic()
    plan = plan_build(
        version=version, cuda=cuda, cuda_architectures=cuda_architectures,
        gpu_report=gpu_report,
    )
    if source is not None:
        _check_source(source, version)
    existing = installed_binary(version, cuda_architectures=plan.cuda_architectures)
    if existing is not None:
        return InstallResult(binary=existing, built=False, duration_s=0.0, version=version,
                             variant=plan.variant)
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BackendError(
                f"building llama-server needs {tool!r}, which is not on PATH",
                remedy="install CMake and a C++ compiler (Debian: apt-get install cmake g++)",
            )
    target = plan.binary
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llm-backend-build-") as work:
        work_dir = Path(work)
        source_dir = _prepare_source(source, work_dir, version, on_progress)
        build_dir = work_dir / "build"
        on_progress("configuring with CMake", None)
        _configure(plan.configure_argv(source_dir, build_dir), cuda=plan.nvcc is not None)
        what = "llama-server with CUDA" if plan.nvcc else "llama-server"
        _run_with_progress(
            plan.build_argv(build_dir, jobs or os.cpu_count() or 2), on_progress,
            step=f"compiling {what}",
        )
        built = build_dir / "bin" / TARGET
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(built, tmp_target)
        os.replace(tmp_target, target)
    (target.parent / "build-info.json").write_text(
        json.dumps(
            {
                "llama_cpp_python": version,
                "cmake_options": list(plan.cmake_options),
                "cuda_architectures": plan.cuda_architectures,
                "source": str(source) if source else "PyPI sdist",
            },
            indent=2,
        )
    )
    on_progress("done", 1.0)
    return InstallResult(
        binary=target, built=True, duration_s=time.monotonic() - started, version=version,
        variant=plan.variant,
    )


def _prepare_source(
    source: Path | None,
    work_dir: Path,
    version: str,
    on_progress: Callable[[str, float | None], None],
) -> Path:
    """The llama.cpp source folder to configure: unpacked from the sdist, or `source` itself."""
    if source is not None and source.is_dir():
        return find_llama_cpp_source(source)
    if source is None:
        on_progress("downloading llama-cpp-python sdist", None)
        download = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "-d", str(work_dir),
            f"llama-cpp-python=={version}",
        ]
        _run(download, remedy="check that PyPI is reachable (pip download llama-cpp-python), "
             "or pass the sdist with --source FILE")
        archives = list(work_dir.glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise BackendError(
                f"pip download left no llama_cpp_python sdist in {work_dir}",
                remedy=f"pip download --no-binary :all: llama-cpp-python=={version}",
            )
        source = archives[0]
        _check_source(source, version)
    on_progress("unpacking the vendored llama.cpp source", None)
    unpacked = work_dir / "source"
    try:
        with tarfile.open(source) as archive:
            archive.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ConfigError(
            f"--source {source} is not a readable tar archive: {error}",
            remedy=f"pass the llama-cpp-python {version} sdist (.tar.gz) or a llama.cpp folder",
        ) from error
    return find_llama_cpp_source(unpacked)


def _check_source(source: Path, version: str) -> None:
    """Refuse a missing `--source`, or an sdist of another llama-cpp-python version."""
    if not source.exists():
        raise ConfigError(
            f"--source {source} does not exist",
            remedy=f"pip download --no-deps --no-binary :all: llama-cpp-python=={version} "
            "and pass the .tar.gz it saves",
        )
    named = SDIST_NAME.match(source.name)
    if named and named.group(1) != version:
        raise ConfigError(
            f"--source {source} is llama-cpp-python {named.group(1)}; this llm-backend pins "
            f"{version}",
            remedy=f"pip download --no-deps --no-binary :all: llama-cpp-python=={version}",
        )


def find_llama_cpp_source(root: Path) -> Path:
    """The llama.cpp folder in `root`: root itself, `vendor/llama.cpp` (the sdist's layout),
    or either of those one folder down (an unpacked archive)."""
    candidates = [root, root / "vendor" / "llama.cpp"]
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir():
                candidates += [child, child / "vendor" / "llama.cpp"]
    for candidate in candidates:
        if (candidate / "CMakeLists.txt").is_file() and (
            candidate / "tools" / "server" / "CMakeLists.txt"
        ).is_file():
            return candidate
    raise ConfigError(
        f"no llama.cpp source in {root} (a folder with CMakeLists.txt and tools/server)",
        remedy=f"pass the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (pip download "
        "--no-deps --no-binary :all: llama-cpp-python) or its vendor/llama.cpp folder",
    )


def _configure(argv: list[str], *, cuda: bool) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode == 0:
        return
    output = completed.stderr + completed.stdout
    remedy = "read the CMake error above; a C++17 compiler is needed"
    if cuda and "CUDA::cublas" in output:
        remedy = (
            "the CUDA toolkit has no cuBLAS: install its development files (libcublas-dev "
            "for your CUDA version), or point CMake at them: "
            "CMAKE_ARGS='-DCUDA_cublas_LIBRARY=/path/libcublas.so "
            "-DCUDA_cublasLt_LIBRARY=/path/libcublasLt.so'"
        )
    elif cuda:
        remedy = ("read the CMake error above; the CUDA toolkit (nvcc, cudart, cuBLAS) must "
                  "match the driver")
    raise CommandFailed(argv, completed.returncode, output, remedy=remedy)


def _run(argv: list[str], *, remedy: str) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode != 0:
        raise CommandFailed(argv, completed.returncode, completed.stderr or completed.stdout,
                            remedy=remedy)


def _run_with_progress(
    argv: list[str], on_progress: Callable[[str, float | None], None], *, step: str
) -> None:
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail = [*tail[-40:], line.rstrip()]
            match = PERCENT.match(line)
            if match:
                on_progress(step, int(match.group(1)) / 100)
        returncode = process.wait()
    if returncode != 0:
        raise CommandFailed(argv, returncode, "\n".join(tail),
                            remedy="read the compiler error above")
