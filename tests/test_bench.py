"""`llm-backend bench` against a real llama-server: JSON consistency, A/B, bad input.

Runs are kept tiny (a few requests, few output tokens): they check that the figures are
consistent and the backend is left as found, not how fast this machine is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_backend.bench.ab import first_difference
from llm_backend.bench.report import percentile
from llm_backend.bench.workloads import builtin_workload, load_dataset
from llm_backend.errors import BackendError
from tests.conftest import Env

PERCENTILE_FIGURES = ("ttft_s", "itl_s", "e2e_s", "tokens_per_s")


def instance(world: Env) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((world.state_dir / "instance.json").read_text())
    return data


def check_summary(level: dict[str, Any], requests: int) -> None:
    """Counts add up, percentiles are ordered, nothing is negative."""
    assert level["requests"] == requests
    assert level["ok"] + level["errors"] == requests
    assert level["errors"] == 0, level["error_samples"]
    assert level["wall_s"] > 0
    assert level["output_tokens"] > 0
    assert level["output_tokens_per_s"] == pytest.approx(
        level["output_tokens"] / level["wall_s"]
    )
    assert level["request_throughput"] == pytest.approx(level["ok"] / level["wall_s"])
    for figure in PERCENTILE_FIGURES:
        stats = level[figure]
        assert stats is not None, figure
        assert 0 <= stats["p50"] <= stats["p90"] <= stats["p99"], (figure, stats)


def check_requests(run: dict[str, Any], requests: int) -> None:
    results = run["requests"]
    assert sorted(result["index"] for result in results) == list(range(requests))
    for result in results:
        assert result["ok"], result["error"]
        assert 0 <= result["ttft_s"] <= result["e2e_s"]
        assert result["start_s"] >= 0
        assert all(gap >= 0 for gap in result["itl_s"])
        assert result["output_tokens"] >= 1
        assert result["text"]
        # llama.cpp counts the same tokens in `usage` and in `timings`.
        assert result["engine_predicted_n"] == result["output_tokens"]


def test_bench_json_is_consistent(world: Env) -> None:
    world.run("start", check=True)
    out = world.cwd / "bench.json"
    plot = world.cwd / "bench.png"
    completed = world.run(
        "bench", "--workload", "chat", "--concurrency", "1,2", "--requests", "3",
        "--max-tokens", "24", "--json", str(out), "--plot", str(plot), check=True,
    )
    assert "vs engine" in completed.stdout
    assert "client vs engine tokens/s" in completed.stdout
    data = json.loads(out.read_text())
    assert data["workload"] == "chat"
    assert data["speculative"] is True
    assert [level["concurrency"] for level in data["summary"]] == [1, 2]
    for level, run in zip(data["summary"], data["runs"], strict=True):
        check_summary(level, 3)
        check_requests(run, 3)
        assert sum(r["output_tokens"] for r in run["requests"]) == level["output_tokens"]
        assert level["output_tokens"] <= 3 * 24
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The client's tokens/s agrees with llama.cpp's own `timings` (the bench's overhead).
    agreements = [level["engine_agreement"] for level in data["summary"]]
    assert all(agreement is not None for agreement in agreements)
    assert data["engine_agreement_ok"] is True, agreements

    # --duration bounds each level by time instead of a request count.
    timed = world.cwd / "timed.json"
    world.run(
        "bench", "--workload", "chat", "--concurrency", "2", "--duration", "2",
        "--max-tokens", "8", "--json", str(timed), check=True,
    )
    timed_data = json.loads(timed.read_text())
    assert timed_data["duration_s"] == 2
    assert timed_data["requests_per_level"] is None
    (level,) = timed_data["summary"]
    (run,) = timed_data["runs"]
    assert level["requests"] >= 1
    check_summary(level, level["requests"])
    check_requests(run, level["requests"])
    # Requests only start before the deadline; the last ones may finish after it.
    assert max(result["start_s"] for result in run["requests"]) < 2.0


def check_ab(data: dict[str, Any], requests: int) -> None:
    ab = data["ab"]
    assert set(ab["speedup"]) == {"1"}
    assert ab["speedup"]["1"] > 0
    assert 0.0 <= ab["identical_fraction"] <= 1.0
    assert data["arms"]["off"]["speculative"] is False
    assert data["arms"]["on"]["speculative"] is True
    for arm in ("off", "on"):
        (level,) = data["arms"][arm]["summary"]
        check_summary(level, requests)
        (run,) = data["arms"][arm]["runs"]
        check_requests(run, requests)
    # Only the arm with speculation drafts.
    off_runs = data["arms"]["off"]["runs"][0]["requests"]
    assert all(result["draft_n"] is None for result in off_runs)


def test_ab_spec_leaves_running_backend_running(world: Env) -> None:
    world.run("start", check=True)
    before = instance(world)
    out = world.cwd / "ab.json"
    completed = world.run(
        "bench", "--ab", "spec", "--workload", "copy", "--concurrency", "1", "--requests", "2",
        "--max-tokens", "32", "--json", str(out), timeout=400, check=True,
    )
    assert "spec on vs off" in completed.stdout
    data = json.loads(out.read_text())
    check_ab(data, 2)
    assert data["ab"]["backend_before"].startswith("running smollm2-cpu")
    status = world.run("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["state"] == "ready"
    after = instance(world)
    assert after["profile"] == before["profile"]
    assert after["argv"] == before["argv"]  # speculative decoding on again, same options
    assert after["runtime_info"].get("overrides") == before["runtime_info"].get("overrides")


def test_ab_spec_leaves_stopped_backend_stopped(world: Env) -> None:
    out = world.cwd / "ab.json"
    world.run(
        "bench", "--ab", "spec", "--profile", "smollm2-cpu", "--workload", "chat",
        "--concurrency", "1", "--requests", "1", "--max-tokens", "16", "--json", str(out),
        timeout=400, check=True,
    )
    data = json.loads(out.read_text())
    check_ab(data, 1)
    assert data["ab"]["backend_after"] == "stopped"
    status = world.run("status", "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["state"] == "stopped"


def test_bench_without_backend_names_start(world: Env) -> None:
    completed = world.run("bench", "--requests", "1")
    assert completed.returncode == 3
    assert "not running" in completed.stderr
    assert "fix: llm-backend start" in completed.stderr


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role 'robot'"),
        ('{"messages": [], "max_tokens": 8}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', "max_tokens"),
    ],
)
def test_bench_dataset_bad_line_is_named(world: Env, bad_line: str, problem: str) -> None:
    dataset = world.cwd / "prompts.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "Say hi."}]})
    dataset.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    completed = world.run("bench", "--dataset", str(dataset))
    assert completed.returncode == 2
    error = completed.stderr.replace("\n", " ")
    assert "prompts.jsonl line 3: " in error
    assert problem in error
    assert "fix: fix line 3 of" in error


def test_dataset_reads_messages_and_budgets(tmp_path: Path) -> None:
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}], "max_tokens": 7}) + "\n"
        + json.dumps([{"role": "system", "content": "s"}, {"role": "user", "content": "b"}])
        + "\n"
    )
    workload = load_dataset(dataset, default_max_tokens=99)
    assert [request.max_tokens for request in workload.requests] == [7, 99]
    assert workload.requests[1].messages[0] == {"role": "system", "content": "s"}
    with pytest.raises(BackendError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")


def test_builtin_workloads_are_seeded_and_cycle() -> None:
    first = builtin_workload("mixed", count=6, seed=7)
    again = builtin_workload("mixed", count=6, seed=7)
    other = builtin_workload("mixed", count=6, seed=8)
    assert first.requests == again.requests
    assert first.requests != other.requests
    assert [request.kind for request in first.requests] == ["chat", "copy", "long"] * 2
    taken = first.take(8)
    assert [request.index for request in taken] == list(range(8))
    assert taken[6].messages == first.requests[0].messages
    with pytest.raises(BackendError, match="unknown workload 'poems'"):
        builtin_workload("poems")


def test_percentile_and_first_difference() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 1.0) == 4.0
    assert percentile([5.0], 0.99) == 5.0
    assert first_difference("same", "same") is None
    assert first_difference("abcdef", "abXdef") == 2
    assert first_difference("abc", "abcd") == 3


def test_plot_without_matplotlib_names_the_pip_fix(world: Env) -> None:
    # A `matplotlib` package that fails to import, first on the path: as if it were missing.
    shadow = world.root / "no-matplotlib" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    world.env["PYTHONPATH"] = str(shadow.parent)
    completed = world.run("bench", "--requests", "1", "--plot", str(world.cwd / "out.png"))
    assert completed.returncode == 1
    assert "--plot needs matplotlib" in completed.stderr
    assert "fix: pip install 'llm-backend[plot]'" in completed.stderr
    assert not (world.cwd / "out.png").exists()


def test_a_bad_json_path_is_refused_before_the_run(world: Env) -> None:
    """`--json /missing/dir/x.json` ran the whole bench, then ended in a traceback (the
    figures lost with it); it is refused first now, whether or not a backend runs."""
    missing = world.root / "missing" / "x.json"
    refused = world.run("bench", "--json", str(missing))
    assert refused.returncode == 2, refused.stderr
    assert f"error: --json {missing}: folder {missing.parent} does not exist" in refused.stderr
    assert "not running" not in refused.stderr and "Traceback" not in refused.stderr
    refused = world.run("bench", "--json", str(world.root))
    assert f"error: --json {world.root} is a folder" in refused.stderr
