"""The usage history on disk: SQLite in WAL mode, one transaction per flush.

Each flush writes every aggregate of one interval under one ``flush_id`` in a single transaction, so a crash
(kill -9, power loss) either keeps the whole interval or none of it: at most the last interval is lost and
nothing is counted twice (the primary key holds the flush id, and a flush retried after an error is written with
``INSERT OR IGNORE`` under the same id). Export to Snowflake marks rows ``exported`` only after the MERGE
succeeded; the MERGE itself is idempotent on the same key.

SQLite locks its file, which a stage volume (a FUSE mount) cannot do: the store refuses to open there.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .meter import COUNTERS, KEY_FIELDS

COLUMNS = ("flush_id", "start_time", "end_time", *KEY_FIELDS, *COUNTERS, "node_seconds", "credits")
GROUP_KEYS = (*KEY_FIELDS, "day", "hour")
SUMS = (*COUNTERS, "node_seconds", "credits")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    flush_id TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    user TEXT NOT NULL, role TEXT NOT NULL, query_id TEXT NOT NULL, function TEXT NOT NULL, model TEXT NOT NULL,
    rows INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, busy_seconds REAL NOT NULL, errors INTEGER NOT NULL,
    engine_calls INTEGER NOT NULL, node_seconds REAL NOT NULL, credits REAL,
    exported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (flush_id, user, role, query_id, function, model)
);
CREATE INDEX IF NOT EXISTS usage_end_time ON usage (end_time);
CREATE INDEX IF NOT EXISTS usage_unexported ON usage (exported) WHERE exported = 0;
"""


class StoreError(RuntimeError):
    """The usage store cannot be opened where it was asked to be."""


def _mount_of(path: Path, mounts: str | None = None) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding ``path``, from /proc/mounts (Linux only)."""
    try:
        lines = (Path("/proc/mounts").read_text() if mounts is None else mounts).splitlines()
    except OSError:
        return None
    best: tuple[str, str] | None = None
    target = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, parts[2])
    return best


def check_location(path: Path, mounts: str | None = None) -> None:
    """Refuse a FUSE mount (SPCS stage volumes are FUSE): SQLite's locks do not work there."""
    mount = _mount_of(path.parent, mounts)
    if mount is not None and mount[1].startswith("fuse"):
        raise StoreError(
            f"usage db_path {path} is on {mount[0]} ({mount[1]}), which looks like a stage volume; "
            "SQLite cannot lock files there. Put it on local disk or a block volume"
        )


@dataclass
class Interval:
    """One flush: its id, the time it covers, and its aggregates as full rows (COLUMNS order)."""

    flush_id: str
    start_time: float
    end_time: float
    rows: list[tuple[Any, ...]]


class UsageStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_location(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed flush survives a process kill
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def write(self, interval: Interval) -> None:
        """Write one interval atomically (all its rows or none)."""
        marks = ", ".join("?" * len(COLUMNS))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) VALUES ({marks})", interval.rows
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, since: float | None, until: float | None, by: Sequence[str]) -> list[dict[str, Any]]:
        """Sums per group (``by``: any of GROUP_KEYS) of the intervals that ended in [since, until)."""
        unknown = [k for k in by if k not in GROUP_KEYS]
        if unknown:
            raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUP_KEYS)}")
        exprs = {
            "day": "strftime('%Y-%m-%d', end_time, 'unixepoch')",
            "hour": "strftime('%Y-%m-%dT%H:00:00Z', end_time, 'unixepoch')",
        }
        selects = [f"{exprs.get(k, k)} AS {k}" for k in by]
        sums = [f"SUM({c}) AS {c}" for c in SUMS]
        where, params = _window(since, until)
        sql = f"SELECT {', '.join(selects + sums)} FROM usage{where}"
        if by:
            sql += f" GROUP BY {', '.join(by)} ORDER BY {', '.join(by)}"
        with self._lock:
            cur = self._db.execute(sql, params)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return [r for r in rows if r["engine_calls"] is not None or r["rows"] is not None]

    def tokens_since(
        self, since: float, user: str | None, role: str | None, function: str | None, model: str | None
    ) -> int:
        """Input + output tokens since ``since`` matching the given names (case-insensitive; None: any)."""
        sql = "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage WHERE end_time >= ?"
        params: list[Any] = [since]
        for column, value in (("user", user), ("role", role), ("function", function), ("model", model)):
            if value is not None:
                sql += f" AND lower({column}) = ?"
                params.append(value.lower())
        with self._lock:
            return int(self._db.execute(sql, params).fetchone()[0])

    def unexported(self, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM usage WHERE exported = 0 ORDER BY end_time LIMIT ?", (limit,)
            )
            return [dict(zip(COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def mark_exported(self, rows: Iterable[dict[str, Any]]) -> None:
        keys = [(r["flush_id"], r["user"], r["role"], r["query_id"], r["function"], r["model"]) for r in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE usage SET exported = 1 WHERE flush_id = ? AND user = ? AND role = ? "
                "AND query_id = ? AND function = ? AND model = ?",
                keys,
            )
            self._db.execute("COMMIT")


def _window(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("end_time >= ?")
        params.append(since)
    if until is not None:
        clauses.append("end_time < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
