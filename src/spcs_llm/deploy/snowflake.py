"""Apply a plan to a Snowflake account, idempotently, and the read-only queries status/logs need.

The executor compares each :class:`Step` with what exists (``SHOW ... LIKE``) and runs only what is missing or
changed: ``CREATE`` for a missing object, ``ALTER`` for a changed property, ``CREATE OR ALTER FUNCTION`` for a
changed service function, ``CREATE OR REPLACE`` only where Snowflake cannot alter (a changed return type). Objects
whose definition may change carry a fingerprint in their COMMENT (see ``render.fingerprint``), so the comparison
does not depend on how Snowflake formats DESCRIBE output. The first failing statement stops the run with a
message naming the step, except a function name that Snowflake refuses (reported, skipped, the rest goes on).
Which role runs which steps is the caller's business (``deploy.cli.run_deploy``: the admin phase, the pre-flight
of ``deploy.check``, then the deploy phase as the deploy role); the executor refuses ``CREATE SERVICE`` under a
privileged role.

Any DB-API connection works; :func:`connect` makes one with ``snowflake-connector-python`` (the ``deploy``
extra) from ``connections.toml``, as the Snowflake CLI does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import PRIVILEGED_ROLES
from .render import Step

# Snowflake system functions that the registry's Cortex names shadow. "Snowflake does not allow creating functions
# with the same name as any of the system-defined functions" (udf-stored-procedure-naming-conventions); whether that
# is enforced for a schema-qualified service function is unconfirmed (deploy-audit W2), so a refusal of one of these
# names is reported and the deploy goes on (rename it in [functions] rename).
SYSTEM_FUNCTION_NAMES = frozenset(
    {
        "AI_AGG",
        "AI_CLASSIFY",
        "AI_COMPLETE",
        "AI_COUNT_TOKENS",
        "AI_EMBED",
        "AI_EXTRACT",
        "AI_FILTER",
        "AI_PARSE_DOCUMENT",
        "AI_REDACT",
        "AI_SENTIMENT",
        "AI_SIMILARITY",
        "AI_SUMMARIZE_AGG",
        "AI_TRANSCRIBE",
        "AI_TRANSLATE",
        "TRANSLATE",
    }
)
_NAME_REFUSAL = re.compile(r"system|built-?in|reserved", re.I)
_PRIVILEGE_ERROR = re.compile(r"insufficient privileges|access control|not authorized", re.I)


class DeployError(RuntimeError):
    """A deploy command failed; the message says which step and why."""


class Connection(Protocol):
    def cursor(self) -> Any: ...


def connect(connection_name: str | None = None) -> Connection:
    """Open a connection from connections.toml (``~/.snowflake`` or ``$SNOWFLAKE_HOME``), imported lazily so the
    rest of the CLI (``--dry-run``, ``image build``) works without the connector."""
    try:
        import snowflake.connector
    except ImportError as exc:
        raise DeployError(
            "snowflake-connector-python is not installed; install it with `pip install 'spcs-llm[deploy]'`"
        ) from exc
    try:
        if connection_name:
            return snowflake.connector.connect(connection_name=connection_name)
        return snowflake.connector.connect()  # the default connection of connections.toml
    except Exception as exc:  # the connector raises many types; the message is what the user needs
        which = f"connection {connection_name!r}" if connection_name else "the default connection"
        raise DeployError(f"cannot connect with {which} from connections.toml: {exc}") from exc


class Session:
    """Runs statements and returns rows as dicts keyed by lower-case column name."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def query(self, sql: str) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
            if cur.description is None:
                return []
            cols = [str(d[0]).lower() for d in cur.description]
            return [dict(zip(cols, row, strict=False)) for row in cur.fetchall()]
        finally:
            cur.close()

    def use_role(self, role: str) -> None:
        try:
            self.query(f"USE ROLE {role}")
        except Exception as exc:
            raise DeployError(
                f"USE ROLE {role} failed ({' '.join(str(exc).split())}): the role must exist and be "
                "granted to your user"
            ) from exc

    def current_role(self) -> str:
        rows = self.query("SELECT CURRENT_ROLE() AS r")
        return str(rows[0]["r"] if rows else "").upper()

    def show(self, what: str, name: str, scope: str = "") -> list[dict[str, Any]]:
        """``SHOW <what> LIKE '<name>' [IN ...]``, keeping only exact (case-insensitive) name matches."""
        rows = self.query(f"SHOW {what} LIKE '{name}'" + (f" IN {scope}" if scope else ""))
        return [r for r in rows if str(r.get("name", "")).upper() == name.upper()]


