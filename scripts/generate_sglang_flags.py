"""Generate src/llm_backend/data/sglang_flags.json from a pinned sglang release's own parser.

SGLang's parser (`ServerArgs.add_cli_args`) imports without a GPU once sglang is installed
with `--no-deps` plus a few light packages and the CPU build of torch. This script can make
that throwaway virtual environment, then runs the parser's introspection inside it and
writes every option (spellings, number of values, choices) as JSON.

    python scripts/generate_sglang_flags.py --make-venv /tmp/sglang-venv      # once
    python scripts/generate_sglang_flags.py --python /tmp/sglang-venv/bin/python
    python scripts/generate_sglang_flags.py --python /tmp/sglang-venv/bin/python --check

`--check` exits 1 when the committed table differs from what the parser says now.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import venv
from pathlib import Path

from llm_backend.engines.sglang_flags import PARSER_DUMP_SCRIPT

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "src" / "llm_backend" / "data" / "sglang_flags.json"

SGLANG_VERSION = "0.5.23"
# What `sglang.srt.server_args` imports, found by importing it until nothing was missing.
# torch is the CPU build; none of these needs a GPU.
PARSER_PACKAGES = [
    "torch==2.13.0",
    "triton",
    "numpy",
    "msgspec",
    "orjson",
    "psutil",
    "pybase64",
    "requests",
    "packaging",
    "pillow",
    "starlette",
    "pydantic",
    "pyzmq",
    "tqdm",
    "ipython",
    "aiohttp",
]


def make_venv(folder: Path) -> Path:
    """A throwaway venv with sglang (no deps) and just enough to import its parser."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"sglang=={SGLANG_VERSION}"], check=True)
    subprocess.run([*pip, *PARSER_PACKAGES], check=True)
    return python


def dump(python: str) -> dict[str, object]:
    completed = subprocess.run(
        [python, "-c", PARSER_DUMP_SCRIPT], capture_output=True, text=True, timeout=300
    )
    for line in completed.stdout.splitlines():
        if line.startswith("SGLANG-FLAGS-JSON "):
            data: dict[str, object] = json.loads(line.split(" ", 1)[1])
            break
    else:
        sys.stderr.write(completed.stderr[-3000:])
        raise SystemExit(f"error: could not import SGLang's parser with {python}")
    return {
        "sglang_version": data["version"],
        "generated_by": "scripts/generate_sglang_flags.py (ServerArgs.add_cli_args)",
        "options": data["options"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="a Python that can import sglang")
    parser.add_argument("--make-venv", type=Path, help="create this venv with the pinned sglang")
    parser.add_argument("--output", type=Path, default=TABLE)
    parser.add_argument("--check", action="store_true", help="compare with the committed table")
    args = parser.parse_args()
    python = args.python
    if args.make_venv:
        python = str(make_venv(args.make_venv))
        print(f"venv ready: {python}")
        if not args.python and not args.check:
            return 0
    if not python:
        parser.error("pass --python PATH (or --make-venv DIR)")
    table = dump(python)
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    if args.check:
        committed = json.loads(args.output.read_text(encoding="utf-8"))
        if committed != json.loads(text):
            print(
                f"error: {args.output} differs from sglang {table['sglang_version']}'s parser",
                file=sys.stderr,
            )
            print("fix: run this script without --check and commit the table", file=sys.stderr)
            return 1
        print(f"{args.output} matches sglang {table['sglang_version']} "
              f"({len(table['options'])} options)")  # type: ignore[arg-type]
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: sglang {table['sglang_version']}, "
          f"{len(table['options'])} options")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
