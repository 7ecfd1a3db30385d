"""Bench workloads: built-in prompt sets generated locally from a seed, or the user's JSONL file.

Built-in workloads need no download and are the same for the same seed, so two runs (or the
two arms of an A/B run) send exactly the same requests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_backend.errors import UsageError

WORKLOAD_NAMES = ("chat", "long", "copy", "mixed")
DEFAULT_SEED = 1234
ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: OpenAI chat messages and a token budget."""

    index: int
    kind: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "messages": list(self.messages),
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Workload:
    """A named, ordered list of requests; level runs take them round-robin."""

    name: str
    description: str
    requests: tuple[BenchRequest, ...]
    source: str = "built-in"

    def capped(self, max_tokens: int) -> Workload:
        """The same requests with at most `max_tokens` output tokens each."""
        if max_tokens < 1:
            raise UsageError(
                f"--max-tokens {max_tokens} is not positive", remedy="use --max-tokens 1 or more"
            )
        requests = tuple(
            BenchRequest(r.index, r.kind, r.messages, min(r.max_tokens, max_tokens), r.seed)
            for r in self.requests
        )
        return Workload(self.name, self.description, requests, self.source)

    def take(self, count: int) -> tuple[BenchRequest, ...]:
        """The first `count` requests, cycling when the workload has fewer (indexes stay unique)."""
        chosen = []
        for position in range(count):
            base = self.requests[position % len(self.requests)]
            chosen.append(
                BenchRequest(
                    index=position,
                    kind=base.kind,
                    messages=base.messages,
                    max_tokens=base.max_tokens,
                    seed=base.seed,
                )
            )
        return tuple(chosen)


# --- built-in material ---------------------------------------------------------------------

_SUBJECTS = (
    "the moon", "a volcano", "photosynthesis", "a rainbow", "the ocean", "a bicycle",
    "an airplane", "a computer", "the heart", "a library", "bread", "coffee", "a river",
    "electricity", "a honey bee", "the wind", "a bridge", "a forest", "snow", "a telescope",
)
_CHAT_TEMPLATES = (
    "What is {subject}? Answer in one sentence.",
    "Give me one interesting fact about {subject}.",
    "Explain {subject} to a child in two sentences.",
    "Name three words that describe {subject}.",
    "Why do people like {subject}? Keep it short.",
)
_LONG_TEMPLATES = (
    "Write a detailed essay about {subject}, with an introduction, three sections and a "
    "conclusion.",
    "Tell a long story about a traveller who discovers {subject}. Describe every step.",
    "Write a complete guide to {subject} for a student: history, how it works, and examples.",
)
_PARAGRAPHS = (
    "The old lighthouse stood on the rocks at the end of the bay. Every night the keeper "
    "climbed the narrow stairs, lit the lamp and watched the ships pass in the dark. In the "
    "morning he wrote the names of the ships in a book and went to sleep until the evening.",
    "Our team meets every Monday at nine. We review the tasks of the last week, decide what "
    "to do next and write the plan on the board. Anyone who is blocked says so, and someone "
    "offers to help before the meeting ends.",
    "To bake the bread, mix the flour, the water, the salt and the yeast in a large bowl. "
    "Knead the dough for ten minutes, cover it and let it rise for one hour. Shape the loaf, "
    "let it rise again and bake it for forty minutes in a hot oven.",
    "The river starts high in the mountains as a small stream of melted snow. It runs down "
    "through the forest, joins other streams and becomes wide and slow in the valley. At the "
    "end of its journey it flows into the sea near a busy harbour town.",
    "Dear customer, thank you for your order. Your parcel left our warehouse this morning and "
    "should arrive within three working days. If anything is missing or damaged, reply to "
    "this message and we will send a replacement at no cost.",
    "The museum opens at ten in the morning and closes at six in the evening. Tickets can be "
    "bought at the entrance or online. Children under twelve enter for free, and on the first "
    "Sunday of every month the museum is free for everyone.",
)
_CODE_BLOCKS = (
    "def average(values):\n"
    "    total = 0\n"
    "    for value in values:\n"
    "        total = total + value\n"
    "    if len(values) == 0:\n"
    "        return 0\n"
    "    return total / len(values)\n",
    "def count_words(text):\n"
    "    counts = {}\n"
    "    for word in text.split():\n"
    "        word = word.lower()\n"
    "        counts[word] = counts.get(word, 0) + 1\n"
    "    return counts\n",
    "class Stack:\n"
    "    def __init__(self):\n"
    "        self.items = []\n"
    "\n"
    "    def push(self, item):\n"
    "        self.items.append(item)\n"
    "\n"
    "    def pop(self):\n"
    "        return self.items.pop()\n"
    "\n"
    "    def is_empty(self):\n"
    "        return len(self.items) == 0\n",
    "def read_lines(path):\n"
    "    lines = []\n"
    "    with open(path) as handle:\n"
    "        for line in handle:\n"
    "            line = line.strip()\n"
    "            if line:\n"
    "                lines.append(line)\n"
    "    return lines\n",
)
_TEXT_EXAMPLE = (
    "The cat sat on the mat. It was a warm day, and the cat was happy to rest in the sun."
)
_CODE_EXAMPLE = "```python\ndef add(first, second):\n    return first + second\n```"
_TEXT_INSTRUCTION = "Repeat the following text exactly:"
_CODE_INSTRUCTION = "Repeat the following Python code exactly:"


def _chat_request(index: int, rng: random.Random, seed: int) -> BenchRequest:
    prompt = rng.choice(_CHAT_TEMPLATES).format(subject=rng.choice(_SUBJECTS))
    return BenchRequest(index, "chat", ({"role": "user", "content": prompt},), 96, seed)


