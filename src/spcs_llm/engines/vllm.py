"""vLLM on the GPU: spcs-llm launches ``vllm serve`` as a supervised child on loopback and talks to it through
:class:`~spcs_llm.engines.openai_http.OpenAIHttpEngine`.

The arguments come from the config and from the GPUs this process sees: tensor-parallel size is the GPUs
requested, else those in ``CUDA_VISIBLE_DEVICES``, else those ``nvidia-smi -L`` lists. vLLM serves one model per
process, so a configured embedding model runs as a second child (``--runner pooling``) on its own port; an
``[[embeddings]]`` entry of kind ``openai`` points at it. While a child is down (crashed, restarting) requests
fail with 503, which Snowflake retries.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ..config import DownloadSettings, EngineSettings
from ..errors import EngineUnavailable
from ..models.catalog import catalog_entry
from .base import ChatRequest, ChatResult, Engine, Message, StreamDelta
from .labels import NextToken
from .openai_http import OpenAIHttpEngine
from .supervisor import Supervisor

LOOPBACK = "127.0.0.1"


def visible_gpus(env: dict[str, str] | None = None) -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists, else 0."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.split(",") if d.strip()]
        return 0 if ids and ids[0].strip().startswith("-") else len(ids)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def resolve_model(model: str, cache_dir: Path | None,
                  downloads: DownloadSettings | None = None) -> tuple[str, str]:
    """(what to pass to ``vllm serve``, the name to serve it under) for a local directory or a catalogue name.

    A catalogue name is fetched (or found in the cache) by :func:`spcs_llm.models.download.ensure_model`, from the
    sources and with the offline setting of ``[downloads]``."""
    path = Path(model).expanduser()
    if path.exists():
        entry = catalog_entry(path.name)
        return str(path), entry.name if entry else path.name.lower()
    entry = catalog_entry(model)
    if entry is None:
        raise EngineUnavailable(f"engine.model: {model!r} is neither a local model directory nor a catalogue name")
    from ..models.download import default_sources, ensure_model  # only needed for catalogue names

    d = downloads or DownloadSettings()
    sources = default_sources(d.sources, hf_endpoint=d.hf_endpoint, modelscope_endpoint=d.modelscope_endpoint)
    return str(ensure_model(model, cache_dir=cache_dir, offline=d.offline, sources=sources)), entry.name


def serve_args(model_path: str, served_name: str, port: int, settings: EngineSettings, gpus: int) -> list[str]:
    """``vllm serve`` arguments for the chat model (after ``settings.vllm_command``)."""
    args = ["serve", model_path, "--host", LOOPBACK, "--port", str(port), "--served-model-name", served_name,
            "--tensor-parallel-size", str(max(gpus, 1)),
            "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
            "--max-num-seqs", str(settings.upstream_concurrency), "--enable-prefix-caching",
            "--enable-prompt-tokens-details"]
    context = settings.context_window or _catalog_context(served_name)
    if context:
        args += ["--max-model-len", str(context)]
    return args + list(settings.vllm_extra_args)


def embedding_args(model_path: str, served_name: str, settings: EngineSettings, gpus: int) -> list[str]:
    """``vllm serve`` arguments for the embedding child: a pooling runner on ``embedding_port``."""
    return ["serve", model_path, "--host", LOOPBACK, "--port", str(settings.embedding_port),
            "--served-model-name", served_name, "--runner", "pooling",
            "--tensor-parallel-size", str(max(gpus, 1)),
            "--gpu-memory-utilization", str(settings.embedding_gpu_memory_utilization)]


def _catalog_context(name: str) -> int | None:
    entry = catalog_entry(name)
    return entry.context_window if entry else None


class VllmEngine(Engine):
    """A supervised ``vllm serve`` child (and an optional embedding child) behind an OpenAIHttpEngine."""

    kind = "vllm"

    def __init__(self, settings: EngineSettings, *, env: dict[str, str] | None = None,
                 downloads: DownloadSettings | None = None) -> None:
        self.settings = settings
        self.downloads = downloads
        self.env = env
        self.model_name = settings.model_name or settings.model
        self.context_window = settings.context_window or 4096
        self.max_concurrency = settings.upstream_concurrency
        self.port = settings.vllm_port or free_port()
        self.gpus = settings.gpus or visible_gpus(env)
        self.children: list[Supervisor] = []
        self._http: OpenAIHttpEngine | None = None

    @classmethod
    def from_settings(cls, settings: EngineSettings, downloads: DownloadSettings | None = None) -> VllmEngine:
        return cls(settings, downloads=downloads)

    @property
    def chat_child(self) -> Supervisor | None:
        return self.children[0] if self.children else None

    async def start(self) -> None:
        s = self.settings
        path, name = await asyncio.to_thread(resolve_model, s.model, s.cache_dir, self.downloads)
        self.model_name = s.model_name or name
        self.children.append(self._child("vllm", serve_args(path, self.model_name, self.port, s, self.gpus),
                                         self.port, self.model_name))
        if s.embedding_model:
            epath, ename = await asyncio.to_thread(resolve_model, s.embedding_model, s.cache_dir,
                                                 self.downloads)
            ename = s.embedding_model_name or ename
            self.children.append(self._child("vllm-embed", embedding_args(epath, ename, s, self.gpus),
                                             s.embedding_port, ename))
        await asyncio.gather(*(c.start() for c in self.children))
        self._http = OpenAIHttpEngine(
            f"http://{LOOPBACK}:{self.port}/v1", self.model_name, context_window=s.context_window,
            max_concurrency=s.upstream_concurrency, structured_output=s.structured_output or "structured_outputs",
            request_timeout_s=s.request_timeout_s, connect_timeout_s=s.connect_timeout_s, startup_timeout_s=30.0,
        )
        await self._http.start()
        self.context_window = self._http.context_window

    def _child(self, name: str, args: Sequence[str], port: int, served: str) -> Supervisor:
        return Supervisor(name, [*self.settings.vllm_command, *args], f"http://{LOOPBACK}:{port}", served,
                          startup_timeout_s=self.settings.startup_timeout_s, env=self.env)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        await asyncio.gather(*(c.stop() for c in self.children))

    async def health(self) -> bool:
        if not self.children or not all(c.ready for c in self.children) or self._http is None:
            return False
        return await self._http.health()

    def _engine(self) -> OpenAIHttpEngine:
        child = self.chat_child
        if self._http is None or child is None or not child.ready:
            raise EngineUnavailable("vLLM is not ready (starting or restarting)")
        return self._http

    async def chat(self, request: ChatRequest) -> ChatResult:
        return await self._engine().chat(request)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        async for delta in self._engine().chat_stream(request):
            yield delta

    async def count_tokens(self, text: str) -> int:
        return await self._engine().count_tokens(text)

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        """Label scoring through the child (``continue_final_message``; see engines/labels.py)."""
        return await self._engine().next_token(messages, prefix, top)

    async def token_pieces(self, text: str) -> list[str] | None:
        return await self._engine().token_pieces(text)
