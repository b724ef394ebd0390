"""Day-2 commands: status (the seed's check_status.sh), logs, suspend, resume, teardown."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..functions.registry import SqlFunction
from .config import DeployConfig
from .render import admin_role, callable_functions, callable_overloads
from .snowflake import DeployError, Session

Out = Callable[[str], None]

# Sample arguments for the test call of each function, by (argument name, SQL type), then by type alone.
# A function whose sample does not fit its semantics still proves the path (service, endpoint, route) works:
# the error it returns comes from the server, and status prints it.
_BY_NAME = {
    ("prompt", "VARCHAR"): "'Reply with the word OK.'",
    ("prompt", "ARRAY"): 'PARSE_JSON(\'[{"role": "user", "content": "Reply with the word OK."}]\')',
    ("options", "OBJECT"): "OBJECT_CONSTRUCT('max_tokens', 8)",
    ("categories", "ARRAY"): "ARRAY_CONSTRUCT('positive', 'negative')",
}
_BY_TYPE = {
    "VARCHAR": "'Snowflake is a data platform.'",
    "ARRAY": "ARRAY_CONSTRUCT('Snowflake is a data platform.')",
    "OBJECT": "OBJECT_CONSTRUCT()",
    "NUMBER": "100",
    "INT": "100",
    "INTEGER": "100",
    "FLOAT": "0.5",
    "BOOLEAN": "FALSE",
    "VARIANT": "TO_VARIANT('x')",
}


def sample_args(cfg: DeployConfig, args: list[tuple[str, str]]) -> str:
    model = next(iter(cfg.aliases), cfg.model.name)
    values = []
    for name, typ in args:
        if name == "model":
            values.append(f"'{model}'")
        else:
            values.append(_BY_NAME.get((name, typ.upper()), _BY_TYPE.get(typ.upper(), "NULL")))
    return ", ".join(values)


def _table(out: Out, rows: list[dict[str, Any]], cols: tuple[str, ...]) -> None:
    if not rows:
        out("  (none)")
    for r in rows:
        out("  " + "  ".join(f"{c}={r.get(c)}" for c in cols if c in r))


def status(
    cfg: DeployConfig,
    s: Session,
    functions: Mapping[str, SqlFunction],
    out: Out = print,
    log_lines: int = 20,
    test_calls: bool = True,
) -> bool:
    """Print pool, service, containers, endpoints, recent logs and one test call per function.
    Returns False when something is not running or a test call failed."""
    ok = True
    svc = cfg.fq(cfg.service.name)
    out(f"compute pool {cfg.pool}:")
    pools = s.show("COMPUTE POOLS", cfg.pool)
    _table(out, pools, ("state", "instance_family", "min_nodes", "max_nodes", "active_nodes", "idle_nodes"))
    ok &= bool(pools) and str(pools[0].get("state", "")).upper() in {"ACTIVE", "IDLE"}
    out(f"service {svc}:")
    services = s.show("SERVICES", cfg.service.name, f"SCHEMA {cfg.schema_fq}")
    _table(out, services, ("status", "min_instances", "max_instances", "current_instances", "compute_pool"))
    if not services:
        return False
    ok &= str(services[0].get("status", "")).upper() == "RUNNING"
    out("containers:")
    _table(
        out,
        s.query(f"SHOW SERVICE CONTAINERS IN SERVICE {svc}"),
        ("instance_id", "container_name", "status", "message", "restart_count", "start_time"),
    )
    out("endpoints:")
    _table(out, s.query(f"SHOW ENDPOINTS IN SERVICE {svc}"), ("name", "port", "protocol", "is_public", "ingress_url"))
    out(f"last {log_lines} log lines of instance 0:")
    for line in logs(cfg, s, 0, log_lines).splitlines():
        out("  " + line)
    if test_calls:
        out("test calls:")
        ok &= _test_calls(cfg, s, functions, out)
    return ok


def _test_calls(cfg: DeployConfig, s: Session, functions: Mapping[str, SqlFunction], out: Out) -> bool:
    ok = True
    for name, args in callable_overloads(cfg, functions):
        types = [t for _, t in args]
        sql = f"SELECT {cfg.fq(name)}({sample_args(cfg, list(args))}) AS v"
        try:
            value = s.query(sql)[0]["v"]
            out(f"  ok    {name}({', '.join(types)}) -> {str(value)[:60]!r}")
        except Exception as exc:
            ok = False
            out(f"  FAIL  {name}({', '.join(types)}): {str(exc).splitlines()[0][:200]}")
    return ok


def logs(cfg: DeployConfig, s: Session, instance: int = 0, lines: int = 100) -> str:
    svc = cfg.fq(cfg.service.name)
    rows = s.query(f"SELECT SYSTEM$GET_SERVICE_LOGS('{svc}', '{instance}', 'server', {lines}) AS log")
    return str(rows[0]["log"]) if rows else ""


def _state(rows: list[dict[str, Any]], key: str) -> str:
    return str(rows[0].get(key, "")).upper() if rows else "MISSING"


def suspend(cfg: DeployConfig, s: Session, pool: bool = True, out: Out = print) -> None:
    """Service first (its instances stop), then the pool (its nodes stop billing)."""
    svc = cfg.fq(cfg.service.name)
    if _state(s.show("SERVICES", cfg.service.name, f"SCHEMA {cfg.schema_fq}"), "status") not in {
        "SUSPENDED",
        "MISSING",
    }:
        s.query(f"ALTER SERVICE {svc} SUSPEND")
        out(f"service {svc}: suspended")
    if pool and _state(s.show("COMPUTE POOLS", cfg.pool), "state") not in {"SUSPENDED", "MISSING"}:
        s.query(f"ALTER COMPUTE POOL {cfg.pool} SUSPEND")
        out(f"compute pool {cfg.pool}: suspended")


def resume(cfg: DeployConfig, s: Session, out: Out = print) -> None:
    """Pool first, then the service; only what is suspended."""
    svc = cfg.fq(cfg.service.name)
    if _state(s.show("COMPUTE POOLS", cfg.pool), "state") == "SUSPENDED":
        s.query(f"ALTER COMPUTE POOL {cfg.pool} RESUME")
        out(f"compute pool {cfg.pool}: resumed")
    if _state(s.show("SERVICES", cfg.service.name, f"SCHEMA {cfg.schema_fq}"), "status") == "SUSPENDED":
        s.query(f"ALTER SERVICE {svc} RESUME")
        out(f"service {svc}: resumed")


@dataclass
class Teardown:
    """What teardown drops: ``deploy`` as the deploy role (it owns them), then ``admin`` as an admin role."""

    deploy: list[str]
    admin: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def statements(self) -> list[str]:
        return self.deploy + self.admin

    def script(self, cfg: DeployConfig) -> str:
        out = [f"USE ROLE {cfg.deployer};", *(s + ";" for s in self.deploy)]
        if self.admin:
            out += [f"USE ROLE {admin_role(cfg)};", *(s + ";" for s in self.admin)]
        return "\n".join(out)


def teardown_plan(cfg: DeployConfig, functions: Mapping[str, SqlFunction], purge: bool = False) -> Teardown:
    """Everything deploy created, in reverse order. The database and schema stay (they may hold other data);
    the image repository, the model stage and the deploy role go only with ``purge``."""
    svc = cfg.fq(cfg.service.name)
    deploy = [
        f"DROP FUNCTION IF EXISTS {cfg.fq(name)}({', '.join(types)})"
        for name, types in reversed(callable_functions(cfg, functions))
    ]
    warnings = []
    if cfg.volumes.model_cache == "block":
        # "If FORCE is not specified and the service uses a block storage volume an error is returned."
        deploy.append(f"DROP SERVICE IF EXISTS {svc} FORCE")
        warnings.append(
            f"the service's block volume ({cfg.volumes.block_size}, the downloaded weights) is deleted "
            "with it; Snowflake keeps a snapshot of it (snapshotOnDelete defaults to true), which is "
            "billed until it expires"
        )
    else:
        deploy.append(f"DROP SERVICE IF EXISTS {svc}")
    if purge:
        if cfg.volumes.model_cache == "stage":
            deploy.append(f"DROP STAGE IF EXISTS {cfg.fq(cfg.volumes.stage)}")
            warnings.append(f"--purge: the model stage {cfg.fq(cfg.volumes.stage)} and its weights are deleted")
        deploy.append(f"DROP IMAGE REPOSITORY IF EXISTS {cfg.fq(cfg.image.repository)}")
        warnings.append(f"--purge: the image repository {cfg.fq(cfg.image.repository)} and its images are deleted")
    admin = []
    if cfg.mirrors:
        admin += [
            f"DROP EXTERNAL ACCESS INTEGRATION IF EXISTS {cfg.integration}",
            f"DROP NETWORK RULE IF EXISTS {cfg.fq(cfg.network_rule)}",
        ]
    admin += [f"DROP COMPUTE POOL IF EXISTS {cfg.pool}", f"DROP ROLE IF EXISTS {cfg.caller_role}"]
    if purge:
        admin.append(f"DROP ROLE IF EXISTS {cfg.deployer}")
    return Teardown(deploy, admin, warnings)


def teardown_statements(cfg: DeployConfig, functions: Mapping[str, SqlFunction], purge: bool = False) -> list[str]:
    return teardown_plan(cfg, functions, purge).statements


def teardown(s: Session, statements: list[str], out: Out = print) -> None:
    for i, sql in enumerate(statements, 1):
        try:
            s.query(sql)
        except Exception as exc:
            raise DeployError(f"teardown step {i}/{len(statements)} failed on `{sql}`: {exc}") from exc
        out(f"[{i}/{len(statements)}] {sql}")
