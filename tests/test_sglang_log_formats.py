"""Every spelling of each SGLang phase and failure line, 0.4 to 0.5.23 and main, read right.

Each line is SGLang's own format string with values filled in; the comment names where that
format comes from (file in sgl-project/sglang, or the issue that quotes it). Rank tags and
timestamps vary too: `[2024-12-13 01:44:59 TP0]` (0.4), `[... DP0 TP0 EP0]`, `[2026-...]`.
"""

from __future__ import annotations

import pytest

from llm_backend.diagnose import diagnose_lines
from llm_backend.engines.base import Failure, PhaseEvent
from llm_backend.engines.llamacpp import LlamaCppLogReader
from llm_backend.engines.sglang import SGLangLogReader, flag_value, mem_fraction_remedy

PHASE_LINES = [
    # init: launch_server logs server_args (0.4 .. 0.5.x), model_runner.init_torch_distributed
    ("[2025-03-08 12:29:21] server_args=ServerArgs(model_path='m', mem_fraction_static=0.8)",
     "init", None),
    ("[2025-03-08 12:29:25 TP0] Init torch distributed begin.", "init", None),
    ("[2026-02-27 03:34:57] Init torch distributed ends. mem usage=0.00 GB", "init", None),
    ("[2026-02-26 05:20:19 TP7] Init torch distributed ends. elapsed=13.46 s, mem usage=3.69 GB",
     "init", None),
    # load_weights: model_runner.load_model, 0.4 and 2026 "Load weight end" spellings
    ("[2025-08-13 14:47:38 TP0] Load weight begin. avail mem=175.34 GB", "load_weights", None),
    ("[2024-12-13 01:44:59 TP0] Load weight end. type=MistralForCausalLM, dtype=torch.bfloat16, "
     "avail mem=9.69 GB", "load_weights", None),
    ("[2025-08-13 14:34:24 TP0] Load weight end. type=DeepseekV3ForCausalLM, "
     "dtype=torch.bfloat16, avail mem=80.84 GB, mem usage=94.50 GB.", "load_weights", None),
    ("[2026-08-28 21:32:38] Load weight end. elapsed=787.55 s, type=Qwen3ForCausalLM, "
     "quant=modelopt_fp4, avail mem=29.01 GB, mem usage=82.97 GB.", "load_weights", None),
    ("Loading safetensors checkpoint shards:  50% Completed | 7/14 [00:10<00:10,  1.4it/s]",
     "load_weights", (7, 14)),
    ("Loading pt checkpoint shards: 100% Completed | 2/2 [00:01<00:00,  1.9it/s]",
     "load_weights", (2, 2)),
    ("[2026-05-02 06:12:57 TP0] Multi-thread loading shards: 100% Completed | 5/5",
     "load_weights", None),
    # moe_shuffle: layers/quantization/mxfp4.py (2025, FlashInfer MXFP4)
    ("[2025-09-28 17:02:10 TP0] Shuffling MoE weights for FlashInfer MXFP4 moe kernel "
     "(layer: model.layers.0.mlp.experts), it might take a while...", "moe_shuffle", (1, 0)),
    # kv_cache: mem_cache/memory_pool.py (0.4 K/V sizes, MLA "KV size", 2026 dtype), SWA, Mamba
    ("[2025-03-08 12:30:01 TP0] KV Cache is allocated. #tokens: 56524, K size: 3.45 GB, "
     "V size: 3.45 GB", "kv_cache", None),
    ("[2025-08-08 03:34:37 TP0] KV Cache is allocated. #tokens: 314304, KV size: 29.32 GB",
     "kv_cache", None),
    ("[2026-07-21 14:57:40] KV Cache is allocated. dtype: torch.bfloat16, #tokens: 412160, "
     "K size: 9.43 GB, V size: 9.43 GB", "kv_cache", None),
    ("[2025-10-02 10:00:00 TP0] Use sliding window memory pool. full_layer_tokens=1000, "
     "swa_layer_tokens=800", "kv_cache", None),
    ("[2026-01-10 10:00:00] SWAKVPool mem usage: 36.69 GB, swa size: 171008, full size: 213761",
     "kv_cache", None),
    ("[2026-09-09 11:57:18] Mamba Cache is allocated. max_mamba_cache_size: 48, "
     "conv_state size: 0.09GB, ssm_state size: 6.46GB", "kv_cache", None),
    ("[2024-12-13 01:44:59 TP0] Memory pool end. avail mem=2.44 GB", "kv_cache", None),
    # cuda_graph: cuda_graph_runner.py (0.4/2025), eagle_worker.py (draft), 2026 PR #28937,
    # piecewise_cuda_graph_runner.py
    ("[2024-12-13 01:44:59 TP0] Capture cuda graph begin. This can take up to several minutes.",
     "cuda_graph", None),
    ("[2025-08-08 03:34:38] Capture cuda graph begin. This can take up to several minutes. "
     "avail mem=1.80 GB", "cuda_graph", None),
    ("[2025-08-08 03:34:38] Capture cuda graph bs [1, 2, 4, 8]", "cuda_graph", (0, 4)),
    ("Capturing batches (avail_mem=0.00 GB):   0%|          | 0/4 [00:00<?, ?it/s]",
     "cuda_graph", (0, 4)),
    ("Capturing batches (bs=4 avail_mem=18.72 GB):  33%|###3      | 1/3 [00:03<00:07,  3.5s/it]",
     "cuda_graph", (1, 3)),
    ("Capturing batches (bs=1):  50%|#####     | 1/2 [00:01<00:01, 1.00s/it]",
     "cuda_graph", (1, 2)),
    ("[2025-08-08 03:34:56] Capture cuda graph end. Time elapsed: 18.28 s. mem usage=0.08 GB. "
     "avail mem=1.72 GB.", "cuda_graph", None),
    ("[2025-09-28 17:08:01 TP0] Capture draft cuda graph begin. This can take up to several "
     "minutes. avail mem=10.20 GB", "cuda_graph", None),
    ("[2025-09-28 17:08:20 TP0] Capture draft extend cuda graph end. Time elapsed: 3.10 s. "
     "mem usage=0.24 GB. avail mem=5.13 GB.", "cuda_graph", None),
    ("[2026-07-21 14:58:01] Capture target verify CUDA graph begin. backend=fa3, "
     "num_tokens_per_req=4, bs=[1, 2, 4], avail mem=12.31 GB", "cuda_graph", (0, 3)),
    ("[2026-07-21 14:58:01] Capture target decode CUDA graph end. elapsed=25.74 s, "
     "mem usage=2.66 GB, avail mem=24.10 GB.", "cuda_graph", None),
    ("[2026-04-27 02:36:09] Capture piecewise CUDA graph begin. avail mem=23.54 GB",
     "cuda_graph", None),
    ("[2026-04-27 02:36:09] Capture cuda graph num tokens [4, 8, 12, 16]", "cuda_graph", (0, 4)),
    ("Capturing num tokens (num_tokens=4 avail_mem=23.10 GB): 100%|#####| 74/74 [00:09<00:00]",
     "cuda_graph", (74, 74)),
    # sglang 0.5.23 model_runner_components/cuda_graph_setup.py, prefill_cuda_graph_runner.py,
    # the Frozen-KV MTP and UNO tree draft runners
    ("[2026-09-01 10:00:00] Capture target prefill CUDA graph begin. backend=fa3, "
     "num_tokens=[256, 512, 1024], avail mem=30.10 GB", "cuda_graph", (0, 3)),
    ("[2026-09-01 10:00:00] Capture target decode CPU graph begin. backend=torch_native, "
     "num_tokens_per_req=1, bs=[1, 2], avail mem=0.00 GB", "cuda_graph", (0, 2)),
    ("[2026-09-01 10:00:00] Capture Frozen-KV MTP draft cuda graph begin.", "cuda_graph", None),
    ("[2026-09-01 10:00:00] Capture UNO tree draft CUDA graph end. elapsed=1.20 s",
     "cuda_graph", None),
    ("[2026-09-01 10:00:00] Capture single-CG draft extend begin. This can take several "
     "minutes. avail mem=20.00 GB", "cuda_graph", None),
    ("[2026-09-01 10:00:00] Capturing 12 prefill CUDA graph token shapes with fixed "
     "max_context_size=8192 (before execution variants).", "cuda_graph", None),
    ("Capturing prefill shape (num_tokens=512 avail_mem=29.00 GB)", "cuda_graph", None),
    # server_up and warmup: uvicorn, http_server._wait_and_warmup (get_model_info until 2026)
    ("[2025-03-08 12:31:00] INFO:     Started server process [1234]", "server_up", None),
    ("[2025-03-08 12:31:00] INFO:     Uvicorn running on http://0.0.0.0:30000 "
     "(Press CTRL+C to quit)", "server_up", None),
    ('[2025-03-08 12:31:01] INFO:     127.0.0.1:40000 - "GET /get_model_info HTTP/1.1" 200 OK',
     "warmup", None),
    ('[2026-08-07 10:32:34] INFO:     127.0.0.1:57394 - "GET /model_info HTTP/1.1" 200 OK',
     "warmup", None),
    ('[2025-03-08 12:31:02] INFO:     127.0.0.1:40002 - "POST /generate HTTP/1.1" 200 OK',
     "warmup", None),
    ("[2025-03-08 12:31:03] The server is fired up and ready to roll!", "ready", None),
    # Rank tags of data/expert/pipeline parallel runs (scheduler's prefix)
    ("[2025-05-01 10:00:00 DP0 TP0 EP0] Load weight begin. avail mem=70.00 GB",
     "load_weights", None),
    ("[2025-05-01 10:00:00 PP1 TP3] Memory pool end. avail mem=7.43 GB", "kv_cache", None),
]