# ---------------------------------------------------------------------------------------------- comparison


@dataclass
class Action:
    """What the executor will do for one step: ``verb`` is created / altered / replaced / unchanged."""

    step: Step
    verb: str
    statements: list[str] = field(default_factory=list)


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _scope(name: str) -> str:
    db, schema, _ = name.split(".")
    return f"SCHEMA {db}.{schema}"


def _exists(s: Session, step: Step) -> Action:
    what = {
        "database": "DATABASES",
        "image_repository": "IMAGE REPOSITORIES",
        "stage": "STAGES",
        "integration": "EXTERNAL ACCESS INTEGRATIONS",
        "role": "ROLES",
        "table": "TABLES",
        "view": "VIEWS",
    }
    if step.kind == "schema":
        db, schema = step.name.split(".")
        found = s.show("SCHEMAS", schema, f"DATABASE {db}")
    elif "." in step.name:
        found = s.show(what[step.kind], _last(step.name), _scope(step.name))
    else:
        found = s.show(what[step.kind], step.name)
    return Action(step, "unchanged") if found else Action(step, "created", [step.facts.get("create_sql", step.sql)])


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in {"true", "1", "yes", "y"}


def _compute_pool(s: Session, step: Step) -> Action:
    rows = s.show("COMPUTE POOLS", step.name)
    if not rows:
        return Action(step, "created", [step.sql])
    row, f = rows[0], step.facts
    if str(row.get("instance_family", "")).upper() != f["instance_family"]:
        raise DeployError(
            f"compute pool {step.name} exists with instance family {row.get('instance_family')}, not "
            f"{f['instance_family']}: Snowflake changes it only on a suspended pool, so suspend the pool "
            f"(`spcs-llm suspend`) and run `ALTER COMPUTE POOL {step.name} SET INSTANCE_FAMILY = "
            f"{f['instance_family']}` as its owner, or `spcs-llm teardown`, or rename the pool"
        )
    sets = [
        f"{k.upper()} = {f[k]}" for k in ("min_nodes", "max_nodes", "auto_suspend_secs") if str(row.get(k)) != str(f[k])
    ]
    if _truthy(row.get("auto_resume")) != f["auto_resume"]:
        sets.append(f"AUTO_RESUME = {str(f['auto_resume']).upper()}")
    if not sets:
        return Action(step, "unchanged")
    # Raising MIN above the old MAX (or the reverse) is rejected one at a time; one SET changes both together.
    return Action(step, "altered", [f"ALTER COMPUTE POOL {step.name} SET " + " ".join(sets)])


def _network_rule(s: Session, step: Step) -> Action:
    rows = s.show("NETWORK RULES", _last(step.name), _scope(step.name))
    if not rows:
        return Action(step, "created", [step.facts.get("create_sql", step.sql)])
    if rows[0].get("comment") == step.facts["comment"]:
        return Action(step, "unchanged")
    values = ", ".join(f"'{v}'" for v in step.facts["value_list"])
    # One statement: the grammar is SET VALUE_LIST = (...) [ COMMENT = '...' ]; a bare SET COMMENT is not in it.
    return Action(
        step,
        "altered",
        [
            f"ALTER NETWORK RULE {step.name} SET VALUE_LIST = ({values}) COMMENT = '{step.facts['comment']}'",
        ],
    )


