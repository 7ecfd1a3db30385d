#!/usr/bin/env bash
# The whole check: lint, types, and the test suite against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/pytest -ra "$@"