@pytest.mark.parametrize(("line", "phase", "progress"), PHASE_LINES)
def test_every_phase_format(line: str, phase: str, progress: tuple[int, int] | None) -> None:
    events = [event for event in SGLangLogReader().feed(line) if isinstance(event, PhaseEvent)]
    assert [(event.name, event.progress) for event in events] == [(phase, progress)]


def test_phase_formats_cover_every_startup_phase() -> None:
    assert {phase for _, phase, _ in PHASE_LINES} >= {
        "init", "load_weights", "moe_shuffle", "kv_cache", "cuda_graph", "server_up", "warmup",
        "ready",
    }


# --- failures ---------------------------------------------------------------------------


def test_the_exception_line_wins_over_the_raise_source_line() -> None:
    lines = [
        '  File "/sglang/srt/distributed/device_communicators/pynccl_wrapper.py", line 329, '
        "in NCCL_CHECK",
        '    raise RuntimeError(f"NCCL error: {error_str}")',
        "RuntimeError: NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)",
    ]
    result = diagnose_lines(lines, "sglang")
    assert result.failure is not None and result.failure.failure_class == "nccl"
    assert result.failure.line == lines[2]


@pytest.mark.parametrize(
    "exception",
    [
        "RuntimeError: CUDA error: invalid device ordinal",
        "AttributeError: 'NoneType' object has no attribute 'shape'",
    ],
)
def test_an_unknown_exception_at_the_end_gives_exited_and_its_line(exception: str) -> None:
    lines = [
        "[2025-06-23 15:06:10 TP0] Init torch distributed begin.",
        "Traceback (most recent call last):",
        '  File "/sglang/srt/managers/scheduler.py", line 2712, in run_scheduler_process',
        "    scheduler = Scheduler(",
        exception,
    ]
    result = diagnose_lines(lines, "sglang")
    assert result.failure is not None
    assert result.failure.failure_class == "exited"
    assert result.failure.line == exception
    assert exception.split(":", 1)[0].rsplit(".", 1)[-1] in result.failure.message


