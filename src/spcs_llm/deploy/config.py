"""``spcs-llm.toml``: everything the Snowflake side needs, in one file, validated once.

Every deploy command reads it (``--config FILE``). Errors name the key, e.g.
``compute_pool.max_nodes: Input should be greater than or equal to 1``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import ConfigError

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")  # unquoted Snowflake identifier
HOST = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$")
SIZE = re.compile(r"^\d+(\.\d+)?(Mi|Gi|M|G)$")  # SPCS memory units


def _ident(value: str) -> str:
    if not IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain Snowflake identifier (letters, digits, _ and $)")
    return value.upper()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComputePool(_Section):
    name: str = Field("SPCS_LLM_POOL", description="Compute pool name (account-level object)")
    instance_family: str = Field("GPU_NV_S", description="SPCS instance family, e.g. GPU_NV_S, GPU_NV_M, CPU_X64_M")
    min_nodes: int = Field(1, ge=1, description="MIN_NODES")
    max_nodes: int = Field(1, ge=1, description="MAX_NODES (>= the service's max_instances for scale-out)")
    auto_suspend_secs: int = Field(3600, ge=0, description="AUTO_SUSPEND_SECS of the pool (0 = never)")
    auto_resume: bool = Field(True, description="AUTO_RESUME: a call to the service resumes the pool")

    _name = field_validator("name", "instance_family")(_ident)

    @model_validator(mode="after")
    def _nodes(self) -> ComputePool:
        if self.max_nodes < self.min_nodes:
            raise ValueError("max_nodes must be >= min_nodes")
        return self


class Image(_Section):
    repository: str = Field("SPCS_LLM_REPO", description="Image repository in database.schema")
    name: str = Field("spcs-llm", pattern=r"^[a-z0-9][a-z0-9._/-]*$", description="Image name in the repository")
    tag: str = Field("0.1.0", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", description="Image tag")
    base: str = Field("vllm/vllm-openai:v0.11.0", description="Base image of the Dockerfile (pinned tag)")
    platform: str = Field("linux/amd64", description="SPCS runs linux/amd64 images")
    pat_env: str = Field(
        "SNOWFLAKE_PAT", description="Environment variable holding the programmatic access token for docker login"
    )

    _repo = field_validator("repository")(_ident)


class Model(_Section):
    name: str = Field(description="Model to serve: a catalogue name (`spcs-llm models list`) or a path")
    engine: Literal["vllm", "llamacpp"] = Field("vllm", description="vllm on GPU pools, llamacpp on CPU pools")
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keys for the service config's [engine] table, passed through"
    )


class Volumes(_Section):
    model_cache: Literal["stage", "block"] = Field("stage", description="Where downloaded weights persist")
    stage: str = Field("SPCS_LLM_MODELS", description="Stage name for a stage volume (in database.schema)")
    block_size: str = Field("200Gi", description="Size of the block volume (model_cache = block)")
    mount: str = Field("/models", pattern=r"^/", description="Where the model cache is mounted")
    shm_size: str = Field("8Gi", description="Memory volume mounted at /dev/shm (vLLM/NCCL need it)")

    _stage = field_validator("stage")(_ident)

    @field_validator("block_size", "shm_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not SIZE.match(v):
            raise ValueError(f"{v!r} is not a size such as 8Gi or 500Mi")
        return v


class Service(_Section):
    name: str = Field("SPCS_LLM_SERVICE", description="Service name (in database.schema)")
    endpoint: str = Field("api", pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Endpoint the functions call")
    port: int = Field(8001, ge=1024, le=65535, description="Port spcs-llm serve listens on in the container")
    min_instances: int = Field(1, ge=1, description="MIN_INSTANCES")
    max_instances: int = Field(1, ge=1, description="MAX_INSTANCES (Snowflake's load balancer spreads batches)")
    gpus: int = Field(1, ge=0, le=8, description="GPUs per instance; requests == limits; 0 on CPU pools")
    memory: str | None = Field(None, description="Memory request and limit, e.g. 24Gi (default: the node's)")
    cpu: float | None = Field(None, gt=0, description="CPU request (needed for CPU autoscaling)")
    auto_suspend_secs: int = Field(0, ge=0, description="AUTO_SUSPEND_SECS of the service (0 = never)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level")
    env: dict[str, str] = Field(default_factory=dict, description="Extra container environment (e.g. HF_ENDPOINT)")
    public: bool = Field(False, description="Expose the endpoint through SPCS ingress, for the Cortex REST routes "
                         "from outside Snowflake (callers authenticated by Snowflake; see python-and-rest.md)")

    _name = field_validator("name")(_ident)

    @model_validator(mode="after")
    def _instances(self) -> Service:
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances must be >= min_instances")
        if self.memory is not None and not SIZE.match(self.memory):
            raise ValueError(f"memory {self.memory!r} is not a size such as 24Gi")
        return self


class Functions(_Section):
    max_batch_rows: int = Field(64, ge=1, description="MAX_BATCH_ROWS for every service function")
    max_batch_rows_for: dict[str, int] = Field(
        default_factory=dict, description="Per-function MAX_BATCH_ROWS, keyed by function name (lower case)"
    )
    max_batch_retries: int = Field(3, ge=0, description="MAX_BATCH_RETRIES")
    batch_timeout_secs: int = Field(3600, ge=1, le=604800, description="BATCH_TIMEOUT_SECS (includes retries)")
    on_batch_failure: Literal["ABORT", "RETURN_NULL"] = Field("ABORT", description="ON_BATCH_FAILURE")

    @field_validator("max_batch_rows_for")
    @classmethod
    def _lower(cls, v: dict[str, int]) -> dict[str, int]:
        if any(n < 1 for n in v.values()):
            raise ValueError("every MAX_BATCH_ROWS must be >= 1")
        return {k.lower(): n for k, n in v.items()}


class Access(_Section):
    role: str = Field("SPCS_LLM_USER", description="Role that plays CORTEX_USER: USAGE on the functions")
    grant_to: list[str] = Field(default_factory=list, description="Existing roles that receive that role")

    _role = field_validator("role")(_ident)

    @field_validator("grant_to")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        return [_ident(r) for r in v]


class DeployConfig(_Section):
    """The whole file. Object names are upper-cased unquoted identifiers."""

    connection: str | None = Field(None, description="Connection name in connections.toml (default: its default)")
    database: str = Field("SPCS_LLM", description="Database for every schema-level object")
    schema_: str = Field("LLM", alias="schema", description="Schema for the service, functions, repo and stage")
    compute_pool: ComputePool = Field(default_factory=ComputePool)
    image: Image = Field(default_factory=Image)
    model: Model
    aliases: dict[str, str] = Field(default_factory=dict, description="Cortex model names -> served model")
    embeddings: list[dict[str, Any]] = Field(
        default_factory=list, description="[[embeddings]] tables, passed through to the service config"
    )
    mirrors: list[str] = Field(
        default_factory=list, description="Hosts the service may reach (network rule + EAI); empty = no egress"
    )
    volumes: Volumes = Field(default_factory=Volumes)
    service: Service = Field(default_factory=Service)
    functions: Functions = Field(default_factory=Functions)
    access: Access = Field(default_factory=Access)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    _db = field_validator("database", "schema_")(_ident)

    @field_validator("mirrors")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not HOST.match(h)]
        if bad:
            raise ValueError(f"not a host[:port]: {', '.join(map(repr, bad))}")
        out = [h if ":" in h else f"{h}:443" for h in v]
        if len(set(out)) != len(out):
            raise ValueError("a host is listed twice")
        return out

    @model_validator(mode="after")
    def _fits(self) -> DeployConfig:
        if self.service.max_instances > self.compute_pool.max_nodes:
            raise ValueError(
                f"service.max_instances ({self.service.max_instances}) needs compute_pool.max_nodes >= it: "
                "each instance takes a whole GPU node"
            )
        if self.model.engine == "vllm" and self.service.gpus == 0:
            raise ValueError("model.engine = 'vllm' needs service.gpus >= 1 (use 'llamacpp' on a CPU pool)")
        return self

    # Fully qualified names, used everywhere in SQL.
    def fq(self, name: str) -> str:
        return f"{self.database}.{self.schema_}.{name}"

    @property
    def schema_fq(self) -> str:
        return f"{self.database}.{self.schema_}"

    @property
    def network_rule(self) -> str:
        return f"{self.service.name}_EGRESS"

    @property
    def integration(self) -> str:
        return f"{self.service.name}_EAI"

    @property
    def service_role(self) -> str:
        return "caller"

    @classmethod
    def load(cls, path: Path) -> DeployConfig:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "config") -> DeployConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid {source}: {problems}") from exc
