"""Cortex SQL in a real DuckDB, over the service's batch path (fake engine, in process and over HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from spcs_llm import duckdb as local
from spcs_llm.client import BatchClient, FunctionError
from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.functions import FUNCTIONS
from spcs_llm.server import create_app
from spcs_llm.server.health import wait_healthy
from spcs_llm.sql_cli import is_snowflake, transpile

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cortex_examples.sql"


def _app(engine: FakeEngine | None = None):
    settings = Settings.load(overrides={"engine": {"kind": "fake", "max_output_tokens": 32}})
    return create_app(
        settings,
        engine=engine or FakeEngine("fake-model", context_window=4096),
        embedders=[FakeEmbedder("fake-embed-768", 768), FakeEmbedder("fake-embed-1024", 1024)],
    )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("fake-model", context_window=4096)


@pytest.fixture
def con(engine: FakeEngine) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = local.connect(app=_app(engine), max_batch_rows=16)
    yield connection
    local.close(connection)


def one(con: duckdb.DuckDBPyConnection, sql: str):
    return con.execute(sql).fetchone()[0]


# One call per overload of every registered function: (name, arity) -> SQL
CALLS = {
    ("complete", 2): "complete('llama3.1-8b', 'hi there')",
    ("complete", 3): "complete('llama3.1-8b', [{'role': 'user', 'content': 'hi'}], {'max_tokens': 5})",
    ("try_complete", 2): "try_complete('llama3.1-8b', 'hi there')",
    ("try_complete", 3): "try_complete('llama3.1-8b', [{'role': 'user', 'content': 'hi'}], {})",
    ("ai_complete", 2): "ai_complete('llama3.1-8b', 'hi')",
    ("ai_complete", 3): "ai_complete('llama3.1-8b', 'hi', {'temperature': 0})",
    ("ai_complete", 4): "ai_complete('llama3.1-8b', 'hi', {}, {'type': 'json', 'schema': {'type': 'object', "
    "'properties': {'a': {'type': 'string'}}, 'required': ['a']}})",
    ("ai_complete", 5): "ai_complete('llama3.1-8b', 'hi', {}, NULL, TRUE)",
    ("sentiment", 1): "sentiment('great food')",
    ("ai_sentiment", 1): "ai_sentiment('great food')",
    ("ai_sentiment", 2): "ai_sentiment('great food', ['food', 'service'])",
    ("entity_sentiment", 1): "entity_sentiment('great food')",
    ("entity_sentiment", 2): "entity_sentiment('great food', ['food'])",
    ("summarize", 1): "\"summarize\"('a long text')",  # SUMMARIZE is a DuckDB keyword: quoted, or qualified
    ("ai_summarize_agg", 1): "ai_summarize_agg(t) FROM (VALUES ('a'), ('b')) x(t)",
    ("ai_agg", 2): "ai_agg(t, 'List them') FROM (VALUES ('a'), ('b')) x(t)",
    ("translate", 3): "snowflake.cortex.translate('hola', 'es', 'en')",
    ("ai_translate", 3): "ai_translate('hola', 'es', 'en')",
    ("extract_answer", 2): "extract_answer('The sky is blue.', 'What color is the sky?')",
    ("classify_text", 2): "classify_text('I will travel', ['travel', 'cooking'])",
    ("classify_text", 3): "classify_text('I will travel', ['travel', 'cooking'], {'task_description': 'topic'})",
    ("ai_classify", 2): "ai_classify('I will travel', ['travel', 'cooking'])",
    ("ai_classify", 3): "ai_classify('I will travel', ['travel', 'cooking'], {'output_mode': 'multi'})",
    ("ai_filter", 1): "ai_filter('Is the sky blue?')",
    ("embed_text_768", 2): "embed_text_768('e5-base-v2', 'hello')",
    ("embed_text_1024", 2): "embed_text_1024('voyage-multilingual-2', 'hello')",
    ("ai_embed", 2): "ai_embed('e5-base-v2', 'hello')",
    ("ai_similarity", 2): "ai_similarity('a cat', 'a dog')",
    ("ai_similarity", 3): "ai_similarity('a cat', 'a dog', {'model': 'e5-base-v2'})",
    ("count_tokens", 2): "count_tokens('llama3.1-8b', 'one two three')",
    ("ai_count_tokens", 2): "ai_count_tokens('ai_complete', 'one two three')",
    ("ai_count_tokens", 3): "ai_count_tokens('ai_complete', 'llama3.1-8b', 'one two three')",
    ("split_text_recursive_character", 3): "split_text_recursive_character('hello world foo bar', 'none', 8)",
    ("split_text_recursive_character", 4): "split_text_recursive_character('hello world foo bar', 'none', 8, 2)",
    ("split_text_recursive_character", 5): "split_text_recursive_character('hello world foo bar', 'none', 8, 0, [' '])",
}
TYPES = {
    "VARCHAR": "VARCHAR",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "NUMBER": "BIGINT",
    "OBJECT": "JSON",
    "ARRAY": "JSON",
    "VARIANT": "JSON",
}


def test_every_overload_of_the_registry_is_called_here() -> None:
    assert set(CALLS) == {(fn.name, o.arity) for fn in FUNCTIONS.values() for o in fn.overloads}


@pytest.mark.parametrize(("name", "arity"), sorted(CALLS))
def test_every_function_and_overload_answers_from_sql(con: duckdb.DuckDBPyConnection, name: str, arity: int) -> None:
    call, _, source = CALLS[name, arity].partition(" FROM ")
    inner = f"SELECT {call} AS v" + (f" FROM {source}" if source else "")
    value, kind = con.execute(f"SELECT v, typeof(v) FROM ({inner})").fetchone()
    overload = FUNCTIONS[name].overload(arity)
    expected = local.VECTOR_RETURNS.get(name) or TYPES[overload.returns]
    assert kind == expected
    if name == "ai_complete" and arity == 5:  # show_details: the detail object
        assert json.loads(value)["choices"]
    else:
        assert value is not None


def test_values_match_the_snowflake_route(con: duckdb.DuckDBPyConnection, engine: FakeEngine) -> None:
    assert one(con, "SELECT complete('llama3.1-8b', 'hi there')") == "echo:hi there"
    assert json.loads(one(con, "SELECT ai_classify('I will travel', ['travel', 'cooking'])")) == {"labels": ["travel"]}
    assert one(con, "SELECT count_tokens('llama3.1-8b', 'one two three')") == 3
    assert one(con, "SELECT snowflake.cortex.complete('llama3.1-8b', 'x')") == "echo:x"
    assert one(con, "SELECT SPCS_LLM.LLM.COMPLETE('llama3.1-8b', 'x')") == "echo:x"


def test_nulls_and_the_error_policy(con: duckdb.DuckDBPyConnection, engine: FakeEngine) -> None:
    assert con.execute("SELECT sentiment(NULL), complete('llama3.1-8b', NULL)").fetchone() == (None, None)
    assert engine.calls == []  # a NULL row costs no model call
    assert one(con, "SELECT try_complete('no-such-model', 'hi')") is None
    assert one(con, "SELECT ai_complete('no-such-model', 'hi')") is None
    with pytest.raises(duckdb.Error, match='unknown model "no-such-model"'):
        con.execute("SELECT complete('no-such-model', 'hi')").fetchall()
    with pytest.raises(duckdb.Error, match="invalid options object"):
        con.execute(
            "SELECT complete('llama3.1-8b', [{'role': 'user', 'content': 'hi'}], {'guardrails': true})"
        ).fetchall()
    with pytest.raises(duckdb.Error, match="invalid number of categories: 1"):
        con.execute("SELECT classify_text('x', ['only'])").fetchall()


def test_a_10k_row_csv_goes_through_in_order(tmp_path: Path) -> None:
    engine = FakeEngine("fake-model", context_window=4096, delay=0.001)  # a delay, to see batches overlap
    con = local.connect(app=_app(engine), max_batch_rows=64)
    csv = tmp_path / "reviews.csv"
    csv.write_text("id,review\n" + "".join(f"{i},review number {i}\n" for i in range(10_000)), encoding="utf-8")
    rows = con.execute(f"SELECT id, complete('llama3.1-8b', review) FROM '{csv}' ORDER BY id").fetchall()
    assert rows == [(i, f"echo:review number {i}") for i in range(10_000)]
    assert len(engine.calls) == 10_000
    assert engine.peak_in_flight > 1  # batches went out concurrently
    local.close(con)


def test_ai_agg_is_a_real_aggregate_with_group_by(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT g, ai_agg(r, 'Summarize') FROM (VALUES (1, 'a'), (1, 'b'), (2, NULL), (2, 'c')) "
        "v(g, r) GROUP BY g ORDER BY g"
    ).fetchall()
    assert rows == [(1, "echo:[1] a\n\n[2] b"), (2, "echo:[1] c")]  # NULLs skipped, as Snowflake's aggregates do
    deployed = one(con, "SELECT SPCS_LLM.LLM.AI_AGG(list(r), 'Summarize') FROM (VALUES ('a'), ('b')) v(r)")
    assert deployed == "echo:[1] a\n\n[2] b"  # the deployed form takes ARRAY_AGG(col)


def test_embeddings_are_duckdb_arrays(con: duckdb.DuckDBPyConnection) -> None:
    same, other = con.execute(
        "SELECT array_cosine_similarity(embed_text_768('e5-base-v2', 'a cat'), "
        "embed_text_768('e5-base-v2', 'a cat')), array_cosine_similarity("
        "embed_text_768('e5-base-v2', 'a cat'), embed_text_768('e5-base-v2', 'the stock market'))"
    ).fetchone()
    assert same == pytest.approx(1.0, abs=1e-6)
    assert other < same


def _snowflake_examples() -> list[str]:
    lines = [line for line in EXAMPLES.read_text(encoding="utf-8").splitlines() if not line.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]


@pytest.mark.parametrize("sql", _snowflake_examples())
def test_cortex_documentation_examples_run_as_written(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    con.execute(
        "CREATE OR REPLACE TABLE reviews AS SELECT * FROM (VALUES ('Great pizza, cold soup.', 'p1'), "
        "('Slow service.', 'p2'), ('Loved it', 'p1')) v(review_content, product_id)"
    )
    con.execute("CREATE OR REPLACE TABLE products AS SELECT * FROM (VALUES ('kettle'), ('lamp')) v(name)")
    for statement in transpile(sql):
        rows = con.execute(statement).fetchall()
        assert rows and all(value is not None for row in rows for value in row)


def test_the_dialect_is_snowflake_when_a_query_names_cortex_or_the_deployed_schema() -> None:
    assert is_snowflake("select snowflake.cortex.sentiment(x) from t", local.DEFAULT_SCHEMAS)
    assert is_snowflake("SELECT SPCS_LLM.LLM.COMPLETE('m', x) FROM t", local.DEFAULT_SCHEMAS)
    assert not is_snowflake("SELECT sentiment(x) FROM 'reviews.csv'", local.DEFAULT_SCHEMAS)


def test_vector_cosine_similarity_is_a_similarity_not_a_distance(con: duckdb.DuckDBPyConnection) -> None:
    (sql,) = transpile(
        "SELECT VECTOR_COSINE_SIMILARITY(SNOWFLAKE.CORTEX.EMBED_TEXT_768('e5-base-v2', 'x'), "
        "SNOWFLAKE.CORTEX.EMBED_TEXT_768('e5-base-v2', 'x')::VECTOR(FLOAT, 768))"
    )
    assert one(con, sql) == pytest.approx(1.0, abs=1e-6)


def test_translate_stays_duckdbs_string_function_unqualified(con: duckdb.DuckDBPyConnection) -> None:
    assert one(con, "SELECT translate('abc', 'a', 'x')") == "xbc"
    assert one(con, "SELECT snowflake.cortex.translate('hola', 'es', 'en')") == "echo:hola"


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `spcs-llm serve` (fake engine) on loopback."""
    from tests.integration.conftest import _free_port

    port = _free_port()
    config = tmp_path_factory.mktemp("srv") / "fake.toml"
    config.write_text(
        '[engine]\nkind = "fake"\n\n[[embeddings]]\nkind = "fake"\nmodel = "fake-embed-768"\ndimension = 768\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "spcs_llm", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(base, timeout_s=60, still_running=lambda: proc.poll() is None)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_url_mode_sends_rows_to_a_running_server(fake_server: str) -> None:
    con = local.connect(fake_server)
    try:
        rows = con.execute(
            "SELECT i, snowflake.cortex.complete('llama3.1-8b', 'row ' || i) FROM range(200) t(i) ORDER BY i"
        ).fetchall()
        assert rows == [(i, f"echo:row {i}") for i in range(200)]
        with pytest.raises(duckdb.Error, match='unknown model "nope"'):
            con.execute("SELECT complete('nope', 'x')").fetchall()
    finally:
        local.close(con)


def test_a_server_that_is_down_names_the_url_and_how_to_start_one() -> None:
    from tests.integration.conftest import _free_port

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(FunctionError, match=f"cannot reach the spcs-llm service at {url}.*spcs-llm serve"):
        BatchClient(url)


def _sql(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spcs_llm", "sql", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_sql_command_runs_snowflake_sql_on_a_csv_and_writes_csv(fake_server: str, tmp_path: Path) -> None:
    (tmp_path / "reviews.csv").write_text("review\ngood\nbad\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    done = _sql(
        "--url",
        fake_server,
        "--table",
        f"reviews={tmp_path / 'reviews.csv'}",
        "-c",
        "SELECT review, SNOWFLAKE.CORTEX.COMPLETE('llama3.1-8b', CONCAT('Say: ', review)) AS answer "
        "FROM reviews ORDER BY review",
        "--output",
        "csv",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").splitlines() == ["review,answer", "bad,echo:Say: bad", "good,echo:Say: good"]


def test_sql_command_prints_a_table_and_reads_a_file(fake_server: str, tmp_path: Path) -> None:
    script = tmp_path / "q.sql"
    script.write_text(
        "CREATE TABLE t AS SELECT 'hi' AS x;\nSELECT SNOWFLAKE.CORTEX.SENTIMENT(x) AS s FROM t;\n", encoding="utf-8"
    )
    done = _sql("--url", fake_server, str(script))
    assert done.returncode == 0, done.stderr
    assert "│" in done.stdout and " s " in done.stdout and "double" in done.stdout


def test_sql_command_errors_are_one_line(fake_server: str) -> None:
    done = _sql("--url", fake_server, "-c", "SELECT SNOWFLAKE.CORTEX.COMPLETE('nope', 'x')")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ['spcs-llm sql: Invalid Input Error: unknown model "nope"']
    down = _sql("--url", "http://127.0.0.1:9", "-c", "SELECT 1")
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert "cannot reach the spcs-llm service at http://127.0.0.1:9" in down.stderr
