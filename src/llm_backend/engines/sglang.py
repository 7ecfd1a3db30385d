"""SGLang: argv from a profile, its endpoints, and a reader of its old and new log formats.

The reader maps SGLang's startup lines onto the design's phases (with progress for
checkpoint shards, MoE weight shuffling and CUDA-graph batches), its failures onto the
failure classes with a remedy each, and its decode lines onto speculative-decoding stats.
Log formats changed in 2026 (`Decode batch.` -> `Decode batch,`, `Capture cuda graph` ->
`Capture target verify CUDA graph`); both are read.

Facts about SGLang here are from its source at the pinned version 0.5.23 (paths under
`python/sglang/`): the launcher `launch_server.py`, the endpoints in
`srt/entrypoints/http_server.py` (/health is 503 until warmup, /server_info, formerly
/get_server_info), `avg_spec_accept_length` in `srt/managers/scheduler.py`
(`get_internal_state`), log lines in `srt/model_executor/model_runner.py` and
`srt/managers/scheduler.py`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.checks import Check, CheckResult, Context, result
from llm_backend.config import Profile, builtin_model_facts
from llm_backend.engines import hub
from llm_backend.engines.base import (
    EXCEPTION_LINE,
    Engine,
    Failure,
    LogReader,
    MemoryNeed,
    PhaseEvent,
    SpecStats,
    download_event,
    sigkill_failure,
)
from llm_backend.engines.hub import HubRepository
from llm_backend.errors import ConfigError
from llm_backend.net import bind_host, is_ipv6_literal, parse_host_port
from llm_backend.pull import PULL_REMEDY, Source, VerifiedFile
from llm_backend.toml_names import profile_table

if TYPE_CHECKING:
    from llm_backend.hardware import HardwareDescription
    from llm_backend.runtimes.base import Runtime

CONTAINER_PYTHON = "python3"
LAUNCH_MODULE = "sglang.launch_server"

TIMESTAMP = re.compile(
    r"^\[(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:Z)?(?P<ranks>(?: [A-Z]+\d+)*)\] ?"
)


@dataclass(frozen=True)
class FailurePattern:
    """A log line that means one failure class, and what to do about it."""

    pattern: re.Pattern[str]
    failure_class: str
    message: str
    remedy: str


# "Not enough memory" names the current value since 2025 (two spellings), not before.
NOT_ENOUGH_MEMORY = re.compile(
    r"Not enough memory\. Please try to increase --mem-fraction-static\.?"
    r"(?: Current value: (?:self\.server_args\.)?mem_fraction_static=(?P<value>[0-9.]+))?"
)
SERVER_ARGS_MEM_FRACTION = re.compile(r"\bmem_fraction_static=(?P<value>[0-9.]+)")

# Lines that announce a crash whose traceback (and cause) follows, and the parent's report of
# a failed child: 0.5.23 `managers/scheduler.py`, `detokenizer_manager.py`,
# `tokenizer_manager.py`, `data_parallel_controller.py`, `multi_tokenizer_mixin.py`
# (`<Name> hit an exception: <traceback>`), `entrypoints/engine.py` (`Received sigquit from a
# child process`), `managers/tokenizer_manager.py` (`SIGQUIT received. ... It usually means
# one child failed.`); 0.4 `managers/tp_worker_overlap_thread.py` (`TpModelWorkerClient hit
# an exception`); 0.1-0.3 `managers/controller/*.py` (`Exception in ModelTpServer:`,
# `Exception in ControllerSingle:`, `Exception in run_tp_server:`, a traceback on the lines
# after). `proces` without its `s`: public excerpts cut there are still read.
CRASH_HEADER = re.compile(
    r"\b\w+ hit an exception\b|^Exception in \w+:\s*$|Received sigquit from a child proces|"
    r"SIGQUIT received\..*It usually means one child failed"
)
# `_wait_and_warmup` / `_execute_server_warmup` (0.5.23 `entrypoints/http_server.py`): the
# server's own first requests failed; a 502 there is most often an HTTP proxy from the
# environment that `requests` used for the server's own address (sgl-project/sglang#7341,
# #9814).
WARMUP_HEADER = re.compile(r"Initialization failed\. warmup error")
WARMUP_MESSAGE = "SGLang's warmup request to its own server failed"
WARMUP_REMEDY = (
    "with http_proxy / https_proxy set, add no_proxy = \"127.0.0.1,localhost,0.0.0.0\" (and "
    "the --host address) to the profile's `env`; otherwise the server crashed while warming "
    "up: read the error above this line (`llm-backend logs -n 200`)"
)
# A child process that died without a traceback of its own: 0.5.23 `entrypoints/engine.py`
# `_scheduler_died_error` ("Rank N scheduler died during initialization (exit code: -9)")
# and `utils/watchdog.py` `SubprocessWatchdog` ("Subprocess NAME (pid=N) crashed with exit
# code -9"). Exit code -9 is SIGKILL: the kernel's OOM killer when nobody else sent it.
CHILD_EXIT = re.compile(
    r"(?P<who>Rank \d+ scheduler) died during initialization \(exit code: (?P<code>-?\d+)\)|"
    r"Subprocess (?P<name>\S+) \(pid=\d+\) crashed with exit code (?P<code2>-?\d+)"
)
# A forward batch ran longer than --watchdog-timeout (300 s by default) and SGLang ends
# itself: 0.5.23 `utils/watchdog.py` ("Scheduler watchdog timeout (self.watchdog_timeout=300,
# self.soft=False)"; soft=True only dumps debug info), 0.4-0.5 `managers/scheduler.py`
# ("Watchdog timeout (self.watchdog_timeout=300)").
WATCHDOG = re.compile(
    r"(?:\b(?P<who>\w+) )?[Ww]atchdog timeout \(self\.watchdog_timeout=(?P<seconds>[\d.]+)"
    r"(?:, self\.soft=(?P<soft>True|False))?\)"
)
SIGNAL_NAMES = {-6: "SIGABRT", -7: "SIGBUS", -9: "SIGKILL", -11: "SIGSEGV", -15: "SIGTERM"}

FAILURE_PATTERNS: tuple[FailurePattern, ...] = (
    FailurePattern(
        NOT_ENOUGH_MEMORY,
        "out_of_memory",
        "the KV cache pool does not fit in the memory left after the weights",
        # Replaced by mem_fraction_remedy() with the values the log and profile show.
        "raise --mem-fraction-static in `extra_args`",
    ),
    FailurePattern(
        re.compile(r"could finish the model loading, but there are other ranks that "
                   r"didn't finish loading"),
        "rank_not_loaded",
        "this rank loaded the model but other ranks (GPUs or nodes) did not finish loading",
        "find the first error on the other ranks or nodes (often out of memory): "
        "`llm-backend logs -n 500` here and each other node's own log; for a node that is "
        "only slow, raise --dist-timeout (seconds) in `extra_args`",
    ),
    FailurePattern(
        re.compile(
            r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|"
            r"RuntimeError: CUDA error: out of memory|Cannot allocate memory|"
            r"std::bad_alloc|NPU out of memory",
            re.I,
        ),
        "out_of_memory",
        "SGLang ran out of GPU memory while loading",
        "lower --mem-fraction-static (e.g. 0.80) or --context-length in `extra_args`, "
        "or free the GPU (nvidia-smi) and start again",
    ),
    FailurePattern(
        re.compile(
            r"HarmonyError|error downloading or loading vocab file|"
            r"TIKTOKEN_ENCODINGS_BASE is not set|o200k_base\.tiktoken",
        ),
        "offline_encoding",
        "gpt-oss's harmony tokenizer could not load its vocab file (no internet?)",
        "download o200k_base.tiktoken and cl100k_base.tiktoken into a folder, mount it and set "
        "TIKTOKEN_ENCODINGS_BASE to it in the profile's `env` (see docs/sglang.md)",
    ),
    FailurePattern(
        re.compile(
            r"GatedRepoError|trying to access a gated repo|Cannot access gated repo|"
            r"401 Client Error|403 Client Error.*huggingface",
            re.I,
        ),
        "gated_model",
        "Hugging Face refused the download: the model is gated or needs a token",
        "accept the model's licence on huggingface.co and set HF_TOKEN in the profile's `env` "
        "(or run `huggingface-cli login`)",
    ),
    FailurePattern(
        re.compile(
            r"is not a local folder and is not a valid model identifier|"
            r"RepositoryNotFoundError|404 Client Error.*huggingface|"
            r"Can't load the configuration of",
        ),
        "model_not_found",
        "the model path is neither a local folder nor a Hugging Face model id",
        "correct `model` (or the draft model) in the profile; check the spelling on "
        "huggingface.co",
    ),
    FailurePattern(
        re.compile(
            r"address already in use|\[Errno 98\]|Port is already in use|"
            r"is not available in \d+ seconds",
            re.I,
        ),
        "port_in_use",
        "a port SGLang needs is already in use",
        "stop what holds the port (`ss -ltnp`), or start with --port N; for internal ports "
        "set --nccl-port or --dist-init-addr",
    ),
    FailurePattern(
        re.compile(
            r"PTXASError|ptxas (?:fatal|error)|ptxas .*failed|CompilationError|"
            r"no kernel image is available|nvcc fatal|Unsupported GPU architecture|"
            r"sm_\d+a? is not supported|NinjaBuildError|error building extension|"
            # a compiler run from Python (JIT kernels): subprocess.CalledProcessError
            r"CalledProcessError: Command '\[?'?[^']*\b(?:nvcc|ninja|ptxas|cmake|gcc|g\+\+|"
            r"c\+\+|clang\+*)\b",
            re.I,
        ),
        "kernel_compile",
        "a GPU kernel failed to compile or has no build for this GPU",
        "use the image built for this GPU (profile `docker.image` / `docker.image_aarch64`), "
        "or pick other kernels: --attention-backend triton, --moe-runner-backend triton",
    ),
    FailurePattern(
        # torch.distributed's rendezvous at --dist-init-addr (TCPStore): a node never joined,
        # or this node cannot reach the address (torch/distributed/rendezvous.py, c10d).
        re.compile(
            r"DistStoreError|DistNetworkError|waiting for clients\. \d+/\d+ clients joined|"
            r"TCPStore\(.*(?:timed out|Connection refused)|The client socket has timed out"
        ),
        "nccl",
        "the ranks could not meet at --dist-init-addr (torch.distributed rendezvous)",
        "start every node with the same --dist-init-addr HOST:PORT, --nnodes and its own "
        "--node-rank; check that each reaches HOST:PORT (firewall; GLOO_SOCKET_IFNAME, "
        "NCCL_SOCKET_IFNAME and SGLANG_HOST_IP on the right interface in `env`); raise "
        "--dist-timeout for a node that starts late",
    ),
    FailurePattern(
        re.compile(
            r"NCCL error|ncclInternalError|ncclSystemError|ncclUnhandledCudaError|"
            r"ncclRemoteError|ProcessGroupNCCL.*(?:timeout|Timeout|error)|NCCL WARN",
        ),
        "nccl",
        "NCCL (GPU-to-GPU communication) failed",
        "check the GPUs and links (nvidia-smi topo -m); across nodes set NCCL_SOCKET_IFNAME, "
        "GLOO_SOCKET_IFNAME and SGLANG_HOST_IP to the fast interface in `env`",
    ),
    FailurePattern(
        re.compile(
            r"(?:sglang serve|launch_server\.py|sglang): error: |"
            r"^error: unrecognized arguments|ambiguous option: --"
        ),
        "bad_flag",
        "SGLang refused a command-line flag",
        "fix the flag in `extra_args` (`llm-backend start --dry-run` checks flags first)",
    ),
    FailurePattern(
        re.compile(r"context_length \(\d+\) is greater than the derived context_length"),
        "bad_flag",
        "the context length is longer than the (draft) model's own",
        'set env SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN = "1" in the profile, '
        "or lower --context-length",
    ),
    FailurePattern(
        # A kernel fault on the GPU (not out of memory, not a missing kernel image: those
        # match above). Capture: 0.5.23 `model_executor/runner/decode_cuda_graph_runner.py`.
        re.compile(
            r"CUDA error: (?:an illegal memory access|device-side assert|unspecified launch "
            r"failure|misaligned address|an illegal instruction)|CUBLAS_STATUS_\w+|"
            r"cuDNN error|Capture cuda graph failed"
        ),
        "child_crash",
        "a CUDA kernel failed on the GPU",
        "try --disable-cuda-graph, then another --attention-backend (e.g. triton) in "
        "`extra_args` to find the kernel; the traceback is in `llm-backend logs -n 200`",
    ),
    FailurePattern(
        WARMUP_HEADER,
        "child_crash",
        WARMUP_MESSAGE,
        WARMUP_REMEDY,
    ),
    FailurePattern(
        CRASH_HEADER,
        "child_crash",
        "an SGLang process crashed",
        "read the traceback at this line (`llm-backend logs -n 200`): its last "
        "`XxxError: message` line says why",
    ),
)

# Every spelling of each phase line that SGLang 0.4 .. 0.5.23 and main print (rank tags and
# timestamps are removed first). Sources: python/sglang/srt/model_executor/model_runner.py,
# cuda_graph_runner.py, piecewise_cuda_graph_runner.py, speculative/eagle_worker.py,
# mem_cache/memory_pool.py, entrypoints/http_server.py across those releases; docs/sglang.md
# lists one example line of each.
PHASE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"server_args=ServerArgs\(|Init torch distributed (?:begin|ends)"), "init"),
    (re.compile(r"Load weight (?:begin|end)|Loading safetensors checkpoint shards|"
                r"Multi-thread loading shards|Loading pt checkpoint shards"), "load_weights"),
    (re.compile(r"Shuffling MoE weights"), "moe_shuffle"),
    (re.compile(r"KV Cache is allocated|Memory pool end|Use sliding window memory pool|"
                r"SWAKVPool mem usage|Mamba Cache is allocated|Using KV cache dtype"),
     "kv_cache"),
    # 0.5.23 also names the device (`Capture target decode CPU graph begin`), the prefill
    # graph (`Capture target prefill CUDA graph begin. ... num_tokens=[...]`), MTP and tree
    # drafts (`Capture Frozen-KV MTP draft cuda graph`, `Capture UNO tree draft CUDA graph`).
    (re.compile(r"Capture (?:[\w-]+ ){0,4}(?:cuda|CUDA|CPU|NPU|XPU|device) graphs? "
                r"(?:begin|end|bs\b|num tokens)|Capture single-CG draft extend (?:begin|end)|"
                r"Capturing batches|Capturing num tokens|Compiling num tokens|"
                r"Capturing prefill shape|Capturing \d+ prefill CUDA graph"), "cuda_graph"),
    # A rank >= 1 prints no uvicorn lines: its dummy health server is its "up" (0.5.23
    # `utils/common.py` launch_dummy_health_check_server).
    (re.compile(r"Uvicorn running on|Started server process|Application startup complete|"
                r"Dummy health check server (?:started|scheduled)"),
     "server_up"),
    (re.compile(r'"GET /(?:get_)?model_info HTTP|"POST /generate HTTP'), "warmup"),
    (re.compile(r"The server is fired up and ready to roll"), "ready"),
)

# Lines whose text an API client controls (after the `[time TP0] ` prefix is removed): the
# request log of --log-requests, text (`Receive: obj=`, `Receive OpenAI: obj=`, `Finish:
# obj=`) or --log-requests-format json (`{"timestamp": ..., "event": "request.received"`),
# 0.5.23 `utils/request_logger.py` and `utils/log_utils.py` `log_json` (0.4: the same
# `Receive:` / `Finish:` texts from `managers/tokenizer_manager.py`); uvicorn's access log
# (`INFO:     127.0.0.1:40052 - "POST /v1/... HTTP/1.1" 200 OK`: the path is the client's);
# a request's error (`Error in request: ...`, 0.5.23 `entrypoints/openai/serving_base.py`).
CLIENT_TEXT = re.compile(
    r"^(?:[A-Z]+:\s+)?(?:Receive(?: OpenAI)?: obj=|Finish: obj=|"
    r"\{\"timestamp\": \"[^\"]*\", \"event\": \"request\.|"
    r"\S+:\d+ - \"[A-Z]+ |Error in request: )"
)
CLIENT_ERROR_RECORD = re.compile(r"^(?:[A-Z]+:\s+)?Error in request: ")
SHARDS = re.compile(r"checkpoint shards:\s+\d+% Completed \| (\d+)/(\d+)")
MOE_LAYER = re.compile(r"Shuffling MoE weights.*\(layer: model\.layers\.(\d+)\.")
CAPTURE_BS_LIST = re.compile(
    r"Capture cuda graph (?:bs|num tokens) \[([\d, ]+)\]|\b(?:bs|num_tokens)=\[([\d, ]+)\]"
)
# `Capturing batches (bs=4 avail_mem=18.72 GB):  33%|...| 1/3 [`, also without bs= (0.4) or
# without avail_mem (2026), and the piecewise graph's `Capturing num tokens (num_tokens=4 ...)`.
CAPTURING = re.compile(r"Capturing (?:batches|num tokens) \([^)]*\):.*?\|\s*(\d+)/(\d+) \[")
DRAFT_MARKERS = re.compile(r"Capture draft|Eagle3|EAGLE|draft model|Overriding the draft model")
MODEL_PATH = re.compile(r"model_path='([^']+)'|--model-path[ =](\S+)")
DECODE = re.compile(r"Decode batch[.,]")
ACCEPT_LEN = re.compile(r"accept len: ([0-9.]+)")
ACCEPT_RATE = re.compile(r"accept rate: ([0-9.]+)")
GEN_THROUGHPUT = re.compile(r"gen throughput \(token/s\): ([0-9.]+)")


LOG_MARKERS = re.compile(
    r"sglang|ServerArgs|\] (?:Load weight|Init torch distributed|Capture cuda graph)|"
    r"Decode batch[.,]|Prefill batch[.,]|fired up and ready to roll|Scheduler hit an exception|"
    r"Shuffling MoE weights|Capturing batches \(bs="
)


def moe_layers_of(model: str) -> int | None:
    """MoE layers of a model a built-in profile describes (its `model_facts.moe_layers`)."""
    facts = builtin_model_facts(model)
    return facts.moe_layers if facts is not None else None


def flag_value(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in `args` (`--flag V`, `--flag=V`, or argparse's unique prefix
    of at least half the name); the last one wins, as in argparse. None when absent."""
    value: str | None = None
    for index, token in enumerate(args):
        name, has_inline, inline = token.partition("=")
        if not (name == flag or (len(name) * 2 >= len(flag) and flag.startswith(name)
                                 and name.startswith("--"))):
            continue
        if has_inline:
            value = inline
        elif index + 1 < len(args):
            value = args[index + 1]
    return value


