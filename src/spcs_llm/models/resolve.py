"""What ``serve`` loads: a model setting (a path, a catalogue name, an ``org/repo`` id) -> local files.

A path that exists is used as it is. Anything else that the catalogue knows (or an ``org/repo`` id) goes through
:func:`~spcs_llm.models.download.ensure_model`: the cache first (and pre-staged weights), then the mirrors in the
order ``[downloads]`` gives. llama.cpp gets the catalogue's GGUF file, vLLM and local embedders the safetensors
repository. A name that cannot be resolved raises :class:`ModelNotAvailable` whose message is one line: which
setting, which name, and what was tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..config import DownloadSettings, EmbeddingSettings, EngineSettings, Settings
from ..errors import UnknownModel
from . import packaged, packaged_embed
from .catalog import catalog_entry, find_model
from .download import DownloadError, ModelNotAvailable, default_sources, ensure_model

Format = Literal["safetensors", "gguf"]


def resolve_model(
    model: str,
    *,
    fmt: Format,
    cache_dir: Path | None,
    downloads: DownloadSettings | None,
    setting: str = "engine.model",
    progress: bool = True,
) -> tuple[Path, str]:
    """(local path, the name to serve it under) for ``model``, downloading it if needed."""
    path = Path(model).expanduser()
    if path.exists():
        if fmt == "gguf" and not path.is_file():
            raise ModelNotAvailable(f"{setting}: {path} is a directory; llama.cpp needs one .gguf file")
        entry = catalog_entry(path.name)
        return path, entry.name if entry else (path.stem if fmt == "gguf" else path.name).lower()
    try:
        entry = find_model(model)
    except UnknownModel:
        entry = None
    if entry is None and (model.count("/") != 1 or model.endswith(".gguf")):
        kind = "GGUF file" if fmt == "gguf" else "model directory"
        raise ModelNotAvailable(
            f"{setting}: no such {kind}: {path}, and {model!r} is not a catalogue name "
            "(`spcs-llm models list`) or an org/repo id"
        )
    if fmt == "gguf" and entry is not None and entry.name == packaged.MODEL_NAME:
        return packaged.ensure_packaged_model(cache_dir, offline=bool(downloads and downloads.offline)), entry.name
    d = downloads or DownloadSettings()
    try:
        sources = default_sources(d.sources, hf_endpoint=d.hf_endpoint, modelscope_endpoint=d.modelscope_endpoint)
        found = ensure_model(
            model,
            cache_dir=cache_dir,
            offline=d.offline,
            sources=sources,
            fmt=fmt,
            progress=progress,
            cache_mode=d.cache_mode,
        )
    except (DownloadError, ValueError) as exc:
        raise ModelNotAvailable(f"{setting}: cannot get {model!r}: {exc}") from None
    return found, entry.name if entry else model.rsplit("/", 1)[1].lower()


def engine_format(kind: str) -> Format:
    return "gguf" if kind == "llamacpp" else "safetensors"


def prepare_models(settings: Settings) -> Settings:
    """Everything the models of ``settings`` need on disk before a server starts, in the foreground with progress
    bars: catalogue names resolved (:func:`resolve_settings`) and the packaged models fetched when used. What
    ``spcs-llm serve`` and an in-process service (``spcs_llm.client``) both run."""
    settings = resolve_settings(settings)
    if settings.engine.kind == "llamacpp" and settings.engine.model == "default":
        packaged.ensure_packaged_model(settings.engine.cache_dir)
    for emb in settings.embeddings:
        if emb.kind == "local" and emb.model == "default":
            packaged_embed.ensure_packaged_embedder(emb.cache_dir)
    return settings


def resolve_settings(settings: Settings, *, progress: bool = True) -> Settings:
    """``settings`` with every model name that needs local files replaced by its path (downloaded now, in the
    foreground, so a failure is one line before the server starts) and the served name filled in."""
    engine = _resolve_engine(settings.engine, settings.downloads, progress)
    embeddings = [_resolve_embedding(e, settings.downloads, progress) for e in settings.embeddings]
    return settings.model_copy(update={"engine": engine, "embeddings": embeddings})


def _resolve_engine(e: EngineSettings, downloads: DownloadSettings, progress: bool) -> EngineSettings:
    if e.kind not in ("llamacpp", "vllm") or e.model == "default":
        return e
    path, name = resolve_model(
        e.model, fmt=engine_format(e.kind), cache_dir=e.cache_dir, downloads=downloads, progress=progress
    )
    update: dict[str, object] = {"model": str(path), "model_name": e.model_name or name}
    if e.kind == "vllm" and e.embedding_model:
        epath, ename = resolve_model(
            e.embedding_model,
            fmt="safetensors",
            cache_dir=e.cache_dir,
            downloads=downloads,
            setting="engine.embedding_model",
            progress=progress,
        )
        update |= {"embedding_model": str(epath), "embedding_model_name": e.embedding_model_name or ename}
    return e.model_copy(update=update)


def _resolve_embedding(e: EmbeddingSettings, downloads: DownloadSettings, progress: bool) -> EmbeddingSettings:
    if e.kind != "local" or e.model == "default":
        return e
    path, name = resolve_model(
        e.model,
        fmt="safetensors",
        cache_dir=e.cache_dir,
        downloads=downloads,
        setting="embeddings.model",
        progress=progress,
    )
    return e.model_copy(update={"model": str(path), "model_name": e.model_name or name})
