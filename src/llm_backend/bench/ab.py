"""`bench --ab spec`: the same workload with speculative decoding off and on, side by side.

Each arm restarts the backend through the normal lifecycle (`Lifecycle.start` with a
`speculative.enabled` override); afterwards the backend is left as it was found: running with
the same profile and options, or stopped. With several rounds the arms alternate
(off, on, off, on, ...) so that a noisy machine hurts both arms alike.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_backend.bench import ProgressCallback, Target, run_sweep, warm_up
from llm_backend.bench.loadgen import LevelRun
from llm_backend.bench.report import BenchReport, build_report
from llm_backend.bench.workloads import Workload
from llm_backend.config import Profile
from llm_backend.engines import get_engine
from llm_backend.errors import BackendError
from llm_backend.lifecycle import Lifecycle
from llm_backend.monitor import MonitorEvent

ARMS = ("off", "on")
NEAR_ZERO_ACCEPTANCE = 0.10
NEAR_ONE_ACCEPT_LENGTH = 1.10
EXCERPT_CHARS = 24


@dataclass(frozen=True)
class Difference:
    """One request whose two outputs differ, and where they first part."""

    concurrency: int
    round: int
    index: int
    position: int
    off_excerpt: str
    on_excerpt: str
    off_tokens: int | None
    on_tokens: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "round": self.round,
            "index": self.index,
            "first_difference_char": self.position,
            "off_excerpt": self.off_excerpt,
            "on_excerpt": self.on_excerpt,
            "off_tokens": self.off_tokens,
            "on_tokens": self.on_tokens,
        }


@dataclass(frozen=True)
class LevelComparison:
    """One concurrency level: speedups, acceptance, identical outputs."""

    concurrency: int
    speedup: float | None
    round_speedups: tuple[float, ...]
    latency_speedup: float | None
    per_request_speedup: float | None
    acceptance: float | None
    accept_length: float | None
    compared: int
    identical: int
    differences: tuple[Difference, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "speedup": self.speedup,
            "round_speedups": list(self.round_speedups),
            "latency_speedup": self.latency_speedup,
            "per_request_speedup": self.per_request_speedup,
            "acceptance": self.acceptance,
            "accept_length": self.accept_length,
            "compared": self.compared,
            "identical": self.identical,
            "differences": [difference.to_json() for difference in self.differences],
        }


@dataclass(frozen=True)
class ABReport:
    """Both arms, the per-level comparison, warnings, and what was restored afterwards."""

    profile: str
    workload: str
    rounds: int
    order: tuple[str, ...]
    off: BenchReport
    on: BenchReport
    comparisons: tuple[LevelComparison, ...]
    warnings: tuple[str, ...]
    backend_before: str
    backend_after: str
    start_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def speedup(self) -> dict[int, float | None]:
        return {item.concurrency: item.speedup for item in self.comparisons}

    @property
    def identical_fraction(self) -> float | None:
        compared = sum(item.compared for item in self.comparisons)
        if compared == 0:
            return None
        return sum(item.identical for item in self.comparisons) / compared

    def to_json(self) -> dict[str, Any]:
        return {
            "ab": {
                "kind": "spec",
                "profile": self.profile,
                "workload": self.workload,
                "rounds": self.rounds,
                "order": list(self.order),
                "speedup": {str(level): value for level, value in self.speedup.items()},
                "latency_speedup": {
                    str(item.concurrency): item.latency_speedup for item in self.comparisons
                },
                "acceptance": {
                    str(item.concurrency): item.acceptance for item in self.comparisons
                },
                "identical_fraction": self.identical_fraction,
                "levels": [item.to_json() for item in self.comparisons],
                "warnings": list(self.warnings),
                "backend_before": self.backend_before,
                "backend_after": self.backend_after,
                "start_s": self.start_s,
            },
            "arms": {"off": self.off.to_json(), "on": self.on.to_json()},
        }


def first_difference(left: str, right: str) -> int | None:
    """The first character position where two texts differ (None when they are equal)."""
    if left == right:
        return None
    for position, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return position
    return min(len(left), len(right))


def _excerpt(text: str, position: int) -> str:
    return text[max(0, position - EXCERPT_CHARS): position + EXCERPT_CHARS]


def compare_outputs(
    off_runs: Sequence[LevelRun], on_runs: Sequence[LevelRun]
) -> tuple[int, int, tuple[Difference, ...]]:
    """(compared, identical, differences) over the paired runs of one level."""
    compared = identical = 0
    differences: list[Difference] = []
    for round_number, (off_run, on_run) in enumerate(zip(off_runs, on_runs, strict=True)):
        on_by_index = {result.index: result for result in on_run.results}
        for off_result in off_run.results:
            on_result = on_by_index.get(off_result.index)
            if on_result is None or not (off_result.ok and on_result.ok):
                continue
            compared += 1
            position = first_difference(off_result.text, on_result.text)
            if position is None:
                identical += 1
                continue
            differences.append(
                Difference(
                    concurrency=off_run.concurrency,
                    round=round_number,
                    index=off_result.index,
                    position=position,
                    off_excerpt=_excerpt(off_result.text, position),
                    on_excerpt=_excerpt(on_result.text, position),
                    off_tokens=off_result.output_tokens,
                    on_tokens=on_result.output_tokens,
                )
            )
    return compared, identical, tuple(differences)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compare_level(
    concurrency: int,
    off_runs: Sequence[LevelRun],
    on_runs: Sequence[LevelRun],
    off: BenchReport,
    on: BenchReport,
    accept_length: float | None = None,
) -> LevelComparison:
    """Speedup of output tokens/s (median of the per-round ratios), latency, acceptance."""
    round_speedups = []
    for off_run, on_run in zip(off_runs, on_runs, strict=True):
        off_tokens = sum(result.output_tokens or 0 for result in off_run.results if result.ok)
        on_tokens = sum(result.output_tokens or 0 for result in on_run.results if result.ok)
        ratio = _ratio(on_tokens / on_run.wall_s, off_tokens / off_run.wall_s)
        if ratio is not None:
            round_speedups.append(ratio)
    off_level, on_level = off.level(concurrency), on.level(concurrency)
    compared, identical, differences = compare_outputs(off_runs, on_runs)
    return LevelComparison(
        concurrency=concurrency,
        speedup=statistics.median(round_speedups) if round_speedups else None,
        round_speedups=tuple(round_speedups),
        latency_speedup=_ratio(
            off_level.e2e_s.p50 if off_level.e2e_s else None,
            on_level.e2e_s.p50 if on_level.e2e_s else None,
        ),
        per_request_speedup=_ratio(
            on_level.tokens_per_s.p50 if on_level.tokens_per_s else None,
            off_level.tokens_per_s.p50 if off_level.tokens_per_s else None,
        ),
        acceptance=on_level.acceptance,
        accept_length=accept_length,
        compared=compared,
        identical=identical,
        differences=differences,
    )


def ab_warnings(comparisons: Sequence[LevelComparison], on: BenchReport) -> tuple[str, ...]:
    """Near-zero acceptance (wrong draft or algorithm) and levels where speculation is slower."""
    warnings: list[str] = []
    for item in comparisons:
        level = on.level(item.concurrency)
        if item.accept_length is not None and item.accept_length < NEAR_ONE_ACCEPT_LENGTH:
            warnings.append(
                f"concurrency {item.concurrency}: accept length {item.accept_length:.2f} is near "
                "1.0: the draft model or algorithm does not fit this model or workload"
            )
        elif item.acceptance is not None and item.acceptance < NEAR_ZERO_ACCEPTANCE:
            warnings.append(
                f"concurrency {item.concurrency}: acceptance {item.acceptance:.0%} is near zero: "
                "the draft or algorithm does not fit this workload"
            )
        elif item.acceptance is None and item.accept_length is None and level.ok:
            warnings.append(
                f"concurrency {item.concurrency}: the engine drafted no tokens with speculation "
                "on (acceptance near zero): n-gram drafting needs replies that repeat earlier "
                "text; with a draft model, check the profile's [speculative] settings"
            )
        if item.speedup is not None and item.speedup < 1.0:
            warnings.append(
                f"concurrency {item.concurrency}: speculation is slower than none "
                f"({item.speedup:.2f}x output tokens/s)"
            )
    return tuple(warnings)


def _accept_length(profile: Profile) -> float | None:
    """The accept length the engine's info endpoint reports (SGLang does; llama.cpp: None)."""
    engine = get_engine(profile.engine)
    from llm_backend.credentials import client_headers

    stats = engine.read_spec_stats(endpoint=profile.client_endpoint, timeout_s=5.0,
                                   headers=client_headers())
    return stats.accept_length if stats is not None else None


