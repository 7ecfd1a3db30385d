"""`llm-backend bench`: serving speed of the running backend, and the A/B of speculative decoding.

workloads.py builds the requests, loadgen.py sends them, report.py summarizes, ab.py runs the
two arms through the lifecycle, plot.py draws. Nothing here prints; the CLI's renderers do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_backend.bench.loadgen import LevelRun, run_level
from llm_backend.bench.report import BenchReport, build_report
from llm_backend.bench.workloads import BenchRequest, Workload
from llm_backend.errors import BackendError, UsageError

if TYPE_CHECKING:
    from llm_backend.lifecycle import Lifecycle

ProgressCallback = Callable[[str, int, int | None], None]
"""(description, completed, total or None for a duration-bound level)."""

REQUEST_TIMEOUT_S = 600.0  # one request's read timeout (plus what a door may hold it)
WARMUP_MESSAGES = ({"role": "user", "content": "Say hello."},)


@dataclass(frozen=True)
class Target:
    """The server a bench run talks to, and what the lifecycle knows about it."""

    endpoint: str
    model: str
    profile: str | None = None
    engine: str | None = None
    speculative: bool | None = None
    # Request headers (API key); None: the key `start` keeps for our own clients, if any.
    headers: dict[str, str] | None = field(default=None, repr=False)
    through_door: bool = False  # the endpoint is `serve`'s door, not the backend itself
    hold_s: float = 0.0  # the door may hold a request this long first: added to the timeout


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16); each a positive integer, no repeats."""
    levels: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(
                f"--concurrency {text!r}: {part!r} is not a positive integer",
                remedy="pass levels like --concurrency 1,4,16",
            )
        if int(part) in levels:
            raise UsageError(
                f"--concurrency {text!r} names {part} twice",
                remedy="list each level once, like --concurrency 1,4,16",
            )
        levels.append(int(part))
    return tuple(levels)


def warm_up(target: Target, *, extra_body: dict[str, Any] | None = None) -> None:
    """One short unmeasured request, so the first measured one does not pay for a cold server."""
    request = BenchRequest(-1, "warmup", WARMUP_MESSAGES, 8, 0)
    result = run_level(
        endpoint=target.endpoint,
        model=target.model,
        headers=target.headers,
        timeout_s=REQUEST_TIMEOUT_S + target.hold_s,
        requests=(request,),
        concurrency=1,
        extra_body=extra_body,
    ).results[0]
    if not result.ok:
        raise BackendError(
            f"the backend at {target.endpoint} did not answer a chat request: {result.error}",
            remedy="llm-backend status; llm-backend logs -n 50",
        )


def run_sweep(
    target: Target,
    workload: Workload,
    *,
    levels: Sequence[int],
    requests_per_level: int | None,
    duration_s: float | None = None,
    temperature: float = 0.0,
    extra_body: dict[str, Any] | None = None,
    on_progress: ProgressCallback = lambda description, done, total: None,
    label: str = "",
) -> tuple[LevelRun, ...]:
    """Every level in turn, each with the same requests (the first N of the workload)."""
    count = requests_per_level or len(workload.requests)
    requests = workload.take(count)
    runs = []
    for level in levels:
        description = f"{label}{workload.name} c={level}"
        total = None if duration_s is not None else count
        on_progress(description, 0, total)

        def level_done(
            done: int, description: str = description, total: int | None = total
        ) -> None:
            on_progress(description, done, total)

        runs.append(
            run_level(
                endpoint=target.endpoint,
                model=target.model,
                headers=target.headers,
                timeout_s=REQUEST_TIMEOUT_S + target.hold_s,
                requests=requests,
                concurrency=level,
                duration_s=duration_s,
                temperature=temperature,
                extra_body=extra_body,
                on_done=level_done,
            )
        )
    return tuple(runs)


def run_bench(
    target: Target,
    workload: Workload,
    *,
    levels: Sequence[int],
    requests_per_level: int | None,
    duration_s: float | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    extra_body: dict[str, Any] | None = None,
    on_progress: ProgressCallback = lambda description, done, total: None,
) -> BenchReport:
    """Warm up, sweep the levels, and summarize."""
    warm_up(target, extra_body=extra_body)
    runs = run_sweep(
        target,
        workload,
        levels=levels,
        requests_per_level=requests_per_level,
        duration_s=duration_s,
        temperature=temperature,
        extra_body=extra_body,
        on_progress=on_progress,
    )
    return build_report(
        runs=runs,
        workload=workload.name,
        workload_description=workload.description,
        profile=target.profile,
        engine=target.engine,
        endpoint=target.endpoint,
        model=target.model,
        speculative=target.speculative,
        temperature=temperature,
        seed=seed,
        requests_per_level=None if duration_s is not None else requests_per_level,
        duration_s=duration_s,
    )


def running_target(lifecycle: Lifecycle, *, direct: bool = False) -> Target:
    """The ready backend as a bench target: the endpoint clients use, its model name, and
    whether its profile has speculative decoding on (None when the profile no longer resolves).

    When `serve` runs (and not `direct`), the target is its door, with the door's key: the
    run then measures what clients of the door get (a request that arrives while the backend
    loads is held).
    Raises NotRunningError (`llm-backend start`) when no backend is ready and no door runs.
    """
    from llm_backend.serve.control import door_client

    door = None if direct else door_client(lifecycle.store)
    if door is not None:
        try:
            profile = lifecycle.resolve(door.profile).profile
        except BackendError:
            profile = None
        model = door.model or (profile.model_name if profile else None)
        if model is not None:
            return Target(
                endpoint=door.endpoint, model=model, profile=door.profile,
                engine=profile.engine if profile else None,
                speculative=profile.speculative.enabled if profile else None,
                headers=door.headers, through_door=True, hold_s=door.hold_s,
            )
    record = lifecycle.running_record()
    overrides = record.runtime_info.get("overrides") or {}
    try:
        speculative: bool | None = lifecycle.resolve(
            record.profile, overrides
        ).profile.speculative.enabled
    except BackendError:
        speculative = None
    return Target(
        endpoint=record.client_endpoint, model=record.served_model_name,
        profile=record.profile, engine=record.engine, speculative=speculative,
    )


def require_some_answered(report: BenchReport, target: Target) -> None:
    """A run where every request failed measured nothing: a BackendError with the first
    errors and the commands that show why."""
    if report.levels and all(level.ok == 0 for level in report.levels):
        raise BackendError(
            f"every bench request to {target.endpoint} failed: "
            f"{'; '.join(report.levels[0].error_samples)}",
            remedy="llm-backend status; llm-backend logs -n 50",
        )
