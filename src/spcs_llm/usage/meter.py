"""Counting usage on the hot path: a few additions per engine call into an in-memory table, nothing else.

Who a call is counted against travels in a context variable (:data:`current`), set once per request by the wire
layer: the Snowflake headers for a batch, the API key's name (else ``anonymous``) for OpenAI and REST callers.
The scheduler reports each engine call (tokens and busy time) and the wire layer each batch (rows and errors);
the table is taken away whole at each flush (:meth:`Meter.take`), so the hot path never touches the disk.

Only counts and names are kept: never a prompt or an output.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engines.base import Usage
from .budgets import Budgets

KEY_FIELDS = ("user", "role", "query_id", "function", "model")
COUNTERS = ("rows", "input_tokens", "output_tokens", "cached_tokens", "busy_seconds", "errors", "engine_calls")
ROWS, INPUT, OUTPUT, CACHED, BUSY, ERRORS, CALLS = range(len(COUNTERS))

USER_HEADER = "sf-context-current-user"
ROLE_HEADER = "sf-context-current-role"
QUERY_ID_HEADER = "sf-external-function-current-query-id"
ANONYMOUS = "anonymous"

Key = tuple[str, str, str, str, str]


@dataclass(slots=True)
class Attribution:
    """Whom the work of one request is counted against. ``model`` is the last model the request used (its rows
    are counted against it); ``errors`` the rows of a batch that got an error value."""

    user: str
    role: str
    query_id: str
    function: str
    model: str = ""
    errors: int = 0
    budgets: Any = None  # (meter, model, the budgets covering this request with it): looked up once per request
    slot: Any = None  # (the meter's table, model, this request's row in it, its key)


current: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar("usage_attribution", default=None)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A context header's exact value: the ``-base64`` form when sent (the plain one has illegal characters
    replaced by blanks), else the plain one, else ''."""
    encoded = headers.get(name + "-base64")
    if encoded:
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            pass
    return headers.get(name) or ""


def from_snowflake(headers: Mapping[str, str], function: str) -> Attribution:
    """A Snowflake batch's attribution: CONTEXT_HEADERS = (CURRENT_USER, CURRENT_ROLE) and the query id."""
    return Attribution(
        _header(headers, USER_HEADER), _header(headers, ROLE_HEADER), headers.get(QUERY_ID_HEADER) or "", function
    )


def caller_name(state: Any) -> str:
    """The name an OpenAI or REST caller is counted under: the API key's name when the request was
    authenticated with one (``request.state.api_key_name``, set by the auth layer), else ``anonymous``."""
    return getattr(state, "api_key_name", None) or ANONYMOUS


def from_api(state: Any, function: str) -> Attribution:
    return Attribution(caller_name(state), "", "", function)


class Meter:
    """Usage counted since the last flush, keyed by (user, role, query id, function, model)."""

    def __init__(self, budgets: Budgets | None = None) -> None:
        self.budgets = budgets if budgets is not None and budgets.items else None
        self.pending: dict[Key, list[float]] = {}
        self.refusals: dict[str, int] = {}

    def _slot(self, key: Key) -> list[float]:
        slot = self.pending.get(key)
        if slot is None:
            slot = self.pending[key] = [0, 0, 0, 0, 0.0, 0, 0]
        return slot

    def engine_call(self, model: str, usage: Usage | None, busy_seconds: float) -> None:
        """One engine call made for the current request (a failed one has no usage: its busy time counts)."""
        if usage is None:
            self._count(model, 1, 0, 0, 0, busy_seconds)
        else:
            self._count(model, 1, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, busy_seconds)

    def _count(self, model: str, calls: int, prompt: int, completion: int, cached: int, busy: float) -> None:
        attr = current.get()
        pending = self.pending
        if attr is None:
            key: Key = (ANONYMOUS, "", "", "", model)
            slot = self._slot(key)
        else:
            attr.model = model
            known = attr.slot  # the request's row of the table, valid until the table is taken at a flush
            if known is not None and known[0] is pending and known[1] == model:
                slot, key = known[2], known[3]
            else:
                key = (attr.user, attr.role, attr.query_id, attr.function, model)
                slot = self._slot(key)
                attr.slot = (pending, model, slot, key)
        slot[BUSY] += busy
        slot[CALLS] += calls
        if prompt or completion:
            slot[INPUT] += prompt
            slot[OUTPUT] += completion
            slot[CACHED] += cached
            if self.budgets is not None:
                self.budgets.spend(key, prompt + completion, self._covering(attr, key))

    def embedded(self, model: str, texts: int, tokens: int, busy_seconds: float) -> None:
        """``texts`` texts embedded for the current request: their input tokens and shares of the passes' engine
        time. No texts (all cached or joined): only the model is noted, as for a cached answer."""
        if texts:
            self._count(model, texts, tokens, 0, 0, busy_seconds)
        else:
            self.seen_model(model)

    def seen_model(self, model: str) -> None:
        """The current request used ``model`` without an engine call (a cached answer)."""
        attr = current.get()
        if attr is not None:
            attr.model = model

    def rows(self, attr: Attribution, rows: int, errors: int) -> None:
        """A request's rows: answered ones and those that got an error."""
        slot = self._slot((attr.user, attr.role, attr.query_id, attr.function, attr.model))
        slot[ROWS] += rows
        slot[ERRORS] += errors

    def check(self, model: str) -> None:
        """Raise BudgetExceeded if a budget covering the current request and ``model`` is spent."""
        budgets = self.budgets
        if budgets is None:
            return
        attr = current.get()
        cached = attr.budgets if attr is not None else None
        if cached is not None and cached[0] is self and cached[1] == model:
            covering = cached[2]  # the common case: the request's budgets were looked up by its first call
        else:
            covering = self._covering(attr, self._key(attr, model))
        try:
            budgets.check(("", "", "", "", ""), covering)
        except Exception:
            function = attr.function if attr is not None else ""
            self.refusals[function] = self.refusals.get(function, 0) + 1
            raise

    @staticmethod
    def _key(attr: Attribution | None, model: str) -> Key:
        if attr is None:
            return (ANONYMOUS, "", "", "", model)
        return (attr.user, attr.role, attr.query_id, attr.function, model)

    def _covering(self, attr: Attribution | None, key: Key) -> list[Any]:
        """The budgets covering this request and model, kept on the request's attribution after the first call."""
        assert self.budgets is not None
        if attr is None:
            return self.budgets.covering(key)
        cached = attr.budgets
        if cached is None or cached[0] is not self or cached[1] != key[4]:
            cached = attr.budgets = (self, key[4], self.budgets.covering(key))
        return cached[2]

    def take(self) -> dict[Key, list[float]]:
        """What was counted since the last call, handed over whole (the next count starts a new table)."""
        pending, self.pending = self.pending, {}
        return pending
