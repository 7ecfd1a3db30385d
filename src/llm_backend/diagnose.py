"""`llm-backend diagnose`: read a saved server log into a phase timeline and a failure.

Works on any registered engine's log with that engine's own reader; the engine is guessed
from its log markers (`Engine.log_markers`) when not given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llm_backend.engines import get_engine, guess_engine
from llm_backend.engines.base import Failure, PhaseEvent, SpecStats


@dataclass(frozen=True)
class PhaseEntry:
    """One phase of the timeline: when it began (seconds from the first timestamp) and progress."""

    name: str
    line: str
    progress: tuple[int, int] | None = None
    at_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "line": self.line}
        if self.progress is not None:
            done, total = self.progress
            data["progress"] = {"done": done, "total": total or None}
        if self.at_s is not None:
            data["at_s"] = round(self.at_s, 3)
        return data


@dataclass(frozen=True)
class Diagnosis:
    """What a log says: the phases it went through, whether it became ready, why it failed."""

    engine: str
    phases: tuple[PhaseEntry, ...]
    ready: bool
    failure: Failure | None
    spec: SpecStats | None
    line_count: int
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        spec = None
        if self.spec is not None:
            spec = {
                "accept_length": self.spec.accept_length,
                "accept_rate": self.spec.accept_rate,
                "gen_throughput": self.spec.gen_throughput,
                "line": self.spec.line,
            }
        return {
            "engine": self.engine,
            "phases": [phase.to_json() for phase in self.phases],
            "ready": self.ready,
            "failure": self.failure.to_json() if self.failure else None,
            # The failure came after the log reached ready: a crash while serving.
            "failure_after_ready": bool(self.failure and self.failure.after_ready),
            "spec": spec,
            "lines": self.line_count,
            "notes": list(self.notes),
        }


def diagnose_lines(lines: Iterable[str], engine_name: str | None = None) -> Diagnosis:
    """Feed every line through the engine's reader and collapse repeats into a timeline."""
    text = [line.rstrip("\n") for line in lines]
    name = engine_name or guess_engine(text)
    engine = get_engine(name)
    unrecognised: tuple[str, ...] = ()
    if engine_name is None and engine.log_markers is not None and not any(
            engine.log_markers.search(line) for line in text):
        # guess_engine had nothing to go on: say so rather than name an engine as if found
        unrecognised = (f"no line is recognised as any engine's log; read as {name} "
                        "(pass --engine NAME if it is another's)",)
    reader = engine.log_reader()
    first_time: datetime | None = None
    timeline: list[PhaseEntry] = []
    for line in text:
        stamp = engine.line_time(line)
        if stamp is not None and first_time is None:
            first_time = stamp
        at_s = (stamp - first_time).total_seconds() if stamp and first_time else None
        for event in reader.feed(line):
            if not isinstance(event, PhaseEvent):
                continue
            if timeline and timeline[-1].name == event.name:
                previous = timeline[-1]
                timeline[-1] = PhaseEntry(
                    name=previous.name,
                    line=previous.line,
                    progress=event.progress or previous.progress,
                    at_s=previous.at_s,
                )
            else:
                timeline.append(
                    PhaseEntry(name=event.name, line=event.line, progress=event.progress,
                               at_s=at_s)
                )
    return Diagnosis(
        engine=name,
        phases=tuple(timeline),
        ready=reader.reading.ready,
        failure=reader.reading.failure or reader.unexplained_error(),
        spec=reader.reading.spec,
        line_count=len(text),
        notes=tuple(reader.reading.notes) + unrecognised,
    )