def strip_prefix(line: str) -> tuple[str | None, str]:
    """Split `[2025-03-08 12:29:21 TP0] text` into its timestamp and the text."""
    match = TIMESTAMP.match(line)
    if not match:
        return None, line
    return match.group(1), line[match.end():]


class SGLangLogReader(LogReader):
    """Maps SGLang log lines (2024 to 2026 formats) onto phases, failures and spec stats."""

    def __init__(
        self, moe_layers: int | None = None, mem_fraction_static: float | None = None
    ) -> None:
        super().__init__()
        self.moe_layers = moe_layers
        self.kv_seen = False
        self.graph_total: int | None = None
        # --mem-fraction-static as the profile sets it, then as the server_args line shows it.
        self.mem_fraction_static = mem_fraction_static

    def message_of(self, line: str) -> str:
        return strip_prefix(line)[1]

    def read_line(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        events: list[PhaseEvent | Failure | SpecStats] = []
        # tqdm bars arrive with carriage returns; the last segment is the current state.
        segments = [part for part in line.split("\r") if part.strip()] or [line]
        for segment in segments:
            events += self._read_segment(segment.strip())
        return events

    def _read_segment(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        events: list[PhaseEvent | Failure | SpecStats] = []
        _, text = strip_prefix(line)
        if self.moe_layers is None and (model := MODEL_PATH.search(text)):
            self.moe_layers = moe_layers_of(model.group(1) or model.group(2) or "")
        if "server_args=ServerArgs(" in text and (
            fraction := SERVER_ARGS_MEM_FRACTION.search(text)
        ):
            self.mem_fraction_static = float(fraction.group("value"))
        failure = self._failure(text, line)
        if failure is not None:
            events.append(failure)
        phase = self._phase(text, line) or download_event(text, line)
        if phase is not None:
            events.append(phase)
        if DECODE.search(text):
            stats = _spec_from_decode(text, line)
            if stats is not None:
                events.append(stats)
        return events

    def client_text(self, message: str) -> bool:
        return CLIENT_TEXT.match(message) is not None

    def client_record_continues(self, message: str) -> bool:
        # 0.5.23 entrypoints/openai/serving_base.py: `logger.exception(f"Error in request:
        # {e}")`, where `e` may quote what the client sent, line breaks and all.
        return CLIENT_ERROR_RECORD.match(message) is not None

    def exception_failure(self, line: str, *, header: Failure | None) -> Failure:
        if header is not None and header.message == WARMUP_MESSAGE:
            # The warmup's own exception (`AssertionError: res=<Response [502]>`) tells how
            # the request failed; what to do is the warmup's remedy.
            return Failure(header.failure_class, header.message, header.remedy, line=line)
        return super().exception_failure(line, header=header)

    def _failure(self, text: str, line: str) -> Failure | None:
        watchdog = WATCHDOG.search(text)
        if watchdog is not None and watchdog.group("soft") != "True":
            seconds = watchdog.group("seconds")
            return Failure(
                "stalled",
                f"SGLang's {watchdog.group('who') or 'Scheduler'} watchdog: one batch ran "
                f"longer than --watchdog-timeout ({seconds} s), so SGLang ended itself",
                "a hang in a kernel or in NCCL (another rank or node stopped): find the first "
                "error above and on the other nodes; for batches that are only slow (a long "
                f"prefill on a small GPU), raise --watchdog-timeout above {seconds} in "
                "`extra_args`",
                line=line,
            )
        child = CHILD_EXIT.search(text)
        if child is not None:
            code = int(child.group("code") or child.group("code2"))
            who = child.group("who") or f"the subprocess {child.group('name')}"
            if code == -9:
                return sigkill_failure(f"{who} was killed with SIGKILL (exit code -9)",
                                       line=line)
            signal_name = SIGNAL_NAMES.get(code)
            return Failure(
                "child_crash",
                f"{who} died with exit code {code}"
                + (f" ({signal_name}: a crash in native code, e.g. NCCL or a CUDA kernel)"
                   if signal_name else ""),
                "find its own error above this line (`llm-backend logs -n 500`); with none, "
                "try another --attention-backend or a newer image",
                line=line,
            )
        for item in FAILURE_PATTERNS:
            match = item.pattern.search(text)
            if match:
                remedy = item.remedy
                if item.pattern is NOT_ENOUGH_MEMORY:
                    shown = match.group("value")
                    remedy = mem_fraction_remedy(
                        float(shown) if shown else self.mem_fraction_static
                    )
                return Failure(item.failure_class, item.message, remedy, line=line)
        return None

    def _phase(self, text: str, line: str) -> PhaseEvent | None:
        for pattern, name in PHASE_PATTERNS:
            if not pattern.search(text):
                continue
            progress: tuple[int, int] | None = None
            if name == "load_weights":
                # 0.5.23 with deferred weights logs "Load weight end. Committed real weights
                # after CUDA graph capture": the target's own weights, not a draft.
                if (self.kv_seen or DRAFT_MARKERS.search(text)) and (
                    "Committed real weights" not in text
                ):
                    name = "draft_model"
                shards = SHARDS.search(text)
                if shards:
                    progress = (int(shards.group(1)), int(shards.group(2)))
            elif name == "moe_shuffle":
                layer = MOE_LAYER.search(text)
                if layer:
                    # Total 0 = unknown (a model we have no layer count for).
                    total = self.moe_layers or 0
                    done = int(layer.group(1)) + 1
                    progress = (min(done, total) if total else done, total)
            elif name == "kv_cache":
                self.kv_seen = True
            elif name == "cuda_graph":
                listed = CAPTURE_BS_LIST.search(text)
                if listed:
                    sizes = (listed.group(1) or listed.group(2) or "").split(",")
                    self.graph_total = len([size for size in sizes if size.strip()])
                    progress = (0, self.graph_total)
                capturing = CAPTURING.search(text)
                if capturing:
                    progress = (int(capturing.group(1)), int(capturing.group(2)))
            return PhaseEvent(name=name, line=line, progress=progress)
        return None


def mem_fraction_remedy(current: float | None) -> str:
    """What to do about "Not enough memory" given the current --mem-fraction-static.

    The KV cache gets what is left of `mem_fraction_static` x GPU memory after the weights
    (python/sglang/srt/model_executor/model_runner.py, profile_max_num_token), so the fix is
    a larger fraction, unless it is already near the top, where only fewer weights per GPU
    help (more tensor parallelism, a smaller quantization).
    """
    rest = (
        "lower --cuda-graph-max-bs-decode and --max-running-requests, or spread the weights "
        "over more GPUs (--tp-size)"
    )
    if current is None:
        return (
            "raise --mem-fraction-static above its current value (the `server_args=` line at "
            f"the top of the log shows it; unset means SGLang chose it) in `extra_args`; or {rest}"
        )
    if current >= 0.93:
        return (
            f"--mem-fraction-static is already {current:g}: the weights leave no room for the "
            f"KV cache on this GPU; {rest}, or use a smaller quantization"
        )
    target = 0.8 if current < 0.7 else round(min(current + 0.05, 0.93), 2)
    return (
        f"raise --mem-fraction-static from {current:g} (e.g. to {target:g}) in `extra_args`; "
        f"or {rest}"
    )


def _spec_from_decode(text: str, line: str) -> SpecStats | None:
    accept_len = ACCEPT_LEN.search(text)
    accept_rate = ACCEPT_RATE.search(text)
    throughput = GEN_THROUGHPUT.search(text)
    if not (accept_len or accept_rate or throughput):
        return None
    return SpecStats(
        accept_length=float(accept_len.group(1)) if accept_len else None,
        accept_rate=float(accept_rate.group(1)) if accept_rate else None,
        gen_throughput=float(throughput.group(1)) if throughput else None,
        line=line,
    )


def spec_stats_from_server_info(info: dict[str, Any]) -> SpecStats | None:
    """`avg_spec_accept_length` and `last_gen_throughput` from /server_info (or /get_server_info).

    Current SGLang keeps them per DP rank in `internal_states`; some 2025 builds put them
    at the top level.
    """
    states = info.get("internal_states")
    candidates: list[dict[str, Any]] = []
    if isinstance(states, list):
        candidates += [state for state in states if isinstance(state, dict)]
    candidates.append(info)
    accept: float | None = None
    throughput: float | None = None
    for state in candidates:
        if accept is None and isinstance(state.get("avg_spec_accept_length"), int | float):
            accept = float(state["avg_spec_accept_length"])
        if throughput is None and isinstance(state.get("last_gen_throughput"), int | float):
            throughput = float(state["last_gen_throughput"])
    if accept is None and throughput is None:
        return None
    return SpecStats(accept_length=accept, gen_throughput=throughput, line=None)


# gpt-oss's tokenizer (openai-harmony) reads `o200k_base.tiktoken` from TIKTOKEN_ENCODINGS_BASE
# when that variable is set, never downloads it then, and checks its SHA-256
# (openai/harmony `src/tiktoken_ext/public_encodings.rs`, `Encoding::load`, `expected_hash`).
HARMONY_ENCODING_FILE = "o200k_base.tiktoken"
SGLANG_SECRETS_FILE = "sglang-secrets.yaml"  # the API key, as SGLang's --config file
HARMONY_ENCODING_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
HARMONY_ENCODING_BYTES = 3_613_922
HARMONY_ENCODINGS_URL = "https://openaipublic.blob.core.windows.net/encodings/"
ENCODINGS_URL_ENV = "LLM_BACKEND_ENCODINGS_URL"  # a mirror of the folder above


def harmony_encoding(folder: Path, profile_name: str) -> VerifiedFile:
    """The encoding file gpt-oss needs in `folder`, fetched from ENCODINGS_URL_ENV or OpenAI;
    its fixes end with `llm-backend pull --profile <profile_name>`."""
    base = os.environ.get(ENCODINGS_URL_ENV) or HARMONY_ENCODINGS_URL
    return VerifiedFile(
        kind="encoding", check="tiktoken", name=HARMONY_ENCODING_FILE, folder=folder,
        filename=HARMONY_ENCODING_FILE, url=base.rstrip("/") + "/" + HARMONY_ENCODING_FILE,
        sha256=HARMONY_ENCODING_SHA256, size=HARMONY_ENCODING_BYTES,
        url_setting=ENCODINGS_URL_ENV if os.environ.get(ENCODINGS_URL_ENV) else "",
        folder_setting="TIKTOKEN_ENCODINGS_BASE",
        pull_command=f"{PULL_REMEDY} --profile {profile_name}",
    )


def encoding_folder(profile: Profile, runtime: Runtime) -> Path | None:
    """The host folder behind the profile's TIKTOKEN_ENCODINGS_BASE; None when it sets none.

    Raises ConfigError when the folder the server sees is not mounted from this machine.
    """
    base = profile.env.get("TIKTOKEN_ENCODINGS_BASE")
    if not base:
        return None
    folder = runtime.host_path(profile=profile, path=base)
    if folder is None:
        raise ConfigError(
            f"profile {profile.name!r} sets TIKTOKEN_ENCODINGS_BASE={base}, but no volume "
            f"mounts a host folder there, so {HARMONY_ENCODING_FILE} cannot be put in place",
            remedy=f'add "~/tiktoken_encodings:{base}" to volumes under '
            f"{profile_table(profile.name, 'docker')}",
        )
    return folder


def installed_version() -> str | None:
    """The installed SGLang's version if `import sglang` can find it (without importing torch)."""
    if importlib.util.find_spec("sglang") is None:
        return None
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- SGLang's preflight checks --------------------------------------------------------------


def check_installed(ctx: Context) -> CheckResult | None:
    """`sglang`: a native run needs the `sglang` package importable here."""
    if ctx.in_container:
        return None
    version = installed_version()
    if version:
        return result("sglang", "pass", f"sglang {version} is importable", version=version)
    return result("sglang", "fail", "the `sglang` Python package is not installed here",
                  "pip install 'sglang[all]' in this environment, or use --runtime docker")


def check_tiktoken(ctx: Context) -> CheckResult | None:
    """`tiktoken`: the encoding file gpt-oss's harmony tokenizer loads (model_facts).

    With TIKTOKEN_ENCODINGS_BASE set, harmony reads the file from that folder only, never
    downloads it, and checks its SHA-256 (openai/harmony `public_encodings.rs`), so a missing
    or wrong file is a failure; without it, harmony downloads the file itself at run time.
    """
    if not (hub.model_facts_for(ctx.profile).tiktoken_file
            or ctx.profile.env.get("TIKTOKEN_ENCODINGS_BASE")):
        return None
    try:
        folder = encoding_folder(ctx.profile, ctx.runtime)
    except ConfigError as error:
        return result("tiktoken", "fail", error.message, error.remedy)
    if folder is None:
        return result(
            "tiktoken", "warn",
            f"the profile does not set TIKTOKEN_ENCODINGS_BASE: gpt-oss's harmony tokenizer "
            f"downloads {HARMONY_ENCODING_FILE} from the internet when it first needs it, and "
            "fails offline",
            'set TIKTOKEN_ENCODINGS_BASE in the profile\'s env (and mount the folder for '
            f"Docker), then `{ctx.pull_command}`",
        )
    encoding = harmony_encoding(folder, ctx.profile.name)
    problem = encoding.folder_problem()
    if problem is not None:  # `pull` cannot fix this one: say what does
        return result("tiktoken", "fail", problem[0], problem[1])
    present, why = encoding.verify()
    if present:
        return result("tiktoken", "pass",
                      f"{HARMONY_ENCODING_FILE} in {folder} (SHA-256 checked)")
    unwritable = encoding.folder_problem(writing=True)
    if unwritable is not None:  # nor this one: a pull could not write there
        return result("tiktoken", "fail", f"{why}: gpt-oss's chat path fails without it",
                      unwritable[1])
    return result("tiktoken", "fail",
                  f"{why}: gpt-oss's chat path fails without it (TIKTOKEN_ENCODINGS_BASE is "
                  "set, so harmony will not download it)", ctx.pull_command)


# --- settings SGLang accepts at parse time and fails on at load ------------------------------

# Target architectures whose checkpoint carries its own MTP draft layers: EAGLE (or NEXTN)
# without a draft path loads the draft from the target (sglang 0.5.23
# sglang/srt/arg_groups/speculative_hook.py, `_handle_eagle_family`). Any other model needs a
# draft model.
MTP_ARCHITECTURES = frozenset({
    "DeepseekV32ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM",
    "Glm4MoeForCausalLM", "Glm4MoeLiteForCausalLM", "GlmMoeDsaForCausalLM",
    "BailingMoeForCausalLM", "BailingMoeV2ForCausalLM", "BailingMoeV2_5ForCausalLM",
    "MistralLarge3ForCausalLM", "PixtralForConditionalGeneration", "HYV3ForCausalLM",
    "HYV4ForCausalLM", "Qwen4ExpForConditionalGeneration",
})
# Repo-name hints for those architectures when the model's config.json is not here.
MTP_NAME_HINTS = ("deepseek-v3", "deepseek-r1", "deepseek-v4", "glm-4.5", "glm-4.6", "glm-5",
                  "ling-", "ring-", "mistral-large-3")
# Attention backends gpt-oss runs on (sglang 0.5.23 arg_groups/model_hook.py asserts one).
GPT_OSS_ATTENTION = frozenset({"triton", "trtllm_mha", "fa3", "fa4", "ascend", "intel_amx",
                               "intel_xpu", "aiter"})
# Tree drafting (topk > 1) with pages larger than one token: only these backends.
PAGE_TREE_BACKENDS = frozenset({"flashinfer", "fa3", "triton"})
# What the releases that read SGLANG_ENABLE_SPEC_V2 took as true: srt/environ.py EnvBool
# ("true", "1", "yes", "y"; any other value but false/0/no/n raised). 0.5.23 does not read it.
SPEC_V2_TRUE = frozenset({"true", "1", "yes", "y"})
# Attention backends whose spec v2 path refuses eagle_topk > 1 at 0.5.23:
# layers/attention/aiter_backend.py `_ensure_spec_v2_topk_supported` (NotImplementedError on
# the first draft extend); trtllm_mha is refused earlier, by the settings check.
NO_TREE_BACKENDS = frozenset({"aiter"})
# Flags the engine writes from profile keys (server_flags); given again in extra_args, one
# of the two values is silently ignored.
PROFILE_OWNED_FLAGS = (
    ("--model-path", "model"),
    ("--port", "port"),
    ("--host", "host"),
    ("--served-model-name", "served_model_name"),
    ("--context-length", "context_length"),
)
PROFILE_FLAG_ALIASES = {"--model-path": ("--model",)}


@dataclass(frozen=True)
class SettingProblem:
    """A combination SGLang accepts when it parses the flags and fails on when it loads."""

    status: str  # "fail" (it will crash) or "warn" (SGLang changes it, or it is slow)
    message: str
    fix: str
    source: str


def _has_flag(args: list[str], flag: str) -> bool:
    return any(token == flag or token.startswith(flag + "=") for token in args)


def _model_architecture(model: str) -> str | None:
    """`architectures[0]` of a local model folder's config.json, when there is one."""
    import json
    from pathlib import Path

    config = Path(model).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    architectures = data.get("architectures") if isinstance(data, dict) else None
    return str(architectures[0]) if isinstance(architectures, list) and architectures else None


def setting_problems(profile: Profile) -> list[SettingProblem]:
    """Every combination in `profile` that SGLang 0.5.23 accepts at parse time and then fails
    on (or silently changes) at load, each with its fix and where the rule comes from."""
    problems: list[SettingProblem] = []
    args = list(profile.extra_args)
    spec = profile.speculative
    algorithm = (flag_value(args, "--speculative-algorithm") or
                 (spec.algorithm if spec.enabled else "")).upper()
    draft = flag_value(args, "--speculative-draft-model-path") or (
        spec.draft_model if spec.enabled else None
    )
    attention = flag_value(args, "--attention-backend")
    architecture = _model_architecture(profile.model)
    name = profile.model.lower()
    gpt_oss = architecture == "GptOssForCausalLM" or "gpt-oss" in name
    if gpt_oss and attention and attention not in GPT_OSS_ATTENTION:
        problems.append(SettingProblem(
            "fail",
            f"gpt-oss does not run on --attention-backend {attention} (SGLang asserts one of "
            f"{', '.join(sorted(GPT_OSS_ATTENTION))})",
            "use --attention-backend triton (or fa3 on Hopper, trtllm_mha on Blackwell)",
            "sglang 0.5.23 arg_groups/model_hook.py (GptOssForCausalLM backend assertion)",
        ))
    for flag, key in PROFILE_OWNED_FLAGS:
        if any(_has_flag(args, name) for name in (flag, *PROFILE_FLAG_ALIASES.get(flag, ()))):
            problems.append(SettingProblem(
                "warn",
                f"{flag} in extra_args repeats the profile's `{key}`: the engine writes "
                f"{flag} from `{key}` too, and the last one given wins",
                f"set `{key}` in {profile_table(profile.name)} and remove {flag} from extra_args",
                "argparse: the last occurrence of a flag wins",
            ))
    problems += _rendezvous_problems(profile, args)
    if algorithm:
        problems += _speculative_problems(profile, algorithm, draft, attention, architecture)
    return problems


def _rendezvous_problems(profile: Profile, args: list[str]) -> list[SettingProblem]:
    """A --dist-init-addr in extra_args, held to the rules of `distributed.dist_init_addr`.

    Its syntax is the flag check's (SGLang 0.5.23 `srt/utils/network.py`
    NetworkAddress.parse: bracketed IPv6, port required). SGLang takes `[IPv6]:PORT`
    (sgl-project/sglang#3949 fixed #2892), but multi-node SGLang over IPv6 has been reported
    to hang before loading (#7478) and this tool's multi-node checks are IPv4-only, so IPv6
    is a warning here, as the `distributed` table refuses it.
    """
    problems: list[SettingProblem] = []
    value = flag_value(args, "--dist-init-addr")
    if value is None:
        return problems
    if profile.distributed.enabled:
        problems.append(SettingProblem(
            "warn",
            f"--dist-init-addr {value} in extra_args repeats `distributed.dist_init_addr` "
            f"({profile.distributed.dist_init_addr}): the last one given wins",
            f"remove --dist-init-addr from extra_args of {profile_table(profile.name)}",
            "argparse: the last occurrence of a flag wins",
        ))
    try:
        host, _ = parse_host_port(value)
    except ValueError:
        return problems  # the flag check says what is wrong with it
    if is_ipv6_literal(host):
        problems.append(SettingProblem(
            "warn",
            f"--dist-init-addr {value} is IPv6: SGLang 0.5.23 reads it, but multi-node SGLang "
            "over IPv6 has been reported to hang before loading, and llm-backend's multi-node "
            "checks (distributed.*) use IPv4",
            "use node 0's IPv4 address on the fast link (distributed.dist_init_addr), or check "
            "NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME on every node yourself",
            "sglang 0.5.23 srt/utils/network.py (NetworkAddress.parse); sgl-project/sglang#3949, "
            "#7478",
        ))
    return problems


def _speculative_problems(
    profile: Profile, algorithm: str, draft: str | None, attention: str | None,
    architecture: str | None,
) -> list[SettingProblem]:
    """Speculative settings SGLang 0.5.23 refuses or changes at load.

    eagle_topk > 1 (tree drafting), at 0.5.23: refused with trtllm_mha, with
    --speculative-use-rejection-sampling, and with --page-size > 1 off flashinfer/fa3/triton
    (arg_groups/speculative_hook.py `_handle_eagle_family`); stops at the first draft on aiter
    (layers/attention/aiter_backend.py `_ensure_spec_v2_topk_supported`); otherwise runs, on
    the V2 worker every EAGLE/EAGLE3/STANDALONE run uses (speculative/spec_info.py
    `create_worker`). SGLANG_ENABLE_SPEC_V2 is not read at 0.5.23 (not in srt/environ.py);
    set with topk > 1 it is a warning for older images, which failed at load (#14077).
    """
    problems: list[SettingProblem] = []
    args = list(profile.extra_args)
    spec = profile.speculative
    name = profile.model.lower()
    section = f"{profile_table(profile.name, 'speculative')}"
    topk = int(flag_value(args, "--speculative-eagle-topk") or spec.eagle_topk)
    steps = int(flag_value(args, "--speculative-num-steps") or spec.num_steps)
    draft_tokens = int(flag_value(args, "--speculative-num-draft-tokens") or spec.num_draft_tokens)
    if spec.enabled and _has_flag(args, "--speculative-algorithm"):
        problems.append(SettingProblem(
            "warn",
            "speculative decoding is set twice: in the speculative table and as "
            "--speculative-algorithm in extra_args (the last flag wins)",
            f"keep one: remove --speculative-* from extra_args or set enabled = false in {section}",
            "argparse: the last occurrence of a flag wins",
        ))
    if algorithm in ("EAGLE", "EAGLE3", "STANDALONE", "DFLASH") and not draft:
        mtp = (architecture in MTP_ARCHITECTURES if architecture
               else any(hint in name for hint in MTP_NAME_HINTS))
        if algorithm == "EAGLE" and mtp:
            pass  # the target's own MTP layers are the draft
        else:
            problems.append(SettingProblem(
                "fail",
                f"{algorithm} speculative decoding with no draft model: SGLang accepts it, then "
                "loads the target as its own draft and crashes at load"
                if algorithm in ("EAGLE", "EAGLE3") else
                f"{algorithm} speculative decoding needs a draft model "
                "(SGLang stops with \"requires setting --speculative-draft-model-path\")",
                f'set draft_model = "<an {algorithm} draft for {profile.model}>" in {section}, '
                "or enabled = false",
                "sgl-project/sglang#36528; arg_groups/speculative_hook.py (_handle_eagle_family, "
                "_handle_dflash)",
            ))
    if algorithm in ("EAGLE", "EAGLE3", "STANDALONE", "NEXTN"):
        # SGLang 0.5.23 runs EAGLE/EAGLE3/STANDALONE on its V2 (overlap) worker always
        # (srt/speculative/spec_info.py create_worker) and reads no SGLANG_ENABLE_SPEC_V2
        # (absent from srt/environ.py and the whole package); its V2 worker drafts trees
        # (topk > 1), so topk > 1 alone is no load failure there.
        spec_v2 = profile.env.get("SGLANG_ENABLE_SPEC_V2", "").strip().lower()
        if topk > 1 and spec_v2 in SPEC_V2_TRUE:
            # The releases that read it (late 2025) needed topk 1 for their spec v2 worker and
            # failed at load with a tensor shape error (#14077).
            problems.append(SettingProblem(
                "warn",
                f"eagle_topk = {topk} with SGLANG_ENABLE_SPEC_V2={spec_v2}: SGLang 0.5.23 does "
                "not read the variable (its V2 worker always runs and drafts trees), but the "
                "releases that read it need topk 1 for spec v2 and fail at load with a tensor "
                "shape error (#14077)",
                f"remove SGLANG_ENABLE_SPEC_V2 (SGLANG_ENABLE_SPEC_V2 = false in "
                f"{profile_table(profile.name, 'env')}) on 0.5.23; on an older image set "
                "eagle_topk = 1 "
                f"(and num_draft_tokens = num_steps + 1) in {section}",
                "sglang 0.5.23 srt/speculative/spec_info.py (create_worker: V2 always), "
                "srt/environ.py (no SGLANG_ENABLE_SPEC_V2); sgl-project/sglang#14077",
            ))
        if topk > 1 and attention in NO_TREE_BACKENDS:
            problems.append(SettingProblem(
                "fail",
                f"--attention-backend {attention} with eagle_topk = {topk}: SGLang's spec v2 "
                "path on it supports topk 1 only and stops at the first draft "
                "(\"AiterAttnBackend SPEC_V2 path currently supports topk <= 1 only\")",
                f"set eagle_topk = 1 (and num_draft_tokens = num_steps + 1) in {section}",
                "sglang 0.5.23 layers/attention/aiter_backend.py "
                "(_ensure_spec_v2_topk_supported)",
            ))
        if topk > 1 and attention == "trtllm_mha":
            problems.append(SettingProblem(
                "fail",
                f"--attention-backend trtllm_mha with eagle_topk = {topk}: SGLang refuses "
                "(\"trtllm_mha backend only supports topk = 1\")",
                f"set eagle_topk = 1 in {section}, or --attention-backend triton",
                "arg_groups/speculative_hook.py (_handle_eagle_family)",
            ))
        page_size = int(flag_value(args, "--page-size") or 1)
        if topk > 1 and page_size > 1 and attention and attention not in PAGE_TREE_BACKENDS:
            problems.append(SettingProblem(
                "fail",
                f"eagle_topk = {topk} with --page-size {page_size} on --attention-backend "
                f"{attention}: tree drafting with pages needs flashinfer, fa3 or triton",
                "use --page-size 1, or one of those attention backends",
                "arg_groups/speculative_hook.py (_PAGE_TREE_SPEC_BACKENDS)",
            ))
        if _has_flag(args, "--speculative-use-rejection-sampling") and topk != 1:
            problems.append(SettingProblem(
                "fail",
                "--speculative-use-rejection-sampling needs eagle_topk = 1",
                f"set eagle_topk = 1 in {section}",
                "arg_groups/speculative_hook.py (_handle_eagle_family)",
            ))
        if topk == 1 and draft_tokens != steps + 1:
            problems.append(SettingProblem(
                "warn",
                f"num_draft_tokens = {draft_tokens} with eagle_topk = 1: SGLang changes it to "
                f"num_steps + 1 = {steps + 1}",
                f"set num_draft_tokens = {steps + 1} in {section}",
                "arg_groups/speculative_hook.py (_handle_eagle_family)",
            ))
    dp_attention = _has_flag(args, "--enable-dp-attention")
    if algorithm in ("STANDALONE", "NGRAM") and dp_attention:
        problems.append(SettingProblem(
            "fail",
            f"{algorithm} speculative decoding does not support --enable-dp-attention",
            "remove --enable-dp-attention, or use EAGLE/EAGLE3",
            "sglang 0.5.23 arg_groups/speculative_hook.py (_handle_eagle_family, _handle_ngram)",
        ))
    if algorithm == "DFLASH" and dp_attention and not _has_flag(args, "--enable-dp-lm-head"):
        problems.append(SettingProblem(
            "fail",
            "DFLASH with --enable-dp-attention requires --enable-dp-lm-head",
            "add --enable-dp-lm-head to extra_args",
            "sglang 0.5.23 arg_groups/speculative_hook.py (_handle_dflash)",
        ))
    return problems


def check_settings(ctx: Context) -> CheckResult | None:
    """Settings SGLang accepts at parse time and fails on at load (see `setting_problems`)."""
    problems = setting_problems(ctx.profile)
    failing = [problem for problem in problems if problem.status == "fail"]
    shown = failing or problems
    if not shown:
        return result("settings", "pass", "no setting SGLang is known to fail on at load")
    return result(
        "settings", "fail" if failing else "warn",
        "; ".join(f"{problem.message} [{problem.source}]" for problem in shown),
        "; ".join(problem.fix for problem in shown),
    )


def check_flags(ctx: Context) -> CheckResult | None:
    """SGLang's parser (or the flag table) on the profile's flags, in the same report as every
    other preflight problem (other servers' flags named with SGLang's)."""
    from llm_backend.engines.sglang_flags import check_profile_flags, fix_text

    engine = ctx.engine
    assert isinstance(engine, SGLangEngine)
    flags = check_profile_flags(
        ctx.profile, engine.server_flags(profile=ctx.profile, for_container=ctx.in_container)
    )
    notes = f" ({'; '.join(flags.notes)})" if flags.notes else ""
    if flags.problems:
        return result(
            "flags", "fail",
            "; ".join(problem.message for problem in flags.problems)
            + f" (checked with {flags.source}, sglang {flags.sglang_version})",
            f"in `extra_args` of {profile_table(ctx.profile.name)}: "
            + (fix_text(flags.problems, ctx.profile.name) or "remove or correct those flags"),
        )
    if flags.warnings:
        return result(
            "flags", "warn",
            "; ".join(problem.message for problem in flags.warnings) + notes,
            f"pin docker.image to lmsysorg/sglang:v{flags.sglang_version}, or pull the image so "
            "its own parser checks the flags",
        )
    return result("flags", "pass", flags.summary + notes)


def check_model_names(profile: Profile, *, in_container: bool) -> None:
    """Raise ConfigError for a `model` / `speculative.draft_model` that SGLang can neither
    download nor load: a relative value with a `/` that is not a Hub id (`org/name`) and,
    natively, not an existing path (`a/b/c`, `org/my model`).

    SGLang downloads a value that is not a local folder from the Hub (0.5.23
    `weight_utils.py` `download_weights_from_hf`), and huggingface_hub's `validate_repo_id`
    (`utils/_validators.py`) takes only `name` or `namespace/name`; absolute, `~` and `./`
    paths are left to the loader, except a relative one (`./m`, `../x`) that does not exist
    natively; a value the validator refuses (`-rf/x`: a leading `-`, which would also read
    as a flag) is refused here, naming it.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id

    named = [("model", profile.model)]
    if profile.speculative.enabled and profile.speculative.draft_model:
        named.append(("speculative.draft_model", profile.speculative.draft_model))
    for key, value in named:
        if value.startswith(("/", "~")) or (in_container and value.startswith(".")):
            continue
        if not in_container and Path(value).exists():
            continue
        if not value.startswith("."):
            try:
                validate_repo_id(value)
            except HFValidationError:
                pass
            else:
                continue
        raise ConfigError(
            f"profile {profile.name!r}: {key} = {value!r} is neither a Hub id (org/name) "
            "nor an existing local path",
            remedy=f'set {key} to a Hub id such as "Qwen/Qwen3-8B", or to the absolute path '
            "of a local model folder",
        )


class SGLangEngine(Engine):
    """SGLang's `launch_server`: /health is 503 until warmup is done, then 200."""

    name = "sglang"
    # /server_info since 2026; before, only /get_server_info, which still answers
    # (srt/entrypoints/http_server.py).
    info_paths = ("/server_info", "/get_server_info")
    needs_gpu = True
    log_markers = LOG_MARKERS
    # Runs a 1-token generation and answers 503 when the scheduler gave nothing within
    # SGLANG_HEALTH_CHECK_TIMEOUT (20 s), so a wedged scheduler shows; a plain /health can
    # skip the generation (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION). Source: sglang 0.5.23
    # `srt/entrypoints/http_server.py` (health_generate) and `srt/environ.py`.
    liveness_path = "/health_generate"

    def launcher(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        """What runs before the flags: the profile's `command`, else python -m launch_server."""
        if profile.command:
            return list(profile.command)
        python = CONTAINER_PYTHON if for_container else profile.python
        return [python, "-m", LAUNCH_MODULE]

    def server_flags(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        """SGLang's own flags for this profile, in the order its docs write them."""
        flags = ["--model-path", profile.model]
        if profile.served_model_name:
            flags += ["--served-model-name", profile.served_model_name]
        if profile.context_length:
            flags += ["--context-length", str(profile.context_length)]
        spec = profile.speculative
        if spec.enabled:
            flags += ["--speculative-algorithm", spec.algorithm]
            if spec.draft_model:
                flags += ["--speculative-draft-model-path", spec.draft_model]
            flags += [
                "--speculative-num-steps", str(spec.num_steps),
                "--speculative-eagle-topk", str(spec.eagle_topk),
                "--speculative-num-draft-tokens", str(spec.num_draft_tokens),
            ]
        flags += self.distributed_flags(profile=profile)
        flags += list(profile.extra_args)
        host = "0.0.0.0" if for_container else bind_host(profile.host)
        flags += ["--host", host, "--port", str(profile.port)]
        return flags

    def distributed_flags(self, *, profile: Profile) -> list[str]:
        """Multi-node tensor parallelism: the same flags on every node except --node-rank.

        --tp-size is the total over all nodes (0.5.23 `arg_groups/fields/parallel.py`; the
        multi-node docs run `--tp 16 --nnodes 2` for two 8-GPU nodes).
        """
        dist = profile.distributed
        if not dist.enabled:
            return []
        return [
            "--tp-size", str(dist.tp_size),
            "--nnodes", str(dist.nnodes),
            "--node-rank", str(dist.node_rank),
            "--dist-init-addr", str(dist.dist_init_addr),
        ]

    def launch_env(self, *, profile: Profile, host_ip: str | None) -> dict[str, str]:
        """SGLANG_HOST_IP pins the address SGLang advertises to the other ranks (0.5.23
        `utils/network.py` reads SGLANG_HOST_IP, then HOST_IP, before guessing: a guess can
        be the Wi-Fi address, and both ranks then hang after "Custom allreduce is disabled
        because this process group spans across nodes"). NCCL and Gloo take the interface
        by name (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME). The profile's own `env` wins."""
        dist = profile.distributed
        if not dist.enabled or not dist.interface:
            return {}
        env = {"NCCL_SOCKET_IFNAME": dist.interface, "GLOO_SOCKET_IFNAME": dist.interface}
        if host_ip:
            env["SGLANG_HOST_IP"] = host_ip
        return env

    def version_from_info(self, *, info: dict[str, Any]) -> str | None:
        """/server_info carries `version` (0.5.23 `entrypoints/http_server.py`)."""
        version = info.get("version")
        return str(version) if version else None

    def installed_version(self, *, profile: Profile) -> str | None:
        """Natively: the sglang package's version; in Docker: the image's tag, as `v0.5.23`
        tags name the version (lmsysorg/sglang:v0.5.23); None when neither tells."""
        from llm_backend.runtimes import get_runtime

        if get_runtime(profile.runtime).in_container:
            from llm_backend.runtimes.compose import image_for

            try:
                image = image_for(profile)
            except ConfigError:
                return None
            tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
            match = re.match(r"v?(\d+\.\d+\.\d+\S*)", tag)
            return match.group(1) if match else None
        return installed_version()

    def health_role(self, *, profile: Profile) -> str:
        """Rank >= 1 serves no API: once its schedulers are ready it starts a dummy server
        whose /health, /health_generate and /ping always answer 200 (0.5.23
        `entrypoints/engine.py` calls `launch_dummy_health_check_server` from
        `utils/common.py` for `node_rank >= 1`). So 200 there means "my weights are in"."""
        return "alive" if profile.distributed.node_rank >= 1 else "ready"

    # 0.5.23 `entrypoints/v1_loads.py`: GET /v1/loads -> {"loads": [per DP rank
    # {"num_running_reqs", "num_waiting_reqs", ...}]} (`managers/load_snapshot.py`).
    load_path = "/v1/loads?include=core"

    def in_flight_requests(self, *, body: Any) -> int | None:
        loads = body.get("loads") if isinstance(body, dict) else None
        if not isinstance(loads, list):
            return None
        return sum(
            int(load.get("num_running_reqs", 0)) + int(load.get("num_waiting_reqs", 0))
            for load in loads
            if isinstance(load, dict)
        )

    def __init__(self) -> None:
        self._moe_layers: int | None = None
        self._mem_fraction_static: float | None = None

    def build_argv(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        # The reader made after this knows the model's MoE layer count (shuffle progress)
        # and the profile's --mem-fraction-static (for the out-of-memory remedy).
        self._moe_layers = hub.model_facts_for(profile).moe_layers or moe_layers_of(profile.model)
        fraction = flag_value(profile.extra_args, "--mem-fraction-static")
        try:
            self._mem_fraction_static = float(fraction) if fraction else None
        except ValueError:
            self._mem_fraction_static = None
        return [
            *self.launcher(profile=profile, for_container=for_container),
            *self.server_flags(profile=profile, for_container=for_container),
        ]

    def log_reader(self) -> LogReader:
        return SGLangLogReader(
            moe_layers=self._moe_layers, mem_fraction_static=self._mem_fraction_static
        )

    def check_profile(self, *, profile: Profile, for_container: bool = False) -> None:
        check_model_names(profile, in_container=for_container)
        failing = [problem for problem in setting_problems(profile) if problem.status == "fail"]
        if failing:
            raise ConfigError(
                f"profile {profile.name!r}: SGLang would accept these settings and then fail "
                "at load: " + "; ".join(problem.message for problem in failing),
                remedy="; ".join(problem.fix for problem in failing),
                failure_class="bad_flag",
            )
        if for_container or profile.command:
            if for_container and not (profile.docker.image or profile.docker.image_aarch64):
                raise ConfigError(
                    f"profile {profile.name!r} runs SGLang in Docker but names no image",
                    remedy=f'set docker.image = "lmsysorg/sglang:v0.5.23" in '
                    f"{profile_table(profile.name, 'docker')}",
                )
            return
        if shutil.which(profile.python) is None:
            raise ConfigError(
                f"profile {profile.name!r}: python {profile.python!r} was not found, "
                "so SGLang cannot run natively",
                remedy="set `python` to an interpreter with sglang installed "
                "(pip install sglang), or start with --runtime docker",
            )

    def exit_failure(self, *, exit_code: int | None, log_tail: list[str]) -> Failure:
        if exit_code in (-9, 137) and any(
            EXCEPTION_LINE.match(strip_prefix(line)[1].strip()) for line in log_tail
        ):
            # After an error SGLang SIGKILLs its own tree (`kill_process_tree`, 0.5.23
            # `utils/common.py`); with no error in the log, the kernel's OOM killer did.
            return Failure(
                failure_class="child_crash",
                message=f"SGLang killed its own process tree (exit code {exit_code}); "
                "a worker failed or the kernel's OOM killer struck",
                remedy="read `llm-backend logs -n 200` for the traceback; check `dmesg` "
                "for the OOM killer",
                line=log_tail[-1] if log_tail else None,
            )
        return super().exit_failure(exit_code=exit_code, log_tail=log_tail)

    def spec_stats_from_info(self, *, info: dict[str, Any]) -> SpecStats | None:
        return spec_stats_from_server_info(info)

    def download_paths(self, *, profile: Profile, runtime: Runtime) -> list[Path]:
        """The Hub cache folders of the model and the draft: SGLang downloads what is missing
        there itself, with its progress bars switched off (`tqdm_class=DisabledTqdm` in
        sglang 0.5.23 `weight_utils.py` `download_weights_from_hf`), so only the bytes landing
        in these folders show that a download goes on.
        """
        return [source.storage_folder for source in self.artifacts(profile=profile, runtime=runtime)
                if isinstance(source, HubRepository)]

    def artifacts(self, *, profile: Profile, runtime: Runtime) -> list[Source]:
        """The model and draft model from the Hub (only what SGLang loads) and gpt-oss's encoding.

        Local model paths are the user's: nothing is pulled for them. Raises ConfigError for
        a model that is neither (`check_model_names`).
        """
        check_model_names(profile, in_container=runtime.in_container)
        sources: list[Source] = list(
            hub.hub_sources(profile, runtime, self.hub_models(profile=profile)))
        folder = encoding_folder(profile, runtime)
        if folder is not None:
            sources.append(harmony_encoding(folder, profile.name))
        return sources

    def check_flags(self, *, profile: Profile, for_container: bool = False) -> str | None:
        """SGLang's own parser (in the image or the installed sglang), else the flag table."""
        from llm_backend.engines.sglang_flags import check_profile_flags, raise_for_problems

        check = check_profile_flags(
            profile, self.server_flags(profile=profile, for_container=for_container)
        )
        raise_for_problems(check, profile)
        notes = f" ({'; '.join(check.notes)})" if check.notes else ""
        warnings = "".join(f"; warning: {problem.message}" for problem in check.warnings)
        return check.summary + notes + warnings

    def checks(self) -> tuple[Check, ...]:
        return (
            Check("sglang", check_installed),
            Check("flags", check_flags, failure_class="bad_flag"),
            Check("settings", check_settings, failure_class="bad_flag"),
            Check("hf_token", hub.check_hf_token),
            Check("model_cache", hub.check_model_cache),
            Check("tiktoken", check_tiktoken),
        )

    def memory_need(self, *, profile: Profile) -> MemoryNeed | None:
        """From the profile's `model_facts`; None when it gives no GPU memory need."""
        facts = hub.model_facts_for(profile)
        gpu = facts.bytes_of("min_gpu_memory")
        if gpu is None:
            return None
        return MemoryNeed(
            gpu_bytes=gpu,
            unified_bytes=facts.bytes_of("min_unified_memory"),
            load_peak_bytes=facts.bytes_of("load_peak_memory"),
            # SGLang's gpt-oss loader keeps about a checkpoint's worth of host pages.
            host_staging_bytes=facts.bytes_of("download_size"),
        )

    def api_key_files(self, *, profile: Profile, api_key: str) -> dict[str, str]:
        """SGLang takes the key from a YAML file named by `--config` (keys are its flags'
        names: sglang 0.5.23 `server_args.py` `--config`, `utils/server_args_config_parser.py`
        `ConfigArgumentMerger`); /health, /ready and /metrics stay public
        (`utils/auth.py`)."""
        if "--config" in profile.extra_args:
            raise ConfigError(
                f"profile {profile.name!r} passes its own --config in extra_args and has an "
                "API key: SGLang takes one config file only",
                remedy="move the settings of that file into the profile, or put api_key in it "
                "and remove api_key_file",
            )
        import yaml

        return {SGLANG_SECRETS_FILE: yaml.safe_dump({"api_key": api_key})}

    def api_key_args(self, *, profile: Profile, paths: dict[str, str]) -> list[str]:
        return ["--config", paths[SGLANG_SECRETS_FILE]]

    def hub_models(self, *, profile: Profile) -> tuple[str, ...]:
        repos = [profile.model]
        if profile.speculative.enabled and profile.speculative.draft_model:
            repos.append(profile.speculative.draft_model)
        return tuple(repo for repo in repos if hub.is_hub_id(repo))

    def native_version(self) -> str | None:
        return installed_version()

    def native_readiness(self, *, hardware: HardwareDescription) -> tuple[bool, str]:
        version = hardware.engine_versions.get(self.name) or hardware.sglang_version
        if version:
            return True, f"SGLang {version} importable"
        return False, "SGLang not installed for native runs"

    def line_time(self, line: str) -> datetime | None:
        """`[2025-03-08 12:29:21 TP0] ...` -> that time (SGLang's logging format)."""
        stamp, _ = strip_prefix(line)
        if stamp is None:
            return None
        try:
            return datetime.fromisoformat(stamp.replace("T", " "))
        except ValueError:
            return None
