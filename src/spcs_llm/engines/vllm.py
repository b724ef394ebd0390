"""vLLM on the GPU: spcs-llm launches ``vllm serve`` as a supervised child on loopback and talks to it through
:class:`~spcs_llm.engines.openai_http.OpenAIHttpEngine`.

The arguments come from the config and from the GPUs this process sees (``engine.gpus``, else those in
``CUDA_VISIBLE_DEVICES``, else those ``nvidia-smi -L`` lists). The tensor-parallel size is the largest one up to
that many GPUs that vLLM accepts for the model's attention heads (:func:`tensor_parallel_size`). vLLM serves one
model per process, so a configured embedding model runs as a second child (``--runner pooling``, always on one
GPU) on its own port; an ``[[embeddings]]`` entry of kind ``openai`` points at it. The children start one after
the other, the chat model first: each vLLM sizes its KV cache from the GPU memory it finds free while it profiles
(0.11.0:vllm/v1/worker/gpu_worker.py:181-195, 267-278), so two profiling at once would mis-size both. vLLM older
than 0.11.0 is refused (``GET /version``). While a child is down (crashed, restarting) requests fail with 503,
which Snowflake retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx

from .. import logs
from ..config import DownloadSettings, EngineSettings
from ..errors import EngineUnavailable, RowError
from ..models.catalog import catalog_entry
from .base import ChatRequest, ChatResult, Engine, Message, StreamDelta
from .labels import NextToken
from .openai_http import OpenAIHttpEngine, check_vllm_version
from .supervisor import Supervisor

LOOPBACK = "127.0.0.1"


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
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


def gpu_memory_gib(env: dict[str, str] | None = None) -> float | None:
    """The smallest GPU's memory in GiB, from ``nvidia-smi --query-gpu=memory.total``; None when unknown."""
    if shutil.which("nvidia-smi", path=(os.environ if env is None else env).get("PATH")) is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
            env=env,
        ).stdout
        sizes = [float(line) for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) / 1024 if sizes else None


