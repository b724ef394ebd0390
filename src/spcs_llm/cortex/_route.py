"""Where a ``spcs_llm.cortex`` call goes: a Snowpark Column expression, one SQL query on a session, or HTTP.

- Any argument a Snowpark ``Column`` → the call of the deployed function, ``<schema>.<NAME>(...)``, as a Column
  (the DataFrame runs in Snowflake; no data leaves it).
- Plain values and a session (``session=`` or Snowpark's active session) → the same expression with literals,
  evaluated in one query (``SELECT <schema>.<NAME>(...)``), as snowflake-ml-python does.
- Plain values and no session → the spcs-llm service's HTTP routes at ``SPCS_LLM_URL`` (default
  ``http://127.0.0.1:8001``, what ``make serve`` listens on), with Snowflake-shaped batches and Snowflake's retry
  policy (``spcs_llm.client.BatchClient``). ``SPCS_LLM_API_KEY``, when set, is sent as ``Authorization: Bearer``.

The schema is ``SPCS_LLM_SCHEMA`` (default ``SPCS_LLM.LLM``, the deploy's default), or ``configure(schema=...)``.
Snowpark is imported only when a Column or a session is involved: the HTTP path needs no Snowflake package.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..client import BatchClient

DEFAULT_URL = "http://127.0.0.1:8001"
DEFAULT_SCHEMA = "SPCS_LLM.LLM"

_settings: dict[str, str | None] = {"url": None, "schema": None}
_clients: dict[str, BatchClient] = {}
_lock = threading.Lock()


def configure(*, url: str | None = None, schema: str | None = None) -> None:
    """Set the service URL and/or the deployed schema for this process (they override the environment)."""
    if schema is not None and len(schema.split(".")) != 2:
        raise ValueError(f"schema {schema!r} must be DATABASE.SCHEMA")
    _settings.update({k: v for k, v in {"url": url, "schema": schema}.items() if v is not None})


def service_url() -> str:
    return (_settings["url"] or os.environ.get("SPCS_LLM_URL") or DEFAULT_URL).rstrip("/")


def schema() -> str:
    return _settings["schema"] or os.environ.get("SPCS_LLM_SCHEMA") or DEFAULT_SCHEMA


def function_name(name: str) -> str:
    """The deployed function's qualified name, e.g. ``SPCS_LLM.LLM.SUMMARIZE``."""
    return f"{schema()}.{name.upper()}"


def auth_headers() -> dict[str, str]:
    key = os.environ.get("SPCS_LLM_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def is_column(value: Any) -> bool:
    """True for a Snowpark Column (without importing Snowpark when it is not installed or not used)."""
    if not type(value).__module__.startswith("snowflake.snowpark"):
        return False
    from snowflake.snowpark import Column

    return isinstance(value, Column)


def active_session(session: Any) -> Any:
    """``session``, else Snowpark's active session, else None (then calls go over HTTP)."""
    if session is not None:
        return session
    try:
        from snowflake.snowpark import context
    except ImportError:
        return None
    try:
        return context.get_active_session()
    except Exception:  # SnowparkSessionException: no default session (or several)
        return None


def as_column(value: Any) -> Any:
    from snowflake.snowpark import functions

    return value if is_column(value) else functions.lit(value)


def call_expression(name: str, *args: Any) -> Any:
    """The Column ``<schema>.<NAME>(args...)``; plain values become literals."""
    from snowflake.snowpark import functions

    return functions.builtin(function_name(name))(*(as_column(a) for a in args))


def evaluate(session: Any, expression: Any) -> Any:
    """One query: the expression over a one-row DataFrame (snowflake-ml-python's way)."""
    from snowflake.snowpark import Row

    return session.create_dataframe([Row()]).select(expression).collect()[0][0]


def client() -> BatchClient:
    """One BatchClient per service URL, made on first use (it checks that the service answers)."""
    url = service_url()
    with _lock:
        if url not in _clients:
            _clients[url] = BatchClient(url, headers=auth_headers(), max_retries=5, backoff_s=0.5)
        return _clients[url]


def call_http(name: str, *args: Any) -> Any:
    """One row of the service function ``name`` over HTTP."""
    return client().call(name, [list(args)])[0]


def close() -> None:
    """Close the HTTP clients made so far (tests; long-lived processes need not call it)."""
    with _lock:
        for c in _clients.values():
            c.close()
        _clients.clear()


def call(name: str, session: Any, *args: Any) -> tuple[bool, Any]:
    """``(True, Column)`` when any argument is a Column; else ``(False, value)`` from SQL or HTTP."""
    if any(is_column(a) for a in args):
        return True, call_expression(name, *args)
    found = active_session(session)
    if found is not None:
        return False, evaluate(found, call_expression(name, *args))
    return False, call_http(name, *args)
