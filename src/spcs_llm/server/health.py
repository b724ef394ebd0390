"""Readiness and metrics: ``GET /health`` (the SPCS readiness probe) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 only when the model is loaded and the engine answers; 503 while loading or after a failure."""
    state = request.app.state
    if state.runtime is None:
        status = "failed" if state.startup_error else "loading"
        body = {"status": status, "error": state.startup_error}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    ok = await state.engine.health()
    body = {"status": "ok" if ok else "unhealthy", "model": state.engine.model_name, "engine": state.engine.kind}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state
    text = state.metrics.render() + state.engine.metrics_text().encode()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