def _long_request(index: int, rng: random.Random, seed: int) -> BenchRequest:
    prompt = rng.choice(_LONG_TEMPLATES).format(subject=rng.choice(_SUBJECTS))
    return BenchRequest(index, "long", ({"role": "user", "content": prompt},), 512, seed)


def _copy_deck(rng: random.Random) -> list[tuple[str, str]]:
    """Every paragraph and code block once, shuffled: copy requests repeat a text only after
    all others were used (a repeat would find its reply in llama.cpp's caches)."""
    deck = [("text", paragraph) for paragraph in _PARAGRAPHS]
    deck += [("code", f"```python\n{block}```") for block in _CODE_BLOCKS]
    rng.shuffle(deck)
    return deck


def _copy_request(index: int, item: tuple[str, str], seed: int) -> BenchRequest:
    # One worked example first: a small model then copies instead of paraphrasing, which is
    # what an editing assistant does with most of a file.
    kind, body = item
    if kind == "text":
        instruction, example = _TEXT_INSTRUCTION, _TEXT_EXAMPLE
    else:
        instruction, example = _CODE_INSTRUCTION, _CODE_EXAMPLE
    messages = (
        {"role": "user", "content": f"{instruction}\n\n{example}"},
        {"role": "assistant", "content": example},
        {"role": "user", "content": f"{instruction}\n\n{body}"},
    )
    # Room for the whole block (about one token per 3.5 characters) and a short preamble.
    budget = min(512, int(len(body) / 3.5) + 48)
    return BenchRequest(index, "copy", messages, budget, seed)


_MAKERS = {"chat": _chat_request, "long": _long_request}


def builtin_workload(name: str, *, count: int = 32, seed: int = DEFAULT_SEED) -> Workload:
    """`count` requests of a built-in workload; the same seed gives the same requests."""
    if name not in WORKLOAD_NAMES:
        raise UsageError(
            f"unknown workload {name!r}; built-in workloads: {', '.join(WORKLOAD_NAMES)}",
            remedy="use --workload chat|long|copy|mixed, or --dataset FILE.jsonl",
        )
    if count < 1:
        raise UsageError(
            f"a workload needs at least one request, got {count}",
            remedy="use --requests 1 or more",
        )
    rng = random.Random(f"{name}:{seed}")
    requests = []
    deck = _copy_deck(rng)
    copies = 0
    for index in range(count):
        kind = ("chat", "copy", "long")[index % 3] if name == "mixed" else name
        if kind == "copy":
            requests.append(_copy_request(index, deck[copies % len(deck)], seed + index))
            copies += 1
        else:
            requests.append(_MAKERS[kind](index, rng, seed + index))
    descriptions = {
        "chat": "short questions, short answers (up to 96 tokens)",
        "long": "requests for long answers (up to 512 tokens)",
        "copy": "copy or rewrite a given paragraph or code block (speculative decoding's case)",
        "mixed": "chat, copy and long requests in turn",
    }
    return Workload(name=name, description=descriptions[name], requests=tuple(requests))


# --- user datasets -------------------------------------------------------------------------

_DATASET_SHAPE = (
    'each line must be a JSON object like {"messages": [{"role": "user", "content": "..."}], '
    '"max_tokens": 128} (max_tokens optional), or a JSON list of such messages'
)


def load_dataset(
    path: Path, *, default_max_tokens: int = 256, seed: int = DEFAULT_SEED
) -> Workload:
    """Read a JSONL file of OpenAI chat messages; a malformed line is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"dataset file {path} does not exist", remedy="pass an existing --dataset FILE.jsonl"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            f"cannot read dataset file {path}: {error}",
            remedy="pass a readable UTF-8 --dataset FILE.jsonl",
        ) from None
    requests: list[BenchRequest] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        messages, max_tokens = _parse_dataset_line(path, number, line, default_max_tokens)
        index = len(requests)
        requests.append(BenchRequest(index, "dataset", messages, max_tokens, seed + index))
    if not requests:
        raise UsageError(
            f"dataset file {path} has no requests (it is empty)",
            remedy=f"put one request per line in {path}: {_DATASET_SHAPE}",
        )
    return Workload(
        name=path.name,
        description=f"{len(requests)} requests from {path.name}",
        requests=tuple(requests),
        source=str(path),
    )


def _parse_dataset_line(
    path: Path, number: int, line: str, default_max_tokens: int
) -> tuple[tuple[dict[str, str], ...], int]:
    def bad(problem: str) -> UsageError:
        return UsageError(
            f"dataset {path} line {number}: {problem}",
            remedy=f"fix line {number} of {path}: {_DATASET_SHAPE}",
            details={"line": number, "path": str(path)},
        )

    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise bad(f"not valid JSON ({error.msg} at column {error.colno})") from None
    max_tokens = default_max_tokens
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"messages", "max_tokens"})
        if unknown:
            raise bad(f"unknown key {unknown[0]!r}; allowed: messages, max_tokens")
        if "max_tokens" in data:
            value = data["max_tokens"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(f"max_tokens = {value!r} is not a positive integer")
            max_tokens = value
        data = data.get("messages")
    if not isinstance(data, list) or not data:
        raise bad(f"'messages' must be a non-empty list, got {json.dumps(data)[:80]}")
    messages: list[dict[str, str]] = []
    for position, message in enumerate(data):
        if not isinstance(message, dict):
            raise bad(f"message {position} is not an object: {json.dumps(message)[:80]}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise bad(f"message {position} has role {role!r}; allowed: {', '.join(sorted(ROLES))}")
        if not isinstance(content, str):
            raise bad(f"message {position} has no text 'content' (got {content!r})")
        messages.append({"role": str(role), "content": content})
    return tuple(messages), max_tokens
