"""Preflight checks shared by `doctor` and `start`: each says pass, warn or fail, and how to fix it.

Checks only look; none changes the host. `doctor` runs the general checks here (GPU, memory,
disk, port, privileges, OOM daemons) and asks the profile's runtime and engine for theirs
(`Runtime.checks()`, `Engine.checks()`). `start` runs the checks of its profile first and
stops before any host change when one fails (unless that check is named in `--skip-checks`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.checks import Check, CheckResult, Context, Status, result
from llm_backend.config import ConfigSet, Profile, parse_size
from llm_backend.errors import BackendError, ConfigError
from llm_backend.gpu import GpuReport
from llm_backend.hardware import (
    PROFILE_20B,
    PROFILE_120B,
    PROFILE_CPU,
    HardwareDescription,
    ProfileChoice,
    candidates,
    describe_host,
    docker_facts,
    select_profile,
)
from llm_backend.host.meminfo import read_meminfo
from llm_backend.toml_names import profile_table
from llm_backend.units import format_bytes as gib

if TYPE_CHECKING:
    from llm_backend.pull import LocalReport, Source

SCHEMA_VERSION = 1

__all__ = ["CheckResult", "Context", "Status"]  # re-exported: doctor's result types


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
    # What `start` reports when a check fails (e.g. port -> port_in_use); not in the JSON.
    failure_classes: dict[str, str] = field(default_factory=dict)
    # Each artifact the profile needs, present, partial or missing (the checks' own plan).
    artifacts: LocalReport | None = None

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
            "artifacts": self.artifacts.to_json() if self.artifacts else None,
        }


_result = result


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
    """`memory`: the model fits (the engine says how much it needs: `Engine.memory_need`)."""
    profile = ctx.profile
    need = ctx.engine.memory_need(profile=profile)
    if need is not None and need.host_bytes is not None:
        return _check_cpu_memory(need.host_bytes)
    if not ctx.needs_gpu:
        return None
    if need is None or need.gpu_bytes is None:
        return _result("memory", "pass", f"no known memory need for model {profile.model}")
    devices = ctx.gpus.devices
    if not devices:
        return _result("memory", "fail",
                       f"no GPU memory to load into (see the gpu check); {profile.model} needs "
                       f"{gib(need.gpu_bytes)} on one GPU",
                       "run a GPU profile on a machine with an NVIDIA GPU, or use smollm2-cpu",
                       need=need.gpu_bytes)
    if any(device.unified_memory for device in devices):
        return _check_unified_memory(ctx, need.unified_bytes or need.gpu_bytes,
                                     need.load_peak_bytes or need.gpu_bytes)
    best = max(devices, key=lambda device: device.memory_available_bytes or 0)
    total = best.memory_total_bytes or 0
    free = best.memory_available_bytes or 0
    text = (f"GPU {best.index} {best.name}: {gib(free)} free of {gib(total)}; "
            f"{profile.model} needs {gib(need.gpu_bytes)} on one GPU")
    details: dict[str, Any] = {"gpu": best.index, "total": total, "free": free,
                               "need": need.gpu_bytes}
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
    staging = need.host_staging_bytes or 0
    meminfo = read_meminfo()
    swap, swap_text = _swap_possible(ctx, meminfo.swap_free)
    host_text = f"host MemAvailable {gib(meminfo.mem_available)} + {swap_text}"
    details.update(host_available=meminfo.mem_available, swap_possible=swap)
    if meminfo.mem_available + swap < staging:
        return _result(
            "memory", "warn",
            f"{text}; {host_text}, less than the ~{gib(staging)} the loader stages in host RAM",
            "free host memory or add swap (host_prep.swap_size in the profile)", **details)
    return _result("memory", "pass", f"{text}; {host_text}", **details)


def _check_unified_memory(ctx: Context, unified: int, peak: int) -> CheckResult:
    """Unified memory (DGX Spark, GB10): MemTotal against the box size, free memory against
    the load's peak; with hugetlb pages only free huge pages count (they do not swap)."""
    meminfo = read_meminfo()
    swap, swap_text = _swap_possible(ctx, meminfo.swap_free)
    usable = meminfo.allocatable(extra_swap=swap - meminfo.swap_free)
    if meminfo.hugepages_total > 0:
        swap_text = "hugetlb pages configured, swap does not count"
    details: dict[str, Any] = {
        "mem_total": meminfo.mem_total,
        "mem_available": meminfo.mem_available,
        "swap_possible": swap,
        "load_peak": peak,
    }
    text = (f"unified memory: MemTotal {gib(meminfo.mem_total)}, MemAvailable "
            f"{gib(meminfo.mem_available)} + {swap_text}; the load peaks near {gib(peak)}")
    if meminfo.mem_total < unified:
        return _result("memory", "fail", text + f"; needs a {gib(unified)} box",
                       f"use {PROFILE_20B} or smollm2-cpu on this machine", **details)
    if usable < peak:
        return _result(
            "memory", "fail", text,
            "free memory (stop other GPU or large processes) or add swap "
            "(host_prep.swap_size in the profile); `llm-backend status` lists GPU processes",
            **details)
    return _result("memory", "pass", text, **details)


