"""``GET /usage``: the history as JSON or CSV, over a time window, grouped by any key.

Query parameters: ``since`` and ``until`` (``7d``, ``24h``, an ISO date or time; default the last 30 days),
``by`` (comma-separated: user, role, query_id, function, model, day, hour; default none: one total row),
``format`` (json or csv; also from ``Accept: text/csv``). The JSON also lists the budgets and what they spent.
"""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response

from ..errors import InvalidInput, SpcsLlmError
from .report import clean, iso, parse_by, parse_time, to_csv

router = APIRouter()
DEFAULT_WINDOW = "30d"


class UsageDisabled(SpcsLlmError):
    status = 404
    kind = "usage_disabled"


@router.get("/usage")
async def usage(request: Request) -> Response:
    service = getattr(request.app.state, "usage", None)
    if service is None:
        raise UsageDisabled("usage metering is off ([usage] enabled = false)")
    params = request.query_params
    now = time.time()
    try:
        since = parse_time(params.get("since", DEFAULT_WINDOW), now)
        until = parse_time(params.get("until"), now)
        by = parse_by(params.get("by"))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    wanted = params.get("format") or ("csv" if "text/csv" in request.headers.get("accept", "") else "json")
    if wanted not in {"json", "csv"}:
        raise InvalidInput(f"format must be json or csv, not {wanted!r}", param="format")
    rows = clean(service.report(since, until, by))
    if wanted == "csv":
        return Response(to_csv(rows, by), media_type="text/csv; charset=utf-8")
    return Response(
        orjson.dumps(
            {
                "since": iso(since),
                "until": iso(until),
                "by": by,
                "rows": rows,
                "credits_per_node_hour": service.settings.credits_per_node_hour,
                "budgets": service.budgets.status(),
            }
        ),
        media_type="application/json",
    )
