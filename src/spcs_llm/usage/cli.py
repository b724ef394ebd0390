"""``spcs-llm usage``: the usage history as a table in the terminal (or CSV / JSON).

Reads the local SQLite history (``--db``, else the config's ``[usage] db_path``, else the default path), or a
running server's ``GET /usage`` with ``--url``. Inside Snowflake, query the ``USAGE_HISTORY`` view instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .report import clean, iso, parse_by, parse_time, table, to_csv
from .settings import default_db_path


def add_command(sub: Any) -> None:
    p = sub.add_parser("usage", help="usage history: rows, tokens, engine time and estimated credits")
    p.add_argument("--since", default="7d", help="start: 7d, 24h, 30m, 2026-11-01 (default 7d)")
    p.add_argument("--until", help="end (default now)")
    p.add_argument(
        "--by",
        default="user,role,function,model",
        help="group keys, comma-separated: user, role, query_id, function, model, day, hour "
        "(default user,role,function,model; '' for one total)",
    )
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="the SQLite history file")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8001")
    p.add_argument("--config", type=Path, help="TOML config whose [usage] db_path to read")


def _db_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return args.db
    if args.config is not None:
        from ..config import Settings

        path = Settings.load(args.config).usage.db_path
        if path is not None:
            return path
    return default_db_path()


def _from_db(path: Path, since: float | None, until: float | None, by: list[str]) -> list[dict[str, Any]]:
    from .store import UsageStore

    if not path.exists():
        raise FileNotFoundError(f"no usage history at {path} (has `spcs-llm serve` run here? use --db or --url)")
    store = UsageStore(path)
    try:
        return store.query(since, until, by)
    finally:
        store.close()


def _from_url(url: str, since: str, until: str | None, by: list[str]) -> list[dict[str, Any]]:
    import httpx

    params = {"since": since, "by": ",".join(by), **({"until": until} if until else {})}
    try:
        response = httpx.get(url.rstrip("/") + "/usage", params=params, timeout=30)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"cannot reach {url}: {exc}") from exc
    if response.status_code != 200:
        raise ConnectionError(f"{url}/usage answered {response.status_code}: {response.text.strip()[:200]}")
    return response.json()["rows"]


def run(args: argparse.Namespace) -> int:
    try:
        now = time.time()
        since, until = parse_time(args.since, now), parse_time(args.until, now)
        by = parse_by(args.by)
        if args.url:
            rows = _from_url(args.url, args.since, args.until, by)
        else:
            rows = _from_db(_db_path(args), since, until, by)
    except (ValueError, OSError, ConnectionError) as exc:
        print(f"spcs-llm usage: {exc}", file=sys.stderr)
        return 2
    rows = clean(rows)
    if args.format == "csv":
        sys.stdout.write(to_csv(rows, by))
    elif args.format == "json":
        print(json.dumps({"since": iso(since), "until": iso(until), "by": by, "rows": rows}, indent=2))
    else:
        window = f"{iso(since) or 'the start'} to {iso(until) or 'now'}"
        print(f"usage from {window}" + (f", by {', '.join(by)}" if by else ""))
        print(table(rows, by) if rows else "(no usage recorded in this window)")
    return 0
