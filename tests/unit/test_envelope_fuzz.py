"""A seeded random-envelope fuzzer over every /functions/<name>: well-formed and malformed envelopes, any JSON
values in the rows. No 5xx but 503; every 200 answers one row per input row, with the same row numbers, in order."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from typing import Any

import orjson

from spcs_llm.functions import FUNCTIONS

from ..conftest import sf_headers

SEED = 1313
ENVELOPES_PER_FUNCTION = 60
MODELS = [
    "fake-model",
    "llama3.1-8b",
    "fake-embed-768",
    "fake-embed-1024",
    "snowflake-arctic-embed-m-v1.5",
    "no-such-model",
    "",
]
WORDS = ["good", "bad", "中文", "Größe", "\u0000", "\n\n", "🙂", "x" * 300, "", " ", '{"a":', "[1,2]", "null"]


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 2 else 8)
    if kind <= 2:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))
    if kind == 3:
        return rng.choice(MODELS)
    if kind == 4:
        return rng.choice([0, 1, -1, 2**63, 1.5, -0.0, 1e308, 100])
    if kind == 5:
        return None
    if kind == 6:
        return rng.choice([True, False])
    if kind == 7:
        return rng.choice(["en", "de", "zh", "fr", "xx", "none", "markdown", "complete", "sentiment"])
    if kind <= 9:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["temperature", "max_tokens", "top_p", "guardrails", "response_format", "task_description", "model", "x"]
    return {rng.choice(keys): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def envelope(rng: random.Random, name: str) -> tuple[bytes, dict[str, str], list[int] | None]:
    """(body, headers, row numbers when the envelope is well formed)."""
    fn = FUNCTIONS[name]
    headers = sf_headers()
    roll = rng.random()
    if roll < 0.1:  # malformed on purpose
        body = rng.choice(
            [
                b"",
                b"not json",
                b"[]",
                b"{}",
                b'{"data": 3}',
                b'{"data": [1]}',
                b'{"data": [[]]}',
                b'{"data": [["0", "x"]]}',
                b'{"data": [[true, "x"]]}',
                b'{"data": [[0.5, "x"]]}',
                b"\xff\xfe",
                b'{"data": [[0, "x"]',
            ]
        )
        return body, headers, None
    numbers = list(range(rng.randint(0, 12)))
    if rng.random() < 0.3:
        rng.shuffle(numbers)  # Snowflake numbers rows 0..n-1, but the answer must echo whatever it was sent
    rows = []
    for n in numbers:
        arity = rng.choice(fn.arities) if rng.random() < 0.9 else rng.randint(0, 6)
        rows.append([n, *(value(rng) for _ in range(arity))])
    body = orjson.dumps({"data": rows})
    if rng.random() < 0.15:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    return body, headers, numbers


async def test_random_envelopes_over_every_function(client) -> None:
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    for name in sorted(FUNCTIONS):
        for _ in range(ENVELOPES_PER_FUNCTION):
            body, headers, numbers = envelope(rng, name)
            r = await client.post(f"/functions/{name}", content=body, headers=headers)
            statuses[r.status_code] += 1
            assert r.status_code < 500 or r.status_code == 503, (name, body[:300], r.status_code, r.text[:300])
            if r.status_code == 200:
                assert numbers is not None, (name, body[:300])
                data = orjson.loads(r.content)["data"]
                assert [row[0] for row in data] == numbers and all(len(row) == 2 for row in data), (name, body[:300])
            else:
                assert r.text  # every refusal says why
    total = sum(statuses.values())
    assert total == len(FUNCTIONS) * ENVELOPES_PER_FUNCTION and statuses[200] > total // 3
    print(
        f"\nenvelope fuzz (seed {SEED}): {total} envelopes over {len(FUNCTIONS)} functions, statuses "
        f"{dict(sorted(statuses.items()))}"
    )
