"""The OpenAPI description of every route: request bodies from the wire models, every status a route can answer.

The routes read their bodies themselves (so that a body over the limit is refused before it is parsed, and a
Snowflake batch is checked row by row), so FastAPI cannot see their bodies; this module describes them:

- each registered SQL function is its own path ``/functions/<name>`` whose rows follow the function's SQL
  overloads (``[row_number, arg1, ...]``, one schema per overload); model arguments list the served model names
  once the engine is up. Functions that answer a bad row with NULL (TRY_/AI_) take any JSON value per argument;
- the OpenAI routes use their pydantic models (:mod:`~spcs_llm.server.openai`);
- statuses: 400 bad input, 401 without the API key (when one is set), 413 over the body limit, 429 overloaded,
  503 engine not ready or failing; each with the body of its wire format.

Routes added elsewhere keep FastAPI's own description and get the 401/413 answers that the middlewares give.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ..functions import FUNCTIONS, SqlFunction
from . import openai

TEXT_ERROR = {"content": {"text/plain": {"schema": {"type": "string"}}}}
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
        }
    },
}
OPENAI_ERROR = {"content": {"application/json": {"schema": OPENAI_ERROR_SCHEMA}}}
WHY = {
    400: "Bad input (the message names it)",
    401: "Missing or wrong API key",
    402: "budget exceeded",
    403: "Not Authorized: another API key",
    404: "Usage metering is off",
    413: "Request body over the limit",
    429: "Overloaded, or (OpenAI routes) budget exceeded: retry later",
    503: "The model is loading, or the engine failed: retry later",
}
CORTEX_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["message", "code", "request_id"],
                "properties": {
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            }
        }
    }
}

SQL_TYPES: dict[str, dict[str, Any]] = {
    "VARCHAR": {"type": ["string", "null"]},
    "NUMBER": {"type": ["number", "null"]},
    "BOOLEAN": {"type": ["boolean", "null"]},
    "ARRAY": {"type": ["array", "string", "null"], "description": "an ARRAY, or its JSON text"},
    "OBJECT": {"type": ["object", "string", "null"], "description": "an OBJECT, or its JSON text"},
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``GET /openapi.json``) return the description built here."""
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]


def describe(app: FastAPI) -> dict[str, Any]:
    runtime = app.state.runtime
    if app.openapi_schema is not None and (runtime is None) == app.state.openapi_without_runtime:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    paths = schema["paths"]
    paths.pop("/functions/{name}", None)  # the catch-all (any case, unknown names: 400) is one path per function
    models = [name for name, _ in runtime.models.names()] if runtime is not None else None
    embedders = [name for name, _ in runtime.embedders.names()] if runtime is not None else None
    for fn in FUNCTIONS.values():
        paths[f"/functions/{fn.name}"] = {"post": _function_operation(fn, models, embedders)}
    _openai_operations(paths, schema.setdefault("components", {}).setdefault("schemas", {}))
    _common_statuses(paths, keyed=bool(app.state.settings.server.api_key))
    app.openapi_schema, app.state.openapi_without_runtime = schema, runtime is None
    return schema


