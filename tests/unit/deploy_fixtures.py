"""Shared pieces of the deploy tests: the golden configs and a fixed function registry.

The golden files use a fixed registry (Cortex's signatures from snowflake-contract.md §3.1, including the
embedding and aggregate shapes) so that they show the wrappers and do not change each time a function module
lands; ``test_function_list_equals_registry`` checks the renderer against the server's real registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spcs_llm.deploy.config import DeployConfig
from spcs_llm.functions.registry import Overload, SqlFunction

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONFIGS = sorted(p.name for p in GOLDEN.iterdir() if (p / "spcs-llm.toml").is_file())


def _never(rt: Any, args: list[Any]) -> Any:
    raise AssertionError("the renderer never calls a function")


def _fn(name: str, *overloads: tuple[tuple[tuple[str, str], ...], str], null_on_error: bool = False) -> SqlFunction:
    return SqlFunction(name, tuple(Overload(a, r, _never) for a, r in overloads), null_on_error)


GOLDEN_FUNCTIONS: dict[str, SqlFunction] = {
    f.name: f
    for f in (
        _fn(
            "complete",
            ((("model", "VARCHAR"), ("prompt", "VARCHAR")), "VARCHAR"),
            ((("model", "VARCHAR"), ("prompt", "ARRAY"), ("options", "OBJECT")), "VARCHAR"),
        ),
        _fn("try_complete", ((("model", "VARCHAR"), ("prompt", "VARCHAR")), "VARCHAR"), null_on_error=True),
        _fn("sentiment", ((("text", "VARCHAR"),), "FLOAT")),
        _fn("embed_text_768", ((("model", "VARCHAR"), ("text", "VARCHAR")), "ARRAY")),
        _fn("embed_text_1024", ((("model", "VARCHAR"), ("text", "VARCHAR")), "ARRAY")),
        _fn("ai_agg", ((("texts", "ARRAY"), ("instruction", "VARCHAR")), "VARCHAR"), null_on_error=True),
    )
}


def load(name: str) -> DeployConfig:
    return DeployConfig.load(GOLDEN / name / "spcs-llm.toml")


def split_statements(script: str) -> list[str]:
    """A SQL script as SnowSQL runs it: statements end with ';' outside $$...$$ bodies; '--' comments dropped."""
    out, cur, dollar = [], [], False
    for line in script.splitlines():
        if not dollar and line.lstrip().startswith("--"):
            continue
        dollar ^= line.count("$$") % 2 == 1
        cur.append(line)
        if not dollar and line.rstrip().endswith(";"):
            out.append("\n".join(cur).strip().removesuffix(";"))
            cur = []
    assert not "\n".join(cur).strip(), f"unterminated statement: {cur[:3]}"
    return out
