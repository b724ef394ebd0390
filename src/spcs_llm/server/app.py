"""The app factory. All state lives on ``app.state``; nothing is global."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response

from .. import logs
from ..config import ConfigError, Settings
from ..engines import Embedder, Engine, build_embedder, build_engine
from ..errors import EngineUnavailable, SpcsLlmError
from ..functions import Runtime
from ..metrics import Metrics
from ..models.catalog import CORTEX_EMBED_NAMES, CORTEX_MODEL_NAMES, EmbedderResolver, ModelResolver, catalog_entry
from ..overload import HOLD_SHARE
from ..scheduler import Scheduler
from ..usage import routes as usage_routes
from ..usage.build import build_usage
from . import apidoc, cortex_rest, health, openai, snowflake, tuning
from .async_batches import AsyncBatches
from .auth import ApiKeyMiddleware
from .batches import BatchMemory
from .limits import BodyLimitMiddleware

DEFAULT_MAX_OUTPUT_TOKENS = 4096


def _embedder_names(settings: Settings, embedders: list[Embedder]) -> list[tuple[Embedder, list[str]]]:
    """Each embedder with the Cortex names it answers to; a model whose real dimension is not the configured one
    stops start-up (EMBED_TEXT_768 must never return 384 floats)."""
    configured = settings.embeddings if len(settings.embeddings) == len(embedders) else [None] * len(embedders)
    out = []
    for embedder, cfg in zip(embedders, configured, strict=True):
        if cfg is not None and embedder.dimension != cfg.dimension:
            raise ConfigError(
                f"embeddings: {embedder.model_name} gives {embedder.dimension}-d vectors, "
                f"but its entry says dimension = {cfg.dimension}"
            )
        names = cfg.cortex_names if cfg is not None and cfg.cortex_names is not None else None
        out.append((embedder, list(names if names is not None else CORTEX_EMBED_NAMES.get(embedder.dimension, ()))))
    return out


def build_runtime(
    settings: Settings, engine: Engine, metrics: Metrics, embedders: list[Embedder] | None = None
) -> Runtime:
    """What functions need once the engines are up: scheduler, model names, output cap, embedders."""
    served = engine.model_name
    aliases = settings.aliases if settings.aliases is not None else {n: served for n in CORTEX_MODEL_NAMES}
    entry = catalog_entry(served)
    cap = settings.engine.max_output_tokens or (entry.max_output_tokens if entry else DEFAULT_MAX_OUTPUT_TOKENS)
    server = settings.server
    scheduler = Scheduler(
        engine,
        metrics,
        max_concurrency=server.max_concurrency,
        max_queue_rows=server.max_queue_rows,
        max_queue_seconds=_queue_seconds(settings),
        max_queue_bytes=server.max_queue_mb * 2**20,
        cold_limit=server.admission == "refuse",
        cache_bytes=server.result_cache_mb * 2**20,
    )
    return Runtime(
        scheduler,
        ModelResolver([served], aliases),
        min(cap, engine.context_window),
        EmbedderResolver(_embedder_names(settings, embedders or [])),
    )


def _queue_seconds(settings: Settings) -> float | None:
    """The longest expected wait a batch is admitted with (docs/overload.md)."""
    server = settings.server
    if server.admission == "hold":
        return HOLD_SHARE * server.batch_timeout_secs
    return server.max_queue_seconds or None


async def _start_engine(app: FastAPI, engine: Engine | None, embedders: list[Embedder] | None) -> None:
    state, settings = app.state, app.state.settings
    try:
        state.engine = engine or await asyncio.to_thread(build_engine, settings.engine, settings.downloads)
        state.embedders = (
            embedders
            if embedders is not None
            else [await asyncio.to_thread(build_embedder, e) for e in settings.embeddings]
        )
        await asyncio.gather(state.engine.start(), *(e.start() for e in state.embedders))
        state.runtime = build_runtime(settings, state.engine, state.metrics, state.embedders)
        if state.usage is not None:
            state.runtime.scheduler.meter = state.usage.meter
        tuning.settle()  # the cache's containers live as long as the process: out of the collector's walks
        logs.event(
            "engine_ready",
            engine=state.engine.kind,
            model=state.engine.model_name,
            context_window=state.engine.context_window,
            max_concurrency=state.runtime.scheduler.max_concurrency,
            seconds=round(time.time() - state.started_at, 2),
        )
    except Exception as exc:  # reported by /health (503) and the log; `serve` then ends the process
        state.startup_error = startup_message(settings, exc)
        logs.event("engine_start_failed", logging.ERROR, error=state.startup_error)
        logs.log.debug("engine_start_failed", exc_info=True)  # the traceback only at log level debug
        if state.on_startup_failure is not None:
            state.on_startup_failure(state.startup_error)


def startup_message(settings: Settings, exc: BaseException) -> str:
    """One line naming the model that failed to start and why."""
    engine = settings.engine
    reason = exc.message if isinstance(exc, SpcsLlmError) else str(exc) or type(exc).__name__
    return f"cannot start the {engine.kind} engine with model {engine.model!r}: {reason}"


def create_app(settings: Settings, engine: Engine | None = None, embedders: list[Embedder] | None = None) -> FastAPI:
    """Build the service. ``engine`` and ``embedders`` default to those the settings describe; they are built and
    started in the background, so /health answers 503 while the models load. A failure to start is reported by
    /health and passed to ``app.state.on_startup_failure`` when set."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        starting = asyncio.create_task(_start_engine(app, engine, embedders))
        sweeping = asyncio.create_task(state.async_batches.run_sweeper())
        if state.usage is not None:
            state.usage.start()
        try:
            yield
        finally:
            starting.cancel()
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
            engines = [state.engine] if state.engine is not None else []
            await asyncio.gather(*(e.aclose() for e in [*engines, *state.embedders]))
            if state.usage is not None:
                await state.usage.stop()  # the last interval is written before the process ends

    app = FastAPI(title="spcs-llm", lifespan=lifespan, docs_url=None, redoc_url=None)
    apidoc.install(app)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.batches = BatchMemory(app.state.metrics, settings.server.batch_memory_mb * 2**20)
    server = settings.server
    app.state.async_batches = AsyncBatches(
        app.state.batches,
        app.state.metrics,
        enabled=server.async_responses,
        after_s=server.async_after_secs,
        keep_s=server.async_keep_secs,
        unknown_status=server.async_unknown_status,
    )
    app.state.runtime = None
    app.state.usage = build_usage(settings.usage, settings.budgets, app.state.metrics.registry)
    app.state.startup_error = None
    app.state.on_startup_failure = None  # `serve` sets it: a model that cannot start ends the process
    app.state.engine = engine
    app.state.embedders = embedders or []
    app.state.started_at = time.time()

    def require_runtime() -> Runtime:
        if app.state.runtime is None:
            raise EngineUnavailable(app.state.startup_error or "the model is still loading")
        return app.state.runtime

    app.state.require_runtime = require_runtime
    app.include_router(snowflake.router)
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(usage_routes.router)
    app.include_router(cortex_rest.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.server.max_request_mb * 2**20))
    if settings.server.api_key:  # added last: the outermost layer, so nothing runs before the key is checked
        app.add_middleware(ApiKeyMiddleware, api_key=settings.server.api_key)
    app.add_exception_handler(SpcsLlmError, _handle_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _handle_unexpected)
    return app


def _wire(request: Request) -> str:
    path = request.url.path
    if path.startswith(("/v1/", f"{cortex_rest.PREFIX}/v1/")):
        default = "openai"
    else:
        default = "cortex" if path.startswith(f"{cortex_rest.PREFIX}/") else "snowflake"
    return getattr(request.state, "wire", default)


async def _handle_error(request: Request, exc: SpcsLlmError) -> Response:
    request.app.state.metrics.errors.labels(exc.kind).inc()
    reason = getattr(exc, "reason", "")
    logs.event(
        "request_failed",
        status=exc.status,
        kind=exc.kind,
        path=request.url.path,
        **({"reason": reason} if reason else {}),
    )
    wire = _wire(request)
    if wire == "cortex":
        return cortex_rest.error_response(exc)
    return openai.error_response(exc) if wire == "openai" else snowflake.error_response(exc)


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    logs.log.exception("unexpected_error")
    return await _handle_error(request, SpcsLlmError(f"internal error: {type(exc).__name__}"))
