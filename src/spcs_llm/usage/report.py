"""Reading the history: time windows (``7d``, ``24h``, ``2026-11-01``), grouping, CSV and a terminal table."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .store import GROUP_KEYS, SUMS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """``7d`` / ``24h`` / ``30m`` before now, an ISO date or date-time (UTC unless it says), or epoch seconds."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    if re.fullmatch(r"\d{9,}(\.\d+)?", text.strip()):
        return float(text)
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read the time {text!r}: use 7d, 24h, 30m, 2026-11-01 or 2026-11-01T08:00:00Z"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def parse_by(text: str | Sequence[str] | None) -> list[str]:
    """Group keys from ``user,role`` (or a list of them); each must be one of GROUP_KEYS."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    keys = [k.strip().lower() for k in items if k.strip()]
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUP_KEYS)}")
    return list(dict.fromkeys(keys))


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Integers as integers, seconds rounded to microseconds, unknown credits as None."""
    out = []
    for r in rows:
        row = dict(r)
        for k in ("rows", "input_tokens", "output_tokens", "cached_tokens", "errors", "engine_calls"):
            row[k] = int(row.get(k) or 0)
        for k in ("busy_seconds", "node_seconds"):
            row[k] = round(float(row.get(k) or 0), 6)
        if row.get("credits") is not None:
            row["credits"] = float(row["credits"])
        out.append(row)
    return out


def to_csv(rows: list[dict[str, Any]], by: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*by, *SUMS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table(rows: list[dict[str, Any]], by: Sequence[str]) -> str:
    """A plain terminal table: the group keys, then rows, tokens, engine time and credits."""
    columns = [*by, "rows", "input_tokens", "output_tokens", "cached_tokens", "errors", "busy_seconds", "credits"]
    heads = [*by, "rows", "in tokens", "out tokens", "cached", "errors", "engine s", "est. credits"]

    def cell(row: dict[str, Any], c: str) -> str:
        v = row.get(c)
        if c == "busy_seconds":
            return f"{float(v or 0):.1f}"
        if c == "credits":
            return "-" if v is None else f"{float(v):.4g}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v) if v not in (None, "") else "-"

    body = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    numeric = [c not in by for c in columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True))

    return "\n".join([line(heads), line(["-" * w for w in widths]), *map(line, body)]).rstrip()
