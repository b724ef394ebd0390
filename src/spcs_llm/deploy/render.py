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
from ..usage import sql as usage_sql
from .config import DeployConfig
from .docker import PACKAGED_DIR
from .textfmt import to_toml, to_yaml

SERVICE_CONFIG_PATH = "/etc/spcs-llm/service.toml"
ADMIN, DEPLOY = "admin", "deploy"  # the two phases of a plan (see Step.phase)
DEFAULT_ADMIN_ROLE = "ACCOUNTADMIN"  # the role the printed admin script uses when roles.admin is not set
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
    phase: str = DEPLOY  # ADMIN: account-level, run once by an admin; DEPLOY: run as the dedicated deploy role

    @property
    def label(self) -> str:
        return f"{self.kind.replace('_', ' ')} {self.name}"


# ---------------------------------------------------------------------------------------------- service files


def service_config(cfg: DeployConfig) -> dict[str, Any]:
    """The service's own config (``spcs-llm serve --config``), as a TOML document."""
    packaged = cfg.model.name == "default"  # the packaged GGUF is baked into the image, not on the volume
    engine: dict[str, Any] = {
        "kind": cfg.model.engine,
        "model": cfg.model.name,
        "cache_dir": PACKAGED_DIR if packaged else cfg.volumes.mount,
    }
    engine.update(cfg.model.engine_options)
    # the service holds a batch only as long as the function's timeout allows (docs/overload.md); whether a polling
    # GET reaches the instance that took the POST is unconfirmed, so the 202 protocol is off with several instances
    server: dict[str, Any] = {
        "host": "0.0.0.0",
        "port": cfg.service.port,
        "log_level": cfg.service.log_level,
        "batch_timeout_secs": cfg.functions.batch_timeout_secs,
    }
    if cfg.service.max_instances > 1:
        server["async_responses"] = False
    # the container listens on 0.0.0.0 without a key of its own: Snowflake authenticates every caller of an SPCS
    # endpoint (service functions, and a public endpoint's ingress), so `serve` is told so explicitly
    server["allow_unauthenticated"] = True
    doc: dict[str, Any] = {"server": server, "engine": engine}
    # usage history: on a block volume it survives restarts; never on a stage volume (no file locks there)
    usage: dict[str, Any] = {}
    if cfg.volumes.model_cache == "block":
        usage["db_path"] = f"{cfg.volumes.mount}/usage.sqlite3"
    if cfg.warehouse:
        usage["export_warehouse"] = cfg.warehouse
    if usage:
        doc["usage"] = usage
    if cfg.aliases:
        doc["aliases"] = dict(cfg.aliases)
    # Without configured embedding models, the packaged 768-d one baked into the image serves EMBED_TEXT_768.
    doc["embeddings"] = [dict(e) for e in cfg.embeddings] or [
        {"kind": "local", "model": "default", "dimension": 768, "cache_dir": PACKAGED_DIR}
    ]
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


def _mirror_env(cfg: DeployConfig) -> dict[str, str]:
    """Through hf-mirror.com, huggingface_hub's Xet transfers go to Hugging Face's own Xet hosts (which the mirror
    does not proxy); plain HTTP downloads stay on the mirror's hosts, which the network rule lists."""
    return {"HF_HUB_DISABLE_XET": "1"} if any(h.startswith("hf-mirror.com:") for h in cfg.mirrors) else {}


def _cache_mode(cfg: DeployConfig) -> dict[str, str]:
    """A stage volume refuses appends, locks and renames (W3): downloads land on container disk and finished files
    are copied in once; with no mirrors the stage holds pre-staged weights and is only read. A block volume is a
    POSIX file system (the default mode)."""
    if cfg.volumes.model_cache != "stage":
        return {}
    return {"SPCS_LLM_CACHE_MODE": "stage" if cfg.mirrors else "readonly"}


