"""``spcs-llm sql``: Cortex SQL on a laptop, in DuckDB, over the service's functions.

    spcs-llm sql -c "SELECT SNOWFLAKE.CORTEX.SENTIMENT(review) FROM 'reviews.csv'"
    spcs-llm sql --table reviews=reviews.parquet queries.sql --output csv out.csv
    spcs-llm sql --url http://127.0.0.1:8001          # an interactive shell against a running server

Snowflake-dialect queries (the default when a query names ``SNOWFLAKE.CORTEX.*`` or a deployed schema) are
transpiled to DuckDB with sqlglot; the Cortex functions themselves resolve in DuckDB under the same names
(:mod:`spcs_llm.duckdb`), so ``SNOWFLAKE.CORTEX.X``, ``AI_X`` and ``<DB>.<SCHEMA>.X`` run as written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .client import progress
from .config import Settings

# Snowflake's vector functions, as sqlglot's Snowflake parser names them, and DuckDB's for FLOAT[n] arrays.
# (sqlglot reads VECTOR_COSINE_SIMILARITY as CosineDistance and would write a *distance*: the similarity is meant.)
VECTOR_FUNCTIONS = {
    "CosineDistance": "array_cosine_similarity",
    "DotProduct": "array_inner_product",
    "EuclideanDistance": "array_distance",
}
FORMATS = ("csv", "json", "parquet")
RESULT = "__spcs_llm_result"
MISSING = "spcs-llm sql needs DuckDB and sqlglot: pip install 'spcs-llm[sql]'"


def is_snowflake(sql: str, schemas: Sequence[str]) -> bool:
    """True when the query names SNOWFLAKE.CORTEX or a deployed schema: then it is read as Snowflake SQL."""
    text = sql.upper()
    return any(f"{prefix.upper()}." in text for prefix in ("SNOWFLAKE.CORTEX", *schemas))


def _vector_types(node: Any) -> Any:
    from sqlglot import exp

    if isinstance(node, exp.DataType) and node.is_type(exp.DataType.Type.VECTOR):
        size = node.expressions[-1].name if node.expressions else ""
        return exp.DataType.build(f"FLOAT[{size}]", dialect="duckdb")
    return node


def _vector_functions(node: Any) -> Any:
    from sqlglot import exp

    name = VECTOR_FUNCTIONS.get(type(node).__name__)
    return exp.Anonymous(this=name, expressions=[node.this, node.expression]) if name else node


def transpile(sql: str) -> list[str]:
    """Snowflake SQL → DuckDB statements. Cortex calls keep their names (DuckDB resolves them, see
    :mod:`spcs_llm.duckdb`); vector types and vector functions are mapped to DuckDB's array ones."""
    import sqlglot

    statements = sqlglot.parse(sql, read="snowflake")
    # two passes: a node that transform() replaces is not descended into
    return [
        s.transform(_vector_types).transform(_vector_functions).sql(dialect="duckdb")
        for s in statements
        if s is not None
    ]


def add_command(sub: Any) -> None:
    sql = sub.add_parser(
        "sql",
        help="run Cortex SQL locally in DuckDB (a shell, -c SQL, or a file)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sql.add_argument("file", nargs="?", type=Path, help="a file of SQL statements (default: -c, else a shell)")
    sql.add_argument("-c", "--command", dest="sql_text", help="SQL to run")
    sql.add_argument(
        "--url",
        default=os.environ.get("SPCS_LLM_URL"),
        help="a running spcs-llm server (default $SPCS_LLM_URL; unset: run the engine in process)",
    )
    sql.add_argument("--config", type=Path, help="in process: the service's TOML config (default: packaged model)")
    sql.add_argument("--database", default=":memory:", help="a DuckDB database file (default: in memory)")
    sql.add_argument(
        "--dialect",
        choices=["auto", "snowflake", "duckdb"],
        default="auto",
        help="auto: Snowflake when the query names SNOWFLAKE.CORTEX or a deployed schema",
    )
    sql.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        metavar="DB.SCHEMA",
        help="a deployed schema whose functions resolve locally (default SPCS_LLM.LLM); repeatable",
    )
    sql.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="expose a CSV/Parquet/JSON file as a table NAME; repeatable",
    )
    sql.add_argument(
        "--output",
        nargs=2,
        metavar=("FORMAT", "FILE"),
        help=f"write the last result to FILE as one of {', '.join(FORMATS)} instead of printing it",
    )
    sql.add_argument("--max-batch-rows", type=int, default=64, help="rows per batch, as MAX_BATCH_ROWS (64)")
    sql.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _statements(args: argparse.Namespace) -> Iterator[str]:
    if args.sql_text is not None:
        yield args.sql_text
    elif args.file is not None:
        yield args.file.read_text(encoding="utf-8")
    else:
        yield from _shell()


