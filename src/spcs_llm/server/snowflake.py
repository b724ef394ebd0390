"""The Snowflake service-function wire format (snowflake-contract.md §1).

Request ``{"data": [[row, arg1, ...], ...]}``; answer ``{"data": [[row, value], ...]}`` with exactly one row per
input row, same row numbers, same order.

The error rule, written once:
- a malformed envelope (not JSON, no ``data``, a row that is not ``[int, ...]``, wrong arity) → 400 naming it;
- a row error (unknown model, invalid options, too long, ...): legacy names fail the whole batch with 400 and
  the Cortex message of the first failing row; TRY_/AI_ names answer that row with NULL;
- overload → 429 ``too many requests`` (only what cannot be held: see docs/overload.md); engine failure → 503;
  both fail the batch so Snowflake retries it;
- a batch still waiting after ``async_after_secs`` → 202, its answer on the polling GET (``async_batches.py``);
- a NULL argument gives a NULL row without calling the model.
Error bodies are the plain message, which Snowflake shows in the SQL error.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from .. import logs
from ..eager import run_all
from ..errors import BadEnvelope, InvalidInput, ResponseTooLarge, RowError, SpcsLlmError, UnknownFunction
from ..functions import FUNCTIONS, Runtime, SqlFunction
from ..functions.registry import Grouped, RowJob
from ..scheduler import BatchTicket, batch_ticket, query_key
from ..usage import meter as usage

router = APIRouter()

QUERY_ID_HEADER = "sf-external-function-current-query-id"
BATCH_ID_HEADER = "sf-external-function-query-batch-id"


def decompress(body: bytes, encoding: str | None, limit: int | None = None) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tolerated though SPCS may never send it). The decoded body is
    bounded by ``limit`` bytes (RequestTooLarge beyond it), so a small compressed body cannot inflate without end."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in {"gzip", "x-gzip", "deflate"}:
        raise BadEnvelope(f"unsupported Content-Encoding {encoding!r}")
    try:
        if encoding == "deflate":
            try:
                return _inflate(body, zlib.MAX_WBITS, limit)
            except zlib.error:
                return _inflate(body, -zlib.MAX_WBITS, limit)  # raw deflate, as some clients send it
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, members=True)
    except zlib.error as exc:
        raise BadEnvelope(f"request body is not valid {encoding} data: {exc}") from exc


def _inflate(data: bytes, wbits: int, limit: int | None, *, members: bool = False) -> bytes:
    """Decode ``data`` chunk by chunk, never holding more than ``limit`` decoded bytes (gzip: every member)."""
    from .limits import too_large

    out: list[bytes] = []
    size, step = 0, 1 << 20
    while True:
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(data, step)
        while True:
            size += len(chunk)
            if limit is not None and size > limit:
                raise too_large(limit)
            out.append(chunk)
            if not d.unconsumed_tail:
                break
            chunk = d.decompress(d.unconsumed_tail, step)
        out.append(d.flush())
        if not d.eof:
            raise zlib.error("incomplete or truncated stream")
        data = d.unused_data
        if not (members and data.strip(b"\0")):
            return b"".join(out)


def decode_rows(body: bytes) -> list[list[Any]]:
    """Parse and check the envelope; returns the rows, each ``[row_number, args...]``."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadEnvelope(f"request body is not JSON: {exc}") from exc
    return rows_of(envelope)


def rows_of(envelope: Any) -> list[list[Any]]:
    """Check a parsed envelope and return its rows."""
    if not isinstance(envelope, dict) or "data" not in envelope:
        raise BadEnvelope('request body must be a JSON object with a "data" array')
    rows = envelope["data"]
    if not isinstance(rows, list):
        raise BadEnvelope('"data" must be an array of rows')
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not row or type(row[0]) is not int:
            raise BadEnvelope(f"row {i} must be an array starting with its integer row number")
    return rows


