"""COMPLETE and TRY_COMPLETE (snowflake-contract.md §3.1–3.3).

- ``COMPLETE(model, prompt)`` returns the completion text.
- ``COMPLETE(model, messages, options)`` returns a JSON string
  ``{"choices":[{"messages": "..."}], "created": ..., "model": "<real model>", "usage": {...}}``.
- ``TRY_COMPLETE``: the same, but a row error gives that row NULL.

Defaults follow Cortex: temperature 0, max_tokens 4096 capped by the served model's output limit; output that
does not fit the context is truncated, input that does not fit is ``max tokens of <n> exceeded``. Cortex
documents top_p's default as 0, which taken literally would keep only the likeliest token and make any
temperature meaningless; an unset top_p here means no nucleus cut (1.0), and an explicit value is used as given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from ..engines.base import ChatRequest, ChatResult, Message
from ..errors import InvalidInput, InvalidOptions, InvalidPrompt, SchemaValidationFailed
from .registry import Overload, RowJob, Runtime, SqlFunction, json_arg, register

CORTEX_DEFAULT_MAX_TOKENS = 4096
ROLES = frozenset({"system", "user", "assistant"})
OPTION_KEYS = frozenset({"temperature", "top_p", "max_tokens", "guardrails", "response_format"})


@dataclass(frozen=True)
class Options:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = CORTEX_DEFAULT_MAX_TOKENS
    json_schema: str | None = None


def _unit_interval(options: dict[str, Any], key: str) -> float:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidOptions(f"{key} must be a number from 0 to 1")
    return float(value)


def _positive_int(options: dict[str, Any], key: str) -> int:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise InvalidOptions(f"{key} must be a positive integer")
    return int(value)


def _schema(options: dict[str, Any]) -> str | None:
    fmt = options["response_format"]
    if not isinstance(fmt, dict) or fmt.get("type") != "json" or not isinstance(fmt.get("schema"), dict):
        raise InvalidOptions("response_format must be {'type': 'json', 'schema': {...}}")
    if set(fmt) - {"type", "schema"}:
        raise InvalidOptions("response_format has keys other than type and schema")
    return checked_schema(fmt["schema"])


def checked_schema(schema: dict[str, Any]) -> str:
    """The canonical form of a response-format schema, or ``schema validation failed`` if it is not a valid
    JSON Schema (checked here, before any engine work)."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaValidationFailed() from exc
    return ChatRequest.schema_key(schema) or "{}"


def parse_options(raw: Any) -> Options:
    """Validate a COMPLETE options object. Any unknown key or out-of-range value is ``invalid options object``."""
    options = json_arg(raw, dict, "options", InvalidOptions)
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise InvalidOptions(f"unknown keys: {sorted(unknown)}")
    if options.get("guardrails", False) is not False:
        # No guard model runs here; accepting TRUE would pretend responses were filtered.
        raise InvalidOptions("guardrails must be FALSE: this service runs no guard model")
    parsers = {"temperature": _unit_interval, "top_p": _unit_interval, "max_tokens": _positive_int}
    given: dict[str, Any] = {key: parse(options, key) for key, parse in parsers.items() if key in options}
    if "response_format" in options:
        given["json_schema"] = _schema(options)
    return Options(**given)  # what is not given keeps the defaults declared on Options


def parse_messages(raw: Any) -> tuple[Message, ...]:
    """A prompt array ``[{role, content}, ...]``: roles system/user/assistant, one system message, first."""
    items = json_arg(raw, list, "prompt", InvalidPrompt)
    if not items:
        raise InvalidPrompt("the prompt array is empty")
    messages = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise InvalidPrompt(f"message {i} is not an object with a string content")
        role = item.get("role", "user")
        if role not in ROLES or (role == "system" and i > 0):
            raise InvalidPrompt(f"message {i} has role {role!r} where it is not allowed")
        messages.append(Message(role, item["content"]))
    return tuple(messages)


DEFAULT_OPTIONS = Options()


def chat_request(rt: Runtime, messages: tuple[Message, ...], opts: Options) -> ChatRequest:
    """COMPLETE's engine request: the options as given, the output capped at what the service allows."""
    return ChatRequest(
        messages=messages,
        max_tokens=min(opts.max_tokens, rt.max_output_tokens),
        temperature=opts.temperature,
        top_p=opts.top_p,
        json_schema=opts.json_schema,
    )


def complete_text(rt: Runtime, args: list[Any]) -> RowJob:
    model, prompt = args
    rt.models.resolve(model)
    if not isinstance(prompt, str):
        raise InvalidPrompt("prompt must be a string")
    request = chat_request(rt, (Message("user", prompt),), DEFAULT_OPTIONS)

    async def run() -> str:
        return (await rt.scheduler.chat(request)).text

    return run


