"""Usage metering: who used how much (rows, tokens, engine time, estimated credits), budgets with Cortex's
``budget exceeded``, the durable history and its export to Snowflake. See docs/usage.md.

The package is imported by ``config`` (for its settings), so this module imports nothing: use
``spcs_llm.usage.build``, ``.meter``, ``.service``.
"""
