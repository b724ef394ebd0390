"""The Usage page under AppTest: over HTTP against a real ``spcs-llm serve --engine fake`` (GET /usage), and
against a fake Snowpark session for the USAGE_HISTORY view (SQL parsed as Snowflake's)."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest
import sqlglot
from spcs_llm_app.snowpark_backend import SnowparkBackend  # apps/ is on sys.path (conftest)
from spcs_llm_app.usage_page import usage_page
from streamlit.testing.v1 import AppTest

from .conftest import APPS


def _charts(at: AppTest) -> list[Any]:
    return at.get("vega_lite_chart")


def test_usage_page_shows_todays_tokens_from_the_server(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {"data": [[0, "llama3.1-8b", "count these words"], [1, "llama3.1-8b", "and these"]]}
    headers = {
        "sf-external-function-current-query-id": "q-usage",
        "sf-context-current-user": "ALICE",
        "sf-context-current-role": "ANALYST",
    }
    assert httpx.post(f"{fake_server}/functions/complete", json=rows, headers=headers).status_code == 200
    monkeypatch.setenv("SPCS_LLM_URL", fake_server)
    at = AppTest.from_file(str(APPS / "streamlit_app.py"), default_timeout=60).run()
    at.sidebar.radio(key="page").set_value("Usage").run()
    at.selectbox(key="usage_split").set_value("Role").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    frame = at.dataframe[0].value
    today = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")
    analyst = frame[(frame["day"] == today) & (frame["role"] == "ANALYST")]
    assert int(analyst["tokens"].sum()) > 0 and int(analyst["rows"].sum()) >= 2
    assert len(_charts(at)) == 1  # tokens; the fake server has no credit rate, which the page says
    assert any("credits_per_node_hour" in c.value for c in at.caption)


class _Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def collect(self) -> list[tuple[Any, ...]]:
        return self.rows


class UsageSession:
    """Answers the page's USAGE_HISTORY query the way Snowflake would for two days of two roles."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, list[Any] | None]] = []

    def get_current_database(self) -> str:
        return "APPDB"

    def get_current_schema(self) -> str:
        return "LLM"

    def sql(self, query: str, params: list[Any] | None = None) -> _Result:
        self.queries.append((query, params))
        if '"role"' in query:
            return _Result(
                [
                    ("2026-11-27", "ANALYST", 10, 1200, 0.5),
                    ("2026-11-28", "ANALYST", 4, 300, 0.1),
                    ("2026-11-28", "OPS", 2, 100, 0.05),
                ]
            )
        return _Result([("2026-11-27", 10, 1200, 0.5), ("2026-11-28", 6, 400, 0.15)])


def _page() -> None:
    import streamlit as st
    from spcs_llm_app.snowpark_backend import SnowparkBackend
    from spcs_llm_app.usage_page import usage_page

    usage_page(SnowparkBackend(st.session_state.session))


def test_usage_page_charts_tokens_and_credits_from_the_usage_history_view() -> None:
    session = UsageSession()
    at = AppTest.from_function(_page, default_timeout=30)
    at.session_state.session = session
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="usage_split").set_value("Role").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert len(_charts(at)) == 2  # tokens and estimated credits
    frame = at.dataframe[0].value
    assert list(frame.columns) == ["day", "role", "rows", "tokens", "credits"] and frame["tokens"].sum() == 1600
    query, params = session.queries[-1]
    assert params == [7]
    tree = sqlglot.parse_one(query.replace("?", "7"), read="snowflake")
    assert [t.sql("snowflake") for t in tree.find_all(sqlglot.exp.Table)] == ["APPDB.LLM.USAGE_HISTORY"]
    assert [c.name for c in tree.find_all(sqlglot.exp.Column) if c.name.endswith("_NAME")] == ["ROLE_NAME"]


def test_backend_usage_without_a_split() -> None:
    frame = SnowparkBackend(UsageSession()).usage(30, None)
    assert list(frame.columns) == ["day", "rows", "tokens", "credits"] and frame["tokens"].tolist() == [1200, 400]
    assert callable(usage_page)
