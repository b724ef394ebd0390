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
from ..models.download import REDIRECT_HOSTS
from ..overload import max_batch_retries_for

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")  # unquoted Snowflake identifier
# SPCS egress takes full host names only: "Wildcards (for example, *.googleapis.com) are not supported."
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$")
SIZE = re.compile(r"^\d+(\.\d+)?(Mi|Gi|M|G)$")  # SPCS memory units
BLOCK_SIZE = re.compile(r"^(\d+)Gi$")  # block volumes: "an integer, specified using the Gi unit suffix"
# "The service's owner role cannot be any of the privileged roles, such as ACCOUNTADMIN, SECURITYADMIN, and ORGADMIN."
PRIVILEGED_ROLES = ("ACCOUNTADMIN", "SECURITYADMIN", "ORGADMIN")
EGRESS_PORTS = (22, 80, 443)  # "supports only the network rules that allow ports 22, 80, 443, and 1024+"


REDIRECT_HOSTS = {k: tuple(f"{h}:443" for h in v) for k, v in REDIRECT_HOSTS.items()}


def family_cloud(family: str) -> Literal["aws", "azure", "gcp"] | None:
    """The cloud an instance family exists on, from the sizing table; None for CPU families (every cloud)."""
    from ..models.sizing import FAMILIES

    for f in FAMILIES:
        if f.name == family:
            return f.cloud  # type: ignore[return-value]
    return "gcp" if "_GCP_" in family else None


def _egress_port(port: int) -> bool:
    return port in EGRESS_PORTS or 1024 <= port <= 65535


