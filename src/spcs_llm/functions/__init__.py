"""Cortex semantics: one module per function family, each registered in :data:`registry.FUNCTIONS`."""

# Importing a family's module registers its functions.
from . import classify, complete, embed, extract, sentiment, summarize, text, translate  # noqa: F401
from .registry import FUNCTIONS, Overload, Runtime, SqlFunction

__all__ = ["FUNCTIONS", "Overload", "Runtime", "SqlFunction"]
