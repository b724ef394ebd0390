"""The in-Snowflake backend: a Snowpark session calling the deployed SQL functions.

A service function returns one value per row, so chat cannot stream here: the answer arrives whole, from the
three-argument ``COMPLETE(model, messages, options)``. Rows for the batch page travel as one bound JSON array per
chunk and are fanned out with ``FLATTEN``; Snowflake then batches them to the service as it does for any query.
Identifiers the user types (schema, table) are checked before they reach SQL; values are always bound.

Never run against a real Snowflake account: tested with a fake session that records the SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pandas as pd

from .backend import Backend, BackendError, FunctionSpec, Message, registry_specs

_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_QUALIFIED = re.compile(rf"^{_PART}(?:\.{_PART}){{0,2}}$")
USAGE_COLUMNS = {"user": "USER_NAME", "role": "ROLE_NAME", "function": "FUNCTION_NAME", "model": "MODEL_NAME"}
_SHOWN = re.compile(r"^\s*([^(]+)\((.*)\)\s+RETURN\s+(.+?)\s*$", re.IGNORECASE)


class SessionLike(Protocol):
    """The part of ``snowflake.snowpark.Session`` this backend uses."""

    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any: ...
    def get_current_database(self) -> str | None: ...
    def get_current_schema(self) -> str | None: ...


def identifier(name: str, what: str) -> str:
    """``name`` if it is a (possibly qualified, possibly quoted) Snowflake identifier, else a clear error."""
    name = name.strip()
    if not _QUALIFIED.match(name):
        raise BackendError(f'{what} {name!r} is not a Snowflake identifier such as MYDB.LLM or "My Table"')
    return name


class SnowparkBackend(Backend):
    streams = False
    supports_tables = True

    def __init__(
        self, session: SessionLike, schema: str | None = None, models: Sequence[str] = (), use_registry: bool = True
    ) -> None:
        self.session = session
        current = f"{session.get_current_database()}.{session.get_current_schema()}"
        self.sql_prefix = identifier(schema or current, "schema")
        self.where = f"Snowflake: {self.sql_prefix}"
        self._models = list(models)
        self._use_registry = use_registry

    def models(self) -> list[str]:
        return self._models

    def functions(self) -> list[FunctionSpec]:
        """The server's registry when the spcs_llm package is importable, else what the schema holds."""
        if self._use_registry:
            try:
                return registry_specs()
            except ImportError:
                pass
        rows = self.session.sql(f"SHOW USER FUNCTIONS IN SCHEMA {self.sql_prefix}").collect()
        return [spec for row in rows if (spec := _parse_shown(_lower_keys(row).get("arguments", ""))) is not None]

    def chat_stream(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Iterator[str]:
        query = f"SELECT {self.sql_prefix}.COMPLETE(?, PARSE_JSON(?)::ARRAY, PARSE_JSON(?)::OBJECT)"
        options = {"temperature": temperature, "max_tokens": max_tokens}
        rows = self._collect(query, [model, json.dumps(list(messages)), json.dumps(options)])
        answer = json.loads(rows[0][0])
        yield answer["choices"][0]["messages"]

    def run_function(self, fn: FunctionSpec, rows: Sequence[Sequence[Any]]) -> list[Any]:
        casts = ", ".join(f"f.value[{i}]::{sql_type}" for i, (_, sql_type) in enumerate(fn.args))
        query = (
            f"SELECT {self.sql_prefix}.{identifier(fn.name, 'function')}({casts}) AS result "
            "FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f ORDER BY f.index"
        )
        return [r[0] for r in self._collect(query, [json.dumps([list(r) for r in rows])])]

    def read_table(self, table: str, limit: int) -> pd.DataFrame:
        query = f"SELECT * FROM {identifier(table, 'table')} LIMIT {int(limit)}"
        try:
            return self.session.sql(query).to_pandas()
        except Exception as exc:  # Snowpark raises its own SnowparkSQLException tree
            raise BackendError(f"reading {table} failed: {exc}") from exc

    def usage(self, days: int, split: str | None) -> pd.DataFrame:
        """From the deployed USAGE_HISTORY view (``spcs_llm.usage.sql``) in this schema."""
        column = USAGE_COLUMNS[split] if split else None
        group = f', {column} AS "{split}"' if column else ""
        query = (
            f"SELECT TO_VARCHAR(DATE_TRUNC('DAY', START_TIME), 'YYYY-MM-DD') AS \"day\"{group}, "
            'SUM(ROW_COUNT) AS "rows", SUM(TOKENS) AS "tokens", SUM(TOKEN_CREDITS) AS "credits" '
            f"FROM {self.sql_prefix}.USAGE_HISTORY WHERE START_TIME >= DATEADD('DAY', -?, CURRENT_TIMESTAMP()) "
            f"GROUP BY 1{', 2' if column else ''} ORDER BY 1"
        )
        columns = ["day", *([split] if split else []), "rows", "tokens", "credits"]
        rows = self._collect(query, [int(days)])
        return pd.DataFrame([list(r) for r in rows], columns=columns)

    def _collect(self, query: str, params: list[Any]) -> list[Any]:
        try:
            return self.session.sql(query, params=params).collect()
        except Exception as exc:  # the SQL error carries the service's message (e.g. unknown model)
            raise BackendError(str(exc)) from exc


def _lower_keys(row: Any) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in row.as_dict().items()}


def _parse_shown(arguments: str) -> FunctionSpec | None:
    """``COMPLETE(VARCHAR, ARRAY, OBJECT) RETURN VARCHAR`` → a spec with positional argument names."""
    match = _SHOWN.match(arguments)
    if match is None:
        return None
    name, types, returns = match.groups()
    arg_types = [t.strip() for t in types.split(",") if t.strip()]
    return FunctionSpec(name.strip().upper(), tuple((f"arg{i + 1}", t) for i, t in enumerate(arg_types)), returns)
