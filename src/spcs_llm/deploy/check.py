"""``spcs-llm deploy --check``: a pre-flight that reads the account and changes nothing.

It answers, before anything is created: can we act as the deploy role, and is that role not a privileged one; has
the admin phase been run (every account-level object and grant the deploy role needs); does the instance family
exist in this account's region; is the image in the repository (Snowflake resolves the image at CREATE SERVICE);
is there a warehouse for the status test calls and an event table for the logs. ``deploy`` runs the same checks
first and stops, having created nothing, when one blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import PRIVILEGED_ROLES, DeployConfig
from .render import Step, admin_role, admin_script, admin_steps
from .snowflake import DeployError, Executor, Session

OK, MISSING, TODO, WARN, SKIP = "ok", "MISSING", "todo", "warn", "skip"


@dataclass
class Item:
    """One line of the checklist. ``MISSING`` blocks the deploy; ``todo`` is something deploy itself will do."""

    status: str
    what: str
    detail: str = ""
    fix: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> bool:
        return self.status == MISSING


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # Snowflake's messages span lines: "002003 (02000): SQL compilation error:\n..."
    return text[:300] if text else type(exc).__name__


def check_role(cfg: DeployConfig, s: Session, admin_pending: bool) -> list[Item]:
    """Switch to the deploy role and make sure the session really runs as it."""
    try:
        s.use_role(cfg.deployer)
    except Exception as exc:
        status = TODO if admin_pending else MISSING
        return [
            Item(
                status,
                f"deploy role {cfg.deployer}",
                _first_line(exc),
                [
                    f"an admin runs `spcs-llm deploy --admin-sql` (it creates the role), then "
                    f"GRANT ROLE {cfg.deployer} TO USER <you>"
                ],
            )
        ]
    role = s.current_role()
    if role in PRIVILEGED_ROLES or role != cfg.deployer:
        return [
            Item(
                MISSING,
                f"current role {role}",
                f"deploy must run as {cfg.deployer}; Snowflake refuses a service owned by {'/'.join(PRIVILEGED_ROLES)}",
                [f"USE ROLE {cfg.deployer}"],
            )
        ]
    return [Item(OK, f"deploy role {cfg.deployer}", "in use, not a privileged role")]


def _admin_item(ex: Executor, step: Step, admin_pending: bool) -> Item:
    if step.kind == "network_rule":  # owned by the admin; the deploy role cannot SHOW it
        return Item(
            SKIP,
            step.label,
            "owned by the admin role and not visible to the deploy role; "
            "`--admin-sql` keeps it in step with the mirrors",
        )
    try:
        action = ex.compare_step(step)
    except DeployError as exc:
        action_verb, fix, detail = "missing", [step.sql], _first_line(exc)
    else:
        action_verb, fix, detail = action.verb, action.statements, ""
    if action_verb == "unchanged":
        return Item(OK, step.label)
    status = TODO if admin_pending else MISSING
    return Item(status, step.label, detail or f"would be {action_verb} by the admin phase", fix)


def check_admin_phase(cfg: DeployConfig, s: Session, admin_pending: bool) -> list[Item]:
    ex = Executor(s, report=lambda _: None)
    return [_admin_item(ex, step, admin_pending) for step in admin_steps(cfg)]


def check_cloud(cfg: DeployConfig, s: Session) -> list[Item]:
    """CURRENT_REGION() names the cloud (AWS_US_WEST_2, AZURE_EASTUS2, GCP_US_CENTRAL1): stage volumes are not
    available on Google Cloud, which the config can only guess from a GPU family's name."""
    try:
        rows = s.query("SELECT CURRENT_REGION() AS r")
        region = str(rows[0]["r"] or "").upper() if rows else ""
    except Exception as exc:
        return [Item(WARN, "region", f"cannot tell: {_first_line(exc)}")]
    cloud = next((c for c in ("aws", "azure", "gcp") if region.split(".")[-1].startswith(c.upper() + "_")), None)
    if cloud == "gcp" and cfg.volumes.model_cache == "stage":
        return [
            Item(
                MISSING,
                f"region {region}",
                "stage volumes are not available on Google Cloud",
                ['set volumes.model_cache = "block" (or cloud = "gcp", which makes it the default)'],
            )
        ]
    if cloud and cfg.cloud and cloud != cfg.cloud:
        return [Item(WARN, f"region {region}", f"the config says cloud = {cfg.cloud!r}")]
    return [Item(OK, f"region {region}", f"model cache: {cfg.volumes.model_cache} volume")]


