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