def weights_do_not_fit(served_name: str, tensor_parallel: int, gpu_gib: float | None, utilization: float) -> str | None:
    """Why the model's weights alone cannot fit its share of the GPUs, or None (fits, or unknown). Only the weights
    are compared, so this never refuses a model vLLM could run; the KV cache comes on top."""
    from ..models.sizing import estimate_memory

    entry = catalog_entry(served_name)
    if entry is None or gpu_gib is None or entry.params_b <= 0:
        return None
    try:
        weights = estimate_memory(entry, 1, tensor_parallel=tensor_parallel).weights_gib
    except ValueError:
        return None
    budget = gpu_gib * utilization
    if weights <= budget:
        return None
    return (
        f"{served_name}'s weights take about {weights:.1f} GiB per GPU at tensor-parallel size "
        f"{tensor_parallel}, more than the {budget:.1f} GiB that gpu_memory_utilization = {utilization} leaves "
        f"of a {gpu_gib:.0f} GiB GPU; use more GPUs, a quantised model, or see `spcs-llm models recommend "
        f"{served_name}`"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def resolve_model(model: str, cache_dir: Path | None, downloads: DownloadSettings | None = None) -> tuple[str, str]:
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


def attention_heads(model_path: str, served_name: str) -> tuple[int, int]:
    """(attention heads, KV heads) of the model: the catalogue's numbers (transcribed from each repository's
    config.json), else the model directory's ``config.json`` (its ``text_config`` for multimodal models, as vLLM
    reads ``hf_text_config``); (0, 0) when neither says."""
    entry = catalog_entry(served_name) or catalog_entry(Path(model_path).name)
    if entry is not None and entry.heads:
        return entry.heads, entry.kv_heads or entry.heads
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return 0, 0
    config = config.get("text_config") or config if isinstance(config, dict) else {}
    heads = int(config.get("num_attention_heads") or 0)
    return heads, int(config.get("num_key_value_heads") or config.get("multi_query_group_num") or heads)


def tensor_parallel_size(heads: int, kv_heads: int, gpus: int) -> int:
    """The largest tensor-parallel size up to ``gpus`` that vLLM can run the model at.

    vLLM refuses to start unless the attention heads split evenly (``Total number of attention heads (H) must be
    divisible by tensor parallel size (T).``, 0.11.0:vllm/config/model.py:1045-1052), and its QKV layer asserts
    that the KV heads split evenly or are replicated evenly (``T % KV == 0`` when T >= KV, else ``KV % T == 0``;
    0.11.0:vllm/model_executor/layers/linear.py:902-907). Only powers of two are tried: the MLP widths of the
    catalogue's models split over those, not over 3, 6 or 7. Unknown heads (0): all the GPUs, unchecked."""
    gpus = max(gpus, 1)
    if heads <= 0:
        return gpus
    kv = kv_heads or heads
    sizes = [t for t in (2**i for i in range(gpus.bit_length())) if t <= gpus]
    fits = [t for t in sizes if heads % t == 0 and (kv % t == 0 if t < kv else t % kv == 0)]
    return max(fits)


def serve_args(model_path: str, served_name: str, port: int, settings: EngineSettings, gpus: int) -> list[str]:
    """``vllm serve`` arguments for the chat model (after ``settings.vllm_command``), on the largest valid
    tensor-parallel size up to ``gpus``."""
    tp = tensor_parallel_size(*attention_heads(model_path, served_name), gpus)
    args = [
        "serve",
        model_path,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--served-model-name",
        served_name,
        "--tensor-parallel-size",
        str(tp),
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
        "--max-num-seqs",
        str(settings.upstream_concurrency),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]
    context = settings.context_window or _catalog_context(served_name)
    if context:
        args += ["--max-model-len", str(context)]
    return args + list(settings.vllm_extra_args)


def embedding_args(model_path: str, served_name: str, settings: EngineSettings) -> list[str]:
    """``vllm serve`` arguments for the embedding child: a pooling runner on ``embedding_port``, on one GPU (a
    110M-parameter encoder gains nothing from more, and its 12 heads do not split over 8)."""
    return [
        "serve",
        model_path,
        "--host",
        LOOPBACK,
        "--port",
        str(settings.embedding_port),
        "--served-model-name",
        served_name,
        "--runner",
        "pooling",
        "--tensor-parallel-size",
        "1",
        "--gpu-memory-utilization",
        str(settings.embedding_gpu_memory_utilization),
    ]


def _catalog_context(name: str) -> int | None:
    entry = catalog_entry(name)
    return entry.context_window if entry else None


class VllmEngine(Engine):
    """A supervised ``vllm serve`` child (and an optional embedding child) behind an OpenAIHttpEngine."""

    kind = "vllm"

    def __init__(
        self, settings: EngineSettings, *, env: dict[str, str] | None = None, downloads: DownloadSettings | None = None
    ) -> None:
        self.settings = settings
        self.downloads = downloads
        self.env = env
        self.model_name = settings.model_name or settings.model
        self.context_window = settings.context_window or 4096
        self.max_concurrency = settings.upstream_concurrency
        self.port = settings.vllm_port or free_port()
        self.gpus = settings.gpus or visible_gpus(env)
        self.tensor_parallel = 0  # chosen at start
        self.vllm_version: str | None = None
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
        if self.gpus < 1:
            raise EngineUnavailable(
                "the vllm engine needs a GPU and this process sees none (CUDA_VISIBLE_DEVICES is empty or "
                'nvidia-smi lists no GPU); set engine.gpus, or use engine.kind = "llamacpp" on CPU'
            )
        path, name = await asyncio.to_thread(resolve_model, s.model, s.cache_dir, self.downloads)
        self.model_name = s.model_name or name
        visible = visible_gpus(self.env)
        if s.gpus and 0 < visible < s.gpus:
            raise EngineUnavailable(f"engine.gpus = {s.gpus}, but this process sees only {visible} GPU(s)")
        chat_args = serve_args(path, self.model_name, self.port, s, self.gpus)
        self.tensor_parallel = int(chat_args[chat_args.index("--tensor-parallel-size") + 1])
        memory = await asyncio.to_thread(gpu_memory_gib, self.env)
        if why := weights_do_not_fit(self.model_name, self.tensor_parallel, memory, s.gpu_memory_utilization):
            raise EngineUnavailable(why)
        if self.tensor_parallel < self.gpus:
            logs.event(
                "vllm_tensor_parallel",
                model=self.model_name,
                gpus=self.gpus,
                tensor_parallel=self.tensor_parallel,
                reason="the largest size the model's attention and KV heads split evenly over",
            )
        chat = self._child("vllm", chat_args, self.port, self.model_name)
        self.children.append(chat)
        embed = None
        if s.embedding_model:
            epath, ename = await asyncio.to_thread(resolve_model, s.embedding_model, s.cache_dir, self.downloads)
            ename = s.embedding_model_name or ename
            embed = self._child("vllm-embed", embedding_args(epath, ename, s), s.embedding_port, ename)
            self.children.append(embed)
        try:  # one after the other, the chat model first (see the module docstring)
            await chat.start()
            await self._check_version(chat)
            if embed is not None:
                await embed.start()
        except BaseException:
            await asyncio.gather(*(c.stop() for c in self.children))
            raise
        self._http = OpenAIHttpEngine(
            f"http://{LOOPBACK}:{self.port}/v1",
            self.model_name,
            context_window=s.context_window,
            max_concurrency=s.upstream_concurrency,
            structured_output=s.structured_output or "structured_outputs",
            request_timeout_s=s.request_timeout_s,
            connect_timeout_s=s.connect_timeout_s,
            startup_timeout_s=30.0,
        )
        await self._http.start()
        self.context_window = self._http.context_window

    async def _check_version(self, child: Supervisor) -> None:
        """Refuse vLLM older than 0.11.0, from its ``GET /version``."""
        try:
            async with httpx.AsyncClient(base_url=child.base_url, timeout=10.0) as client:
                version = (await client.get("/version")).json().get("version")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise EngineUnavailable(f"{child.name} did not say its vLLM version on GET /version: {exc}") from exc
        self.vllm_version = str(version)
        logs.event("vllm_version", child=child.name, version=self.vllm_version)
        check_vllm_version(self.vllm_version, f"{child.name} ({' '.join(self.settings.vllm_command)})")

    def _child(self, name: str, args: Sequence[str], port: int, served: str) -> Supervisor:
        env = {**(os.environ if self.env is None else self.env), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        return Supervisor(
            name,
            [*self.settings.vllm_command, *args],
            f"http://{LOOPBACK}:{port}",
            served,
            startup_timeout_s=self.settings.startup_timeout_s,
            env=env,
        )

    def unready(self) -> list[str]:
        """The children that are not ready (starting, crashed or restarting), for /health."""
        return [c.name for c in self.children if not c.ready]

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
        engine = self._engine()
        try:
            async for delta in engine.chat_stream(request):
                yield delta
        except RowError as exc:
            # vLLM 0.11.0 sends every failure inside a stream as a 400 event, its engine's death included; a
            # child that no longer answers /health (503 after EngineDeadError) died: that is a retryable 503
            if not await engine.health():
                raise EngineUnavailable(f"vLLM failed mid-stream and is no longer healthy: {exc.message}") from exc
            raise

    async def count_tokens(self, text: str) -> int:
        return await self._engine().count_tokens(text)

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        """Label scoring through the child (``continue_final_message``; see engines/labels.py)."""
        return await self._engine().next_token(messages, prefix, top)

    async def token_pieces(self, text: str) -> list[str] | None:
        return await self._engine().token_pieces(text)
