"""``[[budgets]]``: token allowances per role, user, function or model (or service-wide), per UTC day or month.

A call is refused with Cortex's ``budget exceeded`` when any budget covering it is spent. Tokens are counted when
an engine call finishes, and every call checks its budgets just before it starts (after it got an engine place),
so once a budget is spent no further call starts; calls that had already started finish and are counted. The
overshoot is therefore at most the tokens of the calls in flight when the budget ran out: at most
``max_concurrency`` calls, each at most its prompt plus ``max_tokens``.

Spent tokens survive restarts: the service loads this period's totals from the usage history at start-up.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import BudgetExceeded
from .settings import BudgetSettings

Key = tuple[str, str, str, str, str]  # user, role, query id, function, model


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """Start and end (epoch seconds) of the UTC day or month that holds ``now``."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = datetime(t.year, t.month, t.day, tzinfo=UTC)
        return start.timestamp(), start.timestamp() + 86400
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    days = calendar.monthrange(t.year, t.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400


def _norm(value: str | None) -> str | None:
    return None if value is None else value.lower()


@dataclass
class Budget:
    spec: BudgetSettings
    limit: int  # this instance's share of spec.tokens
    spent: int = 0  # counted here this period
    others: int = 0  # spent this period by other instances (and earlier runs), read from the Snowflake table
    period_start: float = 0.0
    period_end: float = 0.0

    def covers(self, key: Key) -> bool:
        user, role, _, function, model = (k.lower() for k in key)
        s = self.spec
        return (
            (s.user is None or _norm(s.user) == user)
            and (s.role is None or _norm(s.role) == role)
            and (s.function is None or _norm(s.function) == function)
            and (s.model is None or _norm(s.model) == model)
        )

    def roll(self, now: float) -> None:
        if now >= self.period_end:
            self.period_start, self.period_end = period_bounds(self.spec.period, now)
            self.spent = self.others = 0


class Budgets:
    def __init__(
        self, specs: Sequence[BudgetSettings], instances: int = 1, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self.items = [Budget(s, max(1, s.tokens // instances)) for s in specs]
        now = clock()
        for b in self.items:
            b.roll(now)
        self._covering: dict[tuple[str, str, str, str], list[Budget]] = {}

    def covering(self, key: Key) -> list[Budget]:
        short = (key[0], key[1], key[3], key[4])  # the query id never selects a budget
        found = self._covering.get(short)
        if found is None:
            if len(self._covering) > 100_000:
                self._covering.clear()
            found = self._covering[short] = [b for b in self.items if b.covers(key)]
        return found

    def check(self, key: Key, covering: list[Budget] | None = None) -> None:
        """Raise BudgetExceeded if a budget covering ``key`` is spent (``covering``: the budgets, if known)."""
        now = self.clock()
        for b in self.covering(key) if covering is None else covering:
            if now >= b.period_end:
                b.roll(now)
            if b.spent + b.others >= b.limit:
                raise BudgetExceeded()

    def spend(self, key: Key, tokens: int, covering: list[Budget] | None = None) -> None:
        """Count ``tokens`` against the budgets covering ``key`` (rolled over by the check before the call)."""
        for b in self.covering(key) if covering is None else covering:
            b.spent += tokens

    def preload(self, spent_since: Callable[[BudgetSettings, float], int]) -> None:
        """Add what the history says was spent in each budget's current period (``spent_since(spec, start)``)."""
        for b in self.items:
            b.spent += spent_since(b.spec, b.period_start)

    def set_others(self, totals: list[tuple[float, int]]) -> None:
        """What other instances spent, one (period start, tokens) per budget, as read from the shared table; a
        total read for a period that has ended since is ignored."""
        for b, (period_start, tokens) in zip(self.items, totals, strict=True):
            if period_start == b.period_start:
                b.others = tokens

    def status(self) -> list[dict[str, object]]:
        now = self.clock()
        out = []
        for b in self.items:
            b.roll(now)
            out.append(
                {
                    "budget": b.spec.describe(),
                    "period": b.spec.period,
                    "tokens": b.limit,
                    "spent": b.spent + b.others,
                    "spent_here": b.spent,
                    "resets_at": datetime.fromtimestamp(b.period_end, UTC).isoformat(),
                }
            )
        return out
