"""The Usage page: tokens and estimated credits per day, optionally split by user, role, function or model.

Locally it reads the server's ``GET /usage``; in Snowflake, the deployed ``USAGE_HISTORY`` view. Credits are an
estimate (node time apportioned by engine busy time, priced at the pool's rate), not Cortex's per-token bill.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .backend import Backend, BackendError

WINDOWS = {"Last day": 1, "Last 7 days": 7, "Last 30 days": 30, "Last 90 days": 90}
SPLITS = {"Nothing": None, "User": "user", "Role": "role", "Function": "function", "Model": "model"}


def _chart(frame: pd.DataFrame, value: str, split: str | None) -> pd.DataFrame:
    """Days down, one column per group (or one column), summed."""
    if split is None:
        return frame.groupby("day")[[value]].sum()
    return frame.pivot_table(index="day", columns=split, values=value, aggfunc="sum", fill_value=0)


def usage_page(backend: Backend) -> None:
    st.header("Usage")
    window = st.selectbox("Window", list(WINDOWS), index=1, key="usage_window")
    split = SPLITS[st.selectbox("Split by", list(SPLITS), key="usage_split")]
    try:
        frame = backend.usage(WINDOWS[window], split)
    except BackendError as exc:
        st.error(str(exc))
        return
    if frame.empty:
        st.info("No usage recorded in this window.")
        return
    st.metric("Tokens", f"{int(frame['tokens'].sum()):,}")
    st.subheader("Tokens per day")
    st.bar_chart(_chart(frame, "tokens", split))
    st.subheader("Estimated credits per day")
    if frame["credits"].isna().all():
        st.caption("No credit estimate: set [usage] credits_per_node_hour to the compute pool's rate.")
    else:
        st.bar_chart(_chart(frame.fillna({"credits": 0.0}), "credits", split))
        st.caption("Estimated: the pool's node time apportioned by engine busy time, not a per-token price.")
    st.dataframe(frame, hide_index=True)
