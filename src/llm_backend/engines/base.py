"""What an engine is: an argv from a profile, its endpoints, its checks, and a reader of its log.

Everything callers used to decide by the engine's name lives here: whether it needs a GPU,
how much memory a model needs, its preflight checks, how its flags are checked, how its
speculative-decoding figures are read, the log markers `diagnose` guesses it by, and how
it is installed. Nothing outside `engines/` compares engine names.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.config import Profile
from llm_backend.errors import BackendError, FailureClass
from llm_backend.runtimes.compose_logs import compose_exit, strip_compose_prefix

if TYPE_CHECKING:
    from llm_backend.checks import Check
    from llm_backend.hardware import HardwareDescription
    from llm_backend.pull import Source
    from llm_backend.runtimes.base import Runtime


class Phase(StrEnum):
    """The load phases engines map their own log lines onto (DESIGN.md, "Lifecycle")."""

    INIT = "init"
    DOWNLOAD = "download"
    LOAD_WEIGHTS = "load_weights"
    MOE_SHUFFLE = "moe_shuffle"
    KV_CACHE = "kv_cache"
    DRAFT_MODEL = "draft_model"
    CUDA_GRAPH = "cuda_graph"
    SERVER_UP = "server_up"
    WARMUP = "warmup"
    READY = "ready"


# A huggingface_hub / tqdm byte bar: "model-00001-of-00015.safetensors:  45%|####5 | 2.25G/4.99G
# [00:30<00:36, 75.3MB/s]" (tqdm `format_meter` with unit="B", unit_scale=True: sizes in powers
# of 1000 with k/M/G/T/P suffixes, then the rate in B/s, "?B/s" before the first sample).
BYTE_BAR = re.compile(
    r"(?<![\d.])(?P<done>\d+(?:\.\d+)?)(?P<done_unit>[kMGTPE]?)/(?P<total>\d+(?:\.\d+)?)"
    r"(?P<total_unit>[kMGTPE]?)\s*\[[^\]]*B/s\]"
)
SI_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
# Printed by SGLang's weight loader around a download from the Hub (sglang 0.5.23
# `python/sglang/srt/model_loader/weight_utils.py` `download_weights_from_hf`).
DOWNLOAD_START = re.compile(r"Using model weights format \[")


def download_event(text: str, line: str) -> PhaseEvent | None:
    """The `download` phase from a loader line or a byte progress bar, with bytes done/total."""
    bar = BYTE_BAR.search(text)
    if bar:
        done = float(bar.group("done")) * SI_UNITS[bar.group("done_unit")]
        total = float(bar.group("total")) * SI_UNITS[bar.group("total_unit")]
        return PhaseEvent("download", line, (int(done), int(total)))
    if DOWNLOAD_START.search(text):
        return PhaseEvent("download", line)
    return None


@dataclass(frozen=True)
class PhaseEvent:
    """The server entered a phase (or made progress within it)."""

    name: str
    line: str
    progress: tuple[int, int] | None = None


@dataclass(frozen=True)
class Failure:
    """Why a start failed, with the line that showed it and what to do."""

    failure_class: str  # a FailureClass value; checked (and made one) on construction
    message: str
    remedy: str
    line: str | None = None
    # True when the log had reached ready before this: a crash while serving, not a load
    # failure (`diagnose --json` says it as `failure_after_ready`).
    after_ready: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "failure_class", FailureClass(self.failure_class))

    def to_json(self) -> dict[str, Any]:
        """The shape of `failure` in `status --json` and `diagnose --json`."""
        return {
            "class": self.failure_class,
            "line": self.line,
            "message": self.message,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class SpecStats:
    """Speculative-decoding figures read from the engine's log or info endpoint.

    `accept_length`: tokens accepted per verify step (draft tokens + 1 at best);
    `accept_rate`: accepted / drafted, 0..1; `gen_throughput`: tokens/s the engine measured;
    `line`: the log line they came from; `source`: the info path or "log".
    """

    accept_length: float | None = None
    accept_rate: float | None = None
    gen_throughput: float | None = None
    line: str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The shape of `status --json`'s `spec`."""
        return {
            "accept_length": self.accept_length,
            "accept_rate": self.accept_rate,
            "gen_throughput": self.gen_throughput,
            "source": self.source,
        }