def _responses(ok: dict[str, Any], errors: dict[str, Any], *statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status in statuses:
        out[str(status)] = {"description": WHY[status], **errors}
    return out


def _arg_schema(name: str, sql_type: str, models: list[str] | None, embedders: list[str] | None) -> dict[str, Any]:
    schema = dict(SQL_TYPES.get(sql_type, {}))
    if name == "model" and models is not None and embedders is not None:
        schema = {"enum": [*models, *embedders, None]}
    return schema


def _function_operation(fn: SqlFunction, models: list[str] | None, embedders: list[str] | None) -> dict[str, Any]:
    rows = []
    for overload in fn.overloads:
        args = [{} if fn.null_on_error else _arg_schema(n, t, models, embedders) for n, t in overload.args]
        rows.append(
            {
                "type": "array",
                "prefixItems": [{"type": "integer"}, *args],
                "minItems": overload.arity + 1,
                "maxItems": overload.arity + 1,
                "description": f"[row_number, {', '.join(n for n, _ in overload.args)}]",
            }
        )
    row = rows[0] if len(rows) == 1 else {"anyOf": rows}
    body = {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": row}}}
    answer = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "items": {"type": "array", "minItems": 2, "maxItems": 2, "description": "[row_number, value]"},
            }
        },
    }
    signatures = "; ".join(f"{fn.name.upper()}{o.signature} -> {o.returns}" for o in fn.overloads)
    policy = "a bad row is NULL" if fn.null_on_error else "a bad row fails the batch with 400 and Cortex's message"
    return {
        "summary": f"{fn.name.upper()}: a Snowflake service-function batch",
        "description": f"{signatures}. One answer row per input row, in order; {policy}.",
        "operationId": f"function_{fn.name}",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": _responses(
            {"description": "One row per input row, in order", "content": {"application/json": {"schema": answer}}},
            TEXT_ERROR,
            400,
            413,
            429,
            503,
        ),
    }


def _model_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openai_operations(paths: dict[str, Any], components: dict[str, Any]) -> None:
    json_ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    bodies: dict[str, type[BaseModel]] = {
        "/v1/chat/completions": openai.ChatCompletionIn,
        "/v1/embeddings": openai.EmbeddingsIn,
        "/tokenize": openai.TokenizeIn,
        "/api/v2/cortex/v1/chat/completions": openai.ChatCompletionIn,
    }
    for path, model in bodies.items():
        operation = paths.get(path, {}).get("post")
        if operation is None:
            continue
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _model_schema(model, components)}},
        }
        ok = dict(json_ok)
        if path.endswith("/v1/chat/completions"):
            ok["content"] = {**json_ok["content"], "text/event-stream": {"schema": {"type": "string"}}}
        operation["responses"] = _responses(ok, OPENAI_ERROR, 400, 413, 429, 503)
    for path in ("/api/v2/cortex/inference:complete", "/api/v2/cortex/inference:embed"):
        if (operation := paths.get(path, {}).get("post")) is not None:  # Cortex REST: its own error body
            ok = dict(json_ok)
            if path.endswith(":complete"):
                ok["content"] = {**json_ok["content"], "text/event-stream": {"schema": {"type": "string"}}}
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
            operation["responses"] = _responses(ok, CORTEX_ERROR, 400, 402, 413, 429, 503)
    if (usage := paths.get("/usage", {}).get("get")) is not None:
        usage["responses"] = _responses(
            {
                "description": "Usage rows",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            TEXT_ERROR,
            400,
            404,
        )
    if (models := paths.get("/v1/models", {}).get("get")) is not None:
        models["responses"] = _responses(json_ok, OPENAI_ERROR, 503)
    if (health := paths.get("/health", {}).get("get")) is not None:
        health["responses"] = {"200": json_ok, "503": {"description": WHY[503], "content": json_ok["content"]}}
    if (metrics := paths.get("/metrics", {}).get("get")) is not None:
        metrics["responses"] = {
            "200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}
        }


def _common_statuses(paths: dict[str, Any], *, keyed: bool) -> None:
    """What the middlewares answer before any route runs: 413 for a body over the limit, 401 without the key."""
    for path, operations in paths.items():
        errors = (
            OPENAI_ERROR
            if path.startswith(("/v1/", "/tokenize", "/api/v2/cortex/v1/"))
            else (CORTEX_ERROR if path.startswith("/api/v2/cortex/") else TEXT_ERROR)
        )
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if method in ("post", "put", "patch"):
                responses.setdefault("413", {"description": WHY[413], **errors})
            if keyed and path != "/health":
                responses.setdefault("401", {"description": WHY[401], **errors})
                if path.startswith("/api/v2/cortex/"):  # Cortex REST: 403 for another key
                    responses.setdefault("403", {"description": WHY[403], **errors})
