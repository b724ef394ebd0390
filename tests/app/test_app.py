"""The whole app under Streamlit's AppTest, talking over HTTP to a real ``spcs-llm serve --engine fake``."""

from __future__ import annotations

import math
import re

import pytest
import sqlglot
from streamlit.testing.v1 import AppTest

from spcs_llm.functions import FUNCTIONS

from .conftest import APPS, free_port

CSV = b'id,text\n1,alpha\n2,\n3,gamma delta\n4,O\'Brien says "hi"\n5,epsilon\n'


@pytest.fixture
def app(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("SPCS_LLM_URL", fake_server)
    at = AppTest.from_file(str(APPS / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return at


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _messages(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, " ".join(md.value for md in m.markdown)) for m in at.chat_message]


def test_chat_answers_and_keeps_the_conversation(app: AppTest) -> None:
    assert app.sidebar.selectbox(key="chat_model").value == "fake-model"
    app.chat_input[0].set_value("hello there").run()
    app.chat_input[0].set_value("and again").run()
    assert not app.exception and not app.error
    assert _messages(app) == [
        ("user", "hello there"),
        ("assistant", "echo:hello there"),
        ("user", "and again"),
        ("assistant", "echo:and again"),
    ]


def test_chat_error_is_shown_not_raised(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPCS_LLM_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    at = AppTest.from_file(str(APPS / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "cannot reach the spcs-llm server" in at.error[0].value


def _batch(app: AppTest, csv: bytes, batch_rows: int) -> AppTest:
    app.sidebar.radio(key="page").set_value("Batch").run()
    app.file_uploader(key="batch_csv").set_value(("rows.csv", csv, "text/csv")).run()
    app.number_input(key="batch_rows").set_value(batch_rows).run()
    return app


def test_batch_over_a_csv_gives_one_result_per_row_in_order(app: AppTest) -> None:
    _batch(app, CSV, batch_rows=2)  # 5 rows in 3 requests
    assert app.selectbox(key="batch_function").value.name == "COMPLETE"
    app.button(key="batch_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    result = app.dataframe[-1].value
    assert list(result["id"]) == ["1", "2", "3", "4", "5"]
    answers = list(result["COMPLETE"])
    assert answers[0] == "echo:alpha" and answers[2] == "echo:gamma delta"
    assert answers[3] == 'echo:O\'Brien says "hi"' and answers[4] == "echo:epsilon"
    assert _is_null(answers[1])  # NULL in, NULL out (the dataframe shows None as NaN)
    assert app.success[0].value == "5 rows answered"
    assert app.get("download_button")  # the results can be downloaded
    app.run()  # any rerun (a download is one) keeps the results on the page
    kept = list(app.dataframe[-1].value["COMPLETE"])
    assert kept[0] == "echo:alpha" and _is_null(kept[1]) and kept[2:] == answers[2:]


def test_batch_with_one_value_for_every_row(app: AppTest) -> None:
    _batch(app, CSV, batch_rows=64)
    app.selectbox(key="arg_COMPLETE_2_1").set_value("(one value for every row)").run()
    app.text_input(key="val_COMPLETE_2_1").set_value("same prompt").run()
    app.button(key="batch_run").click().run()
    assert list(app.dataframe[-1].value["COMPLETE"]) == ["echo:same prompt"] * 5


LONG = " ".join(["word"] * 5000).encode()  # over the served context (ctx_per_slot, 2048 by default)


def test_batch_error_from_the_server_is_shown(app: AppTest) -> None:
    _batch(app, b"text\nshort\n" + LONG + b"\n", batch_rows=64)
    app.button(key="batch_run").click().run()
    assert not app.exception
    assert re.fullmatch(r"COMPLETE failed \(400\): max tokens of \d+ exceeded", app.error[0].value)  # whole batch


def test_try_complete_gives_null_for_the_bad_row(app: AppTest) -> None:
    _batch(app, b"text\nshort\n" + LONG + b"\n", batch_rows=64)
    box = app.selectbox(key="batch_function")
    box.set_value(next(s for s in box.options if s.startswith("TRY_COMPLETE(model VARCHAR, prompt VARCHAR)"))).run()
    app.button(key="batch_run").click().run()
    assert not app.exception and not app.error
    answers = list(app.dataframe[-1].value["TRY_COMPLETE"])
    assert answers[0] == "echo:short" and _is_null(answers[1])


def test_function_list_is_the_server_registry(app: AppTest) -> None:
    app.sidebar.radio(key="page").set_value("Batch").run()
    shown = app.selectbox(key="batch_function").options
    expected = [
        f"{fn.name.upper()}{o.signature} → {o.returns}"
        for fn in FUNCTIONS.values()
        for o in sorted(fn.overloads, key=lambda o: o.arity)
    ]
    assert shown == expected


def test_sql_examples_use_the_prefix_and_parse(app: AppTest) -> None:
    app.sidebar.radio(key="page").set_value("SQL examples").run()
    app.text_input(key="sql_prefix").set_value("ANALYTICS.LLM").run()
    blocks = [c.value for c in app.code]
    assert len(blocks) == sum(len(fn.overloads) for fn in FUNCTIONS.values())
    for sql in blocks:
        assert "ANALYTICS.LLM." in sql and "SNOWFLAKE.CORTEX" not in sql
        sqlglot.parse_one(sql, read="snowflake")  # raises on SQL that Snowflake's grammar rejects
