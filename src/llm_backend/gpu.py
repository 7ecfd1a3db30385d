"""GPU state through NVML (`nvidia-ml-py`, optional): devices, memory, load, processes.

NVML missing, or no driver, is a finding (`GpuReport.problem`), never a crash. Unified-memory
boxes (DGX Spark, GB10) answer "not supported" for memory: there the figures come from
/proc/meminfo (MemTotal, MemAvailable), as NVIDIA's own guidance for that platform says.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from llm_backend.state import StateStore

INSTALL_HINT = "pip install 'llm-backend[gpu]' (nvidia-ml-py)"
UNIFIED_MEMORY_NAMES = ("GB10",)


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as NVML lists it."""

    pid: int
    used_memory_bytes: int | None
    name: str | None
    kind: str  # "compute" | "graphics"


@dataclass(frozen=True)
class GpuDevice:
    """One GPU now. On unified memory, `memory_*` come from /proc/meminfo (`memory_source`)."""

    index: int
    name: str
    uuid: str | None
    unified_memory: bool
    memory_source: str  # "nvml" | "meminfo" | "unknown"
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_available_bytes: int | None
    utilization_percent: int | None
    temperature_c: int | None
    power_w: float | None
    compute_capability: str | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuReport:
    """Every GPU NVML sees, or why none could be read (`problem`, with a `fix`)."""

    nvml_available: bool
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    devices: tuple[GpuDevice, ...] = ()
    problem: str | None = None
    fix: str | None = None
    read_ms: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _import_pynvml() -> Any:
    import pynvml

    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(call: Callable[[], Any]) -> Any:
    """One NVML field: None when the device or driver does not support it."""
    pynvml = _import_pynvml()
    try:
        return call()
    except pynvml.NVMLError:
        return None


