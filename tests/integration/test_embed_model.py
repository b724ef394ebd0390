"""The packaged all-mpnet-base-v2 on the numpy runtime against sentence-transformers' own vectors (recorded once by
tests/fixtures/make_embed_reference.py), and the semantics a user relies on: similar texts are closer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spcs_llm.engines.local_embed import LocalEmbedder
from spcs_llm.models import packaged_embed

pytestmark = pytest.mark.integration
REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "embed_reference.json").read_text(encoding="utf-8"))
SENTENCES: list[str] = REFERENCE["mpnet"]["sentences"]


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    # `make test` fetched it (`spcs-llm models fetch-default`); tests never download
    model = LocalEmbedder(packaged_embed.ensure_packaged_embedder(offline=True), packaged_embed.MODEL_NAME)
    asyncio.run(model.start())
    yield model
    asyncio.run(model.aclose())


@pytest.fixture(scope="module")
def vectors(embedder: LocalEmbedder) -> np.ndarray:
    return np.array(asyncio.run(embedder.embed(SENTENCES)))


def test_the_model_is_the_768_d_mpnet(embedder: LocalEmbedder) -> None:
    assert (embedder.model_name, embedder.dimension) == ("all-mpnet-base-v2", 768)
    assert embedder.max_input_tokens == REFERENCE["mpnet"]["max_seq_length"] == 384


def test_vectors_match_sentence_transformers(vectors: np.ndarray) -> None:
    assert vectors.shape == (len(SENTENCES), 768)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for i, ref in REFERENCE["mpnet"]["full"].items():  # short, Chinese, and a text truncated at 384 tokens
        assert float(vectors[int(i)] @ np.array(ref)) > 0.999, SENTENCES[int(i)][:40]
    assert np.abs(vectors @ vectors.T - np.array(REFERENCE["mpnet"]["cosine"])).max() < 1e-3


def test_paraphrases_are_closer_than_unrelated_texts(vectors: np.ndarray) -> None:
    sim = vectors @ vectors.T
    # each sentence's paraphrase is the next one; all-mpnet-base-v2 is an English model, so the Chinese/English
    # pair (6, 7) is left out: it matches the reference above, but is not close across languages
    for a in (0, 2, 4):
        others = [sim[a, j] for j in range(len(SENTENCES)) if j not in (a, a + 1)]
        assert sim[a, a + 1] > max(others) + 0.1, (SENTENCES[a], sim[a].round(2).tolist())


async def test_long_text_is_truncated_and_counted(embedder: LocalEmbedder, vectors: np.ndarray) -> None:
    long = SENTENCES[-1]
    assert await embedder.count_tokens(long) > 2 * embedder.max_input_tokens
    assert await embedder.count_tokens("hi") == 3  # <s> hi </s>
    (same,) = await embedder.embed([long + " and a tail far past the limit that changes nothing"])
    assert np.allclose(vectors[-1], same, atol=1e-5)
