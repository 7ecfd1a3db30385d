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
from llm_backend.engines.sglang import installed_version as sglang_version
from llm_backend.gpu import GpuReport, read_gpus
from llm_backend.host.meminfo import read_meminfo
from llm_backend.runtimes.docker_facts import DockerFacts, docker_facts
from llm_backend.units import GIB
from llm_backend.units import format_bytes as gib

SCHEMA_VERSION = 1
__all__ = ["GIB", "DockerFacts", "MemoryNeed", "docker_facts", "gib", "sglang_version"]

PROFILE_120B = "gpt-oss-120b-eagle3"
PROFILE_20B = "gpt-oss-20b-eagle3"
PROFILE_CPU = "smollm2-cpu"


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
    sglang_version: str | None = None
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
        sglang_version=sglang_version(),
    )


# --- the pure choice ------------------------------------------------------------------------


def builtin_memory_needs() -> dict[str, MemoryNeed]:
    """What each built-in GPU profile's model needs, from its `model_facts` (via its engine)."""
    from llm_backend.config import ConfigSet, builtin_layer

    config = ConfigSet(layers=[builtin_layer()])
    return memory_needs(config, (PROFILE_120B, PROFILE_20B))


def memory_needs(config: Any, names: Collection[str]) -> dict[str, MemoryNeed]:
    """`Engine.memory_need` of each named profile of `config` (a ConfigSet) that has one."""
    from llm_backend.engines import get_engine
    from llm_backend.errors import BackendError

    needs: dict[str, MemoryNeed] = {}
    for name in names:
        try:
            profile = config.resolve(name).profile
        except BackendError:
            continue
        need = get_engine(profile.engine).memory_need(profile=profile)
        if need is not None and need.gpu_bytes is not None:
            needs[name] = need
    return needs


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


def working_runtime(hardware: HardwareDescription, preferred: str) -> tuple[str | None, str]:
    """The runtime that can run an SGLang profile here: `preferred` first, then the other."""
    docker = hardware.docker
    if docker.gpu_ready:
        docker_text = "Docker with the NVIDIA runtime and Compose"
    elif not docker.engine_reachable:
        docker_text = f"no Docker engine ({docker.engine_problem or 'not reachable'})"
    elif not docker.nvidia_runtime:
        docker_text = "Docker has no NVIDIA container runtime"
    else:
        docker_text = "Docker Compose is missing"
    native_text = (
        f"SGLang {hardware.sglang_version} importable"
        if hardware.sglang_version
        else "SGLang not installed for native runs"
    )
    usable = {"docker": docker.gpu_ready, "native": hardware.sglang_version is not None}
    order = [preferred, *(name for name in ("docker", "native") if name != preferred)]
    for name in order:
        if usable.get(name):
            return name, docker_text if name == "docker" else native_text
    return None, f"no working runtime: {docker_text}; {native_text}"


def select_profile(
    hardware: HardwareDescription,
    *,
    available: Collection[str] = (PROFILE_120B, PROFILE_20B, PROFILE_CPU),
    runtimes: Mapping[str, str] | None = None,
    needs: Mapping[str, MemoryNeed] | None = None,
) -> ProfileChoice:
    """The best built-in profile this machine can run, with a reason for every one passed over.

    The 120b EAGLE3 profile needs one 80 GB-class GPU or a 128 GB unified-memory box; the 20b
    one a 24 GB-class GPU; both a working runtime (Docker with the NVIDIA runtime, or SGLang
    installed natively). Anything else gets the CPU profile. `needs`: each profile's memory
    need (default: the built-in profiles' `model_facts`).
    """
    runtimes = runtimes or {}
    needs = builtin_memory_needs() if needs is None else needs
    reasons: list[str] = []
    for candidate in (PROFILE_120B, PROFILE_20B):
        if candidate not in available:
            reasons.append(f"not {candidate}: no profile of that name is defined")
            continue
        if candidate not in needs:
            reasons.append(f"not {candidate}: its profile gives no model_facts.min_gpu_memory")
            continue
        fits, memory_text = memory_fit(hardware, needs[candidate])
        if not fits:
            reasons.append(f"not {candidate}: {memory_text}")
            continue
        preferred = runtimes.get(candidate, "docker")
        runtime, runtime_text = working_runtime(hardware, preferred)
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
    reasons.append(f"chose {PROFILE_CPU}: runs on any CPU")
    bigger = [name for name in (PROFILE_120B, PROFILE_20B) if name in available]
    if bigger:
        reasons.append(
            f"to force a bigger one: llm-backend start --profile {bigger[0]}, or "
            f'default_profile = "{bigger[0]}" in ./llm-backend.toml'
        )
    return ProfileChoice(profile=PROFILE_CPU, reasons=tuple(reasons))