def _shell() -> Iterator[str]:
    """Statements typed at a prompt, each ended by ';' (or a blank line); `.quit` or end of input leaves."""
    print("spcs-llm sql: Cortex functions in DuckDB. End statements with ';'. .quit to leave.", file=sys.stderr)
    buffer: list[str] = []
    while True:
        try:
            line = input("spcs-llm> " if not buffer else "     ...> ")
        except EOFError:
            print(file=sys.stderr)
            break
        if not buffer and line.strip() in {".quit", ".exit", "quit", "exit"}:
            break
        buffer.append(line)
        text = "\n".join(buffer).strip()
        if text.endswith(";") or (not line.strip() and text):
            buffer.clear()
            yield text


def _write(con: Any, fmt: str, path: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--output format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    con.execute(f"COPY {RESULT} TO '{path.replace(chr(39), chr(39) * 2)}' (FORMAT {fmt})")


def _run_text(con: Any, client: Any, text: str, args: argparse.Namespace, schemas: Sequence[str]) -> None:
    dialect = args.dialect if args.dialect != "auto" else ("snowflake" if is_snowflake(text, schemas) else "duckdb")
    statements = transpile(text) if dialect == "snowflake" else [text]
    for statement in statements:
        with progress(client, enabled=not args.no_progress):
            relation = con.sql(statement)
            if relation is None:
                continue
            # computed once, here, keeping DuckDB's types (JSON stays JSON) for both printing and writing
            con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT} AS SELECT * FROM relation")
        try:
            if args.output:
                _write(con, args.output[0], args.output[1])
            else:
                con.table(RESULT).show(max_width=int(os.environ.get("COLUMNS", "160")))
        finally:
            con.execute(f"DROP TABLE {RESULT}")


_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: \w+: ")


def one_line(exc: BaseException) -> str:
    """A DuckDB or service error as the one line a SQL user needs (the UDF wrapper's prefix removed)."""
    return _UDF_ERROR.sub("", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def run(args: argparse.Namespace) -> int:
    try:
        import duckdb
        import sqlglot

        from . import duckdb as local
    except ImportError as exc:
        print(f"{MISSING} ({exc})", file=sys.stderr)
        return 2

    schemas = args.schemas or list(local.DEFAULT_SCHEMAS)
    settings = Settings.load(args.config) if args.url is None else None
    con = local.connect(args.url, args.database, settings=settings, schemas=schemas, max_batch_rows=args.max_batch_rows)
    client = local.client_of(con)
    try:
        for spec in args.table:
            name, _, path = spec.partition("=")
            if not name or not path:
                print(f"spcs-llm sql: --table {spec!r}: expected NAME=FILE", file=sys.stderr)
                return 2
            con.execute(f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM '{path.replace(chr(39), chr(39) * 2)}'")
        interactive = args.sql_text is None and args.file is None
        for text in _statements(args):
            try:
                _run_text(con, client, text, args, schemas)
            except (duckdb.Error, sqlglot.errors.SqlglotError, ValueError) as exc:
                print(f"spcs-llm sql: {one_line(exc)}", file=sys.stderr)
                if not interactive:
                    return 2
        return 0
    finally:
        local.close(con)
