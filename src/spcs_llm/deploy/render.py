"""Render everything Snowflake-side from one :class:`DeployConfig`: the service config, the spec, the SQL.

The SQL comes as a list of :class:`Step` in the order they must be applied; each step carries the statement that
creates its object from nothing and the facts the executor compares with what already exists. The service
functions are generated from the server's function registry at render time, so SQL signatures and the routes the
server answers cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..functions.registry import SqlFunction
from .config import DeployConfig
from .docker import PACKAGED_DIR
from .textfmt import to_toml, to_yaml

SERVICE_CONFIG_PATH = "/etc/spcs-llm/service.toml"
CONTEXT_HEADERS = ("CURRENT_USER", "CURRENT_ROLE")  # for audit: who called, under which role

# Functions whose service function returns ARRAY but whose Cortex type is VECTOR(FLOAT, n). VECTOR cannot cross the
# service-function boundary (snowflake-contract.md §1.1), so a SQL UDF under the Cortex name casts the ARRAY.
VECTOR_WRAPPERS: dict[str, int] = {"embed_text_768": 768, "embed_text_1024": 1024}
WRAPPED_SUFFIX = "_ARRAY"

# Cortex aggregates cannot be service functions (scalar only); the scalar one takes ARRAY_AGG(col).
AGGREGATE_USAGE: dict[str, str] = {
    "ai_agg": "AI_AGG(ARRAY_AGG(col), 'instruction')",
    "ai_summarize_agg": "AI_SUMMARIZE_AGG(ARRAY_AGG(col))",
}


def fingerprint(text: str) -> str:
    """A short hash kept in an object's COMMENT: a later deploy compares it instead of re-parsing DESCRIBE output,
    whose formatting Snowflake does not document."""
    return "spcs-llm " + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Step:
    """One object. ``kind`` picks how the executor compares it with the account; ``facts`` is what it compares."""

    kind: str
    name: str
    sql: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind.replace('_', ' ')} {self.name}"


# ---------------------------------------------------------------------------------------------- service files


def service_config(cfg: DeployConfig) -> dict[str, Any]:
    """The service's own config (``spcs-llm serve --config``), as a TOML document."""
    packaged = cfg.model.name == "default"  # the packaged GGUF is baked into the image, not on the volume
    engine: dict[str, Any] = {"kind": cfg.model.engine, "model": cfg.model.name,
                              "cache_dir": PACKAGED_DIR if packaged else cfg.volumes.mount}
    engine.update(cfg.model.engine_options)
    doc: dict[str, Any] = {
        "server": {"host": "0.0.0.0", "port": cfg.service.port, "log_level": cfg.service.log_level},
        "engine": engine,
    }
    if cfg.aliases:
        doc["aliases"] = dict(cfg.aliases)
    # Without configured embedding models, the packaged 768-d one baked into the image serves EMBED_TEXT_768.
    doc["embeddings"] = [dict(e) for e in cfg.embeddings] or [
        {"kind": "local", "model": "default", "dimension": 768, "cache_dir": PACKAGED_DIR}]
    return doc


def service_toml(cfg: DeployConfig) -> str:
    return to_toml(service_config(cfg))


def image_path(cfg: DeployConfig) -> str:
    """Image reference inside a spec: /db/schema/repo/name:tag (lower case, as the registry stores it)."""
    return f"/{cfg.database}/{cfg.schema_}/{cfg.image.repository}/".lower() + f"{cfg.image.name}:{cfg.image.tag}"


