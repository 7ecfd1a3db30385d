"""What this machine has (CPU, memory, GPUs, Docker, SGLang) and which built-in profile fits it.

`describe_host()` reads the live machine into a frozen `HardwareDescription`; `select_profile()`
is a pure function from such a description to a `ProfileChoice` with its reasons, so it is
tested on recorded descriptions of real machines as well as on the live one.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_backend.engines.base import MemoryNeed
from llm_backend.gpu import GpuReport, read_gpus
from llm_backend.host.meminfo import read_meminfo
from llm_backend.runtimes.docker_facts import DockerFacts, docker_facts
from llm_backend.units import GIB
from llm_backend.units import format_bytes as gib

SCHEMA_VERSION = 1
__all__ = ["GIB", "DockerFacts", "MemoryNeed", "docker_facts", "gib"]

PROFILE_120B = "gpt-oss-120b-eagle3"
PROFILE_20B = "gpt-oss-20b-eagle3"
PROFILE_CPU = "smollm2-cpu"
PROFILE_GPU = "smollm2-gpu"


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as selection sees it: its name, its own memory (None on unified memory)."""

    name: str
    memory_total_bytes: int | None
    unified_memory: bool = False
    compute_capability: str | None = None


@dataclass(frozen=True)
class HardwareDescription:
    """A snapshot of one machine: enough to choose a profile without looking again."""

    source: str
    arch: str
    cpu_model: str | None
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int
    gpus: tuple[GpuSpec, ...] = ()
    nvml_problem: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    docker: DockerFacts = field(default_factory=DockerFacts)
    # Engines installed for native runs, name -> version (`Engine.native_version`).
    engine_versions: dict[str, str] = field(default_factory=dict)
    # Older recorded descriptions name SGLang's version here; the SGLang engine reads both.
    sglang_version: str | None = None
    # The embedded model on a GPU needs a CUDA build of llama-server, or nvcc to make one.
    cuda_compiler: str | None = None
    llama_server_cuda: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def unified_memory(self) -> bool:
        return any(gpu.unified_memory for gpu in self.gpus)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HardwareDescription:
        """Read a description written by `to_json` (or recorded by hand in the same shape)."""
        values = {key: value for key, value in data.items() if key != "schema"}
        values["gpus"] = tuple(GpuSpec(**gpu) for gpu in values.get("gpus", ()))
        docker = dict(values.get("docker") or {})
        for key in ("runtimes", "cdi_devices", "compose_command"):
            docker[key] = tuple(docker.get(key, ()))
        values["docker"] = DockerFacts(**docker)
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> HardwareDescription:
        data = json.loads(path.read_text(encoding="utf-8"))
        description = cls.from_json(data)
        if description.source == "live":
            description = cls.from_json({**data, "source": path.stem})
        return description


@dataclass(frozen=True)
class ProfileChoice:
    """The profile `--profile auto` picks, why, and (rarely) the runtime it must use."""

    profile: str
    reasons: tuple[str, ...]
    runtime: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "reasons": list(self.reasons), "runtime": self.runtime}


# --- reading the live machine ---------------------------------------------------------------


def _engine_versions() -> dict[str, str]:
    """Engines installed for native runs here, by name, with their versions."""
    from llm_backend.engines import REGISTRY

    found = {engine.name: engine.native_version() for engine in REGISTRY.all()}
    return {name: version for name, version in found.items() if version}


def _engine_host_facts() -> dict[str, str]:
    """What the engines find on this machine (`Engine.host_facts`: llama.cpp's CUDA build)."""
    from llm_backend.engines import REGISTRY

    facts: dict[str, str] = {}
    for engine in REGISTRY.all():
        facts.update(engine.host_facts())
    return facts


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or None


