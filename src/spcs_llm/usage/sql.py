"""Snowflake SQL of the usage history: the table the service exports to, the ``USAGE_HISTORY`` view, and the
idempotent MERGE of one export.

The view has the columns of Cortex's ``CORTEX_FUNCTIONS_USAGE_HISTORY`` / ``CORTEX_FUNCTIONS_QUERY_USAGE_HISTORY``
(START_TIME, END_TIME of the hour, FUNCTION_NAME, MODEL_NAME, QUERY_ID, WAREHOUSE_ID, TOKENS, TOKEN_CREDITS), plus
USER_NAME and ROLE_NAME and this service's own counts. TOKEN_CREDITS here is an *estimate*: node time apportioned
by engine busy time (see docs/usage.md), not a per-token price.

``deploy`` runs :func:`deploy_statements` after creating the schema (the table is never dropped or replaced;
the view is replaced, so its shape follows the release).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

TABLE = "SPCS_LLM_USAGE"
VIEW = "USAGE_HISTORY"

# (table column, store column, SQL type)
COLUMNS = (
    ("FLUSH_ID", "flush_id", "VARCHAR NOT NULL"),
    ("START_TIME", "start_time", "TIMESTAMP_LTZ NOT NULL"),
    ("END_TIME", "end_time", "TIMESTAMP_LTZ NOT NULL"),
    ("USER_NAME", "user", "VARCHAR NOT NULL"),
    ("ROLE_NAME", "role", "VARCHAR NOT NULL"),
    ("QUERY_ID", "query_id", "VARCHAR NOT NULL"),
    ("FUNCTION_NAME", "function", "VARCHAR NOT NULL"),
    ("MODEL_NAME", "model", "VARCHAR NOT NULL"),
    ("ROW_COUNT", "rows", "NUMBER(38, 0)"),
    ("INPUT_TOKENS", "input_tokens", "NUMBER(38, 0)"),
    ("OUTPUT_TOKENS", "output_tokens", "NUMBER(38, 0)"),
    ("CACHED_TOKENS", "cached_tokens", "NUMBER(38, 0)"),
    ("BUSY_SECONDS", "busy_seconds", "FLOAT"),
    ("ERRORS", "errors", "NUMBER(38, 0)"),
    ("ENGINE_CALLS", "engine_calls", "NUMBER(38, 0)"),
    ("NODE_SECONDS", "node_seconds", "FLOAT"),
    ("ESTIMATED_CREDITS", "credits", "FLOAT"),
)
KEY = ("FLUSH_ID", "USER_NAME", "ROLE_NAME", "QUERY_ID", "FUNCTION_NAME", "MODEL_NAME")
_TIMES = {"START_TIME", "END_TIME"}


def ident(name: str) -> str:
    """An identifier as SQL: plain when it is a plain name, else double-quoted."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def qualified(database: str, schema: str, name: str) -> str:
    return ".".join(ident(p) for p in (database, schema, name))


