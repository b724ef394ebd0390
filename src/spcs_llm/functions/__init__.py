"""Cortex semantics: one module per function family, each registered in :data:`registry.FUNCTIONS`."""

from . import complete as _complete  # noqa: F401  (registers COMPLETE and TRY_COMPLETE)
from .registry import FUNCTIONS, Overload, Runtime, SqlFunction

__all__ = ["FUNCTIONS", "Overload", "Runtime", "SqlFunction"]
