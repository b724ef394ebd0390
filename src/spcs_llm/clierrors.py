"""How the CLI reports a failure: one line on stderr, never a traceback (unless ``--debug``).

A user error (a missing file, a bad config key, an unreachable upstream, a missing Snowflake connection, a model
that will not load) exits with status 2; anything else is a bug, reported on one line too, with status 1 and a
pointer to ``--debug``.
"""

from __future__ import annotations

import sys

import httpx

from .config import ConfigError
from .errors import SpcsLlmError


def _user_errors() -> tuple[type[BaseException], ...]:
    from .cli import StartupFailed
    from .client import FunctionError
    from .deploy.snowflake import DeployError
    from .models.download import DownloadError
    from .models.sizing import DoesNotFit

    return (
        ConfigError,
        OSError,
        httpx.HTTPError,
        SpcsLlmError,
        StartupFailed,
        DeployError,
        DownloadError,
        DoesNotFit,
        FunctionError,
    )


def message(exc: BaseException) -> str:
    """The text of an error, on one line."""
    text = exc.message if isinstance(exc, SpcsLlmError) else str(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # "[Errno 2] No such file..." reads badly
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join((text or type(exc).__name__).split())


def report(command: str, exc: BaseException) -> int:
    """Print ``exc`` as one line and return the exit status: 2 for a user error, 1 for a bug."""
    if isinstance(exc, _user_errors()):
        print(f"spcs-llm {command}: {message(exc)}", file=sys.stderr)
        return 2
    print(
        f"spcs-llm {command}: internal error: {type(exc).__name__}: {message(exc)} "
        "(run again with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1
