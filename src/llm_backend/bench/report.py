"""Bench figures: per-level summaries (percentiles, throughput, errors) and the JSON document.

Pure functions of the measured requests; nothing here talks to a server or prints.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_backend.bench.loadgen import LevelRun, RequestResult

AGREEMENT_TOLERANCE = 0.05


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Percentiles:
    """p50, p90 and p99 of one figure over a run (None when nothing was measured)."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles | None:
        if not values:
            return None
        return cls(
            p50=percentile(values, 0.50),
            p90=percentile(values, 0.90),
            p99=percentile(values, 0.99),
            mean=statistics.fmean(values),
            count=len(values),
        )

    def to_json(self) -> dict[str, Any]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean,
                "count": self.count}


@dataclass(frozen=True)
class Agreement:
    """How the client's per-request tokens/s compares with the engine's own figure."""

    compared: int
    median_ratio: float
    worst_ratio: float
    within_tolerance: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "median_ratio": self.median_ratio,
            "worst_ratio": self.worst_ratio,
            "tolerance": AGREEMENT_TOLERANCE,
            "within_tolerance": self.within_tolerance,
        }


@dataclass(frozen=True)
class LevelSummary:
    """One concurrency level: counts, throughput, latency percentiles, speculation figures."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_s: float
    request_throughput: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_s: Percentiles | None
    itl_s: Percentiles | None
    e2e_s: Percentiles | None
    tokens_per_s: Percentiles | None
    agreement: Agreement | None
    draft_n: int | None
    draft_n_accepted: int | None
    error_samples: tuple[str, ...] = ()

    @property
    def acceptance(self) -> float | None:
        """Accepted draft tokens over drafted tokens (None when nothing was drafted)."""
        if not self.draft_n or self.draft_n_accepted is None:
            return None
        return self.draft_n_accepted / self.draft_n

    def to_json(self) -> dict[str, Any]:
        def optional(value: Percentiles | Agreement | None) -> dict[str, Any] | None:
            return value.to_json() if value is not None else None

        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "request_throughput": self.request_throughput,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens_per_s,
            "ttft_s": optional(self.ttft_s),
            "itl_s": optional(self.itl_s),
            "e2e_s": optional(self.e2e_s),
            "tokens_per_s": optional(self.tokens_per_s),
            "engine_agreement": optional(self.agreement),
            "draft_n": self.draft_n,
            "draft_n_accepted": self.draft_n_accepted,
            "acceptance": self.acceptance,
            "error_samples": list(self.error_samples),
        }


def _agreement(results: Sequence[RequestResult]) -> Agreement | None:
    ratios = [
        result.tokens_per_s / result.engine_tokens_per_s
        for result in results
        if result.ok and result.tokens_per_s and result.engine_tokens_per_s
        # Very short replies have too few gaps for a rate to mean anything.
        and (result.output_tokens or 0) >= 8
    ]
    if not ratios:
        return None
    median = statistics.median(ratios)
    worst = max(ratios, key=lambda ratio: abs(ratio - 1.0))
    return Agreement(
        compared=len(ratios),
        median_ratio=median,
        worst_ratio=worst,
        within_tolerance=abs(median - 1.0) <= AGREEMENT_TOLERANCE,
    )


def summarize_level(runs: Sequence[LevelRun]) -> LevelSummary:
    """Summarize one level; several runs of the same level (rounds) are pooled."""
    if not runs:
        raise ValueError("no runs to summarize")
    results = [result for run in runs for result in run.results]
    ok = [result for result in results if result.ok]
    wall = sum(run.wall_s for run in runs)
    tokens = sum(result.output_tokens or 0 for result in ok)
    drafted = [result for result in ok if result.draft_n is not None]
    return LevelSummary(
        concurrency=runs[0].concurrency,
        requests=len(results),
        ok=len(ok),
        errors=len(results) - len(ok),
        wall_s=wall,
        request_throughput=len(ok) / wall if wall > 0 else 0.0,
        output_tokens=tokens,
        output_tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_s=Percentiles.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_s=Percentiles.of([gap for r in ok for gap in r.itl_s]),
        e2e_s=Percentiles.of([r.e2e_s for r in ok]),
        tokens_per_s=Percentiles.of([r.tokens_per_s for r in ok if r.tokens_per_s is not None]),
        agreement=_agreement(ok),
        draft_n=sum(r.draft_n or 0 for r in drafted) if drafted else None,
        draft_n_accepted=sum(r.draft_n_accepted or 0 for r in drafted) if drafted else None,
        error_samples=tuple(sorted({r.error for r in results if r.error})[:3]),
    )


@dataclass(frozen=True)
class BenchReport:
    """One bench run over a sweep of concurrency levels, with every request kept."""

    workload: str
    workload_description: str
    profile: str | None
    engine: str | None
    endpoint: str
    model: str
    speculative: bool | None
    temperature: float
    seed: int
    requests_per_level: int | None
    duration_s: float | None
    levels: tuple[LevelSummary, ...]
    runs: tuple[LevelRun, ...] = field(default_factory=tuple)

    def level(self, concurrency: int) -> LevelSummary:
        for summary in self.levels:
            if summary.concurrency == concurrency:
                return summary
        raise KeyError(concurrency)

    @property
    def agreement_ok(self) -> bool | None:
        checked = [level.agreement for level in self.levels if level.agreement is not None]
        if not checked:
            return None
        return all(agreement.within_tolerance for agreement in checked)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "workload_description": self.workload_description,
            "profile": self.profile,
            "engine": self.engine,
            "endpoint": self.endpoint,
            "model": self.model,
            "speculative": self.speculative,
            "temperature": self.temperature,
            "seed": self.seed,
            "requests_per_level": self.requests_per_level,
            "duration_s": self.duration_s,
            "engine_agreement_ok": self.agreement_ok,
            "summary": [level.to_json() for level in self.levels],
            "runs": [
                {
                    "concurrency": run.concurrency,
                    "wall_s": run.wall_s,
                    "requests": [result.to_json() for result in run.results],
                }
                for run in self.runs
            ],
        }


def build_report(
    *,
    runs: Sequence[LevelRun],
    workload: str,
    workload_description: str,
    profile: str | None,
    engine: str | None,
    endpoint: str,
    model: str,
    speculative: bool | None,
    temperature: float,
    seed: int,
    requests_per_level: int | None,
    duration_s: float | None,
) -> BenchReport:
    """Group the runs by concurrency (in first-seen order) and summarize each level."""
    order: list[int] = []
    grouped: dict[int, list[LevelRun]] = {}
    for run in runs:
        if run.concurrency not in grouped:
            order.append(run.concurrency)
            grouped[run.concurrency] = []
        grouped[run.concurrency].append(run)
    return BenchReport(
        workload=workload,
        workload_description=workload_description,
        profile=profile,
        engine=engine,
        endpoint=endpoint,
        model=model,
        speculative=speculative,
        temperature=temperature,
        seed=seed,
        requests_per_level=requests_per_level,
        duration_s=duration_s,
        levels=tuple(summarize_level(grouped[level]) for level in order),
        runs=tuple(runs),
    )