def spec(cfg: DeployConfig) -> dict[str, Any]:
    """The service specification (specification-reference; checked against deploy/spec.schema.json)."""
    svc, vol = cfg.service, cfg.volumes
    env = {
        "MODEL": cfg.model.name,
        "SPCS_LLM_ENGINE": cfg.model.engine,
        "SPCS_LLM_CACHE": vol.mount,
        **_cache_mode(cfg),
        "SPCS_LLM_SERVICE_TOML": service_toml(cfg),
        **_mirror_env(cfg),
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


def check_spec(doc: dict[str, Any]) -> list[str]:
    """What the JSON schema cannot say: "If GPUs are required, they must be requested, and there must also be a
    limit specified for the same quantity" (specification-reference)."""
    problems = []
    for c in doc.get("spec", {}).get("containers", []):
        res = c.get("resources", {})
        want, cap = res.get("requests", {}).get("nvidia.com/gpu"), res.get("limits", {}).get("nvidia.com/gpu")
        if want != cap:
            problems.append(
                f"container {c.get('name')}: nvidia.com/gpu requested {want}, limited to {cap}; they must be equal"
            )
    return problems


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


def sql_name(cfg: DeployConfig, name: str) -> str:
    """The SQL name of a function: its Cortex name unless ``[functions] rename`` gives another (for a name that
    Snowflake refuses, e.g. one of its system functions)."""
    return cfg.functions.rename.get(name.upper(), name.upper())


def service_functions(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[ServiceFunction]:
    out = []
    for name in sorted(functions):
        for ov in sorted(functions[name].overloads, key=lambda o: o.arity):
            wrapped = name in VECTOR_WRAPPERS and ov.returns.upper() == "ARRAY"
            sql = sql_name(cfg, name + WRAPPED_SUFFIX if wrapped else name)
            rows = cfg.functions.max_batch_rows_for.get(name, cfg.functions.max_batch_rows)
            out.append(ServiceFunction(name, sql, ov.args, ov.returns.upper(), rows))
    return out


def _function_sql(cfg: DeployConfig, f: ServiceFunction, verb: str = "CREATE", comment: bool = True) -> str:
    """Properties in the order of the CREATE FUNCTION (SPCS) syntax block: SERVICE, ENDPOINT, COMMENT,
    CONTEXT_HEADERS, MAX_BATCH_ROWS, MAX_BATCH_RETRIES, ON_BATCH_FAILURE, BATCH_TIMEOUT_SECS, AS (audit U3)."""
    head = (
        f"FUNCTION {cfg.fq(f.sql_name)}{f.arg_decl}\n"
        f"  RETURNS {f.returns}\n"
        f"  SERVICE = {cfg.fq(cfg.service.name)}\n"
        f"  ENDPOINT = {cfg.service.endpoint}\n"
    )
    tail = (
        f"  CONTEXT_HEADERS = ({', '.join(CONTEXT_HEADERS)})\n"
        f"  MAX_BATCH_ROWS = {f.max_batch_rows}\n"
        f"  MAX_BATCH_RETRIES = {cfg.functions.max_batch_retries}\n"
        f"  ON_BATCH_FAILURE = {cfg.functions.on_batch_failure}\n"
        f"  BATCH_TIMEOUT_SECS = {cfg.functions.batch_timeout_secs}\n"
    )
    note = f"  COMMENT = '{fingerprint(head + tail)}'\n" if comment else ""
    return f"{verb} {head}{note}{tail}  AS '{f.path}'"


def function_step(cfg: DeployConfig, f: ServiceFunction) -> Step:
    sql = _function_sql(cfg, f)
    comment = sql.split("COMMENT = '")[1].split("'")[0]
    # CREATE OR ALTER's list of supported alterations omits COMMENT (audit U4), so the changed definition goes
    # without one and the fingerprint follows in ALTER FUNCTION ... SET COMMENT, both documented forms.
    alter = [
        _function_sql(cfg, f, "CREATE OR ALTER", comment=False),
        f"ALTER FUNCTION {cfg.fq(f.sql_name)}{f.arg_types} SET COMMENT = '{comment}'",
    ]
    return Step(
        "function",
        f"{cfg.fq(f.sql_name)}{f.arg_types}",
        sql,
        {
            "sql_name": f.sql_name,
            "function": f.function,
            "arg_types": [t for _, t in f.args],
            "returns": f.returns,
            "comment": comment,
            "alter_sql": alter,
            "replace_sql": _function_sql(cfg, f, "CREATE OR REPLACE"),
        },
    )


def wrapper_step(cfg: DeployConfig, f: ServiceFunction) -> Step:
    dim = VECTOR_WRAPPERS[f.function]
    name = sql_name(cfg, f.function)
    call = f"{cfg.fq(f.sql_name)}({', '.join(n for n, _ in f.args)})"
    sql = (
        f"CREATE OR REPLACE FUNCTION {cfg.fq(name)}{f.arg_decl}\n"
        f"  RETURNS VECTOR(FLOAT, {dim})\n"
        f"  COMMENT = '{fingerprint(call + str(dim))}'\n"
        f"  AS $$ {call}::VECTOR(FLOAT, {dim}) $$"
    )
    comment = fingerprint(call + str(dim))
    return Step(
        "wrapper",
        f"{cfg.fq(name)}{f.arg_types}",
        sql,
        {
            "sql_name": name,
            "calls": f.sql_name,
            "arg_types": [t for _, t in f.args],
            "returns": f"VECTOR(FLOAT, {dim})",
            "comment": comment,
        },
    )


def _wrapped(f: ServiceFunction) -> bool:
    return f.function in VECTOR_WRAPPERS and f.returns == "ARRAY"


def callable_overloads(
    cfg: DeployConfig, functions: Mapping[str, SqlFunction]
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(SQL name, (argument name, type) pairs) of every function users call: service functions and the VECTOR
    wrappers (which take the same arguments as the service function they call)."""
    out = []
    for f in service_functions(cfg, functions):
        out.append((f.sql_name, f.args))
        if _wrapped(f):
            out.append((sql_name(cfg, f.function), f.args))
    return out


def callable_functions(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[tuple[str, list[str]]]:
    """(SQL name, argument types) of every function users call: service functions and the VECTOR wrappers."""
    return [(name, [t for _, t in args]) for name, args in callable_overloads(cfg, functions)]


# ---------------------------------------------------------------------------------------------- the plan


def _quote_list(items: list[str]) -> str:
    return "(" + ", ".join(f"'{i}'" for i in items) + ")"


def _grant(privileges: tuple[str, ...], on: str, obj: str, grantee: str, phase: str = ADMIN) -> Step:
    """GRANT <privileges> ON <on> <obj> TO ROLE <grantee>; the executor checks each privilege in SHOW GRANTS."""
    sql = f"GRANT {', '.join(privileges)} ON {on} {obj} TO ROLE {grantee}"
    return Step(
        "grant",
        f"{', '.join(privileges)} ON {on} {obj} TO {grantee}",
        sql,
        {"privileges": list(privileges), "on": on, "object": obj, "grantee": grantee},
        phase,
    )


def role_grant(role: str, to: str, kind: str = "ROLE") -> Step:
    return Step(
        "role_grant",
        f"ROLE {role} TO {kind} {to}",
        f"GRANT ROLE {role} TO {kind} {to}",
        {"role": role, "grantee": to, "granted_to": kind},
        ADMIN,
    )


# What the deploy role needs, and nothing more: it owns what it creates in the schema (repository, stage, service,
# functions), uses the pool and the integration, and may operate the pool (suspend/resume/alter node counts).
SCHEMA_PRIVILEGES = (
    "USAGE",
    "CREATE SERVICE",
    "CREATE FUNCTION",
    "CREATE STAGE",
    "CREATE IMAGE REPOSITORY",
    "CREATE TABLE",
    "CREATE VIEW",
)  # the last two: the usage history (spcs_llm.usage.sql)
POOL_PRIVILEGES = ("USAGE", "MONITOR", "OPERATE", "MODIFY")


def _documented(sql: str) -> str:
    """CREATE NETWORK RULE and CREATE EXTERNAL ACCESS INTEGRATION document no IF NOT EXISTS (audit U5), although
    public setup scripts use it. The script keeps it (so an admin can run it twice); the executor, which creates
    them only when SHOW finds nothing, sends the documented form."""
    return sql.replace(" IF NOT EXISTS ", " ", 1)


def admin_steps(cfg: DeployConfig) -> list[Step]:
    """The one-time, account-level part: the roles, the database and schema, the compute pool, the egress rule and
    integration, and the grants that let the deploy role do the rest (audit W1). An admin runs it, once and again
    after changing the pool, the mirrors or the roles."""
    pool, d, caller = cfg.compute_pool, cfg.deployer, cfg.caller_role
    steps = [
        Step("role", d, f"CREATE ROLE IF NOT EXISTS {d}", phase=ADMIN),
        # Custom roles roll up to SYSADMIN, so account admins can see and manage what the deploy role owns.
        role_grant(d, "SYSADMIN"),
        *(role_grant(d, u, "USER") for u in cfg.roles.users),
        Step("database", cfg.database, f"CREATE DATABASE IF NOT EXISTS {cfg.database}", phase=ADMIN),
        Step("schema", cfg.schema_fq, f"CREATE SCHEMA IF NOT EXISTS {cfg.schema_fq}", phase=ADMIN),
        _grant(("USAGE",), "DATABASE", cfg.database, d),
        _grant(SCHEMA_PRIVILEGES, "SCHEMA", cfg.schema_fq, d),
        Step(
            "compute_pool",
            cfg.pool,
            (
                f"CREATE COMPUTE POOL IF NOT EXISTS {cfg.pool}\n"
                f"  MIN_NODES = {pool.min_nodes}\n  MAX_NODES = {pool.max_nodes}\n"
                f"  INSTANCE_FAMILY = {pool.instance_family}\n"
                f"  AUTO_RESUME = {str(pool.auto_resume).upper()}\n  AUTO_SUSPEND_SECS = {pool.auto_suspend_secs}"
            ),
            {
                "min_nodes": pool.min_nodes,
                "max_nodes": pool.max_nodes,
                "instance_family": pool.instance_family,
                "auto_suspend_secs": pool.auto_suspend_secs,
                "auto_resume": pool.auto_resume,
            },
            ADMIN,
        ),
        _grant(POOL_PRIVILEGES, "COMPUTE POOL", cfg.pool, d),
    ]
    if cfg.mirrors:
        hosts = cfg.egress_hosts
        comment = fingerprint(",".join(hosts))
        rule = (
            f"CREATE NETWORK RULE IF NOT EXISTS {cfg.fq(cfg.network_rule)}\n"
            f"  MODE = EGRESS\n  TYPE = HOST_PORT\n  VALUE_LIST = {_quote_list(hosts)}\n  COMMENT = '{comment}'"
        )
        integration = (
            f"CREATE EXTERNAL ACCESS INTEGRATION IF NOT EXISTS {cfg.integration}\n"
            f"  ALLOWED_NETWORK_RULES = ({cfg.fq(cfg.network_rule)})\n  ENABLED = TRUE"
        )
        steps += [
            Step(
                "network_rule",
                cfg.fq(cfg.network_rule),
                rule,
                {"value_list": hosts, "comment": comment, "create_sql": _documented(rule)},
                ADMIN,
            ),
            Step("integration", cfg.integration, integration, {"create_sql": _documented(integration)}, ADMIN),
            _grant(("USAGE",), "INTEGRATION", cfg.integration, d),
        ]
    steps += [
        Step("role", caller, f"CREATE ROLE IF NOT EXISTS {caller}", phase=ADMIN),
        # The deploy role grants USAGE on the functions it owns to the caller role, and reads its grants.
        role_grant(caller, d),
        _grant(("USAGE",), "DATABASE", cfg.database, caller),
        _grant(("USAGE",), "SCHEMA", cfg.schema_fq, caller),
    ]
    if cfg.warehouse:
        steps += [_grant(("USAGE",), "WAREHOUSE", cfg.warehouse, r) for r in (d, caller)]
    steps += [role_grant(caller, grantee) for grantee in cfg.access.grant_to]
    return steps


def service_step(cfg: DeployConfig) -> Step:
    svc = cfg.service
    text = spec_yaml(cfg)
    eais = [cfg.integration] if cfg.mirrors else []
    volume = f"block:{cfg.volumes.block_size}" if cfg.volumes.model_cache == "block" else "stage"
    # The volume goes into the COMMENT beside the spec fingerprint: Snowflake refuses to add, remove or resize a
    # block volume on an existing service, so the executor must know the old one without parsing DESCRIBE.
    comment = f"{fingerprint(text)} volume={volume}"
    tail = [
        f"  MIN_INSTANCES = {svc.min_instances}",
        f"  MAX_INSTANCES = {svc.max_instances}",
        f"  AUTO_SUSPEND_SECS = {svc.auto_suspend_secs}",
    ]
    if eais:
        tail.append(f"  EXTERNAL_ACCESS_INTEGRATIONS = ({', '.join(eais)})")
    return Step(
        "service",
        cfg.fq(svc.name),
        (
            f"CREATE SERVICE IF NOT EXISTS {cfg.fq(svc.name)}\n  IN COMPUTE POOL {cfg.pool}\n"
            f"  FROM SPECIFICATION $$\n{text}$$\n" + "\n".join(tail) + f"\n  COMMENT = '{comment}'"
        ),
        {
            "spec": text,
            "comment": comment,
            "volume": volume,
            "min_instances": svc.min_instances,
            "max_instances": svc.max_instances,
            "auto_suspend_secs": svc.auto_suspend_secs,
            "external_access_integrations": eais,
            "image": f"{cfg.image.name}:{cfg.image.tag}",
        },
    )


def with_image_digest(step: Step, digest: str) -> Step:
    """The service step with the pushed image's digest in its COMMENT (audit U2): Snowflake keeps the image
    version it resolved at CREATE SERVICE, and takes the newest one only on ALTER SERVICE ... FROM SPECIFICATION;
    a changed digest under the same tag changes the comment, so deploy issues that ALTER and the image rolls out."""
    if not digest:
        return step
    short = digest.removeprefix("sha256:")[:16]
    comment = f"{step.facts['comment']} image={short}"
    sql = step.sql.replace(f"COMMENT = '{step.facts['comment']}'", f"COMMENT = '{comment}'")
    return Step(step.kind, step.name, sql, {**step.facts, "comment": comment}, step.phase)


def deploy_steps(cfg: DeployConfig, functions: Mapping[str, SqlFunction]) -> list[Step]:
    """What the deploy role creates and owns: repository, stage, service, functions, and USAGE for callers."""
    steps = [
        Step(
            "image_repository",
            cfg.fq(cfg.image.repository),
            f"CREATE IMAGE REPOSITORY IF NOT EXISTS {cfg.fq(cfg.image.repository)}",
        )
    ]
    if cfg.volumes.model_cache == "stage":  # stage volumes need server-side encryption
        steps.append(
            Step(
                "stage",
                cfg.fq(cfg.volumes.stage),
                (
                    f"CREATE STAGE IF NOT EXISTS {cfg.fq(cfg.volumes.stage)}\n"
                    f"  ENCRYPTION = (TYPE = 'SNOWFLAKE_SSE')\n  DIRECTORY = (ENABLE = TRUE)"
                ),
            )
        )
    # the usage history the service exports to, and its view shaped like Cortex's usage views (docs/usage.md)
    table, view = usage_sql.deploy_statements(cfg.database, cfg.schema_)
    steps += [Step("table", cfg.fq(usage_sql.TABLE), table), Step("view", cfg.fq(usage_sql.VIEW), view)]
    steps.append(service_step(cfg))
    fns = service_functions(cfg, functions)
    steps += [function_step(cfg, f) for f in fns]
    steps += [wrapper_step(cfg, f) for f in fns if _wrapped(f)]
    # Callers need USAGE on the database, schema and function only. The function's owner (the deploy role) owns
    # the service and so reaches its endpoint; no service role is granted to callers (audit W12).
    for name, types in callable_functions(cfg, functions):
        obj = f"{cfg.fq(name)}({', '.join(types)})"
        step = _grant(("USAGE",), "FUNCTION", obj, cfg.caller_role, DEPLOY)
        steps.append(Step(step.kind, step.name, step.sql, {**step.facts, "sql_name": name}, DEPLOY))
    return steps


def plan(cfg: DeployConfig, functions: Mapping[str, SqlFunction] | None = None) -> list[Step]:
    """Every object in apply order: the admin phase, then the deploy phase. ``functions`` defaults to the
    server's registry."""
    functions = registry() if functions is None else functions
    return admin_steps(cfg) + deploy_steps(cfg, functions)


def registry() -> Mapping[str, SqlFunction]:
    from ..functions import FUNCTIONS  # importing the package registers every function module

    return FUNCTIONS


def admin_role(cfg: DeployConfig) -> str:
    return cfg.roles.admin or DEFAULT_ADMIN_ROLE


def _phase_sql(steps: list[Step]) -> list[str]:
    return [f"-- {step.label}\n{step.sql};\n" for step in steps]


def admin_script(cfg: DeployConfig) -> str:
    """``deploy --admin-sql``: the admin phase as a script an account admin runs once (SnowSQL, a worksheet)."""
    head = [
        f"-- spcs-llm admin setup for {cfg.fq(cfg.service.name)}: run once as an account admin, and again after",
        "-- changing the compute pool, the mirrors or the roles. It creates the account-level objects and grants the",
        f"-- deploy role {cfg.deployer} what `spcs-llm deploy` needs; the service and functions are then created",
        "-- by that role, never by ACCOUNTADMIN (Snowflake refuses services owned by a privileged role).",
    ]
    if not cfg.roles.users:
        head.append(
            f"-- Grant the deploy role to whoever runs `spcs-llm deploy`: GRANT ROLE {cfg.deployer} TO USER <you>;"
        )
    return "\n".join(head) + "\n\n" + f"USE ROLE {admin_role(cfg)};\n\n" + "\n".join(_phase_sql(admin_steps(cfg)))


def script(cfg: DeployConfig, functions: Mapping[str, SqlFunction] | None = None) -> str:
    """The whole plan as one runnable SQL script (``deploy --dry-run --sql``): the admin phase under an admin
    role, then the rest under the deploy role. Only SQL and ``--`` comments."""
    functions = registry() if functions is None else functions
    head = [
        "-- Rendered by `spcs-llm deploy --dry-run --sql`. `spcs-llm deploy` applies the same statements, skipping",
        "-- what already exists unchanged. Users keep their Cortex SQL and change only the prefix, e.g.",
        f"--   SNOWFLAKE.CORTEX.COMPLETE('llama3.1-8b', txt)  ->  {cfg.schema_fq}.COMPLETE('llama3.1-8b', txt)",
    ]
    for name, usage in AGGREGATE_USAGE.items():
        if name in functions:
            head.append(
                f"-- {name.upper()} is an aggregate in Cortex; a service function is scalar: call "
                f"{cfg.schema_fq}.{usage.replace(name.upper(), sql_name(cfg, name), 1)}"
            )
    head += [f"-- Note: {w}" for w in cfg.warnings()]
    deploy = deploy_steps(cfg, functions)
    n = next(i for i, s in enumerate(deploy) if s.kind == "service")
    image = f"{cfg.fq(cfg.image.repository)}: {cfg.image.name}:{cfg.image.tag}"
    before, after = deploy[:n], deploy[n:]
    body = [
        "-- ===== 1. admin phase (account-level; `spcs-llm deploy --admin-sql` prints it alone)\n",
        f"USE ROLE {admin_role(cfg)};\n",
        *_phase_sql(admin_steps(cfg)),
        "-- ===== 2. deploy phase, owned by the deploy role (never a privileged role)\n",
        f"USE ROLE {cfg.deployer};\n",
        *_phase_sql(before),
        f"-- The image must be in the repository before CREATE SERVICE ({image}):\n"
        f"-- run `spcs-llm image push` now if `SHOW IMAGES IN IMAGE REPOSITORY {cfg.fq(cfg.image.repository)}`"
        f" does not list it.\n",
        *_phase_sql(after),
    ]
    return "\n".join(head) + "\n\n" + "\n".join(body)