def _resources(cfg: DeployConfig) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if cfg.service.gpus:  # SPCS: a GPU must be requested and limited to the same count, or it is not visible
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = cfg.service.gpus
    if cfg.service.memory:
        requests["memory"] = limits["memory"] = cfg.service.memory
    if cfg.service.cpu:
        requests["cpu"] = cfg.service.cpu
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def spec(cfg: DeployConfig) -> dict[str, Any]:
    """The service specification (specification-reference; checked against deploy/spec.schema.json)."""
    svc, vol = cfg.service, cfg.volumes
    env = {
        "MODEL": cfg.model.name,
        "SPCS_LLM_ENGINE": cfg.model.engine,
        "SPCS_LLM_CACHE": vol.mount,
        "SPCS_LLM_SERVICE_TOML": service_toml(cfg),
        **svc.env,
    }
    mounts = [{"name": "models", "mountPath": vol.mount}]
    if vol.model_cache == "stage":
        volumes: list[dict[str, Any]] = [
            {"name": "models", "source": "stage", "stageConfig": {"name": "@" + cfg.fq(vol.stage)}}
        ]
    else:
        volumes = [{"name": "models", "source": "block", "size": vol.block_size}]
    if svc.gpus:  # vLLM/NCCL exchange tensors through /dev/shm; the container default (64 MB) is far too small
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "source": "memory", "size": vol.shm_size})
    container: dict[str, Any] = {
        "name": "server",
        "image": image_path(cfg),
        "env": env,
        "readinessProbe": {"port": svc.port, "path": "/health"},
        "volumeMounts": mounts,
    }
    if resources := _resources(cfg):
        container["resources"] = resources
    return {
        "spec": {
            "containers": [container],
            "endpoints": [{"name": svc.endpoint, "port": svc.port, "public": svc.public, "protocol": "HTTP"}],
            "volumes": volumes,
            "logExporters": {"eventTableConfig": {"logLevel": "INFO"}},
        },
        "serviceRoles": [{"name": cfg.service_role, "endpoints": [svc.endpoint]}],
    }


def spec_yaml(cfg: DeployConfig) -> str:
    return to_yaml(spec(cfg))


# ---------------------------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class ServiceFunction:
    """One SQL overload of a registered function, as a service function."""

    function: str  # registry name (lower case); the HTTP path is /functions/<function>
    sql_name: str  # upper case; differs from the function name when a VECTOR wrapper takes the Cortex name
    args: tuple[tuple[str, str], ...]
    returns: str
    max_batch_rows: int

    @property
    def path(self) -> str:
        return f"/functions/{self.function}"

    @property
    def arg_types(self) -> str:
        return "(" + ", ".join(t for _, t in self.args) + ")"

    @property
    def arg_decl(self) -> str:
        return "(" + ", ".join(f"{n} {t}" for n, t in self.args) + ")"