def run_ab(
    lifecycle: Lifecycle,
    workload: Workload,
    *,
    levels: Sequence[int],
    requests_per_level: int | None,
    duration_s: float | None = None,
    rounds: int = 1,
    profile_name: str | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    extra_body: dict[str, Any] | None = None,
    on_progress: ProgressCallback = lambda description, done, total: None,
    on_notice: Callable[[str], None] = lambda text: None,
    on_event: Callable[[MonitorEvent], None] = lambda event: None,
    ensure_binary: Callable[[Profile], None] | None = None,
) -> ABReport:
    """Run both arms `rounds` times, alternating, then leave the backend as it was."""
    if rounds < 1:
        raise BackendError(f"--rounds {rounds} is not positive", remedy="use --rounds 1 or more")
    record = lifecycle.refresh()
    state = record.state if record is not None else "stopped"
    if state == "ready" and record is not None:
        was_running = True
        profile_name = record.profile
        base_overrides: dict[str, Any] = dict(record.runtime_info.get("overrides") or {})
    elif state == "stopped":
        was_running = False
        if profile_name is None:
            raise BackendError(
                "bench --ab spec needs a profile when the backend is stopped",
                remedy="llm-backend bench --ab spec --profile smollm2-cpu",
            )
        base_overrides = {}
    else:
        raise BackendError(
            f"the backend is {state}; bench --ab spec restarts it and needs it ready or stopped",
            remedy="llm-backend stop (or wait until `llm-backend status` says ready), "
            "then run the bench again",
        )
    base_profile = lifecycle.resolve(profile_name, base_overrides).profile
    originally_on = base_profile.speculative.enabled
    overrides = {
        "off": {**base_overrides, "speculative.enabled": False},
        "on": {**base_overrides, "speculative.enabled": True},
    }
    # The arm that matches how the backend was found runs with its exact options, and last,
    # so the backend usually needs no extra restart afterwards.
    original_arm = "on" if originally_on else "off"
    overrides[original_arm] = dict(base_overrides)
    order = ("off", "on") if originally_on or not was_running else ("on", "off")
    lifecycle.resolve(profile_name, overrides["on"])  # fail before anything stops
    before = (
        f"running {profile_name} (speculative {'on' if originally_on else 'off'})"
        if was_running
        else "stopped"
    )

    runs: dict[str, list[LevelRun]] = {arm: [] for arm in ARMS}
    start_s: dict[str, list[float]] = {arm: [] for arm in ARMS}
    accept_lengths: list[float] = []
    running_arm: str | None = original_arm if was_running else None
    try:
        for round_number in range(rounds):
            for arm in order:
                if running_arm != arm:
                    on_notice(
                        f"round {round_number + 1}/{rounds}: starting {profile_name} with "
                        f"speculative decoding {arm}"
                    )
                    lifecycle.stop()
                    running_arm = None
                    started = lifecycle.start(
                        profile_name=profile_name,
                        overrides=overrides[arm],
                        on_event=on_event,
                        on_notice=on_notice,
                        ensure_binary=ensure_binary,
                    )
                    running_arm = arm
                    if started.duration_s is not None:
                        start_s[arm].append(round(started.duration_s, 3))
                profile = lifecycle.resolve(profile_name, overrides[arm]).profile
                target = Target(
                    endpoint=profile.client_endpoint,
                    model=profile.model_name,
                    profile=profile_name,
                    engine=profile.engine,
                    speculative=arm == "on",
                )
                warm_up(target, extra_body=extra_body)
                runs[arm].extend(
                    run_sweep(
                        target,
                        workload,
                        levels=levels,
                        requests_per_level=requests_per_level,
                        duration_s=duration_s,
                        temperature=temperature,
                        extra_body=extra_body,
                        on_progress=on_progress,
                        label=f"[{round_number + 1}/{rounds} spec {arm}] ",
                    )
                )
                if arm == "on":
                    length = _accept_length(profile)
                    if length is not None:
                        accept_lengths.append(length)
    finally:
        after = _restore(lifecycle, profile_name, base_overrides, was_running, running_arm,
                         original_arm, on_notice)

    reports = {
        arm: build_report(
            runs=runs[arm],
            workload=workload.name,
            workload_description=workload.description,
            profile=profile_name,
            engine=base_profile.engine,
            endpoint=base_profile.client_endpoint,
            model=base_profile.model_name,
            speculative=arm == "on",
            temperature=temperature,
            seed=seed,
            requests_per_level=None if duration_s is not None else requests_per_level,
            duration_s=duration_s,
        )
        for arm in ARMS
    }
    accept_length = statistics.median(accept_lengths) if accept_lengths else None
    comparisons = tuple(
        compare_level(
            level,
            [run for run in runs["off"] if run.concurrency == level],
            [run for run in runs["on"] if run.concurrency == level],
            reports["off"],
            reports["on"],
            accept_length,
        )
        for level in levels
    )
    return ABReport(
        profile=profile_name,
        workload=workload.name,
        rounds=rounds,
        order=order,
        off=reports["off"],
        on=reports["on"],
        comparisons=comparisons,
        warnings=ab_warnings(comparisons, reports["on"]),
        backend_before=before,
        backend_after=after,
        start_s=start_s,
    )


def _restore(
    lifecycle: Lifecycle,
    profile_name: str,
    base_overrides: dict[str, Any],
    was_running: bool,
    running_arm: str | None,
    original_arm: str,
    on_notice: Callable[[str], None],
) -> str:
    """Leave the backend as it was found; returns a line saying what it is now."""
    if not was_running:
        on_notice(f"stopping {profile_name} (it was stopped before the bench)")
        lifecycle.stop()
        return "stopped"
    if running_arm != original_arm:
        on_notice(f"restarting {profile_name} with its original options")
        with contextlib.suppress(BackendError):
            lifecycle.stop()
        lifecycle.start(profile_name=profile_name, overrides=base_overrides)
    return f"running {profile_name} with its original options"
