"""`llm-backend engine install llama.cpp`: build `llama-server` from a pinned, vendored source.

The llama.cpp source comes from the PyPI sdist of `llama-cpp-python` (which vendors it), so
the build needs only PyPI, CMake and a C++ compiler.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llm_backend.engines.base import InstallResult
from llm_backend.engines.llamacpp import LLAMA_CPP_PYTHON_VERSION, cached_binary_path
from llm_backend.errors import BackendError, CommandFailed

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)
PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def installed_binary(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """The cached binary if it exists and runs."""
    binary = cached_binary_path(version)
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
    on_progress: Callable[[str, float | None], None] = lambda step, fraction: None,
    jobs: int | None = None,
) -> InstallResult:
    """Build `llama-server` into the cache; a no-op when a working binary is already there."""
    started = time.monotonic()
    existing = installed_binary(version)
    if existing is not None:
        return InstallResult(binary=existing, built=False, duration_s=0.0, version=version)
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BackendError(
                f"building llama-server needs {tool!r}, which is not on PATH",
                remedy="install CMake and a C++ compiler (Debian: apt-get install cmake g++)",
            )
    target = cached_binary_path(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llm-backend-build-") as work:
        work_dir = Path(work)
        on_progress("downloading llama-cpp-python sdist", None)
        download = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "-d", str(work_dir),
            f"llama-cpp-python=={version}",
        ]
        _run(download, remedy="check that PyPI is reachable (pip download llama-cpp-python)")
        archives = list(work_dir.glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise BackendError(
                f"pip download left no llama_cpp_python sdist in {work_dir}",
                remedy=f"pip download --no-binary :all: llama-cpp-python=={version}",
            )
        on_progress("unpacking the vendored llama.cpp source", None)
        with tarfile.open(archives[0]) as archive:
            archive.extractall(work_dir, filter="data")
        source = next(work_dir.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work_dir / "build"
        on_progress("configuring with CMake", None)
        _run(
            ["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS],
            remedy="read the CMake error above; a C++17 compiler is needed",
        )
        build = [
            "cmake", "--build", str(build_dir), "--target", "llama-server",
            "-j", str(jobs or os.cpu_count() or 2),
        ]
        _run_with_progress(build, on_progress)
        built = build_dir / "bin" / "llama-server"
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(built, tmp_target)
        os.replace(tmp_target, target)
    (target.parent / "build-info.json").write_text(
        json.dumps(
            {"llama_cpp_python": version, "cmake_options": list(CMAKE_OPTIONS)}, indent=2
        )
    )
    on_progress("done", 1.0)
    return InstallResult(
        binary=target, built=True, duration_s=time.monotonic() - started, version=version
    )


def _run(argv: list[str], *, remedy: str) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode != 0:
        raise CommandFailed(argv, completed.returncode, completed.stderr or completed.stdout,
                            remedy=remedy)


def _run_with_progress(
    argv: list[str], on_progress: Callable[[str, float | None], None]
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
                on_progress("compiling llama-server", int(match.group(1)) / 100)
        returncode = process.wait()
    if returncode != 0:
        raise CommandFailed(argv, returncode, "\n".join(tail),
                            remedy="read the compiler error above")