def service_functions(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[ServiceFunction]:
    out = []
    for name in sorted(functions):
        for ov in sorted(functions[name].overloads, key=lambda o: o.arity):
            wrapped = name in VECTOR_WRAPPERS and ov.returns.upper() == "ARRAY"
            sql_name = name.upper() + (WRAPPED_SUFFIX if wrapped else "")
            rows = cfg.functions.max_batch_rows_for.get(name, cfg.functions.max_batch_rows)
            out.append(ServiceFunction(name, sql_name, ov.args, ov.returns.upper(), rows))
    return out


def _function_sql(cfg: DeployConfig, f: ServiceFunction, verb: str = "CREATE") -> str:
    body = (
        f"{verb} FUNCTION {cfg.fq(f.sql_name)}{f.arg_decl}\n"
        f"  RETURNS {f.returns}\n"
        f"  SERVICE = {cfg.fq(cfg.service.name)}\n"
        f"  ENDPOINT = {cfg.service.endpoint}\n"
        f"  CONTEXT_HEADERS = ({', '.join(CONTEXT_HEADERS)})\n"
        f"  MAX_BATCH_ROWS = {f.max_batch_rows}\n"
        f"  MAX_BATCH_RETRIES = {cfg.functions.max_batch_retries}\n"
        f"  ON_BATCH_FAILURE = {cfg.functions.on_batch_failure}\n"
        f"  BATCH_TIMEOUT_SECS = {cfg.functions.batch_timeout_secs}\n"
    )
    return body + f"  COMMENT = '{fingerprint(body.removeprefix(verb))}'\n  AS '{f.path}'"


def function_step(cfg: DeployConfig, f: ServiceFunction) -> Step:
    sql = _function_sql(cfg, f)
    comment = sql.split("COMMENT = '")[1].split("'")[0]
    return Step("function", f"{cfg.fq(f.sql_name)}{f.arg_types}", sql, {
        "sql_name": f.sql_name, "arg_types": [t for _, t in f.args], "returns": f.returns, "comment": comment,
        "alter_sql": _function_sql(cfg, f, "CREATE OR ALTER"),
        "replace_sql": _function_sql(cfg, f, "CREATE OR REPLACE"),
    })


def wrapper_step(cfg: DeployConfig, f: ServiceFunction) -> Step:
    dim = VECTOR_WRAPPERS[f.function]
    name = f.function.upper()
    call = f"{cfg.fq(f.sql_name)}({', '.join(n for n, _ in f.args)})"
    sql = (
        f"CREATE OR REPLACE FUNCTION {cfg.fq(name)}{f.arg_decl}\n"
        f"  RETURNS VECTOR(FLOAT, {dim})\n"
        f"  COMMENT = '{fingerprint(call + str(dim))}'\n"
        f"  AS $$ {call}::VECTOR(FLOAT, {dim}) $$"
    )
    comment = fingerprint(call + str(dim))
    return Step("wrapper", f"{cfg.fq(name)}{f.arg_types}", sql, {
        "sql_name": name, "arg_types": [t for _, t in f.args], "returns": f"VECTOR(FLOAT, {dim})", "comment": comment,
    })


def callable_functions(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[tuple[str, list[str]]]:
    """(SQL name, argument types) of every function users call: service functions and the VECTOR wrappers."""
    out = []
    for f in service_functions(cfg, functions):
        out.append((f.sql_name, [t for _, t in f.args]))
        if f.sql_name.endswith(WRAPPED_SUFFIX) and f.function in VECTOR_WRAPPERS:
            out.append((f.function.upper(), [t for _, t in f.args]))
    return out


# ---------------------------------------------------------------------------------------------- the plan


def _quote_list(items: list[str]) -> str:
    return "(" + ", ".join(f"'{i}'" for i in items) + ")"


def infrastructure_steps(cfg: DeployConfig) -> list[Step]:
    pool, svc = cfg.compute_pool, cfg.service
    steps = [
        Step("database", cfg.database, f"CREATE DATABASE IF NOT EXISTS {cfg.database}"),
        Step("schema", cfg.schema_fq, f"CREATE SCHEMA IF NOT EXISTS {cfg.schema_fq}"),
        Step("compute_pool", pool.name, (
            f"CREATE COMPUTE POOL IF NOT EXISTS {pool.name}\n"
            f"  MIN_NODES = {pool.min_nodes}\n  MAX_NODES = {pool.max_nodes}\n"
            f"  INSTANCE_FAMILY = {pool.instance_family}\n"
            f"  AUTO_RESUME = {str(pool.auto_resume).upper()}\n  AUTO_SUSPEND_SECS = {pool.auto_suspend_secs}"
        ), {"min_nodes": pool.min_nodes, "max_nodes": pool.max_nodes, "instance_family": pool.instance_family,
            "auto_suspend_secs": pool.auto_suspend_secs, "auto_resume": pool.auto_resume}),
    ]
    if cfg.mirrors:
        comment = fingerprint(",".join(cfg.mirrors))
        steps += [
            Step("network_rule", cfg.fq(cfg.network_rule), (
                f"CREATE NETWORK RULE IF NOT EXISTS {cfg.fq(cfg.network_rule)}\n"
                f"  MODE = EGRESS\n  TYPE = HOST_PORT\n  VALUE_LIST = {_quote_list(cfg.mirrors)}\n"
                f"  COMMENT = '{comment}'"
            ), {"value_list": cfg.mirrors, "comment": comment}),
            Step("integration", cfg.integration, (
                f"CREATE EXTERNAL ACCESS INTEGRATION IF NOT EXISTS {cfg.integration}\n"
                f"  ALLOWED_NETWORK_RULES = ({cfg.fq(cfg.network_rule)})\n  ENABLED = TRUE"
            )),
        ]
    steps.append(Step("image_repository", cfg.fq(cfg.image.repository),
                      f"CREATE IMAGE REPOSITORY IF NOT EXISTS {cfg.fq(cfg.image.repository)}"))
    if cfg.volumes.model_cache == "stage":  # stage volumes need server-side encryption
        steps.append(Step("stage", cfg.fq(cfg.volumes.stage), (
            f"CREATE STAGE IF NOT EXISTS {cfg.fq(cfg.volumes.stage)}\n"
            f"  ENCRYPTION = (TYPE = 'SNOWFLAKE_SSE')\n  DIRECTORY = (ENABLE = TRUE)"
        )))
    text = spec_yaml(cfg)
    eais = [cfg.integration] if cfg.mirrors else []
    comment = fingerprint(text)
    tail = [f"  MIN_INSTANCES = {svc.min_instances}", f"  MAX_INSTANCES = {svc.max_instances}",
            f"  AUTO_SUSPEND_SECS = {svc.auto_suspend_secs}"]
    if eais:
        tail.append(f"  EXTERNAL_ACCESS_INTEGRATIONS = ({', '.join(eais)})")
    steps.append(Step("service", cfg.fq(svc.name), (
        f"CREATE SERVICE IF NOT EXISTS {cfg.fq(svc.name)}\n  IN COMPUTE POOL {pool.name}\n"
        f"  FROM SPECIFICATION $$\n{text}$$\n" + "\n".join(tail) + f"\n  COMMENT = '{comment}'"
    ), {"spec": text, "comment": comment, "min_instances": svc.min_instances, "max_instances": svc.max_instances,
        "auto_suspend_secs": svc.auto_suspend_secs, "external_access_integrations": eais}))
    return steps


def access_steps(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[Step]:
    role = cfg.access.role
    steps = [
        Step("role", role, f"CREATE ROLE IF NOT EXISTS {role}"),
        Step("grant", f"USAGE ON DATABASE {cfg.database}", f"GRANT USAGE ON DATABASE {cfg.database} TO ROLE {role}",
             {"privilege": "USAGE", "on": "DATABASE", "object": cfg.database}),
        Step("grant", f"USAGE ON SCHEMA {cfg.schema_fq}", f"GRANT USAGE ON SCHEMA {cfg.schema_fq} TO ROLE {role}",
             {"privilege": "USAGE", "on": "SCHEMA", "object": cfg.schema_fq}),
    ]
    for name, types in callable_functions(cfg, functions):
        obj = f"{cfg.fq(name)}({', '.join(types)})"
        steps.append(Step("grant", f"USAGE ON FUNCTION {obj}", f"GRANT USAGE ON FUNCTION {obj} TO ROLE {role}",
                          {"privilege": "USAGE", "on": "FUNCTION", "object": obj}))
    service_role = f"{cfg.fq(cfg.service.name)}!{cfg.service_role}"
    steps.append(Step("grant", f"SERVICE ROLE {service_role}", f"GRANT SERVICE ROLE {service_role} TO ROLE {role}",
                      {"privilege": "USAGE", "on": "SERVICE_ROLE", "object": service_role}))
    for grantee in cfg.access.grant_to:
        steps.append(Step("role_grant", f"ROLE {role} TO ROLE {grantee}", f"GRANT ROLE {role} TO ROLE {grantee}",
                          {"role": role, "grantee": grantee}))
    return steps


def plan(cfg: DeployConfig, functions: Mapping[str, SqlFunction] | None = None) -> list[Step]:
    """Every object in apply order. ``functions`` defaults to the server's registry."""
    functions = registry() if functions is None else functions
    fns = service_functions(cfg, functions)
    steps = infrastructure_steps(cfg)
    steps += [function_step(cfg, f) for f in fns]
    steps += [wrapper_step(cfg, f) for f in fns
              if f.sql_name.endswith(WRAPPED_SUFFIX) and f.function in VECTOR_WRAPPERS]
    return steps + access_steps(cfg, functions)


def registry() -> Mapping[str, SqlFunction]:
    from ..functions import FUNCTIONS  # importing the package registers every function module

    return FUNCTIONS


def script(cfg: DeployConfig, functions: Mapping[str, SqlFunction] | None = None) -> str:
    """The whole plan as one SQL script, as ``deploy --dry-run`` prints it."""
    functions = registry() if functions is None else functions
    head = [
        "-- Rendered by `spcs-llm deploy --dry-run`. `spcs-llm deploy` applies the same statements, skipping what",
        "-- already exists unchanged. Users keep their Cortex SQL and change only the prefix, e.g.",
        f"--   SNOWFLAKE.CORTEX.COMPLETE('llama3.1-8b', txt)  ->  {cfg.schema_fq}.COMPLETE('llama3.1-8b', txt)",
    ]
    for name, usage in AGGREGATE_USAGE.items():
        if name in functions:
            head.append(f"-- {name.upper()} is an aggregate in Cortex; a service function is scalar: call "
                        f"{cfg.schema_fq}.{usage}")
    body = []
    for step in plan(cfg, functions):
        body.append(f"-- {step.label}\n{step.sql};\n")
    return "\n".join(head) + "\n\n" + "\n".join(body)
