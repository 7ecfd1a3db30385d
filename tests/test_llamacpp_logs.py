"""llama-server's own refusals of its command line (common/arg.cpp at the pinned llama.cpp),
plain and through Docker Compose, each read as bad_flag with the line that said it."""

from __future__ import annotations

import pytest

from llm_backend.diagnose import diagnose_lines

REFUSALS = [
    "error: invalid argument: 0.0.0.0",
    "error: invalid argument: -hf",
    'error while handling argument "--ctx-size": stoi',
    'error while handling environment variable "LLAMA_ARG_CTX_SIZE": stoi',
    "error: unknown value for --flash-attn: 'yes'",
    "error: --model is required",
    "error: invalid value for n_parallel",
]


@pytest.mark.parametrize("line", REFUSALS)
@pytest.mark.parametrize("prefix", ["", "llama-server  | ", "llama-server-1  | "])
def test_every_refusal_is_bad_flag(line: str, prefix: str) -> None:
    result = diagnose_lines(["load_backend: loaded CPU backend", prefix + line], "llamacpp")
    assert result.failure is not None
    assert result.failure.failure_class == "bad_flag"
    assert result.failure.line == line


def test_a_restart_loop_is_noticed_after_the_refusal() -> None:
    lines = []
    for _ in range(2):
        lines += ["llama-server  | error: invalid argument: 0.0.0.0",
                  "llama-server exited with code 1 (restarting)"]
    result = diagnose_lines(lines, "llamacpp")
    assert result.failure is not None and result.failure.failure_class == "bad_flag"
    assert result.notes and "2 time(s)" in result.notes[0]
