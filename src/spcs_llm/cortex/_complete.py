"""``complete``: snowflake-ml-python's signature, exceptions and REST client behaviour, on spcs-llm.

Paths:
- a Column prompt → ``<schema>.COMPLETE(model, prompt)``; with options, the options form
  ``COMPLETE(model, [{'role': 'user', 'content': prompt}], options)`` and the answer text read out of its JSON;
- plain values and a session → the same expression in one SQL query;
- plain values and no session → ``POST /api/v2/cortex/inference:complete`` on the service, streamed as server-sent
  events, like snowflake-ml-python's REST call (retrying 429/503/504 with its back-off, honouring Retry-After).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from typing import Any, NotRequired, TypedDict

import httpx

from ..client import FunctionError
from . import _route
from ._functions import deprecated_alias

REST_COMPLETE_URL = "/api/v2/cortex/inference:complete"
MAX_RETRY_SECONDS = 30
RETRIED = (429, 503, 504)
MAX_RETRIES = 8  # snowflake-ml-python retries until the deadline, forever without one; here at most this often


class ResponseFormat(TypedDict):
    type: str
    schema: dict[str, Any]


class ConversationMessage(TypedDict):
    """One turn of a conversation: ``role`` (``system``, ``user`` or ``assistant``) and ``content``."""

    role: str
    content: str


class CompleteOptions(TypedDict):
    """Options of a complete call: ``max_tokens``, ``temperature`` and ``top_p`` (0 to 1), ``guardrails``
    (refused here: no guard model runs), ``response_format`` (``{"type": "json", "schema": {...}}``)."""

    max_tokens: NotRequired[int]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    guardrails: NotRequired[bool]
    response_format: NotRequired[ResponseFormat]


class ResponseParseException(Exception):
    """This exception is raised when the server response cannot be parsed."""


class MidStreamException(Exception):
    """An error event in the middle of the stream (the answer had begun, so it came with status 200)."""

    def __init__(self, reason: str | None = None, http_resp: Any | None = None, request_id: str | None = None) -> None:
        message = reason or ""
        if http_resp is not None:
            message = f"Error in stream (HTTP Response: {http_resp.status_code}) - {http_resp.reason_phrase}"
        if request_id:
            message += f" (Request ID: {request_id})"
        super().__init__(message)


def _validate_response_format(options: Any) -> None:
    """snowflake-ml-python's checks and messages."""
    fmt = (options or {}).get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise ValueError("'response_format' should be an object")
    if fmt.get("type") is None:
        raise ValueError("'type' cannot be empty for 'response_format' object")
    if not isinstance(fmt.get("type"), str):
        raise ValueError("'type' needs to be a str for 'response_format' object")
    if fmt.get("schema") is None:
        raise ValueError("'schema' cannot be empty for 'response_format' object")
    if not isinstance(fmt.get("schema"), dict):
        raise ValueError("'schema' needs to be a dict for 'response_format' object")


def request_body(model: str, prompt: str | list[ConversationMessage], options: Any) -> dict[str, Any]:
    """The REST body exactly as snowflake-ml-python builds it."""
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "messages": prompt if isinstance(prompt, list) else [{"content": prompt}],
    }
    options = options or {}
    if "max_tokens" in options:
        body["max_tokens"] = body["max_output_tokens"] = options["max_tokens"]
    for key in ("temperature", "top_p", "response_format"):
        if key in options:
            body[key] = options[key]
    if options.get("guardrails"):
        body["guardrails"] = {"enabled": True, "response_when_unsafe": "Response filtered by Cortex Guard"}
    return body


# -- SQL: the Column expression (also evaluated with literals on a session) --------------------------------------


def sql_expression(model: Any, prompt: Any, options: Any) -> Any:
    from snowflake.snowpark import functions
    from snowflake.snowpark.types import StringType

    if options is None and not isinstance(prompt, list):
        return _route.call_expression("complete", model, prompt)
    if isinstance(prompt, list):
        messages = functions.lit(prompt)
    else:
        messages = functions.array_construct(
            functions.object_construct(
                functions.lit("role"), functions.lit("user"), functions.lit("content"), _route.as_column(prompt)
            )
        )
    raw = _route.call_expression("complete", model, messages, options if options is not None else {})
    return functions.parse_json(raw)["choices"][0]["messages"].cast(StringType())


# -- REST: what snowflake-ml-python's complete() does, against the spcs-llm service -------------------------------


def _post(body: dict[str, Any], deadline: float | None) -> tuple[httpx.Client, httpx.Response]:
    url = _route.service_url() + REST_COMPLETE_URL
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **_route.auth_headers(),
    }
    http = httpx.Client(timeout=httpx.Timeout(None, connect=10.0))
    delay = 0.5
    try:
        for attempt in range(MAX_RETRIES + 1):
            if deadline is not None and time.time() > deadline:
                raise TimeoutError()
            try:
                response = http.send(http.build_request("POST", url, json=body, headers=headers), stream=True)
            except httpx.TransportError as exc:
                raise FunctionError(
                    f"cannot reach the spcs-llm service at {_route.service_url()} "
                    f"({type(exc).__name__}: {exc}); start it with `spcs-llm serve`",
                    503,
                ) from exc
            if 200 <= response.status_code < 300:
                return http, response
            response.read()
            if response.status_code not in RETRIED or attempt == MAX_RETRIES:
                raise rest_error(response)
            delay = min(2 * delay, MAX_RETRY_SECONDS)
            time.sleep(max(delay, float(response.headers.get("retry-after") or 0)))
        raise AssertionError("unreachable")
    except BaseException:
        http.close()
        raise


