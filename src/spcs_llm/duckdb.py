"""Cortex SQL inside DuckDB: every registered function as a DuckDB SQL function, on the service's own batch path.

``connect()`` returns a real ``duckdb`` connection on which each function of the registry is callable:

- under its Cortex name, unqualified (``sentiment(review)``, ``ai_classify(t, ['a', 'b'])``), except ``translate``,
  which stays DuckDB's string function there (Snowflake's unqualified TRANSLATE is a string function too);
- as ``snowflake.cortex.<name>(…)``, so ``SELECT SNOWFLAKE.CORTEX.SENTIMENT(review) FROM reviews`` runs unchanged
  (an attached in-memory catalog ``snowflake`` with a schema ``cortex`` holds the functions);
- in each deployed schema given (default ``SPCS_LLM.LLM``), as the deployed service functions take them
  (``SPCS_LLM.LLM.AI_AGG(ARRAY_AGG(col), 'instruction')``).

Each function is a vectorised (Arrow) UDF: DuckDB hands it a chunk of rows, which goes out as Snowflake-shaped
batches of at most ``max_batch_rows`` rows, all at once (:class:`spcs_llm.client.BatchClient`), so the scheduler's
fan-out, dedup and caches work as for Snowflake. NULLs, the legacy/TRY_/AI_ error policy and Cortex's messages are
the service's. Types: VARCHAR, DOUBLE, BOOLEAN, BIGINT; JSON for OBJECT/ARRAY/VARIANT; ``FLOAT[768]`` and
``FLOAT[1024]`` for EMBED_TEXT_768/1024, so ``array_cosine_similarity`` works on them.

``AI_AGG(col, 'instruction')`` and ``AI_SUMMARIZE_AGG(col)`` are real aggregates (``GROUP BY`` works): macros over
``list(col)`` that skip NULLs, as Snowflake's aggregates do.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from .client import BatchClient
from .config import Settings
from .functions import FUNCTIONS, Overload, SqlFunction
from .server.openai import SEED_CHAT

__all__ = ["DEFAULT_SCHEMAS", "client_of", "close", "connect", "register"]

DEFAULT_SCHEMAS = ("SPCS_LLM.LLM",)
AGGREGATES = {"ai_agg", "ai_summarize_agg"}  # Cortex aggregates: the first argument is a column, not an ARRAY
SHADOWED = {"translate"}  # DuckDB built-ins kept unqualified
VECTOR_RETURNS = {"embed_text_768": "FLOAT[768]", "embed_text_1024": "FLOAT[1024]", "ai_embed": "FLOAT[]"}
SQL_TYPES = {
    "VARCHAR": "VARCHAR",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "NUMBER": "BIGINT",
    "OBJECT": "JSON",
    "ARRAY": "JSON",
    "VARIANT": "JSON",
}
# the seed's QWEN_COMPLETE (one OpenAI chat request per row): a JSON argument, so a STRUCT arrives as JSON text
# the client of each connection made by connect(); an entry goes when its connection is garbage-collected
_CLIENTS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, BatchClient] = weakref.WeakKeyDictionary()
QWEN_COMPLETE = SqlFunction(
    SEED_CHAT.name, (Overload((("request", "JSON"),), "VARCHAR", SEED_CHAT.overloads[0].prepare),)
)


def connect(
    url: str | None = None,
    database: str = ":memory:",
    *,
    settings: Settings | None = None,
    app: Any = None,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    max_batch_rows: int = 64,
    **client_options: Any,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every Cortex function. With ``url``, rows go to that running server; without it,
    the service runs in this process (``settings``: default the packaged model; or around ``app``)."""
    con = duckdb.connect(database)
    client = BatchClient(url, settings=settings, app=app, max_batch_rows=max_batch_rows, **client_options)
    try:
        register(con, client, schemas)
    except BaseException:
        client.close()
        con.close()
        raise
    weakref.finalize(con, client.close)  # the engine and its thread go with the connection
    _CLIENTS[con] = client
    return con


