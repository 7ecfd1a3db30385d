"""The SGLang log reader and `llm-backend diagnose` on real SGLang logs (tests/fixtures/sglang)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_backend.diagnose import diagnose_lines
from llm_backend.engines.sglang import SGLangLogReader, spec_stats_from_server_info

FIXTURES = Path(__file__).parent / "fixtures" / "sglang"

# For every fixture: phases in order (with the last progress seen), ready, failure class.
EXPECTED: dict[str, dict[str, Any]] = {
    "startup-old-format-ready.log": {
        "phases": [("init", None), ("load_weights", (14, 14)), ("kv_cache", None),
                   ("cuda_graph", None), ("server_up", None), ("warmup", None),
                   ("ready", None)],
        "ready": True,
        "failure": None,
    },
    "gpt-oss-load-begin.log": {
        "phases": [("init", None), ("load_weights", None), ("kv_cache", None)],
        "ready": False,
        "failure": None,
    },
    "moe-shuffle-2026.log": {
        "phases": [("moe_shuffle", (9, 0))],  # no model named in the excerpt: total unknown
        "ready": False,
        "failure": None,
    },
    "moe-shuffle-2025-tp0.log": {
        "phases": [("moe_shuffle", (3, 0))],
        "ready": False,
        "failure": None,
    },
    "cuda-graph-capturing-batches.log": {
        "phases": [("cuda_graph", (28, 52))],
        "ready": False,
        "failure": None,
    },
    "eagle-draft-cuda-graph-old.log": {
        "phases": [("cuda_graph", None)],
        "ready": False,
        "failure": None,
    },
    "swa-pool.log": {"phases": [("kv_cache", None)], "ready": False, "failure": None},
    "eagle3-decode-old-format.log": {"phases": [], "ready": False, "failure": None},
    "decode-prefill-new-format.log": {"phases": [], "ready": False, "failure": None},
    "gpt-oss-oom-child-crash.log": {"phases": [], "ready": False, "failure": "child_crash"},
    "cuda-oom-message.log": {"phases": [], "ready": False, "failure": "out_of_memory"},
    "shuffle-then-crash.log": {
        "phases": [("moe_shuffle", (1, 0))],
        "ready": False,
        "failure": "child_crash",
    },
    "warmup-failed-2024.log": {
        # The excerpt starts at "Load weight end", itself a load_weights line.
        "phases": [
            ("load_weights", None), ("kv_cache", None), ("cuda_graph", None), ("server_up", None)
        ],
        "ready": False,
        "failure": "child_crash",
    },
    "unrecognized-argument.log": {"phases": [], "ready": False, "failure": "bad_flag"},
    "gated-model-401.log": {"phases": [], "ready": False, "failure": "gated_model"},
    "harmony-vocab-offline.log": {"phases": [], "ready": False, "failure": "offline_encoding"},
    "uvicorn-port-in-use.log": {
        "phases": [("server_up", None)],
        "ready": False,
        "failure": "port_in_use",
    },
    "cuda-illegal-memory-child-crash.log": {
        "phases": [],
        "ready": False,
        "failure": "child_crash",
    },
    # A follower rank: TP1 lines only, never "fired up" (its readiness is its dummy /health).
    "multinode-rank1.log": {
        "phases": [("init", None), ("load_weights", None), ("kv_cache", None),
                   ("cuda_graph", None)],
        "ready": False,
        "failure": None,
    },
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.log")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_phases_and_failure(name: str) -> None:
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    result = diagnose_lines(lines, "sglang")
    expected = EXPECTED[name]
    assert [(phase.name, phase.progress) for phase in result.phases] == expected["phases"]
    assert result.ready is expected["ready"]
    got = result.failure.failure_class if result.failure else None
    assert got == expected["failure"]
    if result.failure is not None:
        assert result.failure.remedy
        assert result.failure.line and result.failure.line in lines


def test_shard_progress_is_reported_line_by_line() -> None:
    reader = SGLangLogReader()
    progress = []
    for line in (FIXTURES / "startup-old-format-ready.log").read_text().splitlines():
        for event in reader.feed(line):
            if getattr(event, "name", None) == "load_weights" and event.progress:  # type: ignore[union-attr]
                progress.append(event.progress)  # type: ignore[union-attr]
    assert progress == [(0, 14), (1, 14), (7, 14), (14, 14), (14, 14)]


def test_moe_shuffle_total_comes_from_the_model() -> None:
    reader = SGLangLogReader()
    reader.feed("[2026-02-15 07:50:00] server_args=ServerArgs(model_path='openai/gpt-oss-120b', "
                "tokenizer_path='openai/gpt-oss-120b')")
    for line in (FIXTURES / "moe-shuffle-2026.log").read_text().splitlines():
        reader.feed(line)
    last = reader.reading.phases[-1]
    assert (last.name, last.progress) == ("moe_shuffle", (9, 36))


def test_tqdm_carriage_returns_are_split() -> None:
    reader = SGLangLogReader()
    bars = (FIXTURES / "cuda-graph-capturing-batches.log").read_text().splitlines()
    events = reader.feed("\r".join(bars[:3]))
    assert [event.progress for event in events] == [(21, 52), (22, 52), (22, 52)]  # type: ignore[union-attr]


def test_draft_model_load_after_the_target_kv_cache() -> None:
    reader = SGLangLogReader()
    for line in (FIXTURES / "gpt-oss-load-begin.log").read_text().splitlines():
        reader.feed(line)
    # The EAGLE3 draft worker loads its weights after the target's memory pool.
    reader.feed("[2025-09-28 17:07:11 TP0] Load weight begin. avail mem=89.80 GB")
    assert [phase.name for phase in reader.reading.phases][-1] == "draft_model"


def test_new_format_capture_lines() -> None:
    # Format strings of current SGLang (PR #28937), with values filled in.
    reader = SGLangLogReader()
    events = reader.feed(
        "[2026-07-21 14:58:01] Capture target verify CUDA graph begin. backend=fa3, "
        "num_tokens_per_req=4, bs=[1, 2, 4, 8, 12, 16], avail mem=12.31 GB"
    )
    assert [(e.name, e.progress) for e in events] == [("cuda_graph", (0, 6))]  # type: ignore[union-attr]
    events = reader.feed(
        "[2026-07-21 14:58:09] Capture draft extend CUDA graph end. elapsed=7.80 s, "
        "mem usage=0.41 GB, avail mem=11.70 GB."
    )
    assert [e.name for e in events] == ["cuda_graph"]  # type: ignore[union-attr]


def test_cause_beats_the_crash_announcement() -> None:
    lines = (FIXTURES / "gpt-oss-oom-child-crash.log").read_text().splitlines()
    lines += (FIXTURES / "cuda-oom-message.log").read_text().splitlines()
    result = diagnose_lines(lines, "sglang")
    assert result.failure is not None
    assert result.failure.failure_class == "out_of_memory"
    assert "--mem-fraction-static" in result.failure.remedy
    assert "--context-length" in result.failure.remedy


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("harmony-vocab-offline.log", ["TIKTOKEN_ENCODINGS_BASE"]),
        ("gated-model-401.log", ["HF_TOKEN"]),
        ("uvicorn-port-in-use.log", ["--port"]),
        ("unrecognized-argument.log", ["extra_args"]),
    ],
)
def test_remedies_name_the_fix(name: str, words: list[str]) -> None:
    result = diagnose_lines((FIXTURES / name).read_text().splitlines(), "sglang")
    assert result.failure is not None
    for word in words:
        assert word in result.failure.remedy


@pytest.mark.parametrize(
    ("line", "failure_class"),
    [
        # Format strings from current SGLang source (sglang-facts.md §10, §4.4), filled in.
        ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
         "Current value: mem_fraction_static=0.85", "out_of_memory"),
        ("ValueError: nccl_port at 30001 is not available in 30 seconds.", "port_in_use"),
        ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
         "unhandled system error", "nccl"),
        ("triton.runtime.errors.PTXASError: PTXAS error: Internal Triton PTX codegen error",
         "kernel_compile"),
        ("sglang serve: error: ambiguous option: --speculative-draft could match "
         "--speculative-draft-model-path, --speculative-draft-model", "bad_flag"),
        ("OSError: Qwen/nope is not a local folder and is not a valid model identifier listed "
         "on 'https://huggingface.co/models'", "model_not_found"),
    ],
)
def test_failure_lines(line: str, failure_class: str) -> None:
    reader = SGLangLogReader()
    reader.feed(line)
    assert reader.reading.failure is not None
    assert reader.reading.failure.failure_class == failure_class


def test_spec_stats_from_old_and_new_decode_lines() -> None:
    old = diagnose_lines((FIXTURES / "eagle3-decode-old-format.log").read_text().splitlines())
    assert old.spec is not None
    assert (old.spec.accept_length, old.spec.accept_rate, old.spec.gen_throughput) == (
        1.80, 0.45, 165.41
    )
    new = diagnose_lines((FIXTURES / "decode-prefill-new-format.log").read_text().splitlines())
    assert new.spec is not None
    assert (new.spec.accept_length, new.spec.accept_rate, new.spec.gen_throughput) == (
        3.05, 0.68, 239.06
    )


def test_spec_stats_from_server_info() -> None:
    current = {"internal_states": [{"avg_spec_accept_length": 2.41, "last_gen_throughput": 285.0}]}
    stats = spec_stats_from_server_info(current)
    assert stats is not None
    assert (stats.accept_length, stats.gen_throughput) == (2.41, 285.0)
    top_level = {"avg_spec_accept_length": 1.9, "last_gen_throughput": 50.5}
    stats = spec_stats_from_server_info(top_level)
    assert stats is not None
    assert (stats.accept_length, stats.gen_throughput) == (1.9, 50.5)
    assert spec_stats_from_server_info({"internal_states": [{}]}) is None


def test_diagnose_cli_json(world: Any) -> None:
    completed = world.run("diagnose", str(FIXTURES / "startup-old-format-ready.log"), "--json")
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["engine"] == "sglang"
    assert data["ready"] is True
    assert data["failure"] is None
    names = [phase["name"] for phase in data["phases"]]
    assert names == ["init", "load_weights", "kv_cache", "cuda_graph", "server_up", "warmup",
                     "ready"]
    assert data["phases"][1]["progress"] == {"done": 14, "total": 14}
    assert data["phases"][-1]["at_s"] == 22.0


def test_diagnose_cli_stdin_text_failure(world: Any) -> None:
    text = (FIXTURES / "harmony-vocab-offline.log").read_text()
    completed = world.run("diagnose", "-", input=text)
    assert completed.returncode == 1
    assert "failure: offline_encoding" in completed.stdout
    assert "fix:" in completed.stdout and "TIKTOKEN_ENCODINGS_BASE" in completed.stdout


def test_diagnose_cli_llamacpp_and_bad_input(world: Any) -> None:
    log = world.cwd / "llama.log"
    log.write_text(
        "main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080\n"
    )
    completed = world.run("diagnose", "--engine", "llamacpp", str(log), "--json")
    data = json.loads(completed.stdout)
    assert data["engine"] == "llamacpp"
    assert data["failure"]["class"] == "port_in_use"
    missing = world.run("diagnose", str(world.cwd / "nope.log"))
    assert missing.returncode != 0
    assert "nope.log" in missing.stderr and "fix:" in missing.stderr
    wrong = world.run("diagnose", "--engine", "no-such-engine", str(log))
    assert wrong.returncode != 0 and "'no-such-engine'" in wrong.stderr