def complete_detailed(rt: Runtime, args: list[Any]) -> RowJob:
    model, prompt, options = args
    served = rt.models.resolve(model)
    request = chat_request(rt, parse_messages(prompt), parse_options(options))

    async def run() -> str:
        result = await rt.scheduler.chat(request)
        return orjson.dumps(details(result, served)).decode()

    return run


def details(result: ChatResult, served: str, structured: Any = None) -> dict[str, Any]:
    """COMPLETE's detail object; with a response format, AI_COMPLETE's ``structured_output`` form."""
    usage = result.usage
    body: dict[str, Any] = {"choices": [{"messages": result.text}]} if structured is None else {}
    body |= {"created": int(time.time()), "model": served}
    if structured is not None:
        body["structured_output"] = [{"raw_message": structured, "type": "json"}]
    body["usage"] = {
        "completion_tokens": usage.completion_tokens,
        "prompt_tokens": usage.prompt_tokens,
        "total_tokens": usage.total_tokens,
    }
    return body


def _response_format(raw: Any) -> str | None:
    """AI_COMPLETE's response_format: ``{'type': 'json', 'schema': {...}}``, or the JSON schema itself."""
    if raw is None:
        return None
    fmt = json_arg(raw, dict, "response_format", InvalidInput)
    if fmt.get("type") == "json" and "schema" in fmt:
        return _schema({"response_format": fmt})
    return checked_schema(fmt)


def ai_complete(rt: Runtime, args: list[Any]) -> RowJob:
    """AI_COMPLETE(model, prompt[, model_parameters[, response_format[, show_details]]])."""
    padded: list[Any] = [*args, *[None] * (5 - len(args))]
    model, prompt, parameters, fmt, show = padded
    served = rt.models.resolve(model)
    if not isinstance(prompt, str):
        raise InvalidPrompt("prompt must be a string")
    opts = parse_options(parameters) if parameters is not None else Options()
    if opts.json_schema is not None:
        raise InvalidOptions("response_format is AI_COMPLETE's own argument, not a model parameter")
    schema = _response_format(fmt)
    if show is not None and not isinstance(show, bool):
        raise InvalidInput("show_details must be a BOOLEAN")
    request = chat_request(
        rt, (Message("user", prompt),), Options(opts.temperature, opts.top_p, opts.max_tokens, schema)
    )

    async def run() -> Any:
        result = await rt.scheduler.chat(request)
        structured = None
        if schema is not None:
            try:
                structured = orjson.loads(result.text)
            except orjson.JSONDecodeError as exc:  # generation stopped at max_tokens inside the object
                raise InvalidInput("the structured answer did not fit in max_tokens") from exc
        if show:
            return details(result, served, structured)
        return structured if schema is not None else result.text

    return run


OVERLOADS = (
    Overload((("model", "VARCHAR"), ("prompt", "VARCHAR")), "VARCHAR", complete_text),
    Overload((("model", "VARCHAR"), ("prompt", "ARRAY"), ("options", "OBJECT")), "VARCHAR", complete_detailed),
)

COMPLETE_DOC = (
    "Text generation. `(model, prompt)` returns the answer text; `(model, messages, options)` returns Cortex's JSON "
    'string `{"choices":[{"messages":…}],"created":…,"model":…,"usage":{…}}`. Options: '
    "`temperature` (default 0), `top_p` (unset: no nucleus cut), `max_tokens` (default 4096, capped by the served "
    "model's output limit; output past the context is truncated, as in Cortex), `response_format` (constrained "
    "decoding; an invalid schema gives `schema validation failed`). `guardrails: TRUE` is refused with `invalid "
    "options object`: no guard model runs here."
)
register(SqlFunction("complete", OVERLOADS, doc=COMPLETE_DOC))
register(
    SqlFunction("try_complete", OVERLOADS, null_on_error=True, doc="`COMPLETE`, but a row error gives that row `NULL`.")
)

AI_COMPLETE_DOC = (
    "Positional `(model, prompt[, model_parameters[, response_format[, show_details]]])`. Returns the text; the JSON "
    "**object** with `response_format` (`{'type':'json','schema':…}` or a bare JSON schema); the detail object with "
    "`show_details`. The `PROMPT()` object form and `TYPE OBJECT(...)` literals cannot cross a service function."
)
_AI_ARGS = (
    ("model", "VARCHAR"),
    ("prompt", "VARCHAR"),
    ("model_parameters", "OBJECT"),
    ("response_format", "OBJECT"),
    ("show_details", "BOOLEAN"),
)
_AI_OPTIONAL = frozenset({"model_parameters", "response_format", "show_details"})
register(
    SqlFunction(
        "ai_complete",
        tuple(
            Overload(_AI_ARGS[:n], "VARCHAR" if n < 4 else "VARIANT", ai_complete, _AI_OPTIONAL) for n in (2, 3, 4, 5)
        ),
        null_on_error=True,
        doc=AI_COMPLETE_DOC,
    )
)