def test_a_known_cause_after_an_unknown_exception_still_wins() -> None:
    result = diagnose_lines(
        ["AttributeError: 'NoneType' object has no attribute 'shape'",
         "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"],
        "sglang",
    )
    assert result.failure is not None and result.failure.failure_class == "out_of_memory"


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.", None),
        ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
         "Current value: mem_fraction_static=0.84", 0.84),
        ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
         "Current value: self.server_args.mem_fraction_static=0.2", 0.2),
    ],
)
def test_not_enough_memory_in_every_spelling(line: str, value: float | None) -> None:
    reader = SGLangLogReader()
    reader.feed(line)
    failure = reader.reading.failure
    assert failure is not None and failure.failure_class == "out_of_memory"
    assert "0.85" not in failure.remedy
    if value is not None:
        assert f"from {value:g}" in failure.remedy


def test_mem_fraction_from_the_server_args_line_or_the_profile() -> None:
    reader = SGLangLogReader()
    reader.feed("[2025-03-01 10:00:00] server_args=ServerArgs(model_path='m', "
                "mem_fraction_static=0.84, tp_size=8)")
    reader.feed("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.")
    assert reader.reading.failure is not None
    assert "from 0.84 (e.g. to 0.89)" in reader.reading.failure.remedy
    profile_reader = SGLangLogReader(mem_fraction_static=0.2)
    profile_reader.feed(
        "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
    )
    assert profile_reader.reading.failure is not None
    assert "from 0.2 (e.g. to 0.8)" in profile_reader.reading.failure.remedy
    assert "already 0.95" in mem_fraction_remedy(0.95)
    assert flag_value(["--mem-fraction-static", "0.7"], "--mem-fraction-static") == "0.7"
    assert flag_value(["--mem-fraction-static=0.6"], "--mem-fraction-static") == "0.6"
    assert flag_value(["--mem-fraction", "0.5"], "--mem-fraction-static") == "0.5"
    assert flag_value(["--tp", "2"], "--mem-fraction-static") is None