@contextlib.contextmanager
def _nvml_session() -> Iterator[Any]:
    pynvml = _import_pynvml()
    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def read_gpus(*, with_processes: bool = True) -> GpuReport:
    """Read every GPU through NVML; a missing package, library or driver becomes `problem`."""
    started = time.perf_counter()
    try:
        pynvml = _import_pynvml()
    except ImportError:
        return GpuReport(
            nvml_available=False,
            problem="the NVML Python bindings (nvidia-ml-py) are not installed",
            fix=f"{INSTALL_HINT}; needed only for GPU profiles",
        )
    try:
        session = _nvml_session()
        nvml = session.__enter__()
    except pynvml.NVMLError as error:
        return GpuReport(
            nvml_available=False,
            problem=f"NVML could not start: {error}",
            fix="install the NVIDIA driver (it ships libnvidia-ml.so.1) on a machine with an "
            "NVIDIA GPU; CPU profiles such as smollm2-cpu need neither",
        )
    try:
        driver = _optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        cuda = _optional(nvml.nvmlSystemGetCudaDriverVersion)
        nvml_version = _optional(lambda: _text(nvml.nvmlSystemGetNVMLVersion()))
        count = int(nvml.nvmlDeviceGetCount())
        devices = tuple(_read_device(nvml, index, with_processes) for index in range(count))
    except pynvml.NVMLError as error:
        return GpuReport(
            nvml_available=False,
            problem=f"NVML failed while listing GPUs: {error}",
            fix="run `nvidia-smi` to see the driver's own error; a driver/library version "
            "mismatch needs a reboot",
        )
    finally:
        session.__exit__(None, None, None)
    cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
    return GpuReport(
        nvml_available=True,
        driver_version=driver,
        cuda_driver_version=cuda_text,
        nvml_version=nvml_version,
        devices=devices,
        problem=None if devices else "NVML works but lists no GPU",
        fix=None if devices else "check `nvidia-smi`; in a container pass --gpus all",
        read_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _read_device(nvml: Any, index: int, with_processes: bool) -> GpuDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    # v2 counts driver-reserved memory apart from `used`, as nvidia-smi shows it.
    version = getattr(nvml, "nvmlMemory_v2", None)
    memory = (
        _optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle, version=version))
        if version is not None
        else None
    ) or _optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    unified = (
        memory is None
        or int(getattr(memory, "total", 0) or 0) == 0
        or any(marker in name for marker in UNIFIED_MEMORY_NAMES)
    )
    if unified:
        from llm_backend.host.meminfo import read_meminfo

        meminfo = read_meminfo()
        total: int | None = meminfo.mem_total
        available: int | None = meminfo.mem_available
        used: int | None = meminfo.mem_total - meminfo.mem_available
        source = "meminfo"
    elif memory is not None:
        total, available, used = int(memory.total), int(memory.free), int(memory.used)
        source = "nvml"
    else:
        total = available = used = None
        source = "unknown"
    utilization = _optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    power_mw = _optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    capability = _optional(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    processes: tuple[GpuProcess, ...] = ()
    if with_processes:
        processes = _device_processes(nvml, handle)
    return GpuDevice(
        index=index,
        name=name,
        uuid=_optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        unified_memory=unified,
        memory_source=source,
        memory_total_bytes=total,
        memory_used_bytes=used,
        memory_available_bytes=available,
        utilization_percent=int(utilization.gpu) if utilization is not None else None,
        temperature_c=_optional(
            lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        ),
        power_w=round(power_mw / 1000, 1) if isinstance(power_mw, int | float) else None,
        compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
        processes=processes,
    )


def _device_processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    found: dict[int, GpuProcess] = {}
    for kind, call in (
        ("compute", "nvmlDeviceGetComputeRunningProcesses"),
        ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ):
        lister: Callable[[Any], Any] = getattr(nvml, call)
        listed = _optional(partial(lister, handle)) or []
        for entry in listed:
            pid = int(entry.pid)
            used = getattr(entry, "usedGpuMemory", None)
            # NVML reports "not available" as a huge sentinel or None (e.g. without privileges).
            used_bytes = int(used) if isinstance(used, int) and used < 2**62 else None
            if pid not in found:
                found[pid] = GpuProcess(
                    pid=pid, used_memory_bytes=used_bytes, name=_process_name(pid), kind=kind
                )
    return tuple(sorted(found.values(), key=lambda process: process.pid))


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


# --- processes of ours that still hold GPU memory ------------------------------------------


@dataclass(frozen=True)
class OwnedProcess:
    """A process of our server's tree, identified by pid and start time (pid reuse safe)."""

    pid: int
    create_time: float
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OwnedProcess:
        return cls(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            name=data.get("name"),
        )


def process_tree(pid: int | None) -> tuple[OwnedProcess, ...]:
    """The process `pid`, its descendants and the rest of its process group and session,
    right now (`llm_backend.processes.tree`)."""
    if pid is None:
        return ()
    from llm_backend.processes import tree

    try:
        leader = psutil.Process(pid)
        born = leader.create_time()
    except psutil.Error:
        return ()
    found = []
    for process in tree(leader=leader, group=pid, born_after=born):
        with contextlib.suppress(psutil.Error):
            found.append(OwnedProcess(process.pid, process.create_time(), process.name()))
    return tuple(found)


def still_alive(processes: Iterable[OwnedProcess]) -> tuple[OwnedProcess, ...]:
    """Those of `processes` that still run (same pid and start time, not a zombie)."""
    alive = []
    for owned in processes:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(owned.pid)
            if (
                abs(process.create_time() - owned.create_time) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                alive.append(owned)
    return tuple(alive)


def holding_gpu_memory(
    processes: Iterable[OwnedProcess], report: GpuReport
) -> tuple[OwnedProcess, ...]:
    """Those of our processes that NVML lists on a GPU and that are still alive."""
    on_gpu = {process.pid for device in report.devices for process in device.processes}
    return tuple(owned for owned in still_alive(processes) if owned.pid in on_gpu)


def end_processes(
    processes: Iterable[OwnedProcess], *, grace_s: float = 5.0
) -> tuple[list[OwnedProcess], list[OwnedProcess]]:
    """SIGTERM, then SIGKILL after `grace_s`, each by pid (checked against its start time),
    with the one tree stop (`llm_backend.processes.stop_tree`). Returns (ended, still running).
    """
    from llm_backend.processes import process_matches, stop_tree

    targets = list(still_alive(processes))
    live = [found for owned in targets
            if (found := process_matches(owned.pid, owned.create_time)) is not None]
    stop_tree(live, grace_s=grace_s)
    left = list(still_alive(targets))
    ended = [owned for owned in targets if owned not in left]
    return ended, left


LEFTOVERS_FILE = "gpu-leftovers.json"


@dataclass(frozen=True)
class GpuLeftovers:
    """After `stop`: processes of ours that still hold GPU memory, and which `--force` ended."""

    checked: bool
    lingering: tuple[OwnedProcess, ...] = ()
    ended: tuple[OwnedProcess, ...] = ()
    still_running: tuple[OwnedProcess, ...] = ()
    problem: str | None = None


def _load_saved(path: Path) -> list[OwnedProcess]:
    # Through the state dir's reader: no symlink followed, a damaged file moved aside.
    from llm_backend.state import load_state_json

    data, _ = load_state_json(path)
    try:
        return [OwnedProcess.from_json(item) for item in (data or {}).get("processes", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _save(path: Path, processes: Iterable[OwnedProcess]) -> None:
    """Best effort: only a reminder for a later `stop --force`; a read-only or full state
    dir must not hide the error that the command is reporting."""
    from llm_backend.state import StateDirError, atomic_write_json

    items = [owned.to_json() for owned in processes]
    with contextlib.suppress(StateDirError, OSError):
        if items:
            atomic_write_json(path, {"processes": items})
        else:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StopWatch:
    """The recorded native server's process tree, taken before `stop` so that afterwards the
    ones still holding GPU memory can be named (and with `force`, ended)."""

    state_root: Path
    tree: tuple[OwnedProcess, ...]

    def settle(self, *, force: bool) -> GpuLeftovers:
        return settle_after_stop(self.state_root, self.tree, force=force)


def watch_stop(store: StateStore) -> StopWatch:
    """Take the tree of the recorded server before stopping it (none for a container: its
    processes live in the container's namespace and Docker ends them)."""
    from llm_backend.runtimes import get_runtime

    record = store.load_instance()
    tree = (process_tree(record.pid)
            if record and not get_runtime(record.runtime).in_container else ())
    return StopWatch(store.root, tree)


def settle_after_stop(
    state_root: Path,
    tree: Iterable[OwnedProcess],
    *,
    force: bool,
    report: GpuReport | None = None,
) -> GpuLeftovers:
    """Which of our processes (the stopped server's tree, or ones found by an earlier stop)
    still hold GPU memory; with `force`, end them by pid. Remembered in the state dir so that
    a later `stop --force` can end them."""
    path = state_root / LEFTOVERS_FILE
    candidates = {owned.pid: owned for owned in [*_load_saved(path), *tree]}
    if not candidates:
        return GpuLeftovers(checked=False)
    report = report if report is not None else read_gpus()
    if not report.nvml_available:
        _save(path, [])
        return GpuLeftovers(checked=False, problem=report.problem)
    lingering = holding_gpu_memory(candidates.values(), report)
    if not force or not lingering:
        _save(path, lingering)
        return GpuLeftovers(checked=True, lingering=lingering)
    ended, left = end_processes(lingering)
    _save(path, left)
    return GpuLeftovers(
        checked=True, lingering=lingering, ended=tuple(ended), still_running=tuple(left)
    )


def status_json(report: GpuReport, ours: Iterable[int] = ()) -> dict[str, Any]:
    """`status --json`'s `gpus` value: the report, each process marked `ours` or not."""
    mine = set(ours)
    data = report.to_json()
    for device in data["devices"]:
        for process in device["processes"]:
            process["ours"] = process["pid"] in mine
    return data
