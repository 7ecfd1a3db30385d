"""What an engine is: an argv from a profile, health endpoints, and a reader of its own log."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from llm_backend.config import Profile

PHASES = (
    "init",
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
    "stalled",
    "timeout",
    "exited",
)


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


@dataclass
class LogReading:
    """Everything a log said so far: phases in order, the first failure, the latest spec stats."""

    phases: list[PhaseEvent] = field(default_factory=list)
    failure: Failure | None = None
    spec: SpecStats | None = None
    ready: bool = False

    def current_phase(self) -> PhaseEvent | None:
        return self.phases[-1] if self.phases else None


class LogReader(ABC):
    """Reads one engine's log lines, one at a time, into phases, failures and stats."""

    def __init__(self) -> None:
        self.reading = LogReading()

    def feed(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        """Read one line; return what it told (also kept in `self.reading`)."""
        events = self.read_line(line.rstrip("\n"))
        for event in events:
            if isinstance(event, PhaseEvent):
                self.reading.phases.append(event)
                if event.name == "ready":
                    self.reading.ready = True
            elif isinstance(event, Failure):
                if self.reading.failure is None:
                    self.reading.failure = event
            else:
                self.reading.spec = event
        return events

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
