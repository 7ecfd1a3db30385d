"""`--plot FILE.png`: output tokens/s and latency against concurrency; A/B arms side by side.

matplotlib is an optional extra (`pip install 'llm-backend[plot]'`): the bench itself does not
need it, so a missing matplotlib is a clear error only when a plot is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_backend.bench.report import BenchReport
from llm_backend.errors import BackendError, UsageError

PLOT_REMEDY = "pip install 'llm-backend[plot]' (or: pip install matplotlib), or drop --plot"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BackendError(
            "--plot needs matplotlib, which is not installed", remedy=PLOT_REMEDY
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def check_plot_target(path: Path) -> None:
    """Fail before the bench runs: matplotlib present, a .png name, an existing folder."""
    _pyplot()
    if path.suffix.lower() != ".png":
        raise UsageError(
            f"--plot {path}: the file name must end in .png", remedy="use --plot FILE.png"
        )
    if not path.parent.exists():
        raise UsageError(
            f"--plot {path}: folder {path.parent} does not exist",
            remedy=f"mkdir -p {path.parent}, or choose another --plot path",
        )


def plot_reports(
    series: Sequence[tuple[str, BenchReport]], path: Path, *, title: str
) -> Path:
    """Per labelled report: aggregate and per-request tokens/s; p50 and p90 latency."""
    pyplot = _pyplot()
    figure, (throughput_axes, latency_axes) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for number, (label, report) in enumerate(series):
        colour = f"C{number}"  # one colour per arm, line styles tell the figures apart
        levels = [level.concurrency for level in report.levels]
        throughput_axes.plot(
            levels, [level.output_tokens_per_s for level in report.levels],
            marker="o", color=colour, label=f"{label}: aggregate",
        )
        throughput_axes.plot(
            levels,
            [level.tokens_per_s.p50 if level.tokens_per_s else float("nan")
             for level in report.levels],
            marker="s", linestyle="--", color=colour, label=f"{label}: per request p50",
        )
        latency_axes.plot(
            levels,
            [level.e2e_s.p50 if level.e2e_s else float("nan") for level in report.levels],
            marker="o", color=colour, label=f"{label}: p50",
        )
        latency_axes.plot(
            levels,
            [level.e2e_s.p90 if level.e2e_s else float("nan") for level in report.levels],
            marker="^", linestyle=":", color=colour, label=f"{label}: p90",
        )
    all_levels = sorted({level.concurrency for _, report in series for level in report.levels})
    for axes in (throughput_axes, latency_axes):
        axes.set_xlabel("concurrency (requests in flight)")
        axes.set_xscale("log", base=2)
        axes.set_xticks(all_levels, [str(level) for level in all_levels])
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    throughput_axes.set_ylabel("output tokens/s")
    throughput_axes.set_title("output tokens/s")
    throughput_axes.set_ylim(bottom=0)
    latency_axes.set_ylabel("end-to-end latency (s)")
    latency_axes.set_title("request latency")
    latency_axes.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path
