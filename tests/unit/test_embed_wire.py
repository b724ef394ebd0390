"""The embedding functions' answers, byte for byte: the numpy path (vectors kept as arrays from the embedder to
the wire) must give exactly what the list-of-floats path gave (golden answers made from commit c082c77)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import orjson

from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.functions.embed import DIGITS, cosine, round_vector
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler
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


def _reference_cosine(a: list[float], b: list[float]) -> float:
    """The loop over Python floats that cosine() replaced (sum() adds left to right on CPython 3.11)."""
    dot = norm_a = norm_b = 0.0
    for x, y in zip(a, b, strict=True):
        dot += x * y
        norm_a += x * x
        norm_b += y * y
    norm = math.sqrt(norm_a) * math.sqrt(norm_b)
    return 0.0 if norm == 0 else round(max(-1.0, min(1.0, dot / norm)), 6)


def test_rounding_arrays_gives_pythons_round_bit_for_bit() -> None:
    rng = np.random.default_rng(18)
    unit = rng.standard_normal((200, 768))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    ties = np.array([k / 256 for k in range(-256, 257)] + [k / 2**21 for k in range(4096)])  # exact x.5e-7 cases
    large = rng.standard_normal(500) * 1e4
    for values in (
        *unit,
        *unit.astype(np.float32),
        ties,
        ties.astype(np.float32),
        large,
        np.array([0.0, -0.0, -4e-8, 5e-8, 1.0, -1.0]),
    ):
        ours = round_vector(values)
        expected = [round(v, DIGITS) for v in values.astype(np.float64).tolist()]
        assert ours.dtype == np.float64
        assert ours.tobytes() == np.array(expected).tobytes()  # bit for bit, the sign of zero included
        assert orjson.dumps(ours, option=orjson.OPT_SERIALIZE_NUMPY) == orjson.dumps(expected)


def test_cosine_of_arrays_is_the_float_loops_double() -> None:
    rng = np.random.default_rng(5)
    for dtype in (np.float64, np.float32):  # float32: what the local embedder's arrays hold
        for _ in range(300):
            a, b = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 384)))
            a, b = a.astype(dtype), b.astype(dtype)
            assert cosine(a, b) == _reference_cosine(a.astype(np.float64).tolist(), b.astype(np.float64).tolist())
    assert cosine(np.zeros(4), np.ones(4)) == 0.0
    assert str(cosine(np.array([0.0, -1.0]), np.array([1.0, 0.0]))) == "0.0"  # not -0.0: sum() starts at 0


def test_cosines_near_a_rounding_midpoint_or_zero_take_the_ordered_sums() -> None:
    """Where the order of the sums could decide the 6th decimal (or a zero's sign), the ordered path answers."""
    rng = np.random.default_rng(9)
    for target in (0.1234565, -0.4999995, 0.0000005, 1e-13, -1e-13, 0.0):
        for _ in range(50):
            u = rng.standard_normal(64)
            u /= np.linalg.norm(u)
            w = rng.standard_normal(64)
            w -= (w @ u) * u
            w /= np.linalg.norm(w)
            b = target * u + math.sqrt(1 - target * target) * w  # cos(u, b) is target, give or take an ulp
            assert cosine(u, b) == _reference_cosine(u.tolist(), b.tolist())
            assert str(cosine(u, b)) == str(_reference_cosine(u.tolist(), b.tolist()))  # the sign of zero too


async def test_cached_vectors_are_shared_read_only_rows_not_copies() -> None:
    embedder = FakeEmbedder("fake-embed-768", 768)
    scheduler = Scheduler(FakeEngine(), Metrics())
    first = await scheduler.embed(embedder, "the cat sat")
    again, other = await scheduler.embed_texts(embedder, ["the cat sat", "a dog"])
    assert again is first  # the cached array itself
    assert not first.flags.writeable and not other.flags.writeable
    assert len(embedder.calls) == 2 and embedder.calls[1] == ["a dog"]
    assert first.tolist() == (await embedder.embed(["the cat sat"]))[0]  # the list API gives the same floats
