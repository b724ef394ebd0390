"""The Snowpark backend against a fake session that records SQL and plays Snowflake's part for the queries the
app sends (FLATTEN over a bound JSON array, SHOW USER FUNCTIONS). No Snowflake account is reachable here."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
import sqlglot
from spcs_llm_app import BackendError, FunctionSpec, choose, run_in_batches  # apps/ is on sys.path (conftest)
from spcs_llm_app.snowpark_backend import SnowparkBackend, identifier
from streamlit.testing.v1 import AppTest

from .conftest import APPS

COMPLETE2 = FunctionSpec("COMPLETE", (("model", "VARCHAR"), ("prompt", "VARCHAR")), "VARCHAR")


class Row(tuple):
    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields)  # type: ignore[attr-defined]


class Result:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def collect(self) -> list[Any]:
        return self.rows

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["ID", "TEXT"])


class FakeSession:
    """Records (sql, params); answers a function over FLATTEN with ``f(args)`` per element, in order."""

    def __init__(self, fail: str | None = None) -> None:
        self.queries: list[tuple[str, list[Any] | None]] = []
        self.fail = fail

    def get_current_database(self) -> str:
        return "APPDB"

    def get_current_schema(self) -> str:
        return "LLM"

    def sql(self, query: str, params: list[Any] | None = None) -> Result:
        self.queries.append((query, params))
        if self.fail:
            raise RuntimeError(self.fail)
        if "FLATTEN" in query:
            return Result([(f"answer:{args[1]}" if args[1] is not None else None,) for args in json.loads(params[0])])
        if "PARSE_JSON(?)::ARRAY" in query:
            content = json.loads(params[1])[-1]["content"]
            return Result([(json.dumps({"choices": [{"messages": f"answer:{content}"}], "model": params[0]}),)])
        if query.startswith("SHOW USER FUNCTIONS"):
            shown = ["COMPLETE(VARCHAR, VARCHAR) RETURN VARCHAR", "COMPLETE(VARCHAR, ARRAY, OBJECT) RETURN VARCHAR"]
            return Result([_row(name="COMPLETE", arguments=a) for a in shown])
        return Result([(1, "a"), (2, "b")])


def _row(**fields: Any) -> Row:
    row = Row(fields.values())
    row.fields = fields  # type: ignore[attr-defined]
    return row


def _parses(query: str) -> None:
    sqlglot.parse_one(query.replace("?", "'bound'"), read="snowflake")


def test_rows_are_bound_not_spliced_and_answers_keep_their_order() -> None:
    session = FakeSession()
    backend = SnowparkBackend(session)
    rows = [["llama3.1-8b", f"row {i}"] for i in range(5)] + [["llama3.1-8b", "O'Brien'); DROP TABLE t; --"]]
    progress: list[tuple[int, int]] = []
    values = run_in_batches(backend, COMPLETE2, rows, 4, lambda d, t: progress.append((d, t)))
    assert values == [f"answer:row {i}" for i in range(5)] + ["answer:O'Brien'); DROP TABLE t; --"]
    assert progress == [(4, 6), (6, 6)]
    query, params = session.queries[0]
    assert query == (
        "SELECT APPDB.LLM.COMPLETE(f.value[0]::VARCHAR, f.value[1]::VARCHAR) AS result "
        "FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f ORDER BY f.index"
    )
    assert json.loads(params[0]) == rows[:4] and "O'Brien" not in session.queries[1][0]
    _parses(query)


def test_chat_calls_complete_with_messages_and_options_and_answers_whole() -> None:
    session = FakeSession()
    backend = SnowparkBackend(session, schema="ANALYTICS.LLM")
    messages = [{"role": "user", "content": "hi"}]
    assert list(backend.chat_stream("mistral-7b", messages, temperature=0.3, max_tokens=99)) == ["answer:hi"]
    query, params = session.queries[0]
    assert query == "SELECT ANALYTICS.LLM.COMPLETE(?, PARSE_JSON(?)::ARRAY, PARSE_JSON(?)::OBJECT)"
    assert params[0] == "mistral-7b" and json.loads(params[1]) == messages
    assert json.loads(params[2]) == {"temperature": 0.3, "max_tokens": 99}
    assert backend.streams is False
    _parses(query)


def test_functions_from_show_when_the_registry_is_not_importable() -> None:
    session = FakeSession()
    specs = SnowparkBackend(session, use_registry=False).functions()
    assert session.queries[0][0] == "SHOW USER FUNCTIONS IN SCHEMA APPDB.LLM"
    assert specs == [
        FunctionSpec("COMPLETE", (("arg1", "VARCHAR"), ("arg2", "VARCHAR")), "VARCHAR"),
        FunctionSpec("COMPLETE", (("arg1", "VARCHAR"), ("arg2", "ARRAY"), ("arg3", "OBJECT")), "VARCHAR"),
    ]


def test_read_table_checks_the_name_and_limits_rows() -> None:
    session = FakeSession()
    backend = SnowparkBackend(session)
    frame = backend.read_table('RAW."Customer Reviews"', 50)
    assert list(frame["TEXT"]) == ["a", "b"]
    assert session.queries[0][0] == 'SELECT * FROM RAW."Customer Reviews" LIMIT 50'
    _parses(session.queries[0][0])
    with pytest.raises(BackendError, match="is not a Snowflake identifier"):
        backend.read_table("reviews; DROP TABLE reviews", 10)
    assert len(session.queries) == 1  # the bad name never reached SQL


@pytest.mark.parametrize("name", ["MYDB.LLM", 'a."b c"', "_x$1"])
def test_identifier_accepts(name: str) -> None:
    assert identifier(name, "schema") == name


@pytest.mark.parametrize("name", ["", "a.b.c.d", "1abc", "a b", "x'--", 'a."b'])
def test_identifier_rejects(name: str) -> None:
    with pytest.raises(BackendError, match="not a Snowflake identifier"):
        identifier(name, "schema")


def test_snowflake_errors_reach_the_user() -> None:
    backend = SnowparkBackend(FakeSession(fail='Remote service error: unknown model "nope"'))
    with pytest.raises(BackendError, match='unknown model "nope"'):
        backend.run_function(COMPLETE2, [["nope", "x"]])


def test_the_app_in_snowflake_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole app, with an active (fake) Snowpark session: chat answers whole, from the deployed COMPLETE."""
    session = FakeSession()
    monkeypatch.setattr(choose, "active_session", lambda: session)
    at = AppTest.from_file(str(APPS / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.sidebar.caption[0].value == "Answers from Snowflake: APPDB.LLM"
    at.chat_input[0].set_value("hello").run()
    assert [m.markdown[0].value for m in at.chat_message] == ["hello", "answer:hello"]
    assert session.queries[-1][1][0] == "llama3.1-8b"
    at.sidebar.radio(key="page").set_value("Batch").run()
    assert at.radio(key="batch_source").options == ["Upload a CSV", "A table"]
    at.radio(key="batch_source").set_value("A table").run()
    at.text_input(key="batch_table").set_value("RAW.REVIEWS").run()
    at.selectbox(key="arg_COMPLETE_2_1").set_value("TEXT").run()
    at.button(key="batch_run").click().run()
    assert not at.exception and not at.error
    assert list(at.dataframe[-1].value["COMPLETE"]) == ["answer:a", "answer:b"]
    reads = [q for q, _ in session.queries if q.startswith("SELECT * FROM")]
    assert reads == ["SELECT * FROM RAW.REVIEWS LIMIT 1000"]  # read once, though the page reran several times