def _check_cpu_memory(need: int) -> CheckResult:
    meminfo = read_meminfo()
    text = f"MemAvailable {gib(meminfo.mem_available)}; the model needs about {gib(need)}"
    if meminfo.mem_available < need:
        return _result("memory", "fail", text,
                       "free memory, or lower `context_length` in the profile",
                       available=meminfo.mem_available, need=need)
    return _result("memory", "pass", text, available=meminfo.mem_available, need=need)


# --- disk -----------------------------------------------------------------------------------


def check_disk(ctx: Context) -> CheckResult | None:
    """`disk`: what the pull still has to download (each artifact in the folder it lands in:
    `Context.plan`, the same plan `pull` checks with) and the swap file host preparation
    would create, summed per filesystem against its free space (`pull.by_filesystem`)."""
    from llm_backend import pull

    sources = [source for source, _ in ctx.plan()]
    needs = pull.disk_needs(sources, [artifact for _, artifact in ctx.plan()])
    if ctx.host_prep:
        prep = ctx.profile.host_prep
        swap_file = Path(prep.swap_file)
        size = None if prep.swap_size == "auto" else parse_size(prep.swap_size)
        needs.append(pull.DiskNeed("swap file", swap_file.parent,
                                   0 if swap_file.exists() else size))
    if not needs:
        return None
    filesystems = pull.by_filesystem(needs)
    lines = []
    details: dict[str, Any] = {}
    filesystem_of = {id(need): filesystem for filesystem in filesystems
                     for need in filesystem.needs}
    for need in needs:
        filesystem = filesystem_of[id(need)]
        wanted = "size unknown" if need.bytes is None else f"needs {gib(need.bytes)}"
        lines.append(f"{need.label}: {gib(filesystem.free)} free at {filesystem.where} "
                     f"({wanted})")
        details[need.label] = {"path": str(need.path), "free": filesystem.free,
                               "need": need.bytes}
    short = [f"{filesystem.where}: {gib(filesystem.free)} free, {gib(filesystem.total)} needed"
             for filesystem in filesystems if filesystem.short]
    if short:
        return _result("disk", "fail", "; ".join(lines) + "; not enough: " + "; ".join(short),
                       pull.DISK_REMEDY, **details)
    return _result("disk", "pass", "; ".join(lines), **details)


# --- port -----------------------------------------------------------------------------------


def check_port(ctx: Context) -> CheckResult:
    from llm_backend.probes import port_holder
    from llm_backend.state import ACTIVE_STATES, StateStore

    host, port = ctx.profile.host, ctx.profile.port
    try:
        holder = port_holder(host, port)
    except BackendError as error:  # not a taken port: an address this machine does not have
        return _result("port", "fail", error.message, error.remedy)
    if holder is None:
        return _result("port", "pass", f"port {port} on {host} is free")
    record = StateStore().load_instance()
    if record is not None and record.state in ACTIVE_STATES and record.port == port:
        return _result("port", "warn",
                       f"port {port} is held by the running backend {record.profile} "
                       f"(pid {record.pid})", "llm-backend stop (or start on another --port)",
                       holder=holder)
    if _runtime_will_adopt(ctx):
        return _result("port", "warn",
                       f"port {port} is held by a running server of profile {ctx.profile.name} "
                       f"({holder}) that start adopts instead of launching another",
                       "llm-backend stop, to start it afresh", holder=holder)
    return _result("port", "fail", f"port {port} on {host} is already in use by {holder}",
                   f"stop {holder}, or use another port: llm-backend start --port {port + 1}",
                   holder=holder)