def literal(value: Any) -> str:
    """A Snowflake literal. Strings escape the quote and the backslash (Snowflake reads ``\\`` as an escape)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "NULL" if not math.isfinite(value) else repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def table_ddl(database: str, schema: str, table: str = TABLE) -> str:
    cols = ",\n  ".join(f"{name} {sql_type}" for name, _, sql_type in COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, schema, table)} (\n  {cols}\n)\n"
        "COMMENT = 'spcs-llm usage history: one row per flush interval and (user, role, query, function, "
        "model); written by the service'"
    )


def view_ddl(database: str, schema: str, table: str = TABLE, view: str = VIEW, *, replace: bool = True) -> str:
    """The view; ``replace=False`` (the service's own start-up) leaves an existing one alone."""
    source = qualified(database, schema, table)
    create = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW IF NOT EXISTS"
    return f"""{create} {qualified(database, schema, view)}
COMMENT = 'spcs-llm usage by hour, shaped like CORTEX_FUNCTIONS_QUERY_USAGE_HISTORY plus USER_NAME and ROLE_NAME'
AS
SELECT
  HOUR_START AS START_TIME,
  DATEADD('HOUR', 1, HOUR_START) AS END_TIME,
  UPPER(FUNCTION_NAME) AS FUNCTION_NAME,
  MODEL_NAME,
  QUERY_ID,
  CAST(NULL AS NUMBER) AS WAREHOUSE_ID,
  USER_NAME,
  ROLE_NAME,
  SUM(INPUT_TOKENS + OUTPUT_TOKENS) AS TOKENS,
  SUM(ESTIMATED_CREDITS) AS TOKEN_CREDITS,
  SUM(INPUT_TOKENS) AS INPUT_TOKENS,
  SUM(OUTPUT_TOKENS) AS OUTPUT_TOKENS,
  SUM(CACHED_TOKENS) AS CACHED_TOKENS,
  SUM(ROW_COUNT) AS ROW_COUNT,
  SUM(ERRORS) AS ERRORS,
  SUM(ENGINE_CALLS) AS ENGINE_CALLS,
  SUM(BUSY_SECONDS) AS ENGINE_SECONDS,
  SUM(NODE_SECONDS) AS NODE_SECONDS
FROM (SELECT DATE_TRUNC('HOUR', END_TIME) AS HOUR_START, * FROM {source})
GROUP BY HOUR_START, FUNCTION_NAME, MODEL_NAME, QUERY_ID, USER_NAME, ROLE_NAME"""


def deploy_statements(database: str, schema: str, table: str = TABLE, view: str = VIEW) -> list[str]:
    """What ``deploy`` runs in the service's schema: the table (kept across deploys) and the view."""
    return [table_ddl(database, schema, table), view_ddl(database, schema, table, view)]


def _value(column: str, value: Any) -> str:
    if column in _TIMES:
        return f"TO_TIMESTAMP_LTZ({int(round(float(value) * 1000))}, 3)"
    return literal(value)


def merge_sql(table_fqn: str, rows: Sequence[dict[str, Any]]) -> str:
    """One MERGE that inserts the rows not yet in the table (matched on flush id and key): running it twice,
    or after a lost acknowledgement, adds nothing the second time."""
    if not rows:
        raise ValueError("merge_sql needs at least one row")
    names = [name for name, _, _ in COLUMNS]
    values = ",\n    ".join(
        "(" + ", ".join(_value(name, row[store]) for name, store, _ in COLUMNS) + ")" for row in rows
    )
    select = ", ".join(f"COLUMN{i + 1} AS {name}" for i, name in enumerate(names))
    on = " AND ".join(f"t.{k} = s.{k}" for k in KEY)
    return (
        f"MERGE INTO {table_fqn} AS t\nUSING (SELECT {select} FROM VALUES\n    {values}) AS s\n"
        f"ON {on}\nWHEN NOT MATCHED THEN INSERT ({', '.join(names)})\n"
        f"VALUES ({', '.join('s.' + n for n in names)})"
    )


def budget_spent_sql(
    table_fqn: str,
    since: float,
    exclude_process: str,
    *,
    user: str | None = None,
    role: str | None = None,
    function: str | None = None,
    model: str | None = None,
) -> str:
    """Tokens spent since ``since`` by rows a budget covers, written by any process but ``exclude_process``
    (this one: it counts its own tokens as they happen)."""
    where = [
        f"END_TIME >= TO_TIMESTAMP_LTZ({int(since * 1000)}, 3)",
        f"NOT STARTSWITH(FLUSH_ID, {literal(exclude_process + '-')})",
    ]
    for column, value in (("USER_NAME", user), ("ROLE_NAME", role), ("FUNCTION_NAME", function), ("MODEL_NAME", model)):
        if value is not None:
            where.append(f"LOWER({column}) = {literal(value.lower())}")
    return f"SELECT COALESCE(SUM(INPUT_TOKENS + OUTPUT_TOKENS), 0) AS SPENT FROM {table_fqn} WHERE " + " AND ".join(
        where
    )