def test_other_ranks_did_not_finish_loading_has_its_own_class() -> None:
    line = ("ValueError: TP rank 1 could finish the model loading, but there are other ranks "
            "that didn't finish loading. It is likely due to unexpected failures (e.g., OOM) "
            "or a slow node.")
    result = diagnose_lines(
        [line, "[2025-12-04 07:44:24 TP2] Scheduler hit an exception: Traceback (most recent "
         "call last):"], "sglang"
    )
    assert result.failure is not None
    assert result.failure.failure_class == "rank_not_loaded"
    assert "--dist-timeout" in result.failure.remedy and "other ranks" in result.failure.remedy
    assert "cuda-graph" not in result.failure.remedy
    # The cause, when another rank's log shows it, is the better answer.
    caused = diagnose_lines(
        [line, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB"], "sglang"
    )
    assert caused.failure is not None and caused.failure.failure_class == "out_of_memory"


# --- Compose-prefixed lines -----------------------------------------------------------------


def test_compose_prefix_is_stripped_for_every_engine() -> None:
    reader = SGLangLogReader()
    events = reader.feed("sglang-1  | [2025-03-08 12:31:03] The server is fired up and ready "
                         "to roll!")
    assert [event.name for event in events if isinstance(event, PhaseEvent)] == ["ready"]
    llama = LlamaCppLogReader()
    llama.feed("\x1b[36mllama-server  |\x1b[0m error: invalid argument: 0.0.0.0")
    assert llama.reading.failure is not None
    assert llama.reading.failure.failure_class == "bad_flag"
    assert llama.reading.failure.line == "error: invalid argument: 0.0.0.0"


def test_compose_exit_lines_are_noticed() -> None:
    reader = SGLangLogReader()
    events = reader.feed("sglang_1 exited with code 1")  # Compose v1, no restart
    assert any(isinstance(event, Failure) and event.failure_class == "exited" for event in events)
    assert reader.reading.notes == []
    looping = LlamaCppLogReader()
    for _ in range(3):
        looping.feed("llama-server  | error: invalid argument: 0.0.0.0")
        looping.feed("llama-server exited with code 1 (restarting)")
    assert looping.reading.failure is not None
    assert looping.reading.failure.failure_class == "bad_flag"
    assert len(looping.reading.notes) == 1 and "3 time(s)" in looping.reading.notes[0]


@pytest.mark.parametrize(
    "line",
    [
        # torch.distributed's rendezvous (torch/distributed/rendezvous.py, c10d TCPStore)
        "torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. "
        "1/2 clients joined.",
        "torch.distributed.DistNetworkError: The client socket has timed out after 600000ms "
        "while trying to connect to (node-0.company.net, 20000).",
        "RuntimeError: The client socket has timed out after 1800s while trying to connect to "
        "(10.0.0.1, 20000).",
    ],
)
def test_a_rendezvous_that_never_completes_names_dist_init_addr(line: str) -> None:
    result = diagnose_lines(["[2025-06-23 15:06:10 TP0] Init torch distributed begin.", line],
                            "sglang")
    assert result.failure is not None and result.failure.failure_class == "nccl"
    assert "--dist-init-addr" in result.failure.remedy and result.failure.line == line


def test_a_container_killed_by_sigkill_points_at_the_oom_killer() -> None:
    result = diagnose_lines(["sglang-1  | [2025-03-08 12:29:25 TP0] Load weight begin.",
                             "sglang-1 exited with code 137"], "sglang")
    # Nothing before it explains the SIGKILL: out_of_memory with the host-memory remedy.
    assert result.failure is not None and result.failure.failure_class == "out_of_memory"
    assert "OOM killer" in result.failure.message and "swap" in result.failure.remedy
    # After an error of its own, SGLang SIGKILLs its tree: then 137 is no OOM sign.
    crashed = diagnose_lines(["sglang-1  | [2025-03-08 12:29:25 TP0] Load weight begin.",
                              "sglang-1  | RuntimeError: CUDA error: invalid device ordinal",
                              "sglang-1 exited with code 137"], "sglang")
    assert crashed.failure is not None and crashed.failure.failure_class == "exited"
    assert crashed.failure.line == "RuntimeError: CUDA error: invalid device ordinal"


def test_deferred_real_weights_after_capture_are_not_a_draft_model() -> None:
    reader = SGLangLogReader()
    reader.feed("[2026-09-01 10:00:00] Memory pool end. avail mem=7.43 GB")
    events = reader.feed("[2026-09-01 10:01:00] Load weight end. Committed real weights after "
                         "CUDA graph capture in 12.50 s")
    assert [e.name for e in events if isinstance(e, PhaseEvent)] == ["load_weights"]
