"""The embedding functions' answers, byte for byte: the numpy path (vectors kept as arrays from the embedder to
the wire) must give exactly what the list-of-floats path gave (golden answers made from commit c082c77)."""

from __future__ import annotations

import hashlib
import json

from tests.fixtures.embed_wire_cases import GOLDEN, answers


async def test_embedding_answers_are_bit_for_bit_those_of_the_list_path() -> None:
    golden = json.loads(GOLDEN.read_text())
    ours = await answers()
    assert ours.keys() == golden.keys()
    for name, expected in golden.items():
        got = ours[name]
        assert got["status"] == expected["status"] == 200, name
        if "body" in expected:  # readable cases first: a difference shows where
            assert got["body"] == expected["body"], name
        assert got["sha256"] == expected["sha256"], name


def test_the_golden_file_is_what_its_sha256_says() -> None:
    for name, entry in json.loads(GOLDEN.read_text()).items():
        if "body" in entry:
            assert hashlib.sha256(entry["body"].encode()).hexdigest() == entry["sha256"], name
