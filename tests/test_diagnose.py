"""`diagnose` and the log readers on kinds of fault: a crash header is not the failure line
(its traceback's `XxxError:` line is, and that class picks the remedy); text a client
controls (a logged prompt, a path) is never a failure; a failure after ready is a crash while
serving; a SIGKILL with nothing before it is the OOM killer.

Input: real SGLang logs (tests/fixtures/sglang, see its README) with lines appended in the
formats SGLang 0.5.23 (and older releases, where named) prints them; a real llama-server log
(tests/fixtures/llamacpp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_backend.diagnose import diagnose_lines
from llm_backend.engines.llamacpp import LlamaCppEngine
from llm_backend.engines.sglang import SGLangEngine

FIXTURES = Path(__file__).parent / "fixtures"
READY_LOG = (FIXTURES / "sglang" / "startup-old-format-ready.log").read_text().splitlines()
LOADING = READY_LOG[:14]  # up to "Capture cuda graph end": a load that has not finished
FRAMES = [
    '  File "/sglang/python/sglang/srt/model_executor/model_runner.py", line 647, in load_model',
    "    self.model = get_model(",
    '  File "/sglang/python/sglang/srt/models/qwen2.py", line 412, in load_weights',
    "    param = params_dict[name]",
    "            ~~~~~~~~~~~^^^^^^",
]
KEY_ERROR = "KeyError: 'model.layers.0.mlp.gate_proj.weight'"
HEADER = "[2025-03-08 12:29:22 TP0] Scheduler hit an exception: Traceback (most recent call last):"


# --- a crash header is not the failure line ---------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        # 0.5.23 managers/scheduler.py, detokenizer_manager.py, tokenizer_manager.py,
        # data_parallel_controller.py, multi_tokenizer_mixin.py: "<Name> hit an exception: <tb>"
        ["[2025-03-08 12:29:22 TP0] Scheduler hit an exception: Traceback (most recent call "
         "last):"],
        ["[2025-03-08 12:29:22] DetokenizerManager hit an exception: Traceback (most recent "
         "call last):"],
        ["[2025-03-08 12:29:22] TokenizerManager hit an exception: Traceback (most recent call "
         "last):"],
        ["[2025-03-08 12:29:22] DataParallelController hit an exception: Traceback (most "
         "recent call last):"],
        ["[2025-03-08 12:29:22] MultiTokenizerRouter hit an exception: Traceback (most recent "
         "call last):"],
        # 0.4 managers/tp_worker_overlap_thread.py
        ["[2025-01-28 17:58:17 TP0] TpModelWorkerClient hit an exception: Traceback (most "
         "recent call last):"],
        # 0.1-0.3 managers/controller/tp_worker.py: the traceback starts on the next line
        ["[2024-06-01 10:00:00 TP0] Exception in ModelTpServer:",
         "Traceback (most recent call last):"],
        ["[2024-06-01 10:00:00] Exception in ControllerSingle:",
         "Traceback (most recent call last):"],
        # The parent's report can come before the child's traceback (gpt-oss-oom-child-crash)
        ["[2025-08-06 20:26:20] Received sigquit from a child process. It usually means the "
         "child failed.",
         "[2025-08-06 20:26:20 TP0] Scheduler hit an exception: Traceback (most recent call "
         "last):"],
    ],
    ids=["scheduler", "detokenizer", "tokenizer", "dp-controller", "multi-tokenizer",
         "tp-worker-client", "model-tp-server", "controller-single", "sigquit-first"],
)
def test_the_exception_line_after_a_crash_header_is_the_failure(header: list[str]) -> None:
    result = diagnose_lines([*LOADING, *header, *FRAMES, KEY_ERROR], "sglang")
    assert result.failure is not None and not result.ready
    assert result.failure.failure_class == "child_crash"
    assert result.failure.line == KEY_ERROR
    # A KeyError in weight loading is a model/version mismatch, not CUDA-graph trouble.
    assert "architecture" in result.failure.remedy
    assert "cuda-graph" not in result.failure.remedy
    assert "KeyError" in result.failure.message


@pytest.mark.parametrize(
    ("exception", "failure_class", "words"),
    [
        (KEY_ERROR, "child_crash", "architecture"),
        ("AttributeError: 'GptOssConfig' object has no attribute 'num_experts'", "child_crash",
         "architecture"),
        ("ModuleNotFoundError: No module named 'flashinfer'", "child_crash", "package"),
        ("FileNotFoundError: [Errno 2] No such file or directory: '/models/m/config.json'",
         "child_crash", "path"),
        ("ValueError: --speculative-eagle-topk must be 1 for this algorithm", "child_crash",
         "setting"),
        ("AssertionError: tp_size must be divisible by the number of attention heads",
         "child_crash", "setting"),
        ("MemoryError", "out_of_memory", "swap"),
        ("EOFError", "child_crash", "first error above"),
        # known messages keep their own classes
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
         "out_of_memory", "--mem-fraction-static"),
        ("RuntimeError: NCCL error: unhandled system error", "nccl", "NCCL_SOCKET_IFNAME"),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", "child_crash",
         "--disable-cuda-graph"),
        ("Exception: Capture cuda graph failed: operation not permitted when stream is "
         "capturing", "child_crash", "--disable-cuda-graph"),
        ("subprocess.CalledProcessError: Command '['nvcc', '-gencode', 'arch=compute_90a']' "
         "returned non-zero exit status 1.", "kernel_compile", "image"),
        # no kind known: the class stays, the line is the exception's, no CUDA-graph advice
        ("RuntimeError: something nobody has seen before", "child_crash", "traceback"),
    ],
)
def test_the_exception_class_chooses_the_remedy(
    exception: str, failure_class: str, words: str
) -> None:
    result = diagnose_lines([*LOADING, HEADER, *FRAMES, exception], "sglang")
    assert result.failure is not None
    assert result.failure.failure_class == failure_class
    assert result.failure.line == exception
    assert words in result.failure.remedy or words in result.failure.message
    if "CUDA error" not in exception and "cuda graph" not in exception:
        assert "--disable-cuda-graph" not in result.failure.remedy


def test_a_chained_traceback_keeps_its_first_cause() -> None:
    lines = [*LOADING, HEADER, *FRAMES, KEY_ERROR, "",
             "During handling of the above exception, another exception occurred:", "",
             "Traceback (most recent call last):", *FRAMES,
             "RuntimeError: Failed to load the model"]
    result = diagnose_lines(lines, "sglang")
    assert result.failure is not None and result.failure.line == KEY_ERROR


def test_a_failed_warmup_names_the_proxy_and_its_own_line() -> None:
    """0.4's warmup got a 502 (from an HTTP proxy in the environment: sglang#7341), then
    SGLang killed its own tree (the shell printed `Killed`): not the OOM killer."""
    lines = (FIXTURES / "sglang" / "warmup-failed-2024.log").read_text().splitlines()
    result = diagnose_lines(lines, "sglang")
    assert result.failure is not None and result.failure.failure_class == "child_crash"
    assert result.failure.line == "AssertionError: res=<Response [502]>, res.text=''"
    assert "no_proxy" in result.failure.remedy


@pytest.mark.parametrize(
    ("line", "failure_class"),
    [
        # 0.5.23 entrypoints/engine.py _scheduler_died_error
        ("RuntimeError: Rank 0 scheduler died during initialization (exit code: -9). If exit "
         "code is -9 (SIGKILL), a common cause is the OS OOM killer. Run `dmesg -T | grep -i "
         "oom` to check.", "out_of_memory"),
        ("RuntimeError: Rank 1 scheduler died during initialization (exit code: -11). If exit "
         "code is -9 (SIGKILL), a common cause is the OS OOM killer.", "child_crash"),
        # 0.5.23 utils/watchdog.py SubprocessWatchdog
        ("[2026-11-02 10:00:00] Subprocess scheduler_0 (pid=4242) crashed with exit code -9. "
         "Triggering SIGQUIT for cleanup...", "out_of_memory"),
        ("[2026-11-02 10:00:00] Subprocess detokenizer (pid=4243) crashed with exit code -6. "
         "Triggering SIGQUIT for cleanup...", "child_crash"),
    ],
)
def test_a_child_that_died_without_a_traceback(line: str, failure_class: str) -> None:
    # The parent's SIGQUIT report follows (tokenizer_manager.py running_phase_sigquit_handler)
    after = ("[2026-11-02 10:00:00] SIGQUIT received. signum=3, frame=None. It usually means "
             "one child failed.")
    result = diagnose_lines([*LOADING, line, after], "sglang")
    assert result.failure is not None and result.failure.failure_class == failure_class
    assert result.failure.line == line
    if failure_class == "out_of_memory":
        assert "swap" in result.failure.remedy and "SIGKILL" in result.failure.message
    else:
        assert "exit code -" in result.failure.message


# --- text a client controls is never a failure -------------------------------------------------


OOM_TEXT = "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"


@pytest.mark.parametrize(
    "lines",
    [
        # --log-requests, 0.5.23 utils/request_logger.py (text format), as 0.4 printed them too
        [f"[2025-03-08 12:30:00] Receive: obj=GenerateReqInput(text={OOM_TEXT!r}, rid='1')"],
        [f"[2025-03-08 12:30:00] Receive OpenAI: obj={{'messages': [{{'role': 'user', "
         f"'content': {OOM_TEXT!r}}}]}}"],
        ["[2025-03-08 12:30:01] Finish: obj=GenerateReqInput(rid='1'), out={'text': "
         "'NCCL error: ncclSystemError', 'meta_info': {}}"],
        # --log-requests-format json (utils/log_utils.py log_json)
        [f'[2025-03-08 12:30:00] {{"timestamp": "2025-03-08T12:30:00", "event": '
         f'"request.received", "rid": "1", "obj": {{"text": "{OOM_TEXT}"}}}}'],
        # uvicorn's access log: the path is the client's
        ['[2025-03-08 12:30:00] INFO:     10.0.0.7:51234 - "GET /OutOfMemoryError HTTP/1.1" '
         "404 Not Found"],
        # a request's error with its traceback (entrypoints/openai/serving_base.py)
        ["[2025-03-08 12:30:00] Error in request: GatedRepoError in the prompt",
         "Traceback (most recent call last):",
         '  File "/sglang/srt/entrypoints/openai/serving_base.py", line 120, in handle_request',
         "    raise ValueError(message)",
         "ValueError: 401 Client Error: GatedRepoError in the prompt"],
    ],
    ids=["receive", "receive-openai", "finish", "json", "access-path", "request-error"],
)
def test_request_lines_of_a_healthy_server_are_not_failures(lines: list[str]) -> None:
    result = diagnose_lines([*READY_LOG, *lines], "sglang")
    assert result.ready and result.failure is None
    assert [phase.name for phase in result.phases][-1] == "ready"


def test_a_prompt_cannot_make_a_loading_server_ready() -> None:
    lines = [*LOADING, "[2025-03-08 12:30:00] Receive: obj=GenerateReqInput(text='The server "
             "is fired up and ready to roll!')"]
    assert not diagnose_lines(lines, "sglang").ready


def test_a_crash_after_ready_is_a_crash_while_serving() -> None:
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
    lines = [*READY_LOG,
             '[2025-03-08 12:34:00] INFO:     127.0.0.1:49541 - "POST /generate HTTP/1.1" 200 OK',
             HEADER.replace("12:29:22", "12:35:00"), *FRAMES, oom]
    result = diagnose_lines(lines, "sglang")
    assert result.ready
    assert result.failure is not None and result.failure.failure_class == "out_of_memory"
    assert result.failure.after_ready and result.failure.line == oom
    assert result.failure.message.startswith("after the server was ready")
    assert "while loading" not in result.failure.message
    assert result.to_json()["failure_after_ready"] is True
    # A request after ready is no second warmup: the timeline ends at ready.
    assert [phase.name for phase in result.phases].count("warmup") == 1
    assert result.phases[-1].name == "ready"


def test_diagnose_json_of_a_crash_while_serving(tmp_path: Path) -> None:
    log = tmp_path / "serving.log"
    log.write_text("\n".join([*READY_LOG, "[2025-03-08 12:35:00] Received sigquit from a child "
                              "process. It usually means the child failed."]) + "\n")
    completed = subprocess.run([sys.executable, "-m", "llm_backend", "diagnose", str(log),
                                "--json"], capture_output=True, text=True, timeout=60)
    data = json.loads(completed.stdout)
    assert data["ready"] is True and data["failure_after_ready"] is True
    assert data["failure"]["class"] == "child_crash"
    assert completed.returncode != 0  # ready, then crashed: not a healthy log


def test_diagnose_reads_a_pipe_and_names_a_folder(tmp_path: Path) -> None:
    """`diagnose <(docker logs NAME)` hands over /dev/fd/N, a pipe, which "did not exist";
    a folder "did not exist" either."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write("\n".join(LLAMA_READY) + "\n")
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "llm_backend", "diagnose", f"/dev/fd/{read_end}"],
            capture_output=True, text=True, timeout=60, pass_fds=(read_end,))
    finally:
        os.close(read_end)
    assert completed.returncode == 0, completed.stderr
    assert "ready:   yes" in completed.stdout
    folder = subprocess.run([sys.executable, "-m", "llm_backend", "diagnose", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert folder.returncode == 2
    assert f"error: log file {tmp_path} is a folder" in folder.stderr


# --- SIGKILL with nothing before it ------------------------------------------------------------


@pytest.mark.parametrize(
    "killed",
    ["Killed", "已杀死", "./run.sh: line 3:  4242 Killed                  python3 -m "
     "sglang.launch_server --model-path m", "zsh: killed     python3 -m sglang.launch_server",
     "sglang-1  | Killed"],
)
def test_a_load_killed_by_the_oom_killer(killed: str) -> None:
    result = diagnose_lines([*LOADING, killed], "sglang")
    assert result.failure is not None and result.failure.failure_class == "out_of_memory"
    assert "swap" in result.failure.remedy and "OOM killer" in result.failure.message


@pytest.mark.parametrize("code", [137, -9])
def test_an_exit_by_sigkill_with_no_error_in_the_log_is_the_oom_killer(code: int) -> None:
    quiet = SGLangEngine().exit_failure(exit_code=code, log_tail=LOADING)
    assert quiet.failure_class == "out_of_memory" and "swap" in quiet.remedy
    # After a traceback, SGLang SIGKILLs its own tree (utils/common.py kill_process_tree).
    crashed = SGLangEngine().exit_failure(exit_code=code, log_tail=[*LOADING, *FRAMES, KEY_ERROR])
    assert crashed.failure_class == "child_crash"


# --- llama.cpp ---------------------------------------------------------------------------------


LLAMA_READY = (FIXTURES / "llamacpp" / "ready.log").read_text().splitlines()


def test_a_healthy_llama_server_log_reads_ready() -> None:
    """`srv  llama_server: model loaded` is printed once /health answers 200 (pinned llama.cpp
    tools/server/server.cpp); the `listening on` line after it adds no phase."""
    result = diagnose_lines(LLAMA_READY, "llamacpp")
    assert result.ready and result.failure is None
    assert [phase.name for phase in result.phases] == ["init", "load_weights", "kv_cache",
                                                       "ready"]
    # The 2024-2025 spelling.
    old = diagnose_lines(["main: loading model", "main: model loaded",
                          "main: server is listening on http://127.0.0.1:8080 - starting the "
                          "main loop"], "llamacpp")
    assert old.ready


@pytest.mark.parametrize(
    "line",
    [
        # -v: request and response bodies (tools/server/server-http.cpp log_server_request)
        '0.05.000.001 D srv  log_server_r: request:  {"prompt": "error: invalid argument: x; '
        'failed to allocate; out of memory"}',
        '0.05.000.002 D srv  log_server_r: response: {"content": "error loading model"}',
        "0.05.000.003 D srv  log_server_r: done request: POST /out-of-memory 127.0.0.1 404",
        '0.05.000.004 D srv  handle_chat_: converted request: {"messages": [{"content": '
        '"failed to load model"}]}',
        "0.05.000.005 D slot process_toke: id  0 | task 3 | n_gen = 1, n_remaining = 23, next "
        "token:  1234 'out of memory'",
        "0.05.000.006 D slot update_slots: id  0 | task 3 | prompt token   4:  5678 ' address "
        "already in use'",
    ],
)
def test_llama_server_request_lines_are_not_failures(line: str) -> None:
    result = diagnose_lines([*LLAMA_READY[:-1], line, LLAMA_READY[-1]], "llamacpp")
    assert result.ready and result.failure is None


def test_llama_server_log_markers_guess_the_engine() -> None:
    assert LlamaCppEngine.log_markers is not None
    assert diagnose_lines(LLAMA_READY).engine == "llamacpp"


def test_llama_server_phases_are_timed_from_its_line_prefix() -> None:
    """llama.cpp's prefix is minutes.seconds.ms.us since the log began (common/log.cpp); the
    timeline had no times (`at_s: null`) for any llama.cpp log (new user's finding)."""
    phases = {phase.name: phase.at_s for phase in diagnose_lines(LLAMA_READY).phases}
    assert phases["init"] == 0.0
    first = LLAMA_READY[0].split()[0]  # 0.00.026.691
    last = next(line for line in LLAMA_READY if "model loaded" in line).split()[0]

    def seconds(stamp: str) -> float:
        minutes, whole, millis, micros = (int(part) for part in stamp.split("."))
        return minutes * 60 + whole + millis / 1e3 + micros / 1e6

    assert phases["ready"] == pytest.approx(seconds(last) - seconds(first))
    late = ["1.02.500.000 I srv  llama_server: initializing ...",
            "2.03.250.000 I srv  llama_server: model loaded"]
    timed = diagnose_lines(late, "llamacpp").phases
    assert timed[-1].at_s == pytest.approx(60.75)  # minutes carry over


def test_a_log_no_engine_recognises_says_so() -> None:
    result = diagnose_lines(["garbage"])
    assert not result.ready and not result.phases
    assert any("no line is recognised as any engine's log" in note for note in result.notes)
    assert not any("recognised" in note for note in diagnose_lines(LLAMA_READY).notes)


def test_a_llama_server_abort_while_serving_is_a_crash_after_ready() -> None:
    """ggml_abort's line (ggml/src/ggml.c at the pinned llama.cpp) after the ready line."""
    abort = ("/llama.cpp/ggml/src/ggml-cpu/ops.cpp:5123: GGML_ASSERT(n_tokens <= n_batch) "
             "failed")
    result = diagnose_lines([*LLAMA_READY[:-1], abort], "llamacpp")
    assert result.ready and result.failure is not None
    assert result.failure.failure_class == "exited" and result.failure.line == abort
    assert result.failure.after_ready and "after the server was ready" in result.failure.message
    loading = diagnose_lines([*LLAMA_READY[:4], abort], "llamacpp")
    assert loading.failure is not None and not loading.failure.after_ready


@pytest.mark.parametrize(
    "line",
    [
        # 0.5.23 utils/watchdog.py, then the parent's SIGQUIT report
        "[2026-11-02 10:10:00] Scheduler watchdog timeout (self.watchdog_timeout=300, "
        "self.soft=False)",
        # 0.4-0.5 managers/scheduler.py
        "[2025-03-08 12:40:00 TP0] Watchdog timeout (self.watchdog_timeout=300)",
    ],
)
def test_a_watchdog_timeout_while_serving_is_a_hang_not_cuda_graph_trouble(line: str) -> None:
    after = ("[2026-11-02 10:10:05] SIGQUIT received. signum=3, frame=None. It usually means "
             "one child failed.")
    result = diagnose_lines([*READY_LOG, line, after], "sglang")
    assert result.failure is not None and result.failure.failure_class == "stalled"
    assert result.failure.after_ready and result.failure.line == line
    assert "--watchdog-timeout above 300" in result.failure.remedy
    soft = line.replace("self.soft=False", "self.soft=True")
    if soft != line:  # a soft watchdog only dumps debug information
        assert diagnose_lines([*READY_LOG, soft], "sglang").failure is None


@pytest.mark.parametrize("engine", ["sglang", "llamacpp"])
def test_a_long_line_is_read_in_linear_time(engine: str) -> None:
    """A logged 200 000-character prompt (or a run of digits) is one pass of each pattern: the
    watchdog and byte-progress patterns used to retry from every position (4.5 minutes for
    such a line, during which `start`'s monitor and `serve` read nothing else)."""
    import time

    lines = ["x" * 200_000, "7" * 200_000, "a " * 100_000,
             "[2026-01-01 00:00:00] " + "Watchdog " * 20_000]
    started = time.monotonic()
    diagnosis = diagnose_lines(lines, engine)
    assert time.monotonic() - started < 30  # about 1 s here (2-core VM); minutes before
    assert diagnosis.failure is None and not diagnosis.ready


def test_a_clients_line_breaks_in_a_logged_request_error_are_never_the_engines() -> None:
    """SGLang logs a request's exception as `Error in request: {e}` with its traceback
    (serving_base.py); the client's text in `e` may hold line breaks, so the lines of that
    record without SGLang's own prefix are the client's: never a failure. A prefixed line
    after it is SGLang's again."""
    client = [
        "[2026-11-30 06:00:00] The server is fired up and ready to roll!",
        "[2026-11-30 06:00:05] Error in request: unknown tool 'x",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
        "'",
        "Traceback (most recent call last):",
        '  File "/sgl/serving_base.py", line 120, in handle_request',
        "    raise RuntimeError(msg)",
        "RuntimeError: unknown tool 'x",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
        "'",
        '[2026-11-30 06:00:06] INFO:     127.0.0.1:40000 - "POST /v1/chat/completions HTTP/1.1" '
        "500 Internal Server Error",
    ]
    faked = diagnose_lines(client, "sglang")
    assert faked.ready and faked.failure is None, faked.failure
    real = diagnose_lines([
        *client,
        "[2026-11-30 06:00:07] Scheduler hit an exception: Traceback (most recent call last):",
        '  File "/sgl/scheduler.py", line 10, in event_loop',
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    ], "sglang")
    assert real.failure is not None and real.failure.failure_class == "out_of_memory"
    assert real.failure.after_ready
