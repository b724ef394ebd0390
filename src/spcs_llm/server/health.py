"""Readiness and metrics: ``GET /health`` (the SPCS readiness probe) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import orjson
from fastapi import APIRouter, Request, Response

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 only when the model is loaded and the engine answers; 503 while loading or after a failure."""
    state = request.app.state
    if state.runtime is None:
        status = "failed" if state.startup_error else "loading"
        body = {"status": status, "error": state.startup_error, **_unready(getattr(state, "engine", None))}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    ok = await state.engine.health()
    body = {
        "status": "ok" if ok else "unhealthy",
        "model": state.engine.model_name,
        "engine": state.engine.kind,
        **({} if ok else _unready(state.engine)),
    }
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


def _unready(engine: object) -> dict[str, list[str]]:
    """``{"not_ready": [...]}``: the parts of an engine made of several processes (vLLM's chat and embedding
    children) that are starting or restarting; empty for other engines."""
    unready = getattr(engine, "unready", None)
    names = unready() if callable(unready) else []
    return {"not_ready": names} if names else {}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state
    engine_text = state.engine.metrics_text() if state.engine is not None else ""
    text = state.metrics.render() + engine_text.encode()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def wait_healthy(base_url: str, timeout_s: float, still_running: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``base_url``/health until it answers 200 (True), the timeout passes or ``still_running()`` is
    False (False). For callers outside the server: tests, benchmarks, status checks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and still_running():
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False
