#!/usr/bin/env bash
# Build `llm-backend/python:local`, a minimal image with this machine's python3 (standard
# library only) and curl, without pulling anything: `docker import` of a root filesystem made
# from the host's own files. The Docker tests run the SGLang stand-in (tests/sglang_standin.py,
# standard library only) in it, the way the real SGLang image runs `python3 -m sglang...`.
#
# Environment (all optional):
#   PYTHON_BIN  the interpreter to copy (default: /usr/bin/python3, the distribution's)
#   IMAGE_TAG   image tag (default: llm-backend/python:local)
#   DOCKER      docker CLI (default: docker)
set -euo pipefail

IMAGE_TAG="${IMAGE_TAG:-llm-backend/python:local}"
DOCKER="${DOCKER:-docker}"
PYTHON_BIN="$(readlink -f "${PYTHON_BIN:-/usr/bin/python3}")"

die() {
    echo "error: $1" >&2
    echo "fix: $2" >&2
    exit 1
}

[ -x "$PYTHON_BIN" ] || die "no python at $PYTHON_BIN" "apt-get install -y python3 (or set PYTHON_BIN)"
command -v curl >/dev/null || die "curl is not installed (the healthcheck uses it)" \
    "apt-get install -y curl"
"$DOCKER" version >/dev/null 2>&1 || die "the Docker engine does not answer" \
    "start dockerd (see docs/docker.md), then run this script again"

STDLIB="$("$PYTHON_BIN" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
DYNLOAD="$("$PYTHON_BIN" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload"))')"
VERSION="$("$PYTHON_BIN" -c 'import platform; print(platform.python_version())')"

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

copy_libraries_of() {
    local library
    for library in $(ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
        if [ ! -e "$ROOTFS$library" ]; then
            mkdir -p "$ROOTFS$(dirname "$library")"
            cp -L "$library" "$ROOTFS$library"
        fi
    done
}

install -D -m 0755 "$PYTHON_BIN" "$ROOTFS$PYTHON_BIN"
copy_libraries_of "$PYTHON_BIN"
ln -sf "$PYTHON_BIN" "$ROOTFS/usr/bin/python3"
# The standard library, without third-party packages, its own tests and GUI modules.
mkdir -p "$ROOTFS$STDLIB"
tar -C "$STDLIB" -c \
    --exclude=./site-packages --exclude=./dist-packages --exclude=./test \
    --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip . \
    | tar -C "$ROOTFS$STDLIB" -x
for module in "$DYNLOAD"/*.so; do
    copy_libraries_of "$module"
done
install -D -m 0755 "$(command -v curl)" "$ROOTFS/usr/bin/curl"
copy_libraries_of "$(command -v curl)"
mkdir -p "$ROOTFS/tmp" "$ROOTFS/etc" "$ROOTFS/root"
chmod 1777 "$ROOTFS/tmp"
echo "root:x:0:0:root:/root:/bin/false" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"
echo "127.0.0.1 localhost" >"$ROOTFS/etc/hosts"

OLD_IMAGE_ID="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE_TAG" 2>/dev/null || true)"
tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change "LABEL org.opencontainers.image.title=python" \
    --change "LABEL org.opencontainers.image.version=$VERSION" \
    --change 'CMD ["/usr/bin/python3"]' \
    - "$IMAGE_TAG" >/dev/null
NEW_IMAGE_ID="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE_TAG")"
if [ -n "$OLD_IMAGE_ID" ] && [ "$OLD_IMAGE_ID" != "$NEW_IMAGE_ID" ]; then
    "$DOCKER" image rm "$OLD_IMAGE_ID" >/dev/null 2>&1 || true
fi

# Prove it: the interpreter starts, and the modules the stand-in needs import.
"$DOCKER" run --rm --network none "$IMAGE_TAG" /usr/bin/python3 -c \
    'import argparse, ctypes, http.server, json, subprocess, threading' \
    || die "the image $IMAGE_TAG was built but python3 does not run in it" \
        "check \`ldd $PYTHON_BIN\` and the lib-dynload modules"
SIZE="$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE_TAG")"
echo "built $IMAGE_TAG ($((SIZE / 1024 / 1024)) MiB): python $VERSION from $PYTHON_BIN, curl"
