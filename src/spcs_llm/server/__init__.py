"""HTTP and wire formats only: Snowflake service functions, OpenAI, health and metrics."""

from .app import create_app

__all__ = ["create_app"]