def check_access(ctx: Context) -> CheckResult:
    """`access`: an API key for a server that listens beyond loopback (issue: open servers)."""
    from llm_backend import credentials

    try:
        key = credentials.read_api_key(ctx.profile)
    except BackendError as error:
        return _result("access", "fail", error.message, error.remedy)
    if key:
        return _result("access", "pass", "the server takes an API key (never shown); "
                       "llm-backend's own requests send it")
    listen_host = ctx.runtime.listen_host(profile=ctx.profile)
    if credentials.exposed_without_key(ctx.profile, listen_host):
        return _result("access", "warn", credentials.exposure_warning(ctx.profile, listen_host),
                       f"set api_key_file = \"PATH\" in {profile_table(ctx.profile.name)} "
                       f"(a file with mode 0600), or export {credentials.API_KEY_ENV}")
    return _result("access", "pass",
                   f"the server listens on {listen_host} only, without an API key")


def _runtime_will_adopt(ctx: Context) -> bool:
    """Whether the runtime recognises the holder of the port as our own server (Docker)."""
    try:
        return ctx.runtime.will_adopt(profile=ctx.profile)
    except BackendError:
        return False


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


# General checks, in the order they run: the runtime's and the engine's own checks come
# after `disk` (see `checks_for`).
GENERAL_BEFORE: tuple[Check, ...] = (
    Check("gpu", check_gpu),
    Check("memory", check_memory, failure_class="out_of_memory"),
    Check("disk", check_disk),
)
def _multinode(name: str) -> Callable[[Context], CheckResult | None]:
    """A per-node check of llm_backend.cluster.distributed (multi-node profiles only)."""

    def run(ctx: Context) -> CheckResult | None:
        from llm_backend.cluster import distributed

        found: CheckResult | None = getattr(distributed, name)(ctx)
        return found

    return run


GENERAL_AFTER: tuple[Check, ...] = (
    Check("port", check_port, failure_class="port_in_use"),
    Check("access", check_access),
    Check("privileges", check_privileges),
    Check("oom_daemons", check_oom_daemons),
    Check("fast_link", _multinode("check_fast_link")),
    Check("rank0", _multinode("check_rank0")),
)


def checks_for(ctx: Context) -> tuple[Check, ...]:
    """Every check for the profile: general ones, then the runtime's, the engine's, the rest."""
    return (*GENERAL_BEFORE, *ctx.runtime.checks(), *ctx.engine.checks(), *GENERAL_AFTER)


def check_names() -> tuple[str, ...]:
    """Every check name any registered engine or runtime (or doctor itself) may report."""
    from llm_backend.engines import REGISTRY as engines
    from llm_backend.runtimes import REGISTRY as runtimes

    names = [check.name for check in GENERAL_BEFORE]
    for runtime in runtimes.all():
        names += [check.name for check in runtime.checks()]
    for engine in engines.all():
        names += [check.name for check in engine.checks()]
    names += [check.name for check in GENERAL_AFTER]
    return tuple(dict.fromkeys(names))


# --- entry points -----------------------------------------------------------------------------


