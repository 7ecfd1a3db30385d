"""Secrets: the server's API key, secret environment values, and keeping both out of sight.

The API key comes from `LLM_BACKEND_API_KEY` or the profile's `api_key_file` (a file only its
owner can read). It reaches the server through a file of ours (mode 0600), never through a
command line that `ps` shows; clients of ours (`chat`, `bench`, `status`, the monitor) send
it as `Authorization: Bearer`. Environment values whose names look secret (`*TOKEN*`,
`*KEY*`, `*SECRET*`, `*PASSWORD*`, ...) are masked wherever they are shown and passed to
Docker Compose through the environment of `docker compose`, not written into its YAML.

Errors: ConfigError naming the file or the flag, with the chmod / setting that fixes it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_backend.errors import ConfigError
from llm_backend.net import url_host
from llm_backend.toml_names import profile_table

if TYPE_CHECKING:
    from llm_backend.config import Profile

API_KEY_ENV = "LLM_BACKEND_API_KEY"
MASK = "********"
# Whole words of the name only: TIKTOKEN_ENCODINGS_BASE (a folder) and TOKENIZERS_PARALLELISM
# are not secrets; HF_TOKEN, OPENAI_API_KEY and AWS_SECRET_ACCESS_KEY are.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|KEY|APIKEY|ACCESSKEY|SECRET|PASSWORD|PASSWD|PASS|PAT|CREDENTIALS?|CREDS|"
    r"AUTH|COOKIE|SESSION|PRIVATE)(?:_|$)",
    re.IGNORECASE,
)
# The secret-bearing flags SGLang, llama.cpp and vLLM know; argparse (SGLang, vLLM) also takes
# any unique prefix of a long flag (`--api` for `--api-key`), so a prefix of one is refused too.
SECRET_FLAG_NAMES = ("--api-key", "--admin-api-key", "--hf-token", "--ssl-keyfile-password")
SECRET_PREFIX_MIN = 5  # `--api` and longer; `--a` alone names nothing
# Short spellings of secret flags, which no pattern of words catches: llama.cpp's `-hft`
# (`{"-hft", "--hf-token"}` in common/arg.cpp).
SECRET_SHORT_FLAGS = ("-hft",)
# Flags that carry a secret on the command line, where every local user can read it
# (`ps`, /proc/PID/cmdline): SGLang's `--api-key`/`--admin-api-key`, llama.cpp's `--api-key`,
# vLLM's `--api-key`, and any `--hf-token`-style flag.
# Whole words of the flag only: `--skip-tokenizer-init` and `--max-total-tokens` carry no
# secret; a flag ending in `-file` or `-path` names where one is, not the secret itself.
SECRET_FLAG = re.compile(
    r"^--?(?:[a-z0-9]+[-_])*(?:api[-_]key|token|secret|password|passwd)(?:[-_][a-z0-9]+)*"
    r"(?<![-_]file)(?<![-_]path)(?:=|$)",
    re.IGNORECASE,
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_secret_name(name: str) -> bool:
    """True for environment names that hold secrets: HF_TOKEN, OPENAI_API_KEY, DB_PASSWORD."""
    return bool(SECRET_NAME.search(name))


def is_secret_env(name: str, value: object) -> bool:
    """True for an environment variable that holds a secret, by its name (`is_secret_name`) or
    by its value: a token shape (`hf_...`, `sk-...`, `ghp_...`) or a URL with a password
    (`https://user:pass@host`), whatever the variable is called. When unsure it is a secret:
    the cost of hiding a plain value is nil."""
    if is_secret_name(name):
        return True
    text = str(value) if value is not None else ""
    return bool(SECRET_VALUE.search(text) or URL_PASSWORD.search(text))


def masked_env(env: dict[str, str]) -> dict[str, str]:
    """The environment as it may be shown: secret values replaced by a mask."""
    return {name: MASK if is_secret_env(name, value) and value else value
            for name, value in env.items()}


def mask_flat(values: dict[str, Any]) -> dict[str, Any]:
    """`profiles show`'s dotted keys with the values of secret `env.NAME` keys masked, and an
    `api_key_file` that is no path (a key pasted in its place)."""
    masked: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        secret = len(parts) >= 2 and parts[-2] == "env" and is_secret_env(parts[-1], value)
        pasted_key = key == "api_key_file" and isinstance(value, str) and not looks_like_path(
            value)
        masked[key] = MASK if (secret or pasted_key) and value else value
    return masked


def looks_like_path(value: str) -> bool:
    """Whether an `api_key_file` value names a file (`/`, `~`) rather than being the key."""
    return "/" in value or value.startswith("~")


def hides_value(key: str, value: Any) -> bool:
    """Whether the value of the dotted config key `key` must not be shown (in an error, for
    instance): under a secret name (`env.HF_TOKEN`), or an `api_key_file` that is no path
    (a key pasted in its place)."""
    parts = key.split(".")
    if parts[-1] == "api_key_file":
        return not (isinstance(value, str) and looks_like_path(value))
    return any(is_secret_name(part) for part in parts)


def secret_texts(key: str, value: Any) -> list[str]:
    """The strings in config key `key`'s `value` that must not be shown: all of them for a
    hidden key (`hides_value`), those under secret names for a table (`env`)."""
    if hides_value(key, value):
        items = value if isinstance(value, list | tuple) else [value]
        return [str(item) for item in items if item not in (None, "")]
    if isinstance(value, dict):
        return [text for name, item in value.items()
                for text in secret_texts(f"{key}.{name}", item)]
    # Whatever the key: a token-shaped value or a URL with a password (`is_secret_env`).
    items = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in items
            if isinstance(item, str) and is_secret_env("", item)]


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret (as written and as its repr) replaced by MASK."""
    for secret in secrets:
        for form in sorted({repr(secret), secret}, key=len, reverse=True):
            if len(form) >= 4:
                text = text.replace(form, MASK)
    return text


