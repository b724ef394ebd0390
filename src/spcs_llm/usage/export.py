"""Export of the usage history to a table in the service's schema, through the container's own Snowflake session.

Inside SPCS, Snowflake gives every container an OAuth token in ``/snowflake/session/token`` (refreshed by
Snowflake; read afresh for each connection) and ``SNOWFLAKE_HOST``, ``SNOWFLAKE_ACCOUNT``, ``SNOWFLAKE_DATABASE``
and ``SNOWFLAKE_SCHEMA``; the session runs as the service's owner role, which owns the table ``deploy`` created.
A MERGE needs a warehouse: the service's QUERY_WAREHOUSE, or ``[usage] export_warehouse``.

Rows not yet exported go in one MERGE per 500 rows and are marked exported locally only after it succeeded; the
MERGE inserts only rows whose (flush id, user, role, query id, function, model) are not in the table, so an export
retried after a failure (or after a crash between the MERGE and the local mark) adds nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .budgets import Budgets
from .settings import UsageSettings
from .sql import TABLE, VIEW, budget_spent_sql, merge_sql, qualified, table_ddl, view_ddl
from .store import UsageStore

TOKEN_PATH = Path("/snowflake/session/token")


class Connection(Protocol):
    def cursor(self) -> Any: ...

    def close(self) -> None: ...


def in_spcs(env: dict[str, str] | None = None, token_path: Path = TOKEN_PATH) -> bool:
    env = dict(os.environ) if env is None else env
    return token_path.exists() and bool(env.get("SNOWFLAKE_HOST")) and bool(env.get("SNOWFLAKE_DATABASE"))


def spcs_connector(
    settings: UsageSettings, env: dict[str, str] | None = None, token_path: Path = TOKEN_PATH
) -> Callable[[], Connection]:
    """A function that opens a connection with the container's session token (snowflake-connector-python)."""
    env = dict(os.environ) if env is None else env

    def connect() -> Connection:
        import snowflake.connector

        return snowflake.connector.connect(
            host=env["SNOWFLAKE_HOST"],
            account=env.get("SNOWFLAKE_ACCOUNT"),
            authenticator="oauth",
            token=token_path.read_text().strip(),
            database=env.get("SNOWFLAKE_DATABASE"),
            schema=env.get("SNOWFLAKE_SCHEMA"),
            warehouse=settings.export_warehouse,
            client_session_keep_alive=False,
        )

    return connect


def spcs_table(settings: UsageSettings, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return qualified(env["SNOWFLAKE_DATABASE"], env["SNOWFLAKE_SCHEMA"], settings.export_table)


def spcs_setup(settings: UsageSettings, env: dict[str, str] | None = None) -> list[str]:
    """The table and view, created by the service itself when ``deploy`` did not (IF NOT EXISTS: an existing
    table or view is left as it is)."""
    env = dict(os.environ) if env is None else env
    db, schema = env["SNOWFLAKE_DATABASE"], env["SNOWFLAKE_SCHEMA"]
    table = settings.export_table
    view = VIEW if table == TABLE else f"{table}_HISTORY"
    return [table_ddl(db, schema, table), view_ddl(db, schema, table, view, replace=False)]


class Exporter:
    def __init__(
        self, connect: Callable[[], Connection], table_fqn: str, batch_rows: int = 500, setup: list[str] | None = None
    ) -> None:
        self.connect = connect
        self.table = table_fqn
        self.batch_rows = batch_rows
        self.setup = list(setup or [])  # run once, before the first export (CREATE ... IF NOT EXISTS)

    def _setup(self, conn: Connection) -> None:
        while self.setup:
            cur = conn.cursor()
            try:
                cur.execute(self.setup[0])
            finally:
                cur.close()
            self.setup.pop(0)

    def export_pending(self, store: UsageStore) -> int:
        """MERGE every row not yet exported; returns how many were sent. Raises on failure (retried later)."""
        rows = store.unexported(self.batch_rows)
        if not rows:
            return 0
        sent = 0
        conn = self.connect()
        try:
            self._setup(conn)
            while rows:
                cur = conn.cursor()
                try:
                    cur.execute(merge_sql(self.table, rows))
                finally:
                    cur.close()
                store.mark_exported(rows)
                sent += len(rows)
                rows = store.unexported(self.batch_rows)
        finally:
            conn.close()
        return sent

    def sync_budgets(self, budgets: Budgets, process: str) -> None:
        """Read what every other process (other instances, earlier runs) spent in each budget's period."""
        if not budgets.items:
            return
        conn = self.connect()
        try:
            totals = []
            for b in budgets.items:
                start, spec = b.period_start, b.spec
                cur = conn.cursor()
                try:
                    cur.execute(
                        budget_spent_sql(
                            self.table,
                            start,
                            process,
                            user=spec.user,
                            role=spec.role,
                            function=spec.function,
                            model=spec.model,
                        )
                    )
                    totals.append((start, int(cur.fetchall()[0][0] or 0)))
                finally:
                    cur.close()
        finally:
            conn.close()
        budgets.set_others(totals)
