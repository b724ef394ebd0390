"""The pages. Each takes a ``Backend`` and never asks where it runs (only what it can do)."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from .backend import Backend, BackendError, FunctionSpec, argument_rows, run_in_batches
from .sql_examples import examples
from .usage_page import usage_page

DEFAULT_BATCH_ROWS = 64  # rows per request, like the service functions' MAX_BATCH_ROWS
MAX_TABLE_ROWS = 10_000  # rows read from a table into the app
ONE_VALUE = "(one value for every row)"


def chat_page(backend: Backend) -> None:
    st.header("Chat")
    models = backend.models()
    if not models:
        st.error("No models are served.")
        return
    model = st.sidebar.selectbox("Model", models, key="chat_model")
    temperature = st.sidebar.slider("Temperature", 0.0, 1.0, 0.0, 0.05, key="chat_temperature")
    max_tokens = st.sidebar.number_input("Max tokens", 1, 32768, 512, key="chat_max_tokens")
    if not backend.streams:
        st.caption("Answers arrive whole: a Snowflake SQL function returns one value per row and cannot stream.")
    history: list[dict[str, str]] = st.session_state.setdefault("chat_history", [])
    for message in history:
        st.chat_message(message["role"]).markdown(message["content"])
    prompt = st.chat_input("Ask something")
    if not prompt:
        return
    history.append({"role": "user", "content": prompt})
    st.chat_message("user").markdown(prompt)
    with st.chat_message("assistant"):
        try:
            answer = st.write_stream(
                backend.chat_stream(model, history, temperature=temperature, max_tokens=int(max_tokens))
            )
        except BackendError as exc:
            history.pop()
            st.error(str(exc))
            return
    history.append({"role": "assistant", "content": str(answer)})


def _load_rows(backend: Backend) -> pd.DataFrame | None:
    sources = ["Upload a CSV"] + (["A table"] if backend.supports_tables else [])
    source = st.radio("Rows from", sources, horizontal=True, key="batch_source")
    if source == "A table":
        table = st.text_input("Table (DB.SCHEMA.TABLE)", key="batch_table")
        limit = st.number_input("At most this many rows", 1, MAX_TABLE_ROWS, 1000, key="batch_limit")
        if not table:
            return None
        cache = st.session_state.setdefault("table_cache", {})  # every widget change reruns the page
        if (table, limit) not in cache:
            cache.clear()
            cache[(table, limit)] = backend.read_table(table, int(limit))
        return cache[(table, limit)]
    upload = st.file_uploader("CSV file with a header row", type=["csv"], key="batch_csv")
    if upload is None:
        return None
    try:
        return pd.read_csv(io.BytesIO(upload.getvalue()), dtype=str, keep_default_na=True)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"{upload.name} is not a readable CSV: {exc}") from exc


def _argument_sources(fn: FunctionSpec, frame: pd.DataFrame, models: list[str]) -> list[tuple[str, object]]:
    """For each argument: a column of the data, or one value for every row (a served model for ``model``)."""
    sources: list[tuple[str, object]] = []
    columns = [str(c) for c in frame.columns]
    for i, (name, sql_type) in enumerate(fn.args):
        key = f"{fn.name}_{len(fn.args)}_{i}"
        if name.lower() == "model" and models:
            sources.append(("value", st.selectbox(f"{name} ({sql_type})", models, key=f"arg_{key}")))
            continue
        choice = st.selectbox(
            f"{name} ({sql_type})", [*columns, ONE_VALUE], index=min(i, len(columns) - 1), key=f"arg_{key}"
        )
        if choice == ONE_VALUE:
            sources.append(("value", st.text_input(f"Value of {name}", key=f"val_{key}")))
        else:
            sources.append(("column", choice))
    return sources


def batch_page(backend: Backend) -> None:
    st.header("Batch")
    specs = backend.functions()
    if not specs:
        st.error("No functions found.")
        return
    first = next((i for i, s in enumerate(specs) if s.name == "COMPLETE"), 0)  # the common case first
    fn = st.selectbox("Function", specs, index=first, format_func=lambda s: s.signature, key="batch_function")
    try:
        frame = _load_rows(backend)
    except BackendError as exc:
        st.error(str(exc))
        return
    if frame is None:
        return
    st.caption(f"{len(frame)} rows")
    st.dataframe(frame.head(20))
    sources = _argument_sources(fn, frame, backend.models())
    batch_rows = int(st.number_input("Rows per request", 1, 4096, DEFAULT_BATCH_ROWS, key="batch_rows"))
    if st.button("Run", key="batch_run"):
        st.session_state.pop("batch_result", None)
        bar = st.progress(0.0, text="starting")
        try:
            rows = argument_rows(frame, sources)
            values = run_in_batches(
                backend,
                fn,
                rows,
                batch_rows,
                lambda done, total: bar.progress(done / total, text=f"{done} / {total} rows"),
            )
        except BackendError as exc:
            st.error(str(exc))
            return
        result = frame.copy()
        result[fn.name] = values
        st.session_state.batch_result = (fn.name, result)
    if "batch_result" in st.session_state:  # kept so that the download's rerun does not wipe the table
        _show_result(*st.session_state.batch_result)


def _show_result(name: str, result: pd.DataFrame) -> None:
    st.success(f"{len(result)} rows answered")
    st.dataframe(result)
    st.download_button(
        "Download CSV",
        result.to_csv(index=False).encode(),
        f"{name.lower()}_results.csv",
        "text/csv",
        key="batch_download",
    )


def sql_page(backend: Backend) -> None:
    st.header("SQL examples")
    st.markdown(
        "Keep your Cortex SQL and change only the schema: `SNOWFLAKE.CORTEX.COMPLETE(...)` becomes "
        "`<your schema>.COMPLETE(...)`."
    )
    prefix = st.text_input("Schema prefix", backend.sql_prefix, key="sql_prefix")
    for title, sql in examples(prefix, backend.functions()):
        st.subheader(title)
        st.code(sql, language="sql")


PAGES = {"Chat": chat_page, "Batch": batch_page, "SQL examples": sql_page, "Usage": usage_page}