@dataclass(frozen=True)
class MemoryNeed:
    """How much memory loading one model takes, in bytes; None where it is not known.

    `gpu_bytes`: the least memory of one discrete GPU it loads on. `unified_bytes`: the least
    MemTotal of a unified-memory box (DGX Spark, GB10). `load_peak_bytes`: what the load holds
    at its peak on unified memory, beyond which the box must swap or fail. `host_staging_bytes`:
    host RAM the loader stages while filling a discrete GPU. `host_bytes`: RAM a model needs
    when it runs on the CPU.
    """

    gpu_bytes: int | None = None
    unified_bytes: int | None = None
    load_peak_bytes: int | None = None
    host_staging_bytes: int | None = None
    host_bytes: int | None = None


@dataclass(frozen=True)
class InstallResult:
    """Where an installed engine binary is, and whether this call built it."""

    binary: Path
    built: bool
    duration_s: float
    version: str
    # What it was built for, in words ("CUDA sm_90"); None for the engine's plain build.
    variant: str | None = None


@dataclass(frozen=True)
class InstallOptions:
    """What `llm-backend engine install` was asked for, beyond the engine's name.

    `accelerator`: "cpu", "cuda", or None (what this machine has). `architectures`: the GPU
    architectures to build for (CMake's CMAKE_CUDA_ARCHITECTURES, "90" for Hopper), None for
    this machine's GPUs. `source`: a local source archive or folder instead of a download.
    """

    accelerator: str | None = None
    architectures: str | None = None
    source: Path | None = None


# How much a failure class explains: a later line of a higher rank replaces the failure
# found so far (a worker's "hit an exception" is printed before its cause).
FAILURE_RANK = {"exited": 0, "child_crash": 1, "rank_not_loaded": 2}
SPECIFIC_RANK = 3

# A Python exception's last line: `RuntimeError: NCCL error: ...`, `torch.OutOfMemoryError: ...`,
# `Exception: Capture cuda graph failed: ...`.
EXCEPTION_LINE = re.compile(
    r"^(?P<name>(?:[A-Za-z_][\w]*\.)*(?:[A-Z]\w*(?:Error|Exception)|Exception))(?::\s*(?P<text>.*))?$"
)
TRACEBACK_START = "Traceback (most recent call last)"
# A frame line of a traceback, and the source line printed under it (indented).
FRAME_LINE = re.compile(r'^\s+File "')


@dataclass
class LogReading:
    """Everything a log said so far: phases in order, the first failure, the latest spec stats.

    `notes` are facts worth telling beside the failure (a restart loop); `last_exception` is
    the last `XxxError: message` line, the failure of last resort.
    """

    phases: list[PhaseEvent] = field(default_factory=list)
    failure: Failure | None = None
    spec: SpecStats | None = None
    ready: bool = False
    notes: list[str] = field(default_factory=list)
    last_exception: str | None = None

    def current_phase(self) -> PhaseEvent | None:
        """The phase entered last, or None before the first."""
        return self.phases[-1] if self.phases else None


def failure_rank(failure_class: str) -> int:
    """How much a failure class explains (higher replaces lower; specific classes rank 3)."""
    return FAILURE_RANK.get(failure_class, SPECIFIC_RANK)


# What a shell prints when the child it waits for dies of SIGKILL, alone on its line: bash and
# dash print the signal's description (`strsignal(SIGKILL)`: `Killed`, or `已杀死` in a zh_CN
# locale, as in sgl-project/sglang#16855), bash in a script with the job
# (`run.sh: line 3:  4242 Killed   python3 ...`), zsh `zsh: killed     python3 ...`.
KILLED_LINE = re.compile(
    r"^\s*(?:Killed|已杀死|\S+: line \d+:\s+\d+\s+(?:Killed|已杀死)\s.*|"
    r"zsh: killed\s.*)\s*$"
)
SIGKILL_EXIT_CODES = (-9, 137)  # Popen's -SIGKILL; 128 + 9 from a shell or a container


HOST_MEMORY_REMEDY = (
    "check `dmesg | grep -i -e oom -e 'killed process'`; then free host memory, add swap "
    "while the model loads (`host_prep.swap_size` in the profile) or lower the context "
    "length, and start again"
)


