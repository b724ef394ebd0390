"""The registry of SQL functions. Each entry declares its SQL overloads, return type and error policy.

A row is answered in two steps so that a batch can fail fast: ``prepare(runtime, args)`` runs synchronously,
validates the row (raising a RowError) and returns a zero-argument coroutine function that does the engine
work. The deploy renderer reads the same registry, so SQL signatures and server routes cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..engines.base import Embedder, Engine
from ..errors import InvalidInput, RowError, UnknownModel
from ..models.catalog import EmbedderResolver, ModelResolver
from ..scheduler import Scheduler

RowJob = Callable[[], Awaitable[Any]]


class Grouped:
    """A row job that the batch runs together with the other rows of its class: ``answer_batch`` calls
    :meth:`run_group` once with all of them (one task), where plain jobs run one after another and each gets a
    task of its own only if it waits (``eager.run_all``). That is for work whose engine side is batched anyway
    (embeddings): every row waits there, so a task, a future and a few calls per row would be the gateway's main
    cost. Called alone (``await job()``), a job answers its own row."""

    __slots__ = ()

    async def __call__(self) -> Any:
        (outcome,) = await self.run_group([self])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @classmethod
    async def run_group(cls, jobs: Sequence[Any]) -> list[Any]:
        """One outcome per job, in order: its value, or the SpcsLlmError of its row."""
        raise NotImplementedError


@dataclass
class Runtime:
    """What a function may use: the scheduler (the only way to the engines), the model names, the embedders."""

    scheduler: Scheduler
    models: ModelResolver
    max_output_tokens: int
    embedders: EmbedderResolver = field(default_factory=EmbedderResolver)

    def token_counter(self, model: object) -> Engine | Embedder:
        """What counts tokens for ``model``: the chat engine for a served or aliased chat model name, else the
        embedder serving that name (``unknown model`` when neither does)."""
        try:
            self.models.resolve(model)
            return self.scheduler.engine
        except UnknownModel:
            return self.embedders.resolve(model)

    @property
    def context_window(self) -> int:
        """Tokens one request to the served chat model may hold (prompt + output)."""
        return self.scheduler.engine.context_window


Prepare = Callable[[Runtime, list[Any]], RowJob]


def _ANY(value: Any) -> bool:
    return True


# What each SQL type arrives as in a Snowflake batch (snowflake-contract.md §1.1; ARRAY/OBJECT also as JSON text)
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "VARCHAR": lambda v: isinstance(v, str),
    "NUMBER": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "FLOAT": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "ARRAY": lambda v: isinstance(v, list | str),
    "OBJECT": lambda v: isinstance(v, dict | str),
}


@dataclass(frozen=True)
class Overload:
    """One SQL signature. A NULL argument makes the row NULL without calling ``prepare``, except for the
    arguments named in ``nullable``, which reach ``prepare`` as None (optional settings, or an input whose
    NULL is an error in Cortex, such as CLASSIFY_TEXT's)."""

    args: tuple[tuple[str, str], ...]  # (name, SQL type)
    returns: str
    prepare: Prepare
    nullable: frozenset[str] = frozenset()

    @property
    def arity(self) -> int:
        return len(self.args)

    def null_row(self, args: list[Any]) -> bool:
        """True when a NULL argument makes this row's answer NULL."""
        if None not in args:  # the common row, checked in C (JSON values never equal None)
            return False
        return any(v is None and name not in self.nullable for v, (name, _) in zip(args, self.args, strict=True))

    def mistyped(self, args: list[Any]) -> RowError | None:
        """For a row that a NULL makes NULL (no ``prepare`` looks at it): its first other argument whose JSON type is
        not its SQL type's, as the row error ``prepare`` would give. Snowflake never sends one; other clients may."""
        for value, (name, sql_type) in zip(args, self.args, strict=True):
            if value is not None and not _JSON_TYPES.get(sql_type, _ANY)(value):
                return InvalidInput(f"{name} must be {sql_type}", param=name)
        return None

    @property
    def signature(self) -> str:
        return "(" + ", ".join(f"{n} {t}" for n, t in self.args) + ")"


@dataclass(frozen=True)
class SqlFunction:
    """A Cortex-compatible SQL function. ``null_on_error``: a row error gives that row NULL (TRY_*, AI_*)
    instead of failing the batch with the Cortex message (legacy names). ``doc``: what it does and how it differs
    from Cortex, for the generated reference (``docs/reference/functions.md``)."""

    name: str
    overloads: tuple[Overload, ...]
    null_on_error: bool = False
    doc: str = ""
    _by_arity: dict[int, Overload] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # looked up once per row: a dict, not a scan
        object.__setattr__(self, "_by_arity", {o.arity: o for o in self.overloads})

    def overload(self, arity: int) -> Overload | None:
        return self._by_arity.get(arity)

    @property
    def arities(self) -> list[int]:
        return sorted(o.arity for o in self.overloads)


FUNCTIONS: dict[str, SqlFunction] = {}


def register(fn: SqlFunction) -> SqlFunction:
    if fn.name in FUNCTIONS:
        raise ValueError(f"duplicate SQL function {fn.name!r}")
    if len({o.arity for o in fn.overloads}) != len(fn.overloads):
        raise ValueError(f"{fn.name}: two overloads with the same number of arguments")
    FUNCTIONS[fn.name] = fn
    return fn


def json_arg(value: Any, expected: type, what: str, error: Callable[[str], RowError] = InvalidInput) -> Any:
    """An ARRAY/OBJECT argument arrives as native JSON, or as a JSON string (snowflake-contract.md §1.1)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise error(f"{what} is a string that is not valid JSON") from exc
    if not isinstance(value, expected):
        raise error(f"{what} must be {'an ARRAY' if expected is list else 'an OBJECT'}")
    return value
