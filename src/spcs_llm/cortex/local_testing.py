"""Run Snowpark DataFrame code that uses ``spcs_llm.cortex`` on a laptop: Snowpark's local testing mode with the
deployed function names bound to a running spcs-llm service.

    session = Session.builder.config("local_testing", True).create()
    bind(session)                                   # SPCS_LLM.LLM.SUMMARIZE ... now call SPCS_LLM_URL
    df.with_column("s", summarize(col("abstract_text"))).show()

Each name is registered as a local-testing UDF that sends its rows to the service as Snowflake batches (through
``spcs_llm.client.BatchClient``), so the DataFrame, the Column expression and the service are all the real ones.
Local testing evaluates a UDF row by row: this is for trying code, not for throughput.
"""

from __future__ import annotations

from typing import Any

from ..client import BatchClient
from . import _route

# name -> (argument SQL types, return SQL type): the overloads the drop-in calls
SIGNATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "summarize": (("VARCHAR",), "VARCHAR"),
    "sentiment": (("VARCHAR",), "FLOAT"),
    "translate": (("VARCHAR", "VARCHAR", "VARCHAR"), "VARCHAR"),
    "extract_answer": (("VARCHAR", "VARCHAR"), "VARIANT"),
    "classify_text": (("VARCHAR", "ARRAY"), "OBJECT"),
    "embed_text_768": (("VARCHAR", "VARCHAR"), "ARRAY"),
    "embed_text_1024": (("VARCHAR", "VARCHAR"), "ARRAY"),
    "complete": (("VARCHAR", "VARCHAR"), "VARCHAR"),
}


def _snowpark_type(sql: str) -> Any:
    from snowflake.snowpark import types

    return {
        "VARCHAR": types.StringType(),
        "FLOAT": types.FloatType(),
        "ARRAY": types.ArrayType(),
        "OBJECT": types.MapType(),
        "VARIANT": types.VariantType(),
    }[sql]


def _caller(client: BatchClient, name: str) -> Any:
    def udf(*args: Any) -> Any:
        return client.call(name, [list(args)])[0]

    udf.__name__ = name
    udf.__annotations__ = {}  # Snowpark reads the types from register(); hints of Any would be refused
    return udf


def bind(session: Any, client: BatchClient | None = None, *, schema: str | None = None) -> BatchClient:
    """Register ``<schema>.<NAME>`` for every function in SIGNATURES in the local-testing ``session``, each calling
    ``client`` (default: a BatchClient for ``SPCS_LLM_URL``). Returns the client."""
    client = client or _route.client()
    prefix = schema or _route.schema()
    for name, (args, returns) in SIGNATURES.items():
        session.udf.register(
            _caller(client, name),
            name=f"{prefix}.{name.upper()}",
            return_type=_snowpark_type(returns),
            input_types=[_snowpark_type(a) for a in args],
            replace=True,
        )
    return client