def sigkill_failure(message: str, *, line: str | None) -> Failure:
    """A load ended by SIGKILL: on a box nobody killed it on, the kernel's OOM killer (host
    RAM and swap ran out: the loader stages weights in RAM)."""
    return Failure(
        "out_of_memory",
        message + "; most often the kernel's OOM killer, when host memory and swap ran out",
        HOST_MEMORY_REMEDY,
        line=line,
    )


@dataclass(frozen=True)
class ExceptionKind:
    """What a Python exception's class says about a crash when no engine pattern knew its
    message: `failure_class` None keeps the class of the context (`child_crash` after a
    worker's "hit an exception" header, `exited` for a bare exception)."""

    names: tuple[str, ...]
    meaning: str
    remedy: str
    failure_class: str | None = None


# Python's built-in exception classes, by what they mean in a model server's load. Engines
# with their own wording (flags, images) put their kinds first (`LogReader.exception_kinds`).
PYTHON_EXCEPTION_KINDS: tuple[ExceptionKind, ...] = (
    ExceptionKind(("MemoryError",), "host memory ran out", HOST_MEMORY_REMEDY,
                  failure_class="out_of_memory"),
    ExceptionKind(
        ("KeyError", "AttributeError", "IndexError", "NotImplementedError", "TypeError"),
        "the engine's model code does not fit this model's checkpoint or config",
        "check that this engine version supports the model's architecture and quantization "
        "(`architectures` and `quantization_config` in its config.json); use a newer engine "
        "release or image, or a checkpoint in a format it supports; for weights that were only "
        "partly downloaded, `llm-backend pull` again",
    ),
    ExceptionKind(
        ("ImportError", "ModuleNotFoundError"),
        "a Python package the engine needs is missing or of another version",
        "use the engine's official image, or install the package versions the engine pins "
        "in this environment",
    ),
    ExceptionKind(
        ("FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError"),
        "a file the engine needs is missing or cannot be read",
        "check the path the message names: the model folder, a Docker mount "
        "(`docker.volumes`) or its permissions",
    ),
    ExceptionKind(
        ("ValueError", "AssertionError"),
        "the engine refused a setting or an input",
        "the message names what it refused: change that setting in the profile or in "
        "`extra_args` (`llm-backend start --dry-run` checks the flags first)",
    ),
    ExceptionKind(
        ("EOFError", "BrokenPipeError", "ConnectionResetError"),
        "another of the engine's processes died first",
        "find the first error above this one (another rank or process); with none, check "
        "`dmesg` for the kernel's OOM killer",
    ),
)


