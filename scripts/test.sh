#!/usr/bin/env bash
# The whole check: lint, types, and the test suite against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
SGLANG_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/llm-backend/sglang-parser-venv"
# SGLang's real parser, for the flag-validation tests (made by scripts/setup.sh --test).
if [[ -z "${SGLANG_PARSER_PYTHON:-}" && -x "$SGLANG_VENV/bin/python" ]]; then
  export SGLANG_PARSER_PYTHON="$SGLANG_VENV/bin/python"
fi
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/pytest -ra "$@"