def _ident(value: str) -> str:
    if not IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain Snowflake identifier (letters, digits, _ and $)")
    return value.upper()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComputePool(_Section):
    name: str | None = Field(None, description="Compute pool name (account-level; default <DATABASE>_<SCHEMA>_POOL)")
    instance_family: str = Field("GPU_NV_S", description="SPCS instance family, e.g. GPU_NV_S, GPU_NV_M, CPU_X64_M")
    min_nodes: int = Field(1, ge=1, description="MIN_NODES")
    max_nodes: int = Field(1, ge=1, description="MAX_NODES (>= the service's max_instances for scale-out)")
    auto_suspend_secs: int = Field(3600, ge=0, description="AUTO_SUSPEND_SECS of the pool (0 = never)")
    auto_resume: bool = Field(True, description="AUTO_RESUME: a call to the service resumes the pool")

    @field_validator("name", "instance_family")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v)

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
    model_cache: Literal["stage", "block"] | None = Field(
        None,
        description="Where downloaded weights persist (default: stage; block on Google Cloud, which has no "
        "stage volumes)",
    )
    stage: str = Field("SPCS_LLM_MODELS", description="Stage name for a stage volume (in database.schema)")
    block_size: str = Field("200Gi", description="Size of the block volume (model_cache = block)")
    mount: str = Field("/models", pattern=r"^/", description="Where the model cache is mounted")
    shm_size: str = Field("8Gi", description="Memory volume mounted at /dev/shm (vLLM/NCCL need it)")

    _stage = field_validator("stage")(_ident)

    @field_validator("shm_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not SIZE.match(v):
            raise ValueError(f"{v!r} is not a size such as 8Gi or 500Mi")
        return v

    @field_validator("block_size")
    @classmethod
    def _block(cls, v: str) -> str:
        m = BLOCK_SIZE.match(v)
        if not m or not 1 <= int(m[1]) <= 65536:
            raise ValueError(f"{v!r}: a block volume size is a whole number of Gi from 1Gi to 65536Gi, e.g. 200Gi")
        return v


class Service(_Section):
    name: str = Field("SPCS_LLM_SERVICE", description="Service name (in database.schema)")
    endpoint: str = Field(
        "api",
        pattern=r"^[a-z][a-z0-9]{0,62}$",
        description="Endpoint the functions call (lower-case letters and digits: it is an "
        "unquoted identifier in CREATE FUNCTION ... ENDPOINT = <name>)",
    )
    port: int = Field(8001, ge=1024, le=65535, description="Port spcs-llm serve listens on in the container")
    min_instances: int = Field(1, ge=1, description="MIN_INSTANCES")
    max_instances: int = Field(1, ge=1, description="MAX_INSTANCES (Snowflake's load balancer spreads batches)")
    gpus: int = Field(1, ge=0, le=8, description="GPUs per instance; requests == limits; 0 on CPU pools")
    memory: str | None = Field(None, description="Memory request and limit, e.g. 24Gi (default: the node's)")
    cpu: float | None = Field(None, gt=0, description="CPU request (needed for CPU autoscaling)")
    auto_suspend_secs: int = Field(0, ge=0, description="AUTO_SUSPEND_SECS of the service (0 = never, else >= 300)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level")
    env: dict[str, str] = Field(default_factory=dict, description="Extra container environment (e.g. HF_ENDPOINT)")
    public: bool = Field(
        False,
        description="Expose the endpoint through SPCS ingress, for the Cortex REST routes "
        "from outside Snowflake (callers authenticated by Snowflake; see python-and-rest.md)",
    )

    _name = field_validator("name")(_ident)

    @model_validator(mode="after")
    def _instances(self) -> Service:
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances must be >= min_instances")
        if self.memory is not None and not SIZE.match(self.memory):
            raise ValueError(f"memory {self.memory!r} is not a size such as 24Gi")
        if 0 < self.auto_suspend_secs < 300:
            raise ValueError(
                "auto_suspend_secs must be 0 (never) or at least 300: Snowflake suspends services "
                "only after 300 seconds or more"
            )
        if self.max_instances > self.min_instances and not self.cpu:
            raise ValueError(
                "max_instances > min_instances scales out only on CPU load (80% of the requested cpu), "
                "and without a cpu request no autoscaling happens: set service.cpu, or make "
                "min_instances = max_instances"
            )
        return self


class Functions(_Section):
    max_batch_rows: int = Field(64, ge=1, description="MAX_BATCH_ROWS for every service function")
    max_batch_rows_for: dict[str, int] = Field(
        default_factory=dict, description="Per-function MAX_BATCH_ROWS, keyed by function name (lower case)"
    )
    max_batch_retries: int | None = Field(
        None,
        ge=0,
        validate_default=False,
        description="MAX_BATCH_RETRIES (default: as many as Snowflake's doubling back-off can spend within the part "
        "of batch_timeout_secs that holding leaves over: 10 for 3600 s; see the overload docs)",
    )
    batch_timeout_secs: int = Field(3600, ge=1, le=604800, description="BATCH_TIMEOUT_SECS (includes retries)")
    on_batch_failure: Literal["ABORT", "RETURN_NULL"] = Field("ABORT", description="ON_BATCH_FAILURE")
    rename: dict[str, str] = Field(
        default_factory=dict,
        description='SQL names for functions whose Cortex name Snowflake refuses, e.g. { AI_AGG = "SPCS_AI_AGG" }',
    )

    @model_validator(mode="after")
    def _retries(self) -> Functions:
        if self.max_batch_retries is None:
            self.max_batch_retries = max_batch_retries_for(self.batch_timeout_secs)
        return self

    @field_validator("rename")
    @classmethod
    def _rename(cls, v: dict[str, str]) -> dict[str, str]:
        out = {k.upper(): _ident(n) for k, n in v.items()}
        if len(set(out.values())) != len(out):
            raise ValueError("two functions renamed to the same name")
        return out

    @field_validator("max_batch_rows_for")
    @classmethod
    def _lower(cls, v: dict[str, int]) -> dict[str, int]:
        if any(n < 1 for n in v.values()):
            raise ValueError("every MAX_BATCH_ROWS must be >= 1")
        return {k.lower(): n for k, n in v.items()}


class Access(_Section):
    role: str | None = Field(
        None,
        description="Role that plays CORTEX_USER: USAGE on the functions "
        "(account-level; default <DATABASE>_<SCHEMA>_USER)",
    )
    grant_to: list[str] = Field(default_factory=list, description="Existing roles that receive that role")

    @field_validator("role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v)

    @field_validator("grant_to")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        return [_ident(r) for r in v]


class Roles(_Section):
    """Who runs what (see docs/deploy.md, "Roles"). The admin phase (account-level objects and grants) runs once as
    an admin role; everything else runs as ``deployer``, which owns the service and the functions."""

    deployer: str | None = Field(
        None,
        description="Dedicated deploy role that owns the service and functions "
        "(default <DATABASE>_<SCHEMA>_DEPLOYER); never a privileged role",
    )
    admin: str | None = Field(
        None,
        description="When set, `deploy` runs the admin phase itself as this role "
        "(e.g. ACCOUNTADMIN); otherwise an admin runs `deploy --admin-sql`",
    )
    users: list[str] = Field(default_factory=list, description="Users who receive the deploy role")

    @field_validator("deployer", "admin")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v)

    @field_validator("users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        return [_ident(u) for u in v]


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
    roles: Roles = Field(default_factory=Roles)
    cloud: Literal["aws", "azure", "gcp"] | None = Field(
        None, description="Cloud of the account (default: from a GPU instance family's name, else unknown)"
    )
    warehouse: str | None = Field(None, description="Warehouse for status test calls (default: the connection's)")
    mirror_redirects: bool = Field(
        True,
        description="Add the hosts the known mirrors redirect downloads to "
        "(deploy.config.REDIRECT_HOSTS) to the network rule",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    _db = field_validator("database", "schema_")(_ident)

    @field_validator("warehouse")
    @classmethod
    def _wh(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v)

    @field_validator("mirrors")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not HOST.match(h)]
        if bad:
            raise ValueError(f"not a full host[:port] (SPCS egress takes no wildcards): {', '.join(map(repr, bad))}")
        out = [h if ":" in h else f"{h}:443" for h in v]
        ports = [h for h in out if not _egress_port(int(h.rsplit(":", 1)[1]))]
        if ports:
            raise ValueError(f"SPCS allows egress only to ports 22, 80, 443 and 1024-65535: {', '.join(ports)}")
        if len(set(out)) != len(out):
            raise ValueError("a host is listed twice")
        return out

    @model_validator(mode="after")
    def _derive(self) -> DeployConfig:
        """Account-level names default to ones derived from database and schema, so two deployments in one
        account never share a pool, an integration or a role by accident (audit U15)."""
        base = f"{self.database}_{self.schema_}"
        self.compute_pool.name = self.compute_pool.name or f"{base}_POOL"
        self.access.role = self.access.role or f"{base}_USER"
        self.roles.deployer = self.roles.deployer or f"{base}_DEPLOYER"
        if self.cloud is None:
            self.cloud = family_cloud(self.compute_pool.instance_family)
        if self.volumes.model_cache is None:
            self.volumes.model_cache = "block" if self.cloud == "gcp" else "stage"
        return self

    @model_validator(mode="after")
    def _roles(self) -> DeployConfig:
        if self.roles.deployer in PRIVILEGED_ROLES:
            raise ValueError(
                f"roles.deployer = {self.roles.deployer!r}: Snowflake refuses a service owned by "
                f"{'/'.join(PRIVILEGED_ROLES)}; use a dedicated role (the default is "
                f"{self.database}_{self.schema_}_DEPLOYER)"
            )
        if self.roles.deployer == self.access.role:
            raise ValueError("roles.deployer and access.role must differ: callers get USAGE only")
        return self

    @model_validator(mode="after")
    def _volumes(self) -> DeployConfig:
        if self.volumes.model_cache == "stage" and self.cloud == "gcp":
            raise ValueError(
                "volumes.model_cache = 'stage': stage volumes are not available on Google Cloud; use 'block'"
            )
        if self.volumes.model_cache == "block" and self.service.min_instances != self.service.max_instances:
            raise ValueError(
                "volumes.model_cache = 'block' needs service.min_instances = max_instances: Snowflake "
                "requires it of services with block volumes"
            )
        return self

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
        return f"{self.database}_{self.schema_}_{self.service.name}_EAI"  # account-level: qualified by db and schema

    @property
    def deployer(self) -> str:
        assert self.roles.deployer
        return self.roles.deployer

    @property
    def caller_role(self) -> str:
        assert self.access.role
        return self.access.role

    @property
    def pool(self) -> str:
        assert self.compute_pool.name
        return self.compute_pool.name

    @property
    def egress_hosts(self) -> list[str]:
        """The network rule's VALUE_LIST: the mirrors, then the hosts they are known to redirect downloads to."""
        out = list(self.mirrors)
        if self.mirror_redirects:
            for host in self.mirrors:
                out += [h for h in REDIRECT_HOSTS.get(host.rsplit(":", 1)[0], ()) if h not in out]
        return out

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the user wants."""
        out = []
        if self.service.max_instances > self.service.min_instances and self.service.gpus:
            out.append(
                "scale-out follows CPU load only (80% of service.cpu over 5 minutes); a GPU-bound vLLM instance may "
                "never reach it. Set service.cpu low enough that a busy instance crosses it, or set "
                "min_instances = max_instances for fixed capacity"
            )
        return out

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