def client_of(con: duckdb.DuckDBPyConnection) -> BatchClient:
    """The client behind a connection made by :func:`connect` (for progress callbacks)."""
    return _CLIENTS[con]


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close the connection and, at once, the service behind it (an in-process engine frees its memory)."""
    client = _CLIENTS.pop(con, None)
    con.close()
    if client is not None:
        client.close()


def register(con: duckdb.DuckDBPyConnection, client: BatchClient, schemas: Sequence[str] = DEFAULT_SCHEMAS) -> None:
    """Create every function of the registry (and the seed's QWEN_COMPLETE) on ``con``."""
    namespaces = [("snowflake", "cortex"), *(_split(s) for s in schemas)]
    for catalog, schema in namespaces:
        _ensure_schema(con, catalog, schema)
    for fn in [*FUNCTIONS.values(), QWEN_COMPLETE]:
        for overload in fn.overloads:
            _create_udf(con, client, fn, overload)
        if fn.name not in SHADOWED:
            _create_macro(con, fn, None, aggregate=fn.name in AGGREGATES)
        _create_macro(con, fn, "snowflake.cortex", aggregate=fn.name in AGGREGATES)
        for catalog, schema in namespaces[1:]:
            _create_macro(con, fn, f"{catalog}.{schema}", aggregate=False)  # the deployed form takes ARRAY_AGG


def _split(qualified: str) -> tuple[str, str]:
    parts = qualified.lower().split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"schema {qualified!r} must be DATABASE.SCHEMA")
    return parts[0], parts[1]


def _ensure_schema(con: duckdb.DuckDBPyConnection, catalog: str, schema: str) -> None:
    attached = {row[0] for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    if catalog not in attached:
        con.execute(f"ATTACH ':memory:' AS \"{catalog}\"")
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{catalog}"."{schema}"')


def _udf_name(fn: SqlFunction, overload: Overload) -> str:
    return f"__spcs_{fn.name}_{overload.arity}"


def _returns(fn: SqlFunction, overload: Overload) -> str:
    return VECTOR_RETURNS.get(fn.name) or SQL_TYPES.get(overload.returns, overload.returns)


def _create_udf(con: duckdb.DuckDBPyConnection, client: BatchClient, fn: SqlFunction, overload: Overload) -> None:
    params = [SQL_TYPES.get(t, t) for _, t in overload.args]
    returns = _returns(fn, overload)
    con.create_function(
        _udf_name(fn, overload),
        _vectorised(client, fn.name, params, returns),
        params,
        returns,
        type="arrow",
        null_handling="special",
        side_effects=False,
    )  # type: ignore[call-overload]


def _vectorised(client: BatchClient, name: str, params: list[str], returns: str) -> Callable[..., pa.Array]:
    decoders = [_decode_json if p == "JSON" else None for p in params]
    encode = _encoder(returns)
    arrow_type = _arrow_type(returns)

    def udf(*columns: pa.Array) -> pa.Array:  # DuckDB reads the arity from __signature__ (below)
        values = [c.to_pylist() for c in columns]
        for i, decode in enumerate(decoders):
            if decode is not None:
                values[i] = [None if v is None else decode(v) for v in values[i]]
        answers = client.call(name, list(zip(*values, strict=True)))
        return pa.array([None if a is None else encode(a) for a in answers], type=arrow_type)

    udf.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(params))]
    )
    return udf


def _decode_json(text: str) -> Any:
    return orjson.loads(text)


def _encoder(returns: str) -> Callable[[Any], Any]:
    if returns == "JSON":
        return lambda v: orjson.dumps(v).decode()
    if returns == "VARCHAR":
        return lambda v: v if isinstance(v, str) else orjson.dumps(v).decode()
    return lambda v: v


def _arrow_type(returns: str) -> pa.DataType:
    if returns.startswith("FLOAT["):
        size = returns[6:-1]
        return pa.list_(pa.float32(), int(size)) if size else pa.list_(pa.float32())
    return {
        "VARCHAR": pa.string(),
        "JSON": pa.json_(pa.string()),
        "DOUBLE": pa.float64(),
        "BOOLEAN": pa.bool_(),
        "BIGINT": pa.int64(),
    }[returns]


def _create_macro(con: duckdb.DuckDBPyConnection, fn: SqlFunction, schema: str | None, *, aggregate: bool) -> None:
    """One macro per name with an overload per arity (DuckDB allows one Python UDF per name, but macros
    overload). An aggregate's first argument is a column, collected with ``list`` (NULLs skipped)."""
    bodies = []
    for overload in sorted(fn.overloads, key=lambda o: o.arity):
        names = [f'"{n}"' for n, _ in overload.args]
        args = list(names)
        if aggregate:
            args[0] = f"to_json(list({names[0]}) FILTER (WHERE {names[0]} IS NOT NULL))"
        bodies.append(f"({', '.join(names)}) AS {_udf_name(fn, overload)}({', '.join(args)})")
    target = f'{schema}."{fn.name}"' if schema else f'"{fn.name}"'
    con.execute(f"CREATE OR REPLACE MACRO {target}{', '.join(bodies)}")
