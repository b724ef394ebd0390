"""The one interface the pages use, whatever answers behind it.

Rows go through ``run_in_batches`` in chunks of ``batch_rows`` (like Snowflake's ``MAX_BATCH_ROWS``) so the batch
page can show progress; each implementation answers one chunk with one call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

Message = dict[str, str]


class BackendError(Exception):
    """A call failed; the message is meant for the user (the server's or Snowflake's own text)."""


@dataclass(frozen=True)
class FunctionSpec:
    """One SQL overload: ``COMPLETE(model VARCHAR, prompt VARCHAR) RETURNS VARCHAR``."""

    name: str  # the SQL name, upper case
    args: tuple[tuple[str, str], ...]  # (argument name, SQL type)
    returns: str

    @property
    def signature(self) -> str:
        return f"{self.name}(" + ", ".join(f"{n} {t}" for n, t in self.args) + f") → {self.returns}"


def registry_specs() -> list[FunctionSpec]:
    """Every function and overload the server registers, read from the server's own registry."""
    from spcs_llm.functions import FUNCTIONS

    return [
        FunctionSpec(fn.name.upper(), tuple(o.args), o.returns)
        for fn in FUNCTIONS.values()
        for o in sorted(fn.overloads, key=lambda o: o.arity)
    ]


class Backend(ABC):
    """Chat, functions over rows, and (where there is a database) tables."""

    where: str  # shown in the sidebar: a URL or a schema
    streams: bool  # whether chat answers arrive token by token
    supports_tables: bool = False
    sql_prefix: str = "MYDB.LLM"  # the schema users put before the function names

    @abstractmethod
    def models(self) -> list[str]: ...

    @abstractmethod
    def functions(self) -> list[FunctionSpec]: ...

    @abstractmethod
    def chat_stream(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Iterator[str]:
        """The assistant's answer, in pieces (one piece where the backend cannot stream)."""

    @abstractmethod
    def run_function(self, fn: FunctionSpec, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """One value per row, in order; each row holds ``fn``'s arguments."""

    def read_table(self, table: str, limit: int) -> pd.DataFrame:
        raise BackendError("reading tables needs a Snowflake session (run the app in Streamlit in Snowflake)")

    def usage(self, days: int, split: str | None) -> pd.DataFrame:
        """Usage of the last ``days`` days per UTC day (and per ``split``: user, role, function or model), with
        columns day, [split], rows, tokens, credits (None where no credit rate is configured)."""
        raise BackendError("this backend cannot read usage")


def run_in_batches(
    backend: Backend,
    fn: FunctionSpec,
    rows: Sequence[Sequence[Any]],
    batch_rows: int,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[Any]:
    """Answer ``rows`` chunk by chunk, calling ``on_progress(done, total)`` after each chunk."""
    if batch_rows < 1:
        raise BackendError("rows per batch must be at least 1")
    results: list[Any] = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        values = backend.run_function(fn, chunk)
        if len(values) != len(chunk):
            raise BackendError(f"{fn.name}: {len(chunk)} rows sent but {len(values)} answers came back")
        results.extend(values)
        on_progress(len(results), len(rows))
    return results


def argument_rows(frame: pd.DataFrame, sources: Sequence[tuple[str, Any]]) -> list[list[Any]]:
    """Build argument rows from a table: each source is ``("column", name)`` or ``("value", constant)``.

    Missing cells become None (SQL NULL), which the service answers with NULL without calling the model.
    """
    columns = []
    for kind, value in sources:
        if kind == "column":
            if value not in frame.columns:
                raise BackendError(f"no column {value!r} in the data (columns: {', '.join(map(str, frame.columns))})")
            columns.append([_plain(v) for v in frame[value].tolist()])
        else:
            columns.append([value] * len(frame))
    return [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(len(frame))]


def _plain(value: Any) -> Any:
    """pandas gives NaN for empty cells and numpy scalars for numbers; the wire wants None and plain values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