def check_family(cfg: DeployConfig, s: Session) -> list[Item]:
    family = cfg.compute_pool.instance_family
    try:
        rows = instance_families(s)
    except Exception as exc:
        return [
            Item(WARN, f"instance family {family}", f"SHOW COMPUTE POOL INSTANCE FAMILIES failed: {_first_line(exc)}")
        ]
    names = [str(r.get("name", "")).upper() for r in rows]
    if family in names:
        row = rows[names.index(family)]
        gpus = f", {row.get('gpu_count')} x {row.get('gpu')}" if row.get("gpu") else ""
        items = [Item(OK, f"instance family {family}", f"{row.get('vcpu')} vCPU, {row.get('memory_gib')} GiB{gpus}")]
        return items + check_memory(cfg, float(row.get("memory_gib") or 0))
    return [
        Item(
            MISSING,
            f"instance family {family}",
            "not available in this account's region",
            [f"set compute_pool.instance_family to one of: {', '.join(names) or '(none listed)'}"],
        )
    ]


def gib(size: str) -> float:
    """An SPCS memory quantity (M, Mi, G, Gi) in GiB."""
    m = re.match(r"^([0-9.]+)(Mi|Gi|M|G)$", size)
    if not m:
        return 0.0
    factor = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}[m[2]]
    return float(m[1]) * factor


def check_memory(cfg: DeployConfig, node_gib: float, headroom: float = 2.0) -> list[Item]:
    """Audit U9/U10: the memory request, plus the /dev/shm memory volume on GPU pools (tmpfs pages count against
    a container's limit under Kubernetes; unconfirmed for SPCS), must leave room for what Snowflake runs on the
    node (not documented; its own example says a 28 GiB node "has 27 GB")."""
    if not cfg.service.memory or not node_gib:
        return []
    shm = gib(cfg.volumes.shm_size) if cfg.service.gpus else 0.0
    need = gib(cfg.service.memory) + shm
    if need <= node_gib - headroom:
        return []
    most = max(node_gib - headroom - shm, 1)
    return [
        Item(
            WARN,
            f"memory {cfg.service.memory}" + (f" + /dev/shm {cfg.volumes.shm_size}" if cfg.service.gpus else ""),
            f"{need:g} GiB of the node's {node_gib:g} GiB leaves under {headroom:g} GiB for the system",
            [f"lower service.memory to at most {most:g}Gi, or leave it unset (the limit is then the node's)"],
        )
    ]


def instance_families(s: Session) -> list[dict[str, Any]]:
    """SHOW COMPUTE POOL INSTANCE FAMILIES: name, vcpu, memory_gib, gpu, gpu_count, gpu_memory_gib, ... for the
    account's region."""
    return s.query("SHOW COMPUTE POOL INSTANCE FAMILIES")


def image_row(cfg: DeployConfig, s: Session) -> dict[str, Any] | None:
    """The SHOW IMAGES IN IMAGE REPOSITORY row of the configured image and tag (columns created_on, image_name,
    tags, digest, image_path), or None."""
    rows = s.query(f"SHOW IMAGES IN IMAGE REPOSITORY {cfg.fq(cfg.image.repository)}")
    want = f"{cfg.image.name}:{cfg.image.tag}"
    for r in rows:
        if str(r.get("image_path", "")).lower().endswith("/" + want.lower()):
            return r
        tags = re.findall(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(r.get("tags", "")))
        if str(r.get("image_name", "")).lower() == cfg.image.name.lower() and cfg.image.tag in tags:
            return r
    return None


def image_present(cfg: DeployConfig, s: Session) -> bool:
    return image_row(cfg, s) is not None


def image_digest(cfg: DeployConfig, s: Session) -> str:
    row = image_row(cfg, s)
    return str(row.get("digest") or "") if row else ""


def check_image(cfg: DeployConfig, s: Session) -> list[Item]:
    repo = cfg.fq(cfg.image.repository)
    what = f"image {cfg.image.name}:{cfg.image.tag} in {repo}"
    fix = [
        "run `spcs-llm image push` first (it creates the repository if needed); Snowflake resolves the image "
        "when the service is created"
    ]
    try:
        present = image_present(cfg, s)
    except Exception as exc:
        return [Item(MISSING, what, f"cannot list the repository: {_first_line(exc)}", fix)]
    return [Item(OK, what)] if present else [Item(MISSING, what, "not pushed yet", fix)]


