"""The embedding functions' answers, byte for byte: the numpy path (vectors kept as arrays from the embedder to
the wire) must give exactly what the list-of-floats path gave (golden answers made from commit c082c77)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.engines.base import Embedded
from spcs_llm.errors import MaxTokensExceeded
from spcs_llm.functions.embed import BLOCK, DIGITS, cosine, round_vector
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler
from spcs_llm.server import create_app
from tests.conftest import batch, in_process, wait_ready
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


def test_rounding_a_batch_block_by_block_gives_pythons_round_for_every_value() -> None:
    """A batch's vectors go in blocks of BLOCK values: ties and large values on either side of a block's edge,
    in the last (short) block, a strided view and float32 all round as round() does, in the batch's shape."""
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((3 * BLOCK // 768 + 5, 768))
    flat = batch.reshape(-1)
    for edge in (BLOCK, 2 * BLOCK, flat.size - 2):
        flat[edge - 2 : edge + 2] = [2.5e-7, -3.5e-7, 1e4 + 0.123456785, -(2**-23)]  # ties, a large value
    with_nan = batch.copy()
    with_nan.reshape(-1)[BLOCK + 5] = np.nan  # in the block of a tie and a large value
    # batch.T is not C-ordered: f54be0f's function lost its round() corrections on such an array, and a NaN
    # anywhere in a batch turned them off for the whole batch (an embedder's NaN, as rare as that is)
    for values in (batch, batch.astype(np.float32), batch[::2, ::3], batch.T, with_nan):
        ours = round_vector(values)
        expected = np.array([round(v, DIGITS) for v in values.astype(np.float64).reshape(-1).tolist()])
        assert ours.shape == values.shape and ours.dtype == np.float64
        nan = np.isnan(expected)
        assert np.array_equal(np.isnan(ours.reshape(-1)), nan)
        assert ours.reshape(-1)[~nan].tobytes() == expected[~nan].tobytes()


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


class _Flaky(FakeEmbedder):
    """A fake that refuses one text alone, as the OpenAI embedder reports a text its upstream refused."""

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        done = await super().embed_counted(texts)
        rows = [MaxTokensExceeded(512) if t == "too long" else v for t, v in zip(texts, done.vectors, strict=True)]
        return Embedded(rows, done.tokens)


async def test_a_batch_embedded_together_answers_as_its_rows_one_by_one() -> None:
    """The embedding functions run a batch's rows as one group (functions/registry.py Grouped): rows of several
    embedders, NULLs, rows refused before any work and a text refused alone keep their order and values, the
    same as when each row is a batch of its own; the refused text fails only its row (NULL) in AI_ functions and
    the whole batch, with its message, in the legacy ones."""
    settings = Settings.load(overrides={"engine": {"kind": "fake"}})

    def embedders() -> list[FakeEmbedder]:
        return [_Flaky("fake-embed-768", 768), FakeEmbedder("fake-embed-1024", 1024)]

    rows = {
        "ai_embed": [
            ["fake-embed-768", "one two"],
            ["fake-embed-1024", "one two"],
            ["fake-embed-768", "too long"],
            ["nope", "x"],
            ["fake-embed-768", None],
            ["fake-embed-1024", "too long"],
            ["fake-embed-768", "one two"],
        ],
        "ai_similarity": [
            ["a b", "a c", {"model": "fake-embed-1024"}],
            ["a b", "too long", {"model": "fake-embed-768"}],
            ["x", "x y", {"model": "fake-embed-768"}],
            [None, "b"],
            ["a b", "a d"],
        ],
        "embed_text_768": [["fake-embed-768", "one"], ["fake-embed-768", "too long"], ["fake-embed-768", "two"]],
    }

    async def answers(one_by_one: bool) -> dict[str, list[object]]:
        """Every function's values, from a fresh server (nothing cached): the whole batch, or row by row."""
        app = create_app(settings, engine=FakeEngine(), embedders=embedders())
        out = {}
        async with in_process(app) as c:
            await wait_ready(app)
            for fn in ("ai_embed", "ai_similarity"):
                parts = [[row] for row in rows[fn]] if one_by_one else [rows[fn]]
                got = [await c.post(f"/functions/{fn}", **batch(*part)) for part in parts]
                assert all(r.status_code == 200 for r in got)
                out[fn] = [v for r in got for _, v in r.json()["data"]]
            legacy = await c.post("/functions/embed_text_768", **batch(*rows["embed_text_768"]))
            assert (legacy.status_code, legacy.text) == (400, "max tokens of 512 exceeded")
        return out

    together, alone = await answers(False), await answers(True)
    assert together == alone
    for fn, refused, after in (("ai_embed", 2, 5), ("ai_similarity", 1, 2)):  # refused alone: NULL, the rest not
        values = together[fn]
        assert values[refused] is None and None not in values[:refused] and values[after] is not None


async def test_a_grouped_job_called_alone_answers_its_row() -> None:
    """``prepare`` returns a zero-argument coroutine function for every function; a grouped one called alone
    gives the value its group would, and raises its row's error."""
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.functions.registry import Runtime
    from spcs_llm.models.catalog import EmbedderResolver, ModelResolver

    embedder = _Flaky("fake-embed-768", 768)
    scheduler = Scheduler(FakeEngine(), Metrics())
    rt = Runtime(scheduler, ModelResolver(["fake-model"], {}), 64, EmbedderResolver([(embedder, ())]))
    prepare = FUNCTIONS["ai_embed"].overloads[0].prepare
    vector = await prepare(rt, ["fake-embed-768", "one two"])()
    assert vector.tolist() == round_vector(await scheduler.embed(embedder, "one two")).tolist()
    with pytest.raises(MaxTokensExceeded):
        await prepare(rt, ["fake-embed-768", "too long"])()
    similarity = FUNCTIONS["ai_similarity"].overloads[0].prepare(rt, ["a b", "a b"])
    assert await similarity() == 1.0


async def test_an_embedding_batchs_queue_wait_ends_when_its_texts_go_to_the_embedder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``wait_ms`` (the batch log line, spcs_llm_queue_wait_seconds) is the time from admission to the start of
    the batch's engine work; an embedding batch starts it when its texts are submitted, so a slow forward pass
    is not counted as queue wait."""
    import logging

    class Slow(FakeEmbedder):
        async def embed_counted(self, texts: Sequence[str]) -> Embedded:
            await asyncio.sleep(0.3)
            return await super().embed_counted(texts)

    settings = Settings.load(overrides={"engine": {"kind": "fake"}})
    app = create_app(settings, engine=FakeEngine(), embedders=[Slow("fake-embed-768", 768)])
    async with in_process(app) as c:
        await wait_ready(app)
        with caplog.at_level(logging.INFO, logger="spcs_llm"):
            r = await c.post("/functions/embed_text_768", **batch(["fake-embed-768", "a"], ["fake-embed-768", "b"]))
    assert r.status_code == 200
    (line,) = [x for x in caplog.records if x.getMessage() == "batch"]
    assert line.fields["ms"] >= 300 and line.fields["wait_ms"] < 100, line.fields