def validate_skip(skip: Iterable[str]) -> frozenset[str]:
    """Check names given to --skip-checks (or LLM_BACKEND_SKIP_CHECKS); unknown ones are errors."""
    names = frozenset(name.strip() for item in skip for name in item.split(",") if name.strip())
    known = check_names()
    unknown = sorted(names - set(known))
    if unknown:
        raise ConfigError(
            f"unknown check {unknown[0]!r} in --skip-checks; checks: {', '.join(known)}",
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
    sources: Sequence[Source] | None = None,
    with_artifacts: bool = False,
) -> DoctorReport:
    """Run every check that applies to `profile`; a skipped check's failure becomes `skipped`.

    `sources`: what a pull would fetch, when the caller has them already (`start` plans its
    pull with them); else the checks make them (`Context.sources`). `with_artifacts`: add
    what is pulled and what is missing (`Context.plan`, the answer the checks gave).
    """
    started = time.perf_counter()
    skipped = validate_skip(skip)
    ctx = Context(profile, host_prep=host_prep, probe_binaries=probe_binaries, sources=sources)
    results = []
    failure_classes: dict[str, str] = {}
    for check in checks_for(ctx):
        name = check.name
        if check.failure_class:
            failure_classes[name] = check.failure_class
        try:
            result = check.run(ctx)
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
        hardware = describe_host(gpu_report=ctx.gpus, docker=ctx.fact(docker_facts))
    artifacts = None
    if with_artifacts:
        from llm_backend.pull import PULL_REMEDY, LocalReport

        found = tuple(artifact for _, artifact in ctx.plan())
        fix = None
        if any(not artifact.present for artifact in found):
            fix = f"{PULL_REMEDY} --profile {profile.name}"
            if auto is not None and auto.runtime:
                fix += f" --runtime {auto.runtime}"
        artifacts = LocalReport(profile.name, profile.runtime, found, fix=fix,
                                judged_from="sources")
    return DoctorReport(
        profile=profile.name,
        engine=profile.engine,
        runtime=profile.runtime,
        checks=tuple(results),
        duration_s=time.perf_counter() - started,
        hardware=hardware,
        gpus=ctx.gpus if with_hardware else None,
        auto=auto,
        failure_classes=failure_classes,
        artifacts=artifacts,
    )


def preflight(
    profile: Profile, *, host_prep: bool = True, skip: Collection[str] = (),
    sources: Sequence[Source] | None = None,
) -> DoctorReport:
    """The checks `start` runs first: raises a BackendError naming every failed check."""
    report = run_checks(profile, host_prep=host_prep, skip=skip, probe_binaries=False,
                        sources=sources)
    error = preflight_error(profile.name, report)
    if error is not None:
        raise error
    return report


def preflight_error(
    profile_name: str, report: DoctorReport, *, ignore: Collection[str] = ()
) -> BackendError | None:
    """The error `start` stops with when `report` has failed checks (None: it would go on).

    `ignore`: failed checks that do not count (what a pull would bring in first). The error is
    a ConfigError (exit 2) when only the profile's flags are wrong, else a BackendError (exit 1).
    """
    failures = [check for check in report.failures if check.name not in ignore]
    if not failures:
        return None
    first = failures[0]
    names = ", ".join(check.name for check in failures)
    message = f"preflight for {profile_name} failed ({names}): " + "; ".join(
        f"{check.name}: {check.summary}" for check in failures
    )
    # Only the profile is wrong (its flags or settings): a configuration error (exit 2).
    classes = {report.failure_classes.get(check.name) for check in failures}
    error_type = ConfigError if classes == {"bad_flag"} else BackendError
    return error_type(
        message + "; nothing on the host was changed",
        remedy=f"{first.fix or 'see `llm-backend doctor`'} (or, at your own risk, "
        f"llm-backend start --skip-checks {first.name})",
        failure_class=report.failure_classes.get(first.name),
        details={"checks": [check.to_json() for check in failures]},
    )


def auto_profile(
    config: ConfigSet, hardware: HardwareDescription | None = None
) -> ProfileChoice:
    """`--profile auto`: the best built-in profile for this machine, with reasons."""
    available = config.profile_names()
    for name in (PROFILE_120B, PROFILE_20B):
        try:
            config.resolve(name)
        except BackendError:
            available = [item for item in available if item != name]
    found = candidates(config, (PROFILE_120B, PROFILE_20B))
    if PROFILE_CPU not in available:
        available = [*available, PROFILE_CPU]
    return select_profile(
        hardware if hardware is not None else describe_host(),
        available=available,
        found=found,
    )
