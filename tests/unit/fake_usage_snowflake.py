"""The recording fake Snowflake (``fake_snowflake.FakeSnowflake``) taught the usage export's statements: CREATE
TABLE IF NOT EXISTS, CREATE OR REPLACE VIEW and MERGE INTO ... USING (SELECT COLUMNn AS X FROM VALUES ...).

The MERGE is parsed with sqlglot's Snowflake dialect (so it must be valid Snowflake SQL) and applied with
Snowflake's semantics: WHEN NOT MATCHED inserts the source rows whose ON columns match no target row. Like
Snowflake, it refuses a MERGE into a table that does not exist, a source row of the wrong width, and a NULL in a
NOT NULL column. ``lose_ack_on`` (a regex) applies the first matching statement and then raises, as when the
connection drops before the acknowledgement arrives.
"""

from __future__ import annotations

import re
from typing import Any

import sqlglot
from sqlglot import expressions as exp

from .fake_snowflake import FakeSnowflake, FakeSnowflakeError


class FakeSnowflakeWithUsage(FakeSnowflake):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Any]] = {}  # name -> {"columns": [...], "not_null": set, "rows": [...]}
        self.views: dict[str, str] = {}
        self.lose_ack_on: str | None = None

    def run(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = super().run(sql)
        if self.lose_ack_on and re.search(self.lose_ack_on, sql):
            self.lose_ack_on = None
            raise FakeSnowflakeError("254003: Could not read the response: connection reset by peer")
        return result

    def _handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"^CREATE TABLE IF NOT EXISTS (\S+) \(", self._create_table),
            (r"^CREATE OR REPLACE VIEW (\S+)\s", self._create_view),
            (r"^CREATE VIEW IF NOT EXISTS (\S+)\s", self._create_view_if_missing),
            (r"^MERGE INTO (\S+) AS t", self._merge),
            (r"^SELECT COALESCE\(SUM\(INPUT_TOKENS \+ OUTPUT_TOKENS\), 0\) AS SPENT FROM (\S+) WHERE ", self._spent),
            *super()._handlers(),
        ]

    def rows_of(self, table: str) -> list[dict[str, Any]]:
        return self.tables[table.upper()]["rows"]

    def _create_table(self, m: re.Match[str], sql: str) -> None:
        tree = sqlglot.parse_one(sql, read="snowflake")
        schema = tree.this
        columns, not_null = [], set()
        for col in schema.expressions:
            name = col.name.upper()
            columns.append(name)
            if any(isinstance(c.kind, exp.NotNullColumnConstraint) for c in col.constraints):
                not_null.add(name)
        self.tables.setdefault(m[1].upper(), {"columns": columns, "not_null": not_null, "rows": []})

    def _create_view(self, m: re.Match[str], sql: str) -> None:
        tree = sqlglot.parse_one(sql, read="snowflake")
        for table in tree.expression.find_all(exp.Table):
            name = ".".join(p.name for p in table.parts).upper()
            if name not in self.tables:
                raise FakeSnowflakeError(
                    f"002003 (42S02): SQL compilation error: Object '{name}' does not exist or not authorized."
                )
        self.views[m[1].upper()] = sql

    def _create_view_if_missing(self, m: re.Match[str], sql: str) -> None:
        if m[1].upper() not in self.views:
            self._create_view(m, sql)

    def _merge(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        name = m[1].upper()
        table = self.tables.get(name)
        if table is None:
            raise FakeSnowflakeError(
                f"002003 (42S02): SQL compilation error: Object '{name}' does not exist or not authorized."
            )
        tree = sqlglot.parse_one(sql, read="snowflake")
        assert isinstance(tree, exp.Merge), sql[:80]
        select = tree.args["using"].this
        names = [e.alias.upper() for e in select.expressions]
        source = []
        for tup in select.args["from_"].this.expressions:
            values = [_value(v) for v in tup.expressions]
            if len(values) != len(names):
                raise FakeSnowflakeError(
                    "002020 (21S01): SQL compilation error: Insert value list does not match column list"
                )
            source.append(dict(zip(names, values, strict=True)))
        on = [eq.this.name.upper() for eq in tree.args["on"].find_all(exp.EQ)]
        (when,) = tree.args["whens"].expressions
        insert = when.args["then"]
        columns = [c.name.upper() for c in insert.this.expressions]
        inserted = 0
        for row in source:
            if any(all(old[k] == row[k] for k in on) for old in table["rows"]):
                continue
            new = {c: row.get(c) for c in table["columns"]}
            new.update({c: row[c] for c in columns})
            missing = [c for c in table["not_null"] if new[c] is None]
            if missing:
                raise FakeSnowflakeError(f"100072 (22000): NULL result in a non-nullable column {missing[0]}")
            table["rows"].append(new)
            inserted += 1
        return [{"number of rows inserted": inserted}]

    def _spent(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        """The budgets' read: a sum over the rows that satisfy every condition of the WHERE (AND only)."""
        table = self.tables.get(m[1].upper())
        if table is None:
            raise FakeSnowflakeError(
                f"002003 (42S02): SQL compilation error: Object '{m[1].upper()}' does not exist or not authorized."
            )
        where = sqlglot.parse_one(sql, read="snowflake").args["where"].this
        conditions = list(where.flatten()) if isinstance(where, exp.And) else [where]
        rows = [r for r in table["rows"] if all(_holds(c, r) for c in conditions)]
        return [{"SPENT": sum(r["INPUT_TOKENS"] + r["OUTPUT_TOKENS"] for r in rows)}]


def _holds(cond: exp.Expression, row: dict[str, Any]) -> bool:
    if isinstance(cond, exp.GTE) and isinstance(cond.this, exp.Column):
        return row[cond.this.name.upper()] >= _value(cond.expression)
    if isinstance(cond, exp.Not) and isinstance(cond.this, exp.StartsWith):
        return not str(row[cond.this.this.name.upper()]).startswith(_value(cond.this.expression))
    if isinstance(cond, exp.EQ) and isinstance(cond.this, exp.Lower):
        return str(row[cond.this.this.name.upper()]).lower() == _value(cond.expression)
    raise AssertionError(f"fake Snowflake cannot evaluate {cond.sql('snowflake')!r}")


def _value(node: exp.Expression) -> Any:
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        return float(node.this) if any(c in node.this for c in ".eE") else int(node.this)
    if isinstance(node, exp.Neg):
        return -_value(node.this)
    if isinstance(node, exp.UnixToTime):  # TO_TIMESTAMP_LTZ(n, scale): kept as epoch seconds
        return _value(node.this) / 10 ** _value(node.args["scale"])
    raise AssertionError(f"fake Snowflake cannot evaluate {node.sql('snowflake')!r} in a VALUES row")
