"""What the CLI prints when its output is piped or captured (no terminal): every value whole."""

from __future__ import annotations

import json

from tests.conftest import Env

LONG_DESCRIPTION = (
    "a description long enough that an eighty-column layout would cut it with an ellipsis "
    "or wrap it in the middle: it ends here"
)


def test_tables_piped_keep_every_value_whole(world: Env) -> None:
    world.env["COLUMNS"] = "40"  # a narrow terminal's value; a pipe has no width to keep to
    world.write_config(f"""
[profiles.mine]
extends = "smollm2-cpu"
description = "{LONG_DESCRIPTION}"
""")
    listing = world.run("profiles", check=True).stdout
    row = next(line for line in listing.splitlines() if " mine " in line)
    assert LONG_DESCRIPTION in row, listing
    assert "…" not in listing

    shown = world.run("profiles", "show", "mine", check=True).stdout
    values = json.loads(world.run("profiles", "show", "mine", "--json", check=True).stdout)
    model_file = values["model"]["value"]
    assert f'"{model_file}"' in shown and f'"{LONG_DESCRIPTION}"' in shown, shown
    assert "…" not in shown

    doctor = world.run("doctor", "--profile", "mine").stdout
    checks = json.loads(world.run("doctor", "--profile", "mine", "--json").stdout)["checks"]
    steady = [check for check in checks  # summaries that do not change between two runs
              if check["name"] in ("llama_server", "model_file", "access")]
    assert len(steady) == 3, checks
    for check in steady:  # each summary on one line, whole
        assert any(check["summary"] in line for line in doctor.splitlines()), (check, doctor)
    assert "…" not in doctor


def test_chat_speed_line_cannot_contradict_itself() -> None:
    """New-user run 2: `5 tokens in 2.59s: 8655.6 tokens/s` (the tokens came in one burst
    after the first, and the rate counted only the time after it) and `1 tokens ... ?`."""
    from llm_backend.cli.render import chat_speed_line
    from llm_backend.client import ChatResult

    burst = ChatResult(text="ok", completion_tokens=5, duration_s=2.5946,
                       time_to_first_token_s=2.594, model="m")
    line = chat_speed_line(burst)
    assert line == "5 tokens in 2.59s (1.9 tokens/s), first token after 2594 ms", line
    one = chat_speed_line(ChatResult(text="ok", completion_tokens=1, duration_s=0.1,
                                     time_to_first_token_s=0.098, model="m"))
    assert one == "1 token in 0.10s, first token after 98 ms", one
    uncounted = chat_speed_line(ChatResult(text="ok", completion_tokens=None, duration_s=0.5,
                                           time_to_first_token_s=None, model="m"))
    assert "None" not in uncounted and "?" not in uncounted, uncounted


def test_status_watch_json_is_one_object_a_line(world: Env) -> None:
    """`status --watch --json` printed indented objects one after another (new-user run 2):
    now JSON Lines, each line whole as it comes through a pipe."""
    import select
    import time

    process = world.popen("status", "--watch", "--json")
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while len(lines) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                assert line, process.stderr.read() if process.stderr else ""
                lines.append(line)
    finally:
        process.terminate()  # our own child, by its handle
        process.communicate(timeout=30)
    assert len(lines) == 2, lines
    for line in lines:
        record = json.loads(line)
        assert record["state"] == "stopped" and "artifacts" in record, record
