"""Typed configuration, validated once at start-up. One TOML file; command-line flags override it.

```toml
[server]
host = "127.0.0.1"
port = 8001

[engine]
kind = "llamacpp"
model = "default"          # the packaged SmolLM2, or a path to any GGUF

[aliases]                   # Cortex names -> served model; omit the table to alias every Cortex name
"llama3.1-8b" = "smollm2-135m-instruct"
```
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .usage.settings import BudgetSettings, UsageSettings


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 inside a container)")
    port: int = Field(8001, ge=1, le=65535, description="HTTP port")
    max_concurrency: int | None = Field(
        None, ge=1, description="Engine requests in flight at once (default: what the engine's batch holds)"
    )
    max_queue_rows: int = Field(
        20_000, ge=1, description="Rows admitted but not finished; a batch beyond this gets 429 at once"
    )
    max_queue_seconds: float = Field(
        120.0,
        ge=0,
        description="admission = refuse only: a batch gets 429 at once when the admitted rows would "
        "take longer than this to finish at the measured row rate (0: off, only max_queue_rows applies)",
    )
    admission: Literal["hold", "refuse"] = Field(
        "hold",
        description='"hold": admit a batch while the rows and bytes held fit max_queue_rows and '
        "max_queue_mb and its expected wait fits half of batch_timeout_secs (429 only beyond that); "
        '"refuse": the old rule, 429 once the queue takes longer than max_queue_seconds (docs/overload.md)',
    )
    batch_timeout_secs: int = Field(
        3600,
        ge=1,
        le=604800,
        description="The service functions' BATCH_TIMEOUT_SECS (the deploy renders it); "
        "admission = hold holds a batch while its expected wait is under half of it",
    )
    max_queue_mb: int = Field(
        256, ge=1, description="Request bytes of admitted batches not yet answered; a batch beyond this gets 429"
    )
    async_responses: bool = Field(
        True,
        description="Answer 202 to a batch still waiting after async_after_secs and give its answer on "
        "Snowflake's polling GET (snowflake-contract.md 1.5); off: hold the POST open until the answer",
    )
    async_after_secs: float = Field(
        10.0, ge=0, description="How long a batch's POST (or a polling GET) is held open before it answers 202"
    )
    async_keep_secs: float = Field(
        600.0,
        gt=0,
        description="An answer no GET has fetched is kept this long; a batch answered 202 that no "
        "GET or retry asks about for this long is abandoned (its work cancelled, its memory freed)",
    )
    async_unknown_status: Literal[404, 500, 503] = Field(
        404,
        description="Status of a polling GET for a batch id this instance does not hold (unknown, expired, "
        "or held by another instance): one Snowflake retries, so it re-sends the batch",
    )
    result_cache_mb: int = Field(
        256, ge=0, description="Memory for the cache of temperature-0 answers and embedding vectors (0: off)"
    )
    batch_memory_mb: int = Field(
        64,
        ge=0,
        description="Memory for answers of recent batches, so that a batch Snowflake retries (same "
        "batch id) is answered from what was computed (0: off)",
    )
    max_response_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest batch answer (Snowflake's limit is 10 MB)"
    )
    api_key: str | None = Field(
        default_factory=lambda: os.environ.get("SPCS_LLM_API_KEY") or None,
        repr=False,
        description="Key every route but /health requires (`Authorization: Bearer KEY`); default: "
        "$SPCS_LLM_API_KEY; none: no authentication",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve a non-loopback host without api_key (SPCS: Snowflake authenticates the callers of "
        "a private endpoint); without it such a start is refused",
    )
    max_request_mb: float = Field(
        64.0,
        gt=0,
        description="Largest request body, after gzip/deflate decoding; a larger one gets 413 without "
        "being read (Snowflake's batches stay under 10 MB)",
    )
    max_batch_rows: int = Field(
        100_000,
        ge=1,
        description="Most rows in one batch; more is refused with 400 (set MAX_BATCH_ROWS on the function below it)",
    )
    max_text_chars: int = Field(
        1_000_000,
        ge=1,
        description="Longest text value in one row, in characters; a longer one is that row's "
        "error (NULL for TRY_/AI_ functions)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_content: bool = Field(False, description="Log prompt and output text (customer data: off by default)")


class EngineSettings(_Section):
    kind: Literal["llamacpp", "fake", "openai", "vllm"] = Field("llamacpp", description="Inference backend")
    model: str = Field(
        "default",
        description='llamacpp: "default" (packaged SmolLM2), a GGUF path or a catalogue name (its GGUF, from the cache '
        "or the mirrors); openai: the upstream's served model name "
        '("default": the first it lists); vllm: a catalogue name or a local model directory',
    )
    model_name: str | None = Field(None, description="Name the model is served under (default: from the file)")
    n_parallel: int = Field(8, ge=1, le=256, description="llama.cpp parallel slots (continuous batching)")
    ctx_per_slot: int = Field(2048, ge=64, description="Context tokens each slot holds (prompt + output)")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    label_scoring: bool = Field(
        True,
        description="SENTIMENT, AI_FILTER, CLASSIFY_TEXT: read the label from one forward step's "
        "probabilities where the engine can (false: always decode the answer under a schema)",
    )
    max_output_tokens: int | None = Field(
        None, ge=1, description="Cap on generated tokens per row (default: the model's, from the catalogue)"
    )
    cache_dir: Path | None = Field(None, description="Where downloaded models are kept (default ~/.cache/spcs-llm)")
    # -- openai and vllm: an OpenAI-compatible server behind us --
    upstream: str | None = Field(None, description="Base URL of the OpenAI-compatible /v1 (kind = openai)")
    api_key: str | None = Field(
        None, description="Bearer token for the upstream (default: $SPCS_LLM_UPSTREAM_API_KEY; none if unset)"
    )
    context_window: int | None = Field(
        None,
        ge=64,
        description="Tokens per request (prompt + output); default: what the upstream reports "
        "(vLLM's max_model_len), else the catalogue's. vllm: also its --max-model-len",
    )
    upstream_concurrency: int = Field(
        64, ge=1, le=4096, description="Requests in flight to the upstream at once (vllm: also --max-num-seqs)"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Longest wait for one upstream answer (or stream gap)")
    connect_timeout_s: float = Field(10.0, gt=0, description="Longest wait to connect to the upstream")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Longest wait for the upstream (or the vLLM child) to become ready"
    )
    structured_output: Literal["structured_outputs", "response_format"] | None = Field(
        None,
        description="How a JSON schema is sent: vLLM's \"structured_outputs\" field or OpenAI's "
        '"response_format" (default: structured_outputs for vllm, response_format for openai)',
    )
    # -- vllm only: the supervised `vllm serve` child --
    vllm_command: list[str] = Field(["vllm"], description="Command that runs vLLM's CLI (before `serve`)")
    vllm_extra_args: list[str] = Field([], description="More arguments appended to `vllm serve`")
    gpus: int | None = Field(
        None,
        ge=1,
        description="GPUs vLLM may use (default: those visible via CUDA_VISIBLE_DEVICES or nvidia-smi); "
        "the tensor-parallel size is the largest power of two up to this that splits the model's heads evenly",
    )
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1, description="vLLM --gpu-memory-utilization")
    vllm_port: int | None = Field(None, ge=1, le=65535, description="Loopback port of the child (default: a free one)")
    embedding_model: str | None = Field(
        None, description="An embedding model for a second vLLM child (--runner pooling) on embedding_port"
    )
    embedding_model_name: str | None = Field(None, description="Name the embedding child serves it under")
    embedding_port: int = Field(
        8011,
        ge=1,
        le=65535,
        description="Loopback port of the embedding child: point an [[embeddings]] entry "
        "(kind = openai) at http://127.0.0.1:<port>/v1",
    )
    embedding_gpu_memory_utilization: float = Field(
        0.05, gt=0, le=1, description="GPU memory share of the embedding child (taken from the same GPUs)"
    )

    @model_validator(mode="after")
    def _upstream_engines(self) -> EngineSettings:
        if self.kind == "openai" and not self.upstream:
            raise ValueError('kind = "openai" needs upstream = <base URL of the /v1>, e.g. http://host:8000/v1')
        if self.kind == "vllm" and self.model == "default":
            raise ValueError('kind = "vllm" needs model = <catalogue name or model directory>')
        if self.embedding_model and self.gpu_memory_utilization + self.embedding_gpu_memory_utilization > 1:
            raise ValueError("gpu_memory_utilization + embedding_gpu_memory_utilization is over 1")
        return self


class EmbeddingSettings(_Section):
    """One embedding model. EMBED_TEXT_768 / EMBED_TEXT_1024 / AI_EMBED / AI_SIMILARITY use the entry whose
    dimension the function needs; a model whose real dimension differs from ``dimension`` stops start-up."""

    kind: Literal["local", "openai", "fake"] = Field("local", description="Embedding runtime")
    model: str = Field("default", description='"default" (the packaged 768-d model), a model dir, or a served name')
    model_name: str | None = Field(None, description="Name the model is served under (default: from the model)")
    dimension: int = Field(768, ge=1, description="Vector length the model must produce")
    cortex_names: list[str] | None = Field(
        None, description="Cortex embedding names this model answers to (default: those of its dimension)"
    )
    upstream: str | None = Field(None, description="Base URL of an OpenAI-compatible /v1 (kind = openai)")
    cache_dir: Path | None = Field(None, description="Where the packaged model is kept (default ~/.cache/spcs-llm)")


class DownloadSettings(_Section):
    """Where models come from when they are not in the cache (``models/download.py``)."""

    sources: str | None = Field(
        None,
        description='Source order, e.g. "hf,modelscope" or "modelscope,hf=https://mirror" '
        "(default: $SPCS_LLM_SOURCES, else hf,modelscope)",
    )
    hf_endpoint: str | None = Field(None, description="Hugging Face mirror (default: $HF_ENDPOINT, else hf-mirror.com)")
    modelscope_endpoint: str | None = Field(
        None, description="ModelScope endpoint (default: $MODELSCOPE_ENDPOINT, else www.modelscope.cn)"
    )
    offline: bool = Field(False, description="Use only cached or pre-staged models; never download")
    cache_mode: Literal["posix", "stage", "readonly"] | None = Field(
        None,
        description='How the cache may be written: "posix" (local disk, block volume), "stage" (an SPCS stage '
        'volume: download to local disk, copy finished files in, never append/lock/rename there), "readonly" '
        "(pre-staged weights; never write) (default: $SPCS_LLM_CACHE_MODE, else posix)",
    )


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    embeddings: list[EmbeddingSettings] = Field(
        default_factory=lambda: [EmbeddingSettings()],
        description="Embedding models ([[embeddings]] tables; default: the packaged 768-d all-mpnet-base-v2 on "
        "the CPU); `embeddings = []` serves none",
    )
    downloads: DownloadSettings = Field(default_factory=DownloadSettings)
    aliases: dict[str, str] | None = Field(
        None, description="Extra model names -> served model (default: every Cortex model name)"
    )
    usage: UsageSettings = Field(default_factory=UsageSettings)
    budgets: list[BudgetSettings] = Field(
        default_factory=list, description="Token budgets ([[budgets]] tables); see docs/usage.md"
    )

    @classmethod
    def load(cls, path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
        """Read ``path`` (TOML) if given, apply ``overrides`` ({section: {key: value}}), validate."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for section, values in (overrides or {}).items():
            data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid configuration: {problems}") from exc