@functools.cache
def _rest_error_type() -> type[FunctionError]:
    """FunctionError that is also a ``requests.HTTPError`` when requests is installed: snowflake-ml-python's REST
    ``complete()`` raises ``requests.HTTPError`` for a refused request, so code written against it still catches it."""
    try:
        from requests import HTTPError
    except ImportError:
        return FunctionError

    class RestError(FunctionError, HTTPError):
        """The service refused a REST call: Cortex's message, ``.status``, and ``.response`` (a requests.Response)."""

    return RestError


def rest_error(response: httpx.Response) -> FunctionError:
    error = _rest_error_type()(_error_message(response), response.status_code)
    if hasattr(error, "response"):  # the requests.HTTPError side: a requests.Response, as ml-python's carries
        import requests

        theirs = requests.Response()
        theirs.status_code, theirs._content = response.status_code, response.content
        theirs.headers.update(response.headers)
        theirs.url, theirs.reason = str(response.url), response.reason_phrase
        error.response = theirs
    return error


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body["error"]["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text or f"HTTP {response.status_code}"


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data of each ``message`` event (other event types are ignored, as snowflake-ml-python's SSEClient does)."""
    data: list[str] = []
    kind = "message"
    for line in lines:
        if not line:
            if data and kind == "message":
                yield "\n".join(data)
            data, kind = [], "message"
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            kind = line[6:].strip() or "message"
    if data and kind == "message":
        yield "\n".join(data)


def _stream(http: httpx.Client, response: httpx.Response, deadline: float | None) -> Iterator[str]:
    request_id = response.headers.get("x-snowflake-request-id")
    try:
        for data in _sse_data(response.iter_lines()):
            if deadline is not None and time.time() > deadline:
                raise TimeoutError()
            try:
                event = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ResponseParseException("Server response cannot be parsed") from exc
            try:
                yield event["choices"][0]["delta"]["content"]
            except (KeyError, IndexError, TypeError):
                if isinstance(event, dict) and event.get("error"):
                    raise MidStreamException(reason=str(event["error"]), request_id=request_id) from None
    finally:
        response.close()
        http.close()


def _rest(model: str, prompt: Any, options: Any, deadline: float | None) -> Iterator[str]:
    _validate_response_format(options)
    http, response = _post(request_body(model, prompt, options), deadline)
    return _stream(http, response, deadline)


def _once(value: str) -> Iterator[str]:
    yield value


def complete(
    model: Any,
    prompt: Any,
    *,
    options: CompleteOptions | None = None,
    session: Any = None,
    stream: bool = False,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Any:
    """Generate an answer to ``prompt`` (a string, a list of ConversationMessage, or a Column) with ``model``.

    A Column prompt gives a Column (``<schema>.COMPLETE`` runs in Snowflake). Plain values go through the session's
    SQL when there is one, else through the spcs-llm service's Cortex REST route (``SPCS_LLM_URL``).

    ``stream=True`` returns an iterator of text pieces. Over HTTP they arrive token by token as the model writes
    them. Over SQL the iterator yields the whole answer once: a SQL function returns its value only when it is
    complete, so there is nothing to stream (snowflake-ml-python streams only because it calls REST, which a
    Snowflake session cannot route to a self-hosted service).

    ``timeout`` (seconds) or ``deadline`` (a ``time.time()`` value) bounds the REST retries and the stream.
    Raises ValueError for the argument errors snowflake-ml-python refuses, ``MidStreamException`` for an error
    event in the stream, and ``spcs_llm.client.FunctionError`` (the Cortex message and HTTP status) when the
    service refuses the request.
    """
    if timeout is not None and deadline is not None:
        raise ValueError('only one of "timeout" and "deadline" must be set')
    if timeout is not None:
        deadline = time.time() + timeout
    if stream:
        if not isinstance(model, str):
            raise ValueError("in REST mode, 'model' must be a string")
        if not isinstance(prompt, str | list):
            raise ValueError("in REST mode, 'prompt' must be a string or a list of ConversationMessage")
    if _route.is_column(prompt):
        return sql_expression(model, prompt, options)
    if _route.is_column(model):
        raise ValueError("'model' cannot be a snowpark.Column when 'prompt' is a string.")
    if _route.is_column(options):
        raise ValueError("'options' cannot be a snowpark.Column when 'prompt' is a string.")
    _validate_response_format(options)
    found = _route.active_session(session)
    if found is not None:
        answer = _route.evaluate(found, sql_expression(model, prompt, options))
        return _once(answer) if stream else answer
    pieces = _rest(model, prompt, options, deadline)
    return pieces if stream else "".join(pieces)


Complete = deprecated_alias(complete, "Complete")