def _names(value: Any) -> set[str]:
    return {n.upper() for n in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", str(value or ""))}


def _old_volume(comment: Any) -> str | None:
    m = re.search(r"\bvolume=(\S+)", str(comment or ""))
    return m[1] if m else None


def _block_refusal(step: Step, row: dict[str, Any]) -> str | None:
    """Snowflake refuses, on a service with block volumes, to change the instance counts with ALTER SERVICE ... SET
    and to add, remove or resize a block volume (block-storage-volume). Say so instead of sending the ALTER."""
    f, old = step.facts, _old_volume(row.get("comment"))
    blocky = f["volume"].startswith("block") or (old or "").startswith("block")
    if not blocky:
        return None
    if old is not None and old != f["volume"]:
        return f"its model cache volume changes from {old} to {f['volume']}"
    counts = [k for k in ("min_instances", "max_instances") if str(row.get(k)) != str(f[k])]
    if counts and (old or f["volume"]).startswith("block"):
        return f"its {' and '.join(counts)} change"
    return None


def _service(s: Session, step: Step) -> Action:
    rows = s.show("SERVICES", _last(step.name), _scope(step.name))
    if not rows:
        return Action(step, "created", [step.sql])
    row, f, out = rows[0], step.facts, []
    if why := _block_refusal(step, row):
        raise DeployError(
            f"service {step.name} uses a block volume and {why}, which Snowflake does not allow on an existing "
            "service: run `spcs-llm teardown` (it drops the service and its block volume; Snowflake keeps a "
            "snapshot) and deploy again, or keep the old setting"
        )
    if row.get("comment") != f["comment"]:
        out += [
            f"ALTER SERVICE {step.name} FROM SPECIFICATION $$\n{f['spec']}$$",
            f"ALTER SERVICE {step.name} SET COMMENT = '{f['comment']}'",
        ]
    sets = [
        f"{k.upper()} = {f[k]}"
        for k in ("min_instances", "max_instances", "auto_suspend_secs")
        if str(row.get(k)) != str(f[k])
    ]
    if sets:
        out.append(f"ALTER SERVICE {step.name} SET " + " ".join(sets))
    if _names(row.get("external_access_integrations")) != set(f["external_access_integrations"]):
        if f["external_access_integrations"]:
            eais = ", ".join(f["external_access_integrations"])
            out.append(f"ALTER SERVICE {step.name} SET EXTERNAL_ACCESS_INTEGRATIONS = ({eais})")
        else:  # SET needs at least one name; removing them all is UNSET (alter-service grammar)
            out.append(f"ALTER SERVICE {step.name} UNSET EXTERNAL_ACCESS_INTEGRATIONS")
    return Action(step, "altered", out) if out else Action(step, "unchanged")


_SIZE = re.compile(r"\(\s*\d+(\s*,\s*\d+)?\s*\)")


def _norm_type(t: str) -> str:
    t = t.strip().upper()
    return t if t.startswith("VECTOR") else _SIZE.sub("", t).strip()


def _split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [a for a in (x.strip() for x in [*out, cur]) if a]


def parse_arguments(arguments: str) -> tuple[list[str], str]:
    """SHOW USER FUNCTIONS' ``arguments`` column, ``NAME(VARCHAR, ARRAY) RETURN VARCHAR`` → (types, return)."""
    m = re.match(r"^\s*[^(]*\((.*)\)\s+RETURN\s+(.+?)\s*$", arguments, re.S | re.I)
    if not m:
        return [], ""
    types = [
        _norm_type(a.split()[-1] if not a.upper().startswith("VECTOR") and " " in a else a)
        for a in _split_args(m.group(1))
    ]
    return types, _norm_type(m.group(2))


def _find_function(s: Session, step: Step) -> dict[str, Any] | None:
    want = [_norm_type(t) for t in step.facts["arg_types"]]
    for row in s.show("USER FUNCTIONS", step.facts["sql_name"], _scope(step.name.split("(")[0])):
        types, returns = parse_arguments(str(row.get("arguments", "")))
        if types == want:
            return {**row, "_returns": returns}
    return None


def _function(s: Session, step: Step) -> Action:
    row = _find_function(s, step)
    if row is None:
        return Action(step, "created", [step.sql])
    if row.get("description") == step.facts["comment"]:
        return Action(step, "unchanged")
    if row["_returns"] != _norm_type(step.facts["returns"]):  # CREATE OR ALTER cannot change RETURNS
        return Action(step, "replaced", [step.facts["replace_sql"]])
    return Action(step, "altered", list(step.facts["alter_sql"]))


def _wrapper(s: Session, step: Step) -> Action:
    row = _find_function(s, step)
    if row is not None and row.get("description") == step.facts["comment"]:
        return Action(step, "unchanged")
    return Action(step, "created" if row is None else "replaced", [step.sql])  # CREATE OR REPLACE: a SQL UDF


def grant_key(privilege: str, on: str, name: str) -> tuple[str, str, str]:
    """Normalise a grant as SHOW GRANTS TO ROLE lists it: quotes, argument names and ``:RETURNS`` dropped."""
    name = name.replace('"', "").upper().split(":")[0]
    if "(" in name:
        base, args = name.split("(", 1)
        types = [_norm_type(a.split()[-1]) for a in _split_args(args.rstrip(")"))]
        name = f"{base}({', '.join(types)})"
    return privilege.upper(), on.upper().replace(" ", "_"), name


class _Grants:
    """SHOW GRANTS TO ROLE once per run, then answer membership."""

    def __init__(self) -> None:
        self.cache: dict[str, set[tuple[str, str, str]]] = {}

    def has(self, s: Session, role: str, key: tuple[str, str, str]) -> bool:
        if role not in self.cache:
            rows = s.query(f"SHOW GRANTS TO ROLE {role}")
            self.cache[role] = {
                grant_key(str(r.get("privilege", "")), str(r.get("granted_on", "")), str(r.get("name", "")))
                for r in rows
            }
        return key in self.cache[role]


# ---------------------------------------------------------------------------------------------- the executor


Report = Callable[[str], None]


def name_refused(step: Step, exc: Exception) -> bool:
    """Whether a failed CREATE FUNCTION was refused for its name (and not, say, for a missing privilege)."""
    if step.kind not in ("function", "wrapper") or _PRIVILEGE_ERROR.search(str(exc)):
        return False
    return step.facts["sql_name"] in SYSTEM_FUNCTION_NAMES or bool(_NAME_REFUSAL.search(str(exc)))


class Executor:
    """Apply steps in order. ``report`` receives one line per step (``[3/20] compute pool X: created``).

    A function whose name Snowflake refuses does not stop the run: it is reported, its wrapper and grant are
    skipped, and ``refused`` maps its SQL name to Snowflake's message (rename it with ``[functions] rename``)."""

    def __init__(self, session: Session, report: Report = print) -> None:
        self.s, self.report = session, report
        self.grants = _Grants()
        self.refused: dict[str, str] = {}
        self.compare: dict[str, Callable[[Session, Step], Action]] = {
            "database": _exists,
            "schema": _exists,
            "image_repository": _exists,
            "stage": _exists,
            "table": _exists,
            "view": _exists,
            "integration": _exists,
            "role": _exists,
            "compute_pool": _compute_pool,
            "network_rule": _network_rule,
            "service": _service,
            "function": _function,
            "wrapper": _wrapper,
            "grant": self._grant,
            "role_grant": self._role_grant,
        }

    def _grant(self, s: Session, step: Step) -> Action:
        f = step.facts
        if all(self.grants.has(s, f["grantee"], grant_key(p, f["on"], f["object"])) for p in f["privileges"]):
            return Action(step, "unchanged")
        return Action(step, "granted", [step.sql])

    def _role_grant(self, s: Session, step: Step) -> Action:
        f = step.facts
        rows = s.query(f"SHOW GRANTS OF ROLE {f['role']}")
        held = {
            str(r.get("grantee_name", "")).upper()
            for r in rows
            if str(r.get("granted_to", "")).upper() == f.get("granted_to", "ROLE")
        }
        return Action(step, "unchanged") if f["grantee"] in held else Action(step, "granted", [step.sql])

    def compare_step(self, step: Step) -> Action:
        """What applying ``step`` would do, from SHOW output only (``deploy --check`` uses this too)."""
        try:
            return self.compare[step.kind](self.s, step)
        except DeployError:
            raise
        except Exception as exc:
            raise DeployError(f"step '{step.label}' failed while comparing with the account: {exc}") from exc

    def _skip(self, step: Step) -> str | None:
        """The refused function a step depends on, if any."""
        for key in ("sql_name", "calls"):
            name = step.facts.get(key)
            if name in self.refused and step.kind != "function":
                return name
        return None

    def apply(self, steps: list[Step]) -> list[Action]:
        done = []
        for i, step in enumerate(steps, 1):
            if refused := self._skip(step):
                self.report(f"[{i}/{len(steps)}] {step.label}: skipped ({refused} was refused)")
                done.append(Action(step, "skipped"))
                continue
            action = self._compare_or_refuse(step)
            for sql in action.statements:
                try:
                    self.s.query(sql)
                except Exception as exc:
                    if name_refused(step, exc):
                        self.refused[step.facts["sql_name"]] = " ".join(str(exc).split())
                        action = Action(step, "refused")
                        break
                    first = sql.splitlines()[0]
                    raise DeployError(f"step {i}/{len(steps)} '{step.label}' failed on `{first}`: {exc}") from exc
            self.report(f"[{i}/{len(steps)}] {step.label}: {action.verb}")
            done.append(action)
        return done

    def _compare_or_refuse(self, step: Step) -> Action:
        if step.kind == "service":
            role = self.s.current_role()
            if role in PRIVILEGED_ROLES:  # Snowflake refuses it anyway; say what to do instead
                raise DeployError(
                    f"refusing to create the service as {role}: Snowflake does not let a privileged role own a "
                    "service. Run `spcs-llm deploy` as the deploy role ([roles] deployer); an admin sets it up "
                    "with `spcs-llm deploy --admin-sql`"
                )
        return self.compare_step(step)
