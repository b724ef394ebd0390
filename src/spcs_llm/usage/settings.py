"""The ``[usage]`` table and the ``[[budgets]]`` entries of the config file.

```toml
[usage]
db_path = "/data/usage.sqlite3"    # local disk or a block volume, never a stage volume
credits_per_node_hour = 1.2        # the compute pool's rate: turns engine busy time into estimated credits

[[budgets]]
role = "ANALYST"
tokens = 1000000
period = "day"                     # or "month" (UTC)
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DB_ENV = "SPCS_LLM_USAGE_DB"


def default_db_path() -> Path:
    """``$SPCS_LLM_USAGE_DB``, else ``$XDG_STATE_HOME/spcs-llm/usage.sqlite3`` (``~/.local/state/...``)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "spcs-llm" / "usage.sqlite3"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageSettings(_Section):
    enabled: bool = Field(True, description="Count usage per user, role, query, function and model")
    db_path: Path | None = Field(
        None,
        description="SQLite file of the usage history (default: $SPCS_LLM_USAGE_DB, else "
        "~/.local/state/spcs-llm/usage.sqlite3). Local disk or a block volume: a stage volume cannot lock files",
    )
    flush_seconds: float = Field(
        10.0, gt=0, description="Aggregates are written this often; a crash loses at most this much usage"
    )
    idle_flush_seconds: float = Field(
        300.0, gt=0, description="With no traffic, the idle node time is written this often"
    )
    credits_per_node_hour: float | None = Field(
        None,
        ge=0,
        description="Credits one instance's node costs per hour (the compute pool's rate); unset: no credit estimates",
    )
    node_share: float = Field(
        1.0, gt=0, le=1, description="Share of a node one instance uses (0.5 when two instances share a node)"
    )
    budget_instances: int = Field(
        1, ge=1, description="Instances that share each budget: each instance enforces tokens / this"
    )
    export: Literal["auto", "on", "off"] = Field(
        "auto", description="Export to a Snowflake table: auto = when running inside SPCS"
    )
    export_table: str = Field("SPCS_LLM_USAGE", description="Table in the service's schema the history goes to")
    export_seconds: float = Field(60.0, gt=0, description="How often new history is exported")
    export_warehouse: str | None = Field(
        None, description="Warehouse for the export's MERGE (default: the service's QUERY_WAREHOUSE)"
    )


class BudgetSettings(_Section):
    """One budget: every given field must match the call; none given is a service-wide budget."""

    role: str | None = Field(None, description="Snowflake role (sf-context-current-role), case-insensitive")
    user: str | None = Field(
        None, description="Snowflake user (sf-context-current-user), or an API key's name; case-insensitive"
    )
    function: str | None = Field(None, description='SQL function, e.g. "complete" (TRY_COMPLETE is its own name)')
    model: str | None = Field(None, description="Served model name, as /usage shows it")
    tokens: int = Field(ge=1, description="Input plus output tokens allowed per period")
    period: Literal["day", "month"] = Field("day", description="The budget resets at UTC midnight / month start")

    def describe(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (("role", self.role), ("user", self.user), ("function", self.function), ("model", self.model))
            if v is not None
        ]
        return " ".join(parts) or "service-wide"