def check_extra_args(profile_name: str, extra_args: list[str]) -> None:
    """Refuse secrets in `extra_args`: the command line is readable by every local user."""
    for argument in extra_args:
        flag_name = argument.split("=", 1)[0].lower()
        abbreviated = len(flag_name) >= SECRET_PREFIX_MIN and flag_name.startswith("--") and any(
            name.startswith(flag_name) for name in SECRET_FLAG_NAMES)
        if SECRET_FLAG.match(argument) or abbreviated or flag_name in SECRET_SHORT_FLAGS:
            flag = argument.split("=", 1)[0]
            raise ConfigError(
                f"profile {profile_name!r}: extra_args has {flag}, which would put a secret on "
                "the server's command line (visible to every user in `ps`) and in the state "
                "record",
                remedy=f"remove {flag} from extra_args; put the key in a file only you can read "
                f"and set api_key_file = \"PATH\" in {profile_table(profile_name)} (or export "
                f"{API_KEY_ENV}); for tokens use the profile's env, which is kept out of sight",
            )


ENV_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.+)$", re.DOTALL)
# Token shapes that are secrets whatever they are called: Hugging Face (`hf_`), OpenAI and
# Anthropic style (`sk-`), GitHub (`ghp_`, `github_pat_`), Slack (`xox?-`), AWS key ids.
SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[A-Z0-9]{16})"
)


# A URL that carries a password (`scheme://user:pass@host`): a proxy or a database address.
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