def encode_rows(numbers: list[int], values: list[Any], limit: int) -> bytes:
    """The answer body. Vectors arrive as numpy arrays and are written by orjson straight from their memory, the
    same digits as the list of Python floats they would otherwise be (never built)."""
    body = orjson.dumps(
        {"data": [[n, v] for n, v in zip(numbers, values, strict=True)]}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    if len(body) > limit:
        raise ResponseTooLarge(
            f"the answer to this batch is {len(body)} bytes, over the {limit}-byte limit per batch; "
            "lower MAX_BATCH_ROWS on the function"
        )
    return body


def error_response(exc: SpcsLlmError) -> Response:
    """The one error body of this wire format: the message as plain text, with the error's status."""
    return Response(exc.message, status_code=exc.status, media_type="text/plain; charset=utf-8")


def _too_long(args: list[Any], limit: int) -> RowError | None:
    """A row error naming the limit when a text argument (or an array's text element) is over it."""
    for arg in args:
        texts = arg if type(arg) is list else (arg,)
        for value in texts:
            if type(value) is str and len(value) > limit:
                return InvalidInput(
                    f"a text of {len(value)} characters is over the {limit}-character limit per "
                    "value (server.max_text_chars)"
                )
    return None


def _prepare(
    fn: SqlFunction, rt: Runtime, rows: list[list[Any]], max_text_chars: int | None = None
) -> list[RowJob | None | RowError]:
    """Check every row's arity, then validate each row without touching the engine."""
    jobs: list[RowJob | None | RowError] = []
    for row in rows:
        overload = fn.overload(len(row) - 1)
        if overload is None:
            raise BadEnvelope(
                f"row {row[0]} has {len(row) - 1} arguments; {fn.name.upper()} takes "
                + " or ".join(map(str, fn.arities))
            )
        args = row[1:]
        if overload.null_row(args):
            mistyped = None if fn.null_on_error else overload.mistyped(args)
            if mistyped is not None:
                raise mistyped
            jobs.append(None)
            continue
        try:
            if max_text_chars is not None and (error := _too_long(args, max_text_chars)) is not None:
                raise error
            jobs.append(overload.prepare(rt, args))
        except RowError as exc:
            if not fn.null_on_error:
                raise
            jobs.append(exc)
    return jobs


def apply_policy(fn: SqlFunction, outcomes: list[Any]) -> list[Any]:
    """Row values from row outcomes: raise what fails the batch, NULL what TRY_/AI_ forgive."""
    failures = [o for o in outcomes if isinstance(o, SpcsLlmError)]
    if not failures:
        return outcomes
    row_errors = [o for o in failures if isinstance(o, RowError)]
    if row_errors and not fn.null_on_error:
        raise row_errors[0]
    transient = [o for o in failures if not isinstance(o, RowError)]
    if transient:
        raise transient[0]
    return [None if isinstance(o, RowError) else o for o in outcomes]


def _reusable(outcome: Any) -> bool:
    """A row outcome a retry may reuse: a value, NULL or a row error, not an overload or engine failure."""
    return not isinstance(outcome, SpcsLlmError) or isinstance(outcome, RowError)


async def answer_batch(
    fn: SqlFunction,
    rt: Runtime,
    rows: list[list[Any]],
    done: dict[int, Any] | None = None,
    max_text_chars: int | None = None,
) -> list[Any]:
    """The value of every row, in row order, or an exception that fails the whole batch.

    ``done`` holds outcomes of rows already answered by an earlier attempt at this batch (they are not computed
    again); the outcomes of rows answered now are added to it as they finish."""
    done = {} if done is None else done
    jobs = _prepare(fn, rt, rows, max_text_chars)
    todo = [i for i in range(len(jobs)) if i not in done]
    with rt.scheduler.admit(len(todo)) as row_done:

        def finished(i: int, outcome: Any) -> None:
            row_done()
            if _reusable(outcome):
                done[i] = outcome
            else:
                failed[i] = outcome

        async def run(i: int) -> None:  # one coroutine per row: this is the gateway's hot path
            outcome: Any = jobs[i]
            if outcome is not None and not isinstance(outcome, RowError):
                try:
                    outcome = await outcome()
                except SpcsLlmError as exc:
                    outcome = exc
            finished(i, outcome)

        async def run_group(kind: type[Grouped], rows: list[int]) -> None:  # one coroutine for all of them
            try:
                outcomes = await kind.run_group([jobs[i] for i in rows])
            except SpcsLlmError as exc:
                outcomes = [exc] * len(rows)
            for i, outcome in zip(rows, outcomes, strict=True):
                finished(i, outcome)

        failed: dict[int, Any] = {}
        singles: list[int] = []
        groups: dict[type[Grouped], list[int]] = {}
        for i in todo:
            job = jobs[i]
            if isinstance(job, Grouped):
                groups.setdefault(type(job), []).append(i)
            else:
                singles.append(i)
        # the rows run one after another in this task until one waits (most never do on a cached answer or a
        # label step); each row that waits gets a task of its own (eager.run_all)
        await asyncio.gather(run_all(map(run, singles)), *(run_group(k, rows) for k, rows in groups.items()))
    outcomes = [failed[i] if i in failed else done[i] for i in range(len(jobs))]
    values = apply_policy(fn, outcomes)
    row_errors = 0
    for o in outcomes:  # errors that failed the batch are counted by the app's error handler
        if isinstance(o, RowError):
            rt.scheduler.metrics.errors.labels(o.kind).inc()
            row_errors += 1
    attribution = usage.current.get()
    if attribution is not None:
        attribution.errors += row_errors
    return values


@router.post("/functions/{name}")
async def function_batch(name: str, request: Request) -> Response:
    request.state.wire = "snowflake"
    fn = FUNCTIONS.get(name.lower())
    if fn is None:
        raise UnknownFunction(name)
    limit = int(request.app.state.settings.server.max_request_mb * 2**20)
    body = decompress(await request.body(), request.headers.get("content-encoding"), limit)
    rows = decode_rows(body)
    return await respond(fn, request, rows)


async def respond(fn: SqlFunction, request: Request, rows: list[list[Any]]) -> Response:
    """Answer one batch of ``fn`` with metrics and a structured log line (ids, counts, status, timing)."""
    app = request.app
    metrics = app.state.metrics
    logs.query_id.set(request.headers.get(QUERY_ID_HEADER))
    logs.batch_id.set(request.headers.get(BATCH_ID_HEADER))
    meter = app.state.usage.meter if app.state.usage is not None else None
    attribution = usage.from_snowflake(request.headers, fn.name)
    usage.current.set(attribution)  # whom this batch's engine calls are counted against
    start = time.perf_counter()
    status, content = 500, dict[str, Any]()  # content: filled only when log_content is on
    ticket: BatchTicket | None = None
    computed = False
    try:
        rt: Runtime = app.state.require_runtime()
        server = app.state.settings.server
        if len(rows) > server.max_batch_rows:
            raise BadEnvelope(
                f"a batch of {len(rows)} rows is over the {server.max_batch_rows}-row limit "
                f"(server.max_batch_rows); set MAX_BATCH_ROWS on the function to at most "
                f"{server.max_batch_rows}"
            )
        metrics.rows.labels(fn.name).inc(len(rows))
        if meter is not None and not fn.null_on_error:  # a spent budget fails a legacy batch before any work
            meter.check(rt.scheduler.engine.model_name)
        query_key.set(request.headers.get(QUERY_ID_HEADER))  # the rows of one query wait their turn together

        async def compute(done: dict[int, Any]) -> bytes:
            nonlocal computed
            computed = True
            try:
                values = await answer_batch(fn, rt, rows, done, server.max_text_chars)
                if app.state.settings.server.log_content:  # opt-in only: prompts and outputs are customer data
                    content.update(rows_in=rows, values_out=values)
                body = encode_rows([r[0] for r in rows], values, app.state.settings.server.max_response_bytes)
            except BaseException:
                if meter is not None:
                    meter.rows(attribution, 0, len(rows))
                raise
            if meter is not None:  # counted where rows are computed: a retry answered from memory adds none
                meter.rows(attribution, len(rows), attribution.errors)
            return body

        request_body = await request.body()
        ticket = BatchTicket(len(request_body))
        batch_ticket.set(ticket)  # the computation's queue wait and bytes
        body, batch = await app.state.async_batches.post(
            request.headers.get(BATCH_ID_HEADER), fn.name, request_body, compute
        )
        if batch is not None and batch.ticket is not None:
            ticket = batch.ticket  # a retry joined an earlier computation
        status, response = _answered(body)
        return response
    except SpcsLlmError as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - start
        if meter is not None and status not in (200, 202) and not computed:  # failed before any row was computed
            meter.rows(attribution, 0, len(rows))
        metrics.batches.labels(fn.name, str(status)).inc()
        metrics.batch_latency.labels(fn.name).observe(elapsed)
        logs.event(
            "batch",
            function=fn.name,
            rows=len(rows),
            status=status,
            ms=round(elapsed * 1000, 1),
            **_waited(ticket),
            **content,
        )


def _answered(body: bytes | None) -> tuple[int, Response]:
    """The batch's answer, or 202 while it is still being computed (Snowflake then polls with GET)."""
    if body is None:
        return 202, Response(status_code=202)
    return 200, Response(body, media_type="application/json")


def _waited(ticket: BatchTicket | None) -> dict[str, float]:
    """The log fields of a batch's queue wait: ``wait_ms`` from admission to its first engine place (so far)."""
    wait = ticket.wait_s if ticket is not None else None
    return {} if wait is None else {"wait_ms": round(wait * 1000, 1)}


@router.get("/functions/{name}")
async def function_poll(name: str, request: Request) -> Response:
    """Snowflake's polling GET for a batch answered 202 (same headers, no body): 200 + the answer, 202 while it
    is still being computed, or a status Snowflake retries for a batch this instance does not hold."""
    request.state.wire = "snowflake"
    fn = FUNCTIONS.get(name.lower())
    if fn is None:
        raise UnknownFunction(name)
    app = request.app
    logs.query_id.set(request.headers.get(QUERY_ID_HEADER))
    logs.batch_id.set(request.headers.get(BATCH_ID_HEADER))
    start = time.perf_counter()
    status, ticket = 500, None
    try:
        body, batch = await app.state.async_batches.poll(request.headers.get(BATCH_ID_HEADER), fn.name)
        ticket = batch.ticket
        status, response = _answered(body)
        return response
    except SpcsLlmError as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - start
        app.state.metrics.batches.labels(fn.name, str(status)).inc()
        logs.event("batch_poll", function=fn.name, status=status, ms=round(elapsed * 1000, 1), **_waited(ticket))
