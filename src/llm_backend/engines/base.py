"""What an engine is: an argv from a profile, health endpoints, and a reader of its own log."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.config import Profile
from llm_backend.runtimes.compose_logs import compose_exit, strip_compose_prefix

if TYPE_CHECKING:
    from llm_backend.pull import Source
    from llm_backend.runtimes.base import Runtime

PHASES = (
    "init",
    "download",
    "load_weights",
    "moe_shuffle",
    "kv_cache",
    "draft_model",
    "cuda_graph",
    "server_up",
    "warmup",
    "ready",
)

FAILURE_CLASSES = (
    "out_of_memory",
    "port_in_use",
    "gated_model",
    "model_not_found",
    "offline_encoding",
    "bad_flag",
    "kernel_compile",
    "nccl",
    "child_crash",
    "rank_not_loaded",
    "stalled",
    "timeout",
    "exited",
)


# A huggingface_hub / tqdm byte bar: "model-00001-of-00015.safetensors:  45%|####5 | 2.25G/4.99G
# [00:30<00:36, 75.3MB/s]" (tqdm `format_meter` with unit="B", unit_scale=True: sizes in powers
# of 1000 with k/M/G/T/P suffixes, then the rate in B/s, "?B/s" before the first sample).
BYTE_BAR = re.compile(
    r"(?P<done>\d+(?:\.\d+)?)(?P<done_unit>[kMGTPE]?)/(?P<total>\d+(?:\.\d+)?)"
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

    failure_class: str
    message: str
    remedy: str
    line: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.failure_class,
            "line": self.line,
            "message": self.message,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class SpecStats:
    """Speculative-decoding figures read from the engine's log or info endpoint."""

    accept_length: float | None = None
    accept_rate: float | None = None
    gen_throughput: float | None = None
    line: str | None = None


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
        return self.phases[-1] if self.phases else None


def failure_rank(failure_class: str) -> int:
    return FAILURE_RANK.get(failure_class, SPECIFIC_RANK)


class LogReader(ABC):
    """Reads one engine's log lines, one at a time, into phases, failures and stats.

    Lines may come through `docker compose logs` (`service  | text`): the prefix is removed
    and Compose's own `exited with code N (restarting)` is noticed. Inside a Python traceback
    the frame and source lines (`  File "..."`, `    raise RuntimeError(f"NCCL error: ...")`)
    are never taken as the failure: the exception line after them is.
    """

    def __init__(self) -> None:
        self.reading = LogReading()
        self._in_traceback = False
        self._restarts = 0

    def feed(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        """Read one line; return what it told (also kept in `self.reading`)."""
        text = strip_compose_prefix(line.rstrip("\n"))
        exited = compose_exit(text)
        if exited is not None:
            return self._compose_exit(text, *exited)
        if self._is_source_line(text):
            return []
        events = self.read_line(text)
        bare = self.message_of(text).strip()
        if EXCEPTION_LINE.match(bare):
            self.reading.last_exception = bare
        for event in events:
            if isinstance(event, PhaseEvent):
                self.reading.phases.append(event)
                if event.name == "ready":
                    self.reading.ready = True
            elif isinstance(event, Failure):
                current = self.reading.failure
                if current is None or failure_rank(event.failure_class) > failure_rank(
                    current.failure_class
                ):
                    self.reading.failure = event
            else:
                self.reading.spec = event
        return events

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
        failure = Failure(
            "exited",
            f"the container {service} exited with code {code}"
            + (" and is being restarted (a restart loop)" if restarting else ""),
            "read the error above the exit in `llm-backend logs`; the restart policy only "
            "repeats it",
            line=line,
        )
        if self.reading.failure is None:
            self.reading.failure = failure
        return [failure]

    def message_of(self, line: str) -> str:
        """The line without the engine's own prefix (timestamp, rank); engines override."""
        return line

    def unexplained_error(self) -> Failure | None:
        """For a load that failed with no known failure line: the last exception, if any."""
        if self.reading.failure is not None or self.reading.ready:
            return None
        line = self.reading.last_exception
        if line is None:
            return None
        name = line.split(":", 1)[0]
        return Failure(
            "exited",
            f"the server stopped with a {name.rsplit('.', 1)[-1]} that has no known cause",
            "read the traceback above it (`llm-backend logs -n 200`); search the message in "
            "the engine's issues",
            line=line,
        )

    @abstractmethod
    def read_line(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        """Map one log line onto phases, failures and spec stats."""


class Engine(ABC):
    """Turns a profile into a command and knows how to tell the server is ready."""

    name: str
    health_path: str = "/health"
    models_path: str = "/v1/models"

    @abstractmethod
    def build_argv(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        """The command that runs the server for this profile."""

    @abstractmethod
    def log_reader(self) -> LogReader:
        """A fresh reader for this engine's log."""

    def check_profile(self, *, profile: Profile, for_container: bool = False) -> None:
        """Raise a BackendError if the profile cannot run (missing binary, bad flag...)."""

    def exit_failure(self, *, exit_code: int | None, log_tail: list[str]) -> Failure:
        """What an exit during load means when no log line said more."""
        code = "unknown" if exit_code is None else str(exit_code)
        return Failure(
            failure_class="exited",
            message=f"the server exited with code {code} before it was ready",
            remedy="read the log tail above, or run `llm-backend logs -n 200`",
            line=log_tail[-1] if log_tail else None,
        )

    def spec_stats_from_info(self, *, info: dict[str, Any]) -> SpecStats | None:
        """Speculative-decoding stats from the engine's info endpoint, if it has them."""
        return None

    info_path: str | None = None

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

    def launch_env(self, *, profile: Profile, host_ip: str | None) -> dict[str, str]:
        """Environment the engine needs beyond the profile's `env` (multi-node settings);
        `host_ip` is this node's address on the profile's fast interface, when it has one."""
        return {}