def _json_secret_names(value: Any) -> list[str]:
    """Keys with secret names and a non-empty value anywhere in parsed JSON."""
    found: list[str] = []
    if isinstance(value, dict):
        for name, item in value.items():
            if is_secret_name(str(name)) and isinstance(item, str | int) and item != "":
                found.append(str(name))
            found.extend(_json_secret_names(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_json_secret_names(item))
    return found


def argv_secret(argument: str) -> str | None:
    """What in one argv item looks like a secret (`HF_TOKEN=...`, a JSON `"hf_token"` key, an
    `hf_...`/`sk-...` token), described without its value; None when nothing does."""
    assignment = ENV_ASSIGNMENT.match(argument)
    if assignment and is_secret_name(assignment["name"]):
        return f"{assignment['name']}=..."
    if argument.lstrip().startswith(("{", "[")):
        try:
            names = _json_secret_names(json.loads(argument))
        except ValueError:
            names = []
        if names:
            return f"a JSON value with key {names[0]!r}"
    if SECRET_VALUE.search(argument):
        return "a value shaped like an access token"
    return None


def check_argv_secrets(profile_name: str, key: str, argv: list[str]) -> None:
    """Refuse a secret anywhere in `command` or `extra_args`: argv is readable by every local
    user (`ps`) and is kept in the state record. The error never shows the value."""
    for index, argument in enumerate(argv):
        found = argv_secret(argument)
        if found:
            raise ConfigError(
                f"profile {profile_name!r}: {key} item {index + 1} holds {found}, which would "
                "put a secret on the server's command line (visible to every user in `ps`) and "
                "in the state record",
                remedy=f"remove it from {key}; put tokens in {profile_table(profile_name, 'env')} "
                "(kept out of sight) and the API key in a file named by api_key_file",
            )


def read_api_key(profile: Profile) -> str | None:
    """The API key for the profile's server: LLM_BACKEND_API_KEY, else `api_key_file`.

    The file must be a regular file owned by the running user (or root) that nobody else can
    read; its first line that is not empty and not a `#` comment is the key.
    """
    from_env = os.environ.get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    if not profile.api_key_file:
        return None
    path = Path(os.path.expanduser(profile.api_key_file))
    try:
        info = path.stat()
    except OSError as error:
        if not looks_like_path(profile.api_key_file):  # perhaps the key itself: never echoed
            raise ConfigError(
                f"profile {profile.name!r}: api_key_file ({MASK}, not shown) is no readable "
                "file; it must be the path of a file that holds the key, not the key",
                remedy="umask 077; echo KEY > ~/.config/llm-backend/api-key, then set "
                f'api_key_file = "~/.config/llm-backend/api-key" in {profile_table(profile.name)}',
            ) from None
        raise ConfigError(
            f"profile {profile.name!r}: api_key_file {path} cannot be read: {error.strerror}",
            remedy=f"write the key into {path} (umask 077; echo KEY > {path}), or fix "
            "api_key_file",
        ) from error
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"profile {profile.name!r}: api_key_file {path} is not a regular file",
                          remedy="point api_key_file at a file that holds the key")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"profile {profile.name!r}: api_key_file {path} belongs to uid {info.st_uid}, "
            "not to you",
            remedy=f"chown {os.geteuid()} {path} (or use a key file of your own)",
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"profile {profile.name!r}: api_key_file {path} is readable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            remedy=f"chmod 600 {path}",
        )
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            return key
    raise ConfigError(f"profile {profile.name!r}: api_key_file {path} holds no key",
                      remedy=f"write the key as the first line of {path}")


SECRETS_DIR = "secrets"  # in the state dir, 0700: the files that carry the key to the server
CLIENT_KEY_FILE = "api-key"  # the key itself, for llm-backend's own requests


def client_headers(state_root: Path | None = None) -> dict[str, str]:
    """`Authorization: Bearer KEY` for requests to the server this state dir started, when it
    was started with a key (the 0600 copy `start` keeps next to the server's key files)."""
    if state_root is None:
        from llm_backend.state import state_dir

        state_root = state_dir()
    path = state_root / SECRETS_DIR / CLIENT_KEY_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(descriptor, encoding="utf-8") as handle:
        key = handle.read().strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def auth_headers(profile: Profile) -> dict[str, str]:
    """`Authorization: Bearer KEY` when the profile's server has a key, else nothing."""
    key = read_api_key(profile)
    return {"Authorization": f"Bearer {key}"} if key else {}


def exposed_without_key(profile: Profile, listen_host: str | None = None) -> bool:
    """True when the server listens beyond loopback (`listen_host`: where clients reach it,
    the profile's host by default) and has no API key."""
    host = (listen_host or profile.host).strip("[]")
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return False
    return read_api_key(profile) is None


def exposure_warning(profile: Profile, listen_host: str | None = None) -> str:
    """What to tell the user about a server open to the network without a key."""
    host = listen_host or profile.host
    return (
        f"{profile.name} listens on {url_host(host)}:{profile.port} without an API key: "
        "anyone "
        "who can reach this machine can use the model (llama.cpp also allows every CORS "
        f"origin then); set api_key_file = \"PATH\" in {profile_table(profile.name)} or export "
        f"{API_KEY_ENV}, or listen on 127.0.0.1"
    )


def write_secret_file(path: Path, content: str) -> Path:
    """Write `content` to `path` readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(descriptor, content.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    return path
