"""The app factory. All state lives on ``app.state``; nothing is global."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response

from .. import logs
from ..config import Settings
from ..engines import Engine, build_engine
from ..errors import EngineUnavailable, SpcsLlmError
from ..functions import Runtime
from ..metrics import Metrics
from ..models.catalog import CORTEX_MODEL_NAMES, ModelResolver, catalog_entry
from ..scheduler import Scheduler
from . import health, openai, snowflake

DEFAULT_MAX_OUTPUT_TOKENS = 4096


def build_runtime(settings: Settings, engine: Engine, metrics: Metrics) -> Runtime:
    """What functions need once the engine is up: scheduler, model names, output cap."""
    served = engine.model_name
    aliases = settings.aliases if settings.aliases is not None else {n: served for n in CORTEX_MODEL_NAMES}
    entry = catalog_entry(served)
    cap = settings.engine.max_output_tokens or (entry.max_output_tokens if entry else DEFAULT_MAX_OUTPUT_TOKENS)
    scheduler = Scheduler(engine, metrics, max_concurrency=settings.server.max_concurrency,
                          max_queue_rows=settings.server.max_queue_rows)
    return Runtime(scheduler, ModelResolver([served], aliases), min(cap, engine.context_window))


async def _start_engine(app: FastAPI) -> None:
    state = app.state
    try:
        await state.engine.start()
        state.runtime = build_runtime(state.settings, state.engine, state.metrics)
        logs.event("engine_ready", engine=state.engine.kind, model=state.engine.model_name,
                   context_window=state.engine.context_window,
                   max_concurrency=state.runtime.scheduler.max_concurrency,
                   seconds=round(time.time() - state.started_at, 2))
    except Exception as exc:  # reported by /health (503) and the log; the process stays up for diagnosis
        state.startup_error = f"{type(exc).__name__}: {exc}"
        logs.log.exception("engine_start_failed")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the service. ``engine`` defaults to the one the settings describe; it starts in the background,
    so /health answers 503 while the model loads."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.engine = engine or await asyncio.to_thread(build_engine, settings.engine)
        starting = asyncio.create_task(_start_engine(app))
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await state.engine.aclose()

    app = FastAPI(title="spcs-llm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.runtime = None
    app.state.startup_error = None
    app.state.started_at = time.time()

    def require_runtime() -> Runtime:
        if app.state.runtime is None:
            raise EngineUnavailable(app.state.startup_error or "the model is still loading")
        return app.state.runtime

    app.state.require_runtime = require_runtime
    app.include_router(snowflake.router)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.add_exception_handler(SpcsLlmError, _handle_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _handle_unexpected)
    return app


def _wire(request: Request) -> str:
    return getattr(request.state, "wire", "openai" if request.url.path.startswith("/v1/") else "snowflake")


async def _handle_error(request: Request, exc: SpcsLlmError) -> Response:
    request.app.state.metrics.errors.labels(exc.kind).inc()
    reason = getattr(exc, "reason", "")
    logs.event("request_failed", status=exc.status, kind=exc.kind, path=request.url.path,
               **({"reason": reason} if reason else {}))
    return openai.error_response(exc) if _wire(request) == "openai" else snowflake.error_response(exc)


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    logs.log.exception("unexpected_error")
    return await _handle_error(request, SpcsLlmError(f"internal error: {type(exc).__name__}"))
