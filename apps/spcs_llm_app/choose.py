"""Which backend: inside Streamlit in Snowflake there is an active Snowpark session; elsewhere, the local server."""

from __future__ import annotations

import os

from .backend import Backend

DEFAULT_URL = "http://127.0.0.1:8001"
# Model names offered in Snowflake, where no /v1/models is reachable: the Cortex names the service aliases.
DEFAULT_SNOWFLAKE_MODELS = "llama3.1-8b,mistral-7b"


def active_session() -> object | None:
    try:
        from snowflake.snowpark.context import get_active_session
    except ImportError:
        return None
    try:
        return get_active_session()
    except Exception:  # no session: not running inside Snowflake
        return None


def pick_backend() -> Backend:
    session = active_session()
    if session is not None:
        from .snowpark_backend import SnowparkBackend

        models = os.environ.get("SPCS_LLM_MODELS", DEFAULT_SNOWFLAKE_MODELS).split(",")
        return SnowparkBackend(session, os.environ.get("SPCS_LLM_SCHEMA"), [m.strip() for m in models if m.strip()])
    from .http_backend import HttpBackend

    return HttpBackend(os.environ.get("SPCS_LLM_URL", DEFAULT_URL))