class LogReader(ABC):
    """Reads one engine's log lines, one at a time, into phases, failures and stats.

    Lines may come through `docker compose logs` (`service  | text`): the prefix is removed
    and Compose's own `exited with code N (restarting)` is noticed. Inside a Python traceback
    the frame and source lines (`  File "..."`, `    raise RuntimeError(f"NCCL error: ...")`)
    are never taken as the failure: the exception line after them is. A crash header
    (`Scheduler hit an exception: Traceback ...`) is a weak failure until the exception line
    that ends its traceback names the cause: that line then becomes the failure's line, and
    its class (or the engine's pattern for its message) chooses the remedy.

    Lines whose text an API client controls (`client_text`: a logged prompt, an access-log
    path) are read for phases only, never for failures. Once ready, later lines give no
    phases (a ready server does not load again), and a failure is marked `after_ready`.
    """

    # The engine's own kinds of Python exception, tried before PYTHON_EXCEPTION_KINDS.
    exception_kinds: tuple[ExceptionKind, ...] = ()

    def __init__(self) -> None:
        self.reading = LogReading()
        self._in_traceback = False
        self._restarts = 0
        # The weak failure whose traceback's exception line has not been read yet.
        self._awaiting_cause: Failure | None = None
        self._client_traceback = False  # the last line was a client's (request) line
        # A client's record that may go on over lines without the engine's prefix (a logged
        # exception whose text holds the client's line breaks): open until a prefixed line.
        self._client_record = False

    def feed(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        """Read one line; return what it told (also kept in `self.reading`)."""
        text = strip_compose_prefix(line.rstrip("\n"))
        exited = compose_exit(text)
        if exited is not None:
            return self._compose_exit(text, *exited)
        in_traceback = self._in_traceback
        if self._is_source_line(text):
            return []
        message = self.message_of(text)
        bare = message.strip()
        if self._client_record:
            if message == text and bare:  # no prefix of its own: the client's record goes on
                return self._client_phases(text)
            self._client_record = False
        if self.client_text(message):
            # A prompt or a path can say anything ("CUDA out of memory", "ready to roll").
            self._client_traceback = True
            self._client_record = self.client_record_continues(message)
            return self._client_phases(text)
        return self._engine_line(text, message, bare, in_traceback)

    def _client_phases(self, text: str) -> list[PhaseEvent | Failure | SpecStats]:
        """A client's line: read for phases only (never `ready`), never for failures."""
        phases = [event for event in self.read_line(text)
                  if isinstance(event, PhaseEvent) and event.name != "ready"
                  and not self.reading.ready]
        self.reading.phases += phases
        return list(phases)

    def _engine_line(self, text: str, message: str, bare: str,
                     in_traceback: bool) -> list[PhaseEvent | Failure | SpecStats]:
        is_exception = EXCEPTION_LINE.match(bare) is not None
        if self._client_traceback:
            # A request's error logged with its traceback (`logger.exception`): the bare
            # `Traceback ...` line right after it and the exception line that ends it.
            if bare == TRACEBACK_START + ":":
                return []
            self._client_traceback = False
            if is_exception and in_traceback:
                return []
        if KILLED_LINE.match(message) and self._nothing_explains_it():
            return self._killed(text)
        events = self.read_line(text)
        if is_exception:
            self.reading.last_exception = bare
        kept: list[PhaseEvent | Failure | SpecStats] = []
        for event in events:
            if isinstance(event, PhaseEvent):
                if self.reading.ready:
                    continue  # "listening on" after llama.cpp's ready, client requests
                self.reading.phases.append(event)
                if event.name == "ready":
                    self.reading.ready = True
            elif isinstance(event, Failure):
                event = self._record_failure(event, cause_line=is_exception and in_traceback)
            else:
                self.reading.spec = event
            kept.append(event)
        if (is_exception and in_traceback and self._awaiting_cause is not None
                and self.reading.failure is self._awaiting_cause):
            # No pattern knew this exception: its class says what it means.
            cause = self._after_ready(self.exception_failure(bare, header=self._awaiting_cause))
            self.reading.failure, self._awaiting_cause = cause, None
            kept.append(cause)
        return kept

    def _record_failure(self, failure: Failure, *, cause_line: bool) -> Failure:
        failure = self._after_ready(failure)
        current = self.reading.failure
        rank = failure_rank(failure.failure_class)
        if current is None or rank > failure_rank(current.failure_class) or (
            cause_line and current is self._awaiting_cause and rank >= failure_rank(
                current.failure_class)
        ):
            self.reading.failure = failure
            # A weak failure (a crash header, "Received sigquit") waits for its cause.
            self._awaiting_cause = (
                failure if rank <= FAILURE_RANK["child_crash"] and not cause_line else None
            )
        return failure

    def _after_ready(self, failure: Failure) -> Failure:
        if not self.reading.ready or failure.after_ready:
            return failure
        return replace(
            failure,
            message="after the server was ready (a crash while serving, not a load failure): "
            + failure.message.replace(" while loading", ""),
            after_ready=True,
        )

    def exception_failure(self, line: str, *, header: Failure | None) -> Failure:
        """The failure an exception line (`KeyError: 'model.layers.0.mlp'`) tells when no
        pattern knew its message: by the exception's class (`exception_kinds`, then
        PYTHON_EXCEPTION_KINDS); `header` is the crash header it ends, if any."""
        name = line.split(":", 1)[0].strip()
        short = name.rsplit(".", 1)[-1]
        context = header.failure_class if header is not None else "exited"
        where = " in a worker process" if header is not None else ""
        for kind in (*self.exception_kinds, *PYTHON_EXCEPTION_KINDS):
            if short in kind.names or name in kind.names:
                return Failure(kind.failure_class or context,
                               f"{kind.meaning} ({short}{where})", kind.remedy, line=line)
        return Failure(
            context,
            f"the server stopped with a {short}{where} that has no known cause",
            "read the traceback above it (`llm-backend logs -n 200`); search the message in "
            "the engine's issues",
            line=line,
        )

    def client_text(self, message: str) -> bool:
        """Whether a line carries text an API client controls (engines say which)."""
        return False

    def client_record_continues(self, message: str) -> bool:
        """Whether a client line's log record may go on over the following lines that carry
        no prefix of the engine's (a logged exception whose text holds the client's line
        breaks); they are the client's text too. Engines say which."""
        return False

    def _is_source_line(self, text: str) -> bool:
        """Whether `text` is a traceback's frame or source line (never a failure)."""
        message = self.message_of(text)
        if TRACEBACK_START in message:
            self._in_traceback = True
            return False
        if FRAME_LINE.match(message):
            self._in_traceback = True
            return True
        if self._in_traceback and message[:1].isspace():
            return True
        if message.strip():
            self._in_traceback = False
        return False

    def _compose_exit(
        self, line: str, service: str, code: int, restarting: bool
    ) -> list[PhaseEvent | Failure | SpecStats]:
        if restarting:
            self._restarts += 1
            note = (
                f"the container {service} exited with code {code} and Docker restarted it "
                f"({self._restarts} time(s)): the same error repeats until it is fixed"
            )
            self.reading.notes = [
                item for item in self.reading.notes if not item.startswith("the container ")
            ] + [note]
        killed = code in SIGKILL_EXIT_CODES
        if killed and self._nothing_explains_it():
            failure = sigkill_failure(
                f"the container {service} was killed with SIGKILL (exit code {code}) before "
                "it was ready" + (" and is being restarted (a restart loop)" if restarting
                                  else ""), line=line)
        else:
            failure = Failure(
                "exited",
                f"the container {service} exited with code {code}"
                + (" (SIGKILL: often the kernel's OOM killer; see `dmesg`)" if killed else "")
                + (" and is being restarted (a restart loop)" if restarting else ""),
                "read the error above the exit in `llm-backend logs`; the restart policy only "
                "repeats it",
                line=line,
            )
        if self.reading.failure is None:
            # The last exception before the exit says more than the exit itself.
            last = self.reading.last_exception
            if last is not None and not self.reading.ready:
                failure = self.exception_failure(last, header=None)
            self.reading.failure = self._after_ready(failure)
        return [failure]

    def _nothing_explains_it(self) -> bool:
        # After an error of its own an engine may kill its own tree with SIGKILL (SGLang
        # `kill_process_tree` after a failed warmup, `srt/server.py` `_wait_and_warmup`):
        # then `Killed` is no OOM sign.
        reading = self.reading
        return not reading.ready and reading.failure is None and reading.last_exception is None

    def _killed(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        failure = sigkill_failure("the server was killed with SIGKILL before it was ready "
                                  "(the shell that ran it printed `Killed`)", line=line)
        self.reading.failure = failure
        return [failure]

    def message_of(self, line: str) -> str:
        """The line without the engine's own prefix (timestamp, rank); engines override."""
        return line

    def unexplained_error(self) -> Failure | None:
        """For a load that failed with no known failure line: the last exception, if any,
        read by its class (`exception_failure`)."""
        if self.reading.failure is not None or self.reading.ready:
            return None
        line = self.reading.last_exception
        if line is None:
            return None
        return self.exception_failure(line, header=None)

    @abstractmethod
    def read_line(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        """Map one log line onto phases, failures and spec stats."""


def http_get(
    url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One GET with the standard library (no httpx import): (HTTP status, body).

    Raises OSError or http.client.HTTPException when the server does not answer.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s
    )
    try:
        connection.request("GET", parts.path or "/", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Engine(ABC):
    """What runs: turns a profile into a command and knows the server it starts.

    Subclasses set `name` (the profile's `engine` value) and implement `build_argv` and
    `log_reader`; every other method has a default that suits an engine without that
    feature. Methods take keyword arguments only. Register a new engine in
    `engines/__init__.py` (or as a plugin, see `llm_backend.registry`).
    """

    name: str
    # Paths on the server, relative to its endpoint.
    health_path: str = "/health"  # 200 once ready; anything else while loading
    models_path: str = "/v1/models"
    info_paths: tuple[str, ...] = ()  # JSON with server facts, tried in order (404: next)
    # True when the engine cannot run without an NVIDIA GPU.
    needs_gpu: bool = False
    # Lines only this engine's log has; `diagnose` guesses the engine of a log by them.
    log_markers: re.Pattern[str] | None = None
    # Names `llm-backend engine install NAME` accepts for this engine; empty: not installable.
    install_names: tuple[str, ...] = ()
    # What `serve` polls after ready to tell a live server from a crashed or hung one.
    liveness_path: str = "/health"

    @abstractmethod
    def build_argv(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        """The command that runs the server for this profile.

        `for_container`: the command runs inside the runtime's container (its binary and
        model paths, listening on 0.0.0.0). Raises ConfigError for a profile it cannot run.
        """

    @abstractmethod
    def log_reader(self) -> LogReader:
        """A fresh reader for this engine's log (after `build_argv`, it knows the profile)."""

    def check_profile(self, *, profile: Profile, for_container: bool = False) -> None:
        """Raise a BackendError if the profile cannot run (missing binary or model file)."""

    def check_flags(self, *, profile: Profile, for_container: bool = False) -> str | None:
        """Check the profile's flags with the engine's own parser or table, before any change.

        Raises ConfigError (failure class `bad_flag`) naming each wrong flag and the right
        one; returns a line saying what checked them, or None when the engine checks none.
        """
        return None

    def checks(self) -> tuple[Check, ...]:
        """The engine's own preflight checks (binary, model file or cache, ...), in order."""
        return ()

    def memory_need(self, *, profile: Profile) -> MemoryNeed | None:
        """How much memory the profile's model needs (bytes), or None when not known.

        Model facts come from the profile (`[model_facts]` in its TOML) or the model file;
        never raises for a missing model (the model checks report that).
        """
        return None

    def api_key_files(self, *, profile: Profile, api_key: str) -> dict[str, str]:
        """Files (name -> content) that hand the API key to the server, written 0600 by us.

        Empty means the engine cannot take a key; `start` then refuses a profile that has one.
        """
        return {}

    def api_key_args(self, *, profile: Profile, paths: dict[str, str]) -> list[str]:
        """Flags that point the server at those files (`paths`: name -> path the server sees)."""
        return []

    def hub_models(self, *, profile: Profile) -> tuple[str, ...]:
        """Hugging Face repos (`org/name`) the engine downloads at start: model first."""
        return ()

    def line_time(self, line: str) -> datetime | None:
        """The timestamp at the start of one of its log lines, if its logs have them."""
        return None

    def native_version(self) -> str | None:
        """The engine's version when it is installed here for native runs, else None."""
        return None

    def host_facts(self) -> dict[str, str]:
        """Facts about this machine only the engine knows how to find, for the hardware
        description (keys are `HardwareDescription` fields, e.g. llama.cpp's CUDA build)."""
        return {}

    def native_readiness(self, *, hardware: HardwareDescription) -> tuple[bool, str]:
        """Whether the described machine has the engine installed for native runs, and why."""
        version = hardware.engine_versions.get(self.name)
        if version:
            return True, f"{self.name} {version} installed"
        return False, f"{self.name} not installed for native runs"

    def profile_needs_gpu(self, *, profile: Profile) -> bool:
        """Whether this profile cannot run without an NVIDIA GPU (default: `needs_gpu`)."""
        return self.needs_gpu

    def install_needed(self, *, profile: Profile, for_container: bool = False) -> str | None:
        """Why `start` must install the engine first (e.g. no binary found), else None."""
        return None

    def install(
        self,
        *,
        on_progress: Callable[[str, float | None], None] = lambda step, done: None,
        options: InstallOptions | None = None,
        profile: Profile | None = None,
    ) -> InstallResult:
        """Install the engine for this user (`llm-backend engine install`); a no-op if there.

        `options` come from the command line; `profile`, when `start` installs first, is the
        profile that needs the engine (it may need a particular build, e.g. for a GPU).

        `on_progress(step, fraction)` with fraction 0..1 or None. Raises BackendError when
        it cannot (missing build tools, no network) or the engine is not installable.
        """
        raise BackendError(
            f"engine {self.name!r} cannot be installed by llm-backend",
            remedy="install it as its documentation says (a Docker image or a Python package)",
        )

    def exit_failure(self, *, exit_code: int | None, log_tail: list[str]) -> Failure:
        """What an exit during load means when no log line said more."""
        code = "unknown" if exit_code is None else str(exit_code)
        if exit_code in SIGKILL_EXIT_CODES:
            return sigkill_failure(f"the server was killed with SIGKILL (exit code {code}) "
                                   "before it was ready", line=log_tail[-1] if log_tail else None)
        return Failure(
            failure_class="exited",
            message=f"the server exited with code {code} before it was ready",
            remedy="read the log tail above, or run `llm-backend logs -n 200`",
            line=log_tail[-1] if log_tail else None,
        )

    def spec_stats_from_info(self, *, info: dict[str, Any]) -> SpecStats | None:
        """Speculative-decoding stats from the JSON of one of `info_paths`, if it has them."""
        return None

    def download_paths(self, *, profile: Profile, runtime: Runtime) -> list[Path]:
        """Host folders the server downloads into while it loads; their growth is progress.

        Empty by default (the engine downloads nothing itself).
        """
        return []

    def artifacts(self, *, profile: Profile, runtime: Runtime) -> list[Source]:
        """What this profile needs on disk before it can load (weights, encodings, binary).

        `runtime.host_path` maps a path the server sees onto this machine (a container's
        mounts). `llm-backend pull` and `start` fetch the missing ones; empty by default.
        Raises ConfigError when a needed folder is not reachable from the host.
        """
        return []

    # Where the server tells how many requests it is working on (None: it cannot tell).
    load_path: str | None = None

    def in_flight_requests(self, *, body: Any) -> int | None:
        """Requests running or queued, from the JSON answer of `load_path`; None if unknown."""
        return None

    def health_role(self, *, profile: Profile) -> str:
        """What a 200 from `health_path` means for this profile: "ready" (serves requests)
        or "alive" (a member that serves no API, such as a follower rank)."""
        return "ready"

    def version_from_info(self, *, info: dict[str, Any]) -> str | None:
        """The engine version a running server reports at `info_path`, if it says."""
        return None

    def installed_version(self, *, profile: Profile) -> str | None:
        """The engine version this node would run for the profile (package or image tag)."""
        return None

    def launch_env(self, *, profile: Profile, host_ip: str | None) -> dict[str, str]:
        """Environment the engine needs beyond the profile's `env` (multi-node settings);
        `host_ip` is this node's address on the profile's fast interface, when it has one."""
        return {}

    def read_spec_stats(
        self,
        *,
        endpoint: str,
        log_lines: Callable[[], Iterable[str]] | None = None,
        timeout_s: float = 2.0,
        headers: dict[str, str] | None = None,
    ) -> SpecStats | None:
        """Speculative-decoding figures of a running server: info endpoint first, else its log.

        `endpoint`: `http://host:port`; `log_lines`: called only when no info path has the
        figures, it returns the log's last lines. `source` says where they came from. Never
        raises for a server that does not answer (None).
        """
        for path in self.info_paths:
            try:
                status, body = http_get(endpoint + path, timeout_s, headers)
            except (OSError, http.client.HTTPException):
                break
            if status == 404:
                continue
            info: Any = None
            with contextlib.suppress(ValueError):
                info = json.loads(body)
            stats = self.spec_stats_from_info(info=info) if isinstance(info, dict) else None
            if stats is not None:
                return SpecStats(
                    accept_length=stats.accept_length, accept_rate=stats.accept_rate,
                    gen_throughput=stats.gen_throughput, source=path,
                )
            break
        if log_lines is None:
            return None
        reader = self.log_reader()
        for line in log_lines():
            reader.feed(line)
        latest = reader.reading.spec
        if latest is None:
            return None
        return SpecStats(
            accept_length=latest.accept_length, accept_rate=latest.accept_rate,
            gen_throughput=latest.gen_throughput, line=latest.line, source="log",
        )
