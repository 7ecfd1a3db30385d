"""Rebuild gpt-oss's o200k_base.tiktoken for the `pull` tests, from the npm registry.

OpenAI's file cannot be downloaded here, but the npm package js-tiktoken ships the same
ranks (`dist/ranks/o200k_base.js`: lines "<mark> <first rank> <base64 token> ..."). Written
back as "<base64 token> <rank>\\n" in rank order they are byte for byte OpenAI's file, which
this script proves by its SHA-256 (the one openai-harmony checks) before keeping it.

    python scripts/make-test-encoding.py DEST_FOLDER
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "js-tiktoken@1.0.21"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
NAME = "o200k_base.tiktoken"


def main() -> int:
    dest = Path(sys.argv[1]) / NAME
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == SHA256:
        print(f"{dest} is already there")
        return 0
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        archive = next(Path(work).glob("js-tiktoken-*.tgz"))
        with tarfile.open(archive) as tar:
            member = tar.extractfile("package/dist/ranks/o200k_base.js")
            assert member is not None
            text = member.read().decode()
    data = json.loads(text[text.index("{"):text.rindex("}") + 1])
    ranks: dict[str, int] = {}
    for line in data["bpe_ranks"].split("\n"):
        if line:
            _, first, *tokens = line.split(" ")
            for offset, token in enumerate(tokens):
                ranks[token] = int(first) + offset
    content = "".join(f"{token} {rank}\n" for token, rank in
                      sorted(ranks.items(), key=lambda item: item[1])).encode()
    digest = hashlib.sha256(content).hexdigest()
    if digest != SHA256:
        print(f"error: rebuilt {NAME} has SHA-256 {digest}, expected {SHA256}", file=sys.stderr)
        return 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(content)
    print(f"wrote {dest} ({len(content)} bytes, SHA-256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
