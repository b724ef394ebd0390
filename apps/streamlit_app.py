"""spcs-llm's Streamlit app: chat, batch over a CSV or a table, SQL examples, and usage.

Run locally with ``streamlit run apps/streamlit_app.py`` next to ``spcs-llm serve`` (``SPCS_LLM_URL``, default
http://127.0.0.1:8001). In Streamlit in Snowflake it finds the active Snowpark session and calls the deployed
SQL functions instead (``SPCS_LLM_SCHEMA``, default the app's own schema).
"""

from __future__ import annotations

import streamlit as st
from spcs_llm_app import BackendError, pick_backend
from spcs_llm_app.pages import PAGES

st.set_page_config(page_title="spcs-llm", layout="wide")
st.sidebar.title("spcs-llm")
page = st.sidebar.radio("Page", list(PAGES), key="page")
if "backend" not in st.session_state:  # one per browser session: a Snowpark session is per viewer
    st.session_state.backend = pick_backend()
current = st.session_state.backend
st.sidebar.caption(f"Answers from {current.where}")
try:
    PAGES[page](current)
except BackendError as exc:
    st.error(str(exc))
