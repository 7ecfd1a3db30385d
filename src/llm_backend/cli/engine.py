"""`engine install NAME`: install an engine that can be installed (llama.cpp's llama-server)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llm_backend.cli import render_reports
from llm_backend.errors import UsageError

if TYPE_CHECKING:
    from llm_backend.config import Profile
    from llm_backend.engines.base import Engine, InstallOptions


def install_engine(
    engine: Engine, *, options: InstallOptions | None = None, profile: Profile | None = None
) -> None:
    """Install the engine (llama.cpp: build llama-server into the cache), showing its steps."""
    label = engine.install_names[0] if engine.install_names else engine.name
    with render_reports.InstallDisplay(label) as display:
        result = engine.install(on_progress=display, options=options, profile=profile)
    render_reports.render_installed(result)


def engine_install(
    name: Annotated[str, typer.Argument(help="Engine to install: llama.cpp")],
    cuda: Annotated[
        bool | None,
        typer.Option(
            "--cuda/--cpu",
            help="Build for an NVIDIA GPU (llama.cpp: -DGGML_CUDA=ON) or for the CPU. "
            "Default: CUDA when nvcc and an NVIDIA GPU are found.",
        ),
    ] = None,
    cuda_arch: Annotated[
        str | None,
        typer.Option(
            "--cuda-arch",
            help="GPU architectures (CMAKE_CUDA_ARCHITECTURES), e.g. 90 for H100/H200. "
            "Default: this machine's GPUs.",
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="A local source (llama.cpp: the llama-cpp-python sdist or a llama.cpp "
            "folder) instead of a download.",
        ),
    ] = None,
) -> None:
    """Build llama.cpp's llama-server into the user's cache (a no-op when it is there)."""
    from llm_backend.engines import REGISTRY, installable_engine

    engine = installable_engine(name)
    if engine is None:
        names = [item.install_names[0] for item in REGISTRY.all() if item.install_names]
        raise UsageError(
            f"cannot install engine {name!r}; installable: {', '.join(names)}",
            remedy=f"llm-backend engine install {names[0]} (other engines come as a Docker "
            "image or a Python package: see `llm-backend doctor`)",
        )
    from llm_backend.engines.base import InstallOptions

    accelerator = None if cuda is None else ("cuda" if cuda else "cpu")
    options = InstallOptions(accelerator=accelerator, architectures=cuda_arch, source=source)
    install_engine(engine, options=options)
