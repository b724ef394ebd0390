"""Which wire format a path speaks, for answers made before a route runs (authentication, body limits)."""

from __future__ import annotations

from fastapi import Response

from ..errors import SpcsLlmError
from . import openai, snowflake

OPENAI_PREFIXES = ("/v1/", "/tokenize")


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


def error_response(path: str, exc: SpcsLlmError) -> Response:
    """The error in the body its route would use: OpenAI's error object, else Snowflake's plain text."""
    return openai.error_response(exc) if is_openai(path) else snowflake.error_response(exc)
