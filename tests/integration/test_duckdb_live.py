"""Cortex SQL in DuckDB on the real packaged model, in process (no server): the connect() a laptop user makes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb
import pytest

from spcs_llm import duckdb as local
from spcs_llm.config import Settings
from spcs_llm.sql_cli import transpile

from .conftest import CTX_PER_SLOT, MAX_OUTPUT_TOKENS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    settings = Settings.load(
        overrides={"engine": {"n_parallel": 4, "ctx_per_slot": CTX_PER_SLOT, "max_output_tokens": MAX_OUTPUT_TOKENS}}
    )
    connection = local.connect(settings=settings)  # the packaged SmolLM2 and all-mpnet-base-v2, in this process
    connection.execute(
        "CREATE TABLE reviews AS SELECT * FROM (VALUES "
        "('I loved this restaurant, the food was wonderful and the staff so kind.', 'a'), "
        "('Terrible service, cold food, and rude staff. Never again.', 'a'), "
        "('Great coffee and a lovely view.', 'b')) v(review, product)"
    )
    yield connection
    local.close(connection)


def test_sentiment_from_snowflake_sql_on_the_real_model(con: duckdb.DuckDBPyConnection) -> None:
    (sql,) = transpile("SELECT SNOWFLAKE.CORTEX.SENTIMENT(review) AS s FROM reviews")
    scores = [row[0] for row in con.execute(sql).fetchall()]
    assert len(scores) == 3 and all(-1 <= s <= 1 for s in scores)
    assert scores[0] > scores[1]  # the glowing review scores above the angry one


def test_labels_and_aggregates_on_the_real_model(con: duckdb.DuckDBPyConnection) -> None:
    label = con.execute("SELECT ai_classify(review, ['praise', 'complaint']) FROM reviews LIMIT 1").fetchone()[0]
    assert json.loads(label)["labels"][0] in {"praise", "complaint"}
    groups = con.execute(
        "SELECT product, ai_agg(review, 'Summarize the reviews in one sentence.') FROM reviews "
        "GROUP BY product ORDER BY product"
    ).fetchall()
    assert [g for g, _ in groups] == ["a", "b"] and all(isinstance(s, str) and s for _, s in groups)


def test_real_embeddings_compare_in_duckdb(con: duckdb.DuckDBPyConnection) -> None:
    near, far = con.execute(
        "SELECT array_cosine_similarity(embed_text_768('e5-base-v2', 'a cat sat on the mat'), "
        "embed_text_768('e5-base-v2', 'a kitten is sitting on a rug')), "
        "array_cosine_similarity(embed_text_768('e5-base-v2', 'a cat sat on the mat'), "
        "embed_text_768('e5-base-v2', 'quarterly earnings beat expectations'))"
    ).fetchone()
    assert near > far