def describe_host(
    *, gpu_report: GpuReport | None = None, docker: DockerFacts | None = None
) -> HardwareDescription:
    """Read this machine now: /proc/meminfo, NVML, the Docker CLI and the Python path."""
    report = gpu_report if gpu_report is not None else read_gpus(with_processes=False)
    meminfo = read_meminfo()
    gpus = tuple(
        GpuSpec(
            name=device.name,
            memory_total_bytes=None if device.unified_memory else device.memory_total_bytes,
            unified_memory=device.unified_memory,
            compute_capability=device.compute_capability,
        )
        for device in report.devices
    )
    facts = _engine_host_facts()
    return HardwareDescription(
        source="live",
        arch=platform.machine(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        memory_total_bytes=meminfo.mem_total,
        memory_available_bytes=meminfo.mem_available,
        swap_total_bytes=meminfo.swap_total,
        swap_free_bytes=meminfo.swap_free,
        gpus=gpus,
        nvml_problem=report.problem,
        driver_version=report.driver_version,
        cuda_driver_version=report.cuda_driver_version,
        docker=docker if docker is not None else docker_facts(),
        engine_versions=_engine_versions(),
        cuda_compiler=facts.get("cuda_compiler"),
        llama_server_cuda=facts.get("llama_server_cuda"),
    )


# --- the pure choice ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """What selection needs to know of one GPU profile: its model's memory need, its engine
    and its own runtime (all from the profile and its engine, never from names here)."""

    need: MemoryNeed
    engine: str
    runtime: str


def candidates(config: Any, names: Collection[str]) -> dict[str, Candidate]:
    """The named profiles of `config` (a ConfigSet) whose engine knows a GPU memory need."""
    from llm_backend.engines import get_engine
    from llm_backend.errors import BackendError

    found: dict[str, Candidate] = {}
    for name in names:
        try:
            profile = config.resolve(name).profile
        except BackendError:
            continue
        need = get_engine(profile.engine).memory_need(profile=profile)
        if need is not None and need.gpu_bytes is not None:
            found[name] = Candidate(need=need, engine=profile.engine, runtime=profile.runtime)
    return found


def builtin_candidates() -> dict[str, Candidate]:
    """The built-in GPU profiles as selection candidates."""
    from llm_backend.config import ConfigSet, builtin_layer

    return candidates(ConfigSet(layers=[builtin_layer()]), (PROFILE_120B, PROFILE_20B))


def memory_fit(hardware: HardwareDescription, need: MemoryNeed) -> tuple[bool, str]:
    """Whether one GPU (or the unified memory) is big enough, and the figures that say so."""
    if not hardware.gpus:
        problem = f" ({hardware.nvml_problem})" if hardware.nvml_problem else ""
        return False, f"no NVIDIA GPU found{problem}"
    gpu_bytes = need.gpu_bytes or 0
    if hardware.unified_memory:
        name = next(gpu.name for gpu in hardware.gpus if gpu.unified_memory)
        total = hardware.memory_total_bytes
        unified = need.unified_bytes or gpu_bytes
        if total >= unified:
            return True, (
                f"{name} with {gib(total)} unified memory (needs {gib(unified)})"
            )
        return False, (
            f"{name} has {gib(total)} unified memory, less than the {gib(unified)} it needs"
        )
    largest = max(hardware.gpus, key=lambda gpu: gpu.memory_total_bytes or 0)
    size = largest.memory_total_bytes or 0
    count = len(hardware.gpus)
    which = f"{largest.name} ({gib(size)})" + (f", 1 of {count} GPUs" if count > 1 else "")
    if size >= gpu_bytes:
        return True, f"{which} (needs {gib(gpu_bytes)} on one GPU)"
    return False, f"the largest GPU is {which}, less than the {gib(gpu_bytes)} it needs"


def working_runtime(
    hardware: HardwareDescription, preferred: str, engine: str
) -> tuple[str | None, str]:
    """The runtime that can run `engine` on the GPUs here: `preferred` first, then the others
    in registry order; each runtime says whether it can (`Runtime.gpu_readiness`)."""
    from llm_backend.engines import get_engine
    from llm_backend.runtimes import get_runtime, runtime_names

    server = get_engine(engine)
    texts: list[str] = []
    for name in [preferred, *(item for item in runtime_names() if item != preferred)]:
        usable, text = get_runtime(name).gpu_readiness(hardware=hardware, engine=server)
        if usable:
            return name, text
        texts.append(text)
    return None, "no working runtime: " + "; ".join(texts)


def select_profile(
    hardware: HardwareDescription,
    *,
    available: Collection[str] = (PROFILE_120B, PROFILE_20B, PROFILE_GPU, PROFILE_CPU),
    runtimes: Mapping[str, str] | None = None,
    found: Mapping[str, Candidate] | None = None,
) -> ProfileChoice:
    """The best built-in profile this machine can run, with a reason for every one passed over.

    The 120b EAGLE3 profile needs one 80 GB-class GPU or a 128 GB unified-memory box; the 20b
    one a 24 GB-class GPU; both a working runtime (Docker with the NVIDIA runtime, or SGLang
    installed natively). A GPU without such a runtime gets the embedded model on the GPU when a
    CUDA build of llama-server exists or nvcc can make one. Anything else gets the CPU
    profile. `found`: the candidates' memory needs, engines and runtimes (default: the
    built-in profiles'); `runtimes` overrides a candidate's runtime.
    """
    runtimes = runtimes or {}
    found = builtin_candidates() if found is None else found
    reasons: list[str] = []
    for candidate in (PROFILE_120B, PROFILE_20B):
        if candidate not in available:
            reasons.append(f"not {candidate}: no profile of that name is defined")
            continue
        if candidate not in found:
            reasons.append(f"not {candidate}: its profile gives no model_facts.min_gpu_memory")
            continue
        fits, memory_text = memory_fit(hardware, found[candidate].need)
        if not fits:
            reasons.append(f"not {candidate}: {memory_text}")
            continue
        preferred = runtimes.get(candidate, found[candidate].runtime)
        runtime, runtime_text = working_runtime(hardware, preferred, found[candidate].engine)
        if runtime is None:
            reasons.append(f"not {candidate}: {memory_text}, but {runtime_text}")
            continue
        reasons.append(f"chose {candidate}: {memory_text}; {runtime_text}")
        if runtime != preferred:
            reasons.append(f"{candidate} runs with --runtime {runtime} here ({preferred} cannot)")
        return ProfileChoice(
            profile=candidate,
            reasons=tuple(reasons),
            runtime=None if runtime == preferred else runtime,
        )
    gpu_choice = _embedded_gpu(hardware, available, reasons)
    if gpu_choice is not None:
        return gpu_choice
    reasons.append(f"chose {PROFILE_CPU}: runs on any CPU")
    bigger = [name for name in (PROFILE_120B, PROFILE_20B) if name in available]
    if bigger:
        reasons.append(
            f"to force a bigger one: llm-backend start --profile {bigger[0]}, or "
            f'default_profile = "{bigger[0]}" in ./llm-backend.toml'
        )
    return ProfileChoice(profile=PROFILE_CPU, reasons=tuple(reasons))


def _embedded_gpu(
    hardware: HardwareDescription, available: Collection[str], reasons: list[str]
) -> ProfileChoice | None:
    """The embedded model on the GPU, when there is one and its runtime and engine can use it
    (`Runtime.gpu_readiness`; llama.cpp: a CUDA build, or nvcc to build one)."""
    if PROFILE_GPU not in available:
        return None
    if not hardware.gpus:
        reasons.append(f"not {PROFILE_GPU}: no NVIDIA GPU found")
        return None
    from llm_backend.config import ConfigSet, builtin_layer
    from llm_backend.engines import get_engine
    from llm_backend.runtimes import get_runtime

    profile = ConfigSet(layers=[builtin_layer()]).resolve(PROFILE_GPU).profile
    name = hardware.gpus[0].name
    usable, how = get_runtime(profile.runtime).gpu_readiness(
        hardware=hardware, engine=get_engine(profile.engine)
    )
    if not usable:
        reasons.append(f"not {PROFILE_GPU}: {name} found, but {how}")
        return None
    reasons.append(f"chose {PROFILE_GPU}: {name}, all layers offloaded; {how}")
    return ProfileChoice(profile=PROFILE_GPU, reasons=tuple(reasons))