def check_warehouse(cfg: DeployConfig, s: Session) -> list[Item]:
    """Deploying needs no warehouse; `spcs-llm status` test calls are SELECTs and do."""
    try:
        if cfg.warehouse:
            found = s.show("WAREHOUSES", cfg.warehouse)
            name = cfg.warehouse if found else ""
        else:
            rows = s.query("SELECT CURRENT_WAREHOUSE() AS w")
            name = str(rows[0]["w"] or "") if rows else ""
    except Exception as exc:
        return [Item(WARN, "warehouse", f"cannot tell: {_first_line(exc)}")]
    if name:
        return [Item(OK, f"warehouse {name}", "for the test calls of `spcs-llm status`")]
    return [
        Item(
            WARN,
            "warehouse",
            "none in use: `spcs-llm status` cannot make its test calls",
            [
                'set warehouse = "<NAME>" in spcs-llm.toml (the admin phase grants USAGE on it), or give the '
                "connection a default warehouse"
            ],
        )
    ]


def check_event_table(cfg: DeployConfig, s: Session) -> list[Item]:
    """The spec's logExporters write to the account's event table; without one, no service logs are kept."""
    try:
        rows = s.query("SHOW PARAMETERS LIKE 'EVENT_TABLE' IN ACCOUNT")
    except Exception as exc:
        return [Item(WARN, "event table", f"cannot read the EVENT_TABLE parameter: {_first_line(exc)}")]
    value = next((str(r.get("value") or "") for r in rows if str(r.get("key", "")).upper() == "EVENT_TABLE"), "")
    if value:
        return [Item(OK, f"event table {value}", "service logs are exported there")]
    table = f"{cfg.schema_fq}.SPCS_LLM_EVENTS"
    return [
        Item(
            WARN,
            "event table",
            "none set for the account: service logs are not kept (logs still work "
            "through SYSTEM$GET_SERVICE_LOGS while a container runs)",
            [
                f"USE ROLE {admin_role(cfg)}",
                f"CREATE EVENT TABLE IF NOT EXISTS {table}",
                f"ALTER ACCOUNT SET EVENT_TABLE = {table}",
            ],
        )
    ]


def preflight(cfg: DeployConfig, s: Session, admin_pending: bool = False) -> list[Item]:
    """Every check, in the order a first deploy meets them. ``admin_pending``: deploy will run the admin phase
    itself (roles.admin is set), so what it would create is ``todo``, not ``MISSING``."""
    items = check_role(cfg, s, admin_pending)
    if items[0].status != OK:
        return items  # nothing else can be checked as the deploy role
    items += check_admin_phase(cfg, s, admin_pending)
    for check in (check_cloud, check_family, check_image, check_warehouse, check_event_table):
        items += check(cfg, s)
    return items


def checklist(cfg: DeployConfig, items: list[Item], out: Callable[[str], None] = print) -> None:
    out(f"pre-flight for {cfg.fq(cfg.service.name)} (deploy role {cfg.deployer}):")
    for it in items:
        out(f"  {it.status:8} {it.what}" + (f": {it.detail}" if it.detail else ""))
        for line in it.fix:
            out(f"           fix: {line}")
    blocking = sum(it.blocks for it in items)
    if any(
        it.blocks and it.what.split()[0] in {"role", "grant", "database", "schema", "compute", "integration"}
        for it in items
    ):
        out("  The admin phase is incomplete: an admin runs the output of `spcs-llm deploy --admin-sql`.")
    out(f"{blocking} blocking" if blocking else "nothing blocks the deploy")


__all__ = ["Item", "admin_script", "checklist", "image_digest", "image_present", "instance_families", "preflight"]


# ---------------------------------------------------------------------------------------------- models recommend


def account_gpu_families(s: Session) -> list[Any]:
    """The GPU families this account's region offers, from SHOW COMPUTE POOL INSTANCE FAMILIES (gpu, gpu_count,
    gpu_memory_gib per GPU), as sizing.GpuFamily; the built-in table is a transcription and may be stale."""
    from ..models.sizing import GpuFamily

    out = []
    for r in instance_families(s):
        count = int(r.get("gpu_count") or 0)
        if count > 0:
            out.append(
                GpuFamily(
                    str(r["name"]).upper(),
                    "account",
                    str(r.get("gpu") or "GPU"),
                    count,
                    float(r.get("gpu_memory_gib") or 0),
                    bf16="T4" not in str(r.get("gpu") or ""),
                )
            )
    return out


def recommend_in_account(
    info: Any, families: list[Any], context: int, concurrency: int, utilization: float
) -> list[Any]:
    """Every family of the account that fits ``info``, smallest first (sizing.fit on each)."""
    from ..models.sizing import fit

    ranked = sorted(families, key=lambda f: (f.gpus * f.gib_per_gpu, f.name))
    return [r for f in ranked if (r := fit(info, f, context, concurrency, utilization))]
