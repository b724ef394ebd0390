"""A recording DB-API connection that stands in for Snowflake (none is reachable here).

It records every statement, keeps the objects that the deploy statements create, and answers SHOW with rows in
Snowflake's column names (``name``, ``comment``, ``arguments``, ``description``, ``min_nodes`` ...). Function
grants are listed the way recent Snowflake versions print them (``DB.SCH."F(ARG TYPE):RET"``), to exercise the
executor's normalisation. A statement it does not understand raises, so a test notices unexpected SQL.
"""

from __future__ import annotations

import re
from typing import Any


class FakeSnowflakeError(Exception):
    pass


def _types(decl: str) -> tuple[str, ...]:
    """'(model VARCHAR, prompt ARRAY)' -> ('VARCHAR', 'ARRAY'); keeps VECTOR(FLOAT, 768) whole."""
    inner = decl.strip()[1:-1]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts = [p.strip() for p in [*parts, cur] if p.strip()]
    return tuple(p.split(None, 1)[1].strip() if " " in p and not p.upper().startswith("VECTOR") else p for p in parts)


class FakeSnowflake:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.fail_on: str | None = None  # a regex: the first statement matching it raises
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            k: {} for k in ("DATABASES", "SCHEMAS", "COMPUTE POOLS", "NETWORK RULES", "EXTERNAL ACCESS INTEGRATIONS",
                            "IMAGE REPOSITORIES", "STAGES", "SERVICES", "ROLES")
        }
        self.functions: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        self.grants: set[tuple[str, str, str, str]] = set()  # (role, privilege, granted_on, name)
        self.role_grants: set[tuple[str, str]] = set()
        self.answers: dict[str, Any] = {}  # SELECT of a function -> value

    # DB-API surface
    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        pass

    @property
    def mutations(self) -> list[str]:
        return [s for s in self.statements if not s.startswith(("SHOW", "DESCRIBE", "SELECT"))]

    def run(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        self.statements.append(sql)
        if self.fail_on and re.search(self.fail_on, sql):
            raise FakeSnowflakeError("003001 (42501): SQL access control error: Insufficient privileges")
        rows = self._dispatch(sql)
        if not rows:
            return ["status"], [] if sql.startswith(("SHOW", "SELECT")) else [("ok",)]
        cols = list(rows[0])
        return cols, [tuple(r.get(c) for c in cols) for r in rows]

    # -------------------------------------------------------------------------------------- statements
    def _dispatch(self, sql: str) -> list[dict[str, Any]]:
        one = " ".join(sql.split())
        for pattern, handler in self._handlers():
            m = re.match(pattern, one, re.S) or re.match(pattern, sql, re.S)
            if m:
                return handler(m, sql) or []
        raise AssertionError(f"fake Snowflake does not understand: {sql[:120]!r}")

    def _handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"^SHOW GRANTS TO ROLE (\S+)$", self._show_grants_to),
            (r"^SHOW GRANTS OF ROLE (\S+)$", self._show_grants_of),
            (r"^SHOW USER FUNCTIONS LIKE '([^']+)' IN SCHEMA (\S+)$", self._show_functions),
            (r"^SHOW SERVICE CONTAINERS IN SERVICE (\S+)$", lambda m, s: [
                {"instance_id": "0", "container_name": "server", "status": "READY", "message": "Running",
                 "restart_count": 0}]),
            (r"^SHOW ENDPOINTS IN SERVICE (\S+)$", lambda m, s: [
                {"name": "api", "port": 8001, "protocol": "HTTP", "is_public": "false", "ingress_url": None}]),
            (r"^SHOW ([A-Z ]+?) LIKE '([^']+)'(?: IN (?:SCHEMA|DATABASE) (\S+))?$", self._show),
            (r"^CREATE DATABASE IF NOT EXISTS (\S+)$", lambda m, s: self._put("DATABASES", m[1], {})),
            (r"^CREATE SCHEMA IF NOT EXISTS (\S+)$", lambda m, s: self._put("SCHEMAS", m[1], {})),
            (r"^CREATE COMPUTE POOL IF NOT EXISTS (\S+) MIN_NODES = (\d+) MAX_NODES = (\d+) INSTANCE_FAMILY = (\S+) "
             r"AUTO_RESUME = (\S+) AUTO_SUSPEND_SECS = (\d+)$", self._create_pool),
            (r"^CREATE NETWORK RULE IF NOT EXISTS (\S+) MODE = EGRESS TYPE = HOST_PORT VALUE_LIST = \((.*)\) "
             r"COMMENT = '([^']*)'$", lambda m, s: self._put("NETWORK RULES", m[1], {
                 "value_list": m[2], "comment": m[3]})),
            (r"^CREATE EXTERNAL ACCESS INTEGRATION IF NOT EXISTS (\S+) ALLOWED_NETWORK_RULES = \((\S+)\) "
             r"ENABLED = TRUE$", self._create_eai),
            (r"^CREATE IMAGE REPOSITORY IF NOT EXISTS (\S+)$", self._create_repo),
            (r"^CREATE STAGE IF NOT EXISTS (\S+) ENCRYPTION = \(TYPE = 'SNOWFLAKE_SSE'\) "
             r"DIRECTORY = \(ENABLE = TRUE\)$",
             lambda m, s: self._put("STAGES", m[1], {})),
            (r"^CREATE SERVICE IF NOT EXISTS (\S+)\n  IN COMPUTE POOL (\S+)\n"
             r"  FROM SPECIFICATION \$\$\n(.*)\$\$\n(.*)$",
             self._create_service),
            (r"^ALTER SERVICE (\S+) FROM SPECIFICATION \$\$\n(.*)\$\$$",
             lambda m, s: self._get("SERVICES", m[1]).update(spec=m[2])),
            (r"^ALTER SERVICE (\S+) SET (.*)$", self._alter_service),
            (r"^ALTER SERVICE (\S+) (SUSPEND|RESUME)$", lambda m, s: self._get("SERVICES", m[1]).update(
                status="SUSPENDED" if m[2] == "SUSPEND" else "RUNNING")),
            (r"^ALTER COMPUTE POOL (\S+) SET (.*)$", self._alter_pool),
            (r"^ALTER COMPUTE POOL (\S+) (SUSPEND|RESUME)$", lambda m, s: self._get("COMPUTE POOLS", m[1]).update(
                state="SUSPENDED" if m[2] == "SUSPEND" else "IDLE")),
            (r"^ALTER NETWORK RULE (\S+) SET VALUE_LIST = \((.*)\)$",
             lambda m, s: self._get("NETWORK RULES", m[1]).update(value_list=m[2])),
            (r"^ALTER NETWORK RULE (\S+) SET COMMENT = '([^']*)'$",
             lambda m, s: self._get("NETWORK RULES", m[1]).update(comment=m[2])),
            (r"^CREATE (OR ALTER |OR REPLACE )?FUNCTION (\S+?)(\(.*?\)) RETURNS (.+?) (SERVICE = .*|COMMENT = .*)$",
             self._create_function),
            (r"^CREATE ROLE IF NOT EXISTS (\S+)$", lambda m, s: self._put("ROLES", m[1], {})),
            (r"^GRANT ROLE (\S+) TO ROLE (\S+)$", lambda m, s: self.role_grants.add((m[1], m[2]))),
            (r"^GRANT SERVICE ROLE (\S+) TO ROLE (\S+)$", lambda m, s: self.grants.add(
                (m[2], "USAGE", "SERVICE_ROLE", m[1]))),
            (r"^GRANT USAGE ON (DATABASE|SCHEMA) (\S+) TO ROLE (\S+)$", lambda m, s: self.grants.add(
                (m[3], "USAGE", m[1], m[2]))),
            (r"^GRANT USAGE ON FUNCTION (\S+?)(\(.*\)) TO ROLE (\S+)$", self._grant_function),
            (r"^SELECT SYSTEM\$GET_SERVICE_LOGS\('([^']+)', '(\d+)', 'server', (\d+)\) AS log$",
             lambda m, s: [{"log": "INFO started\nINFO ready"}]),
            (r"^SELECT CURRENT_USER\(\) AS u$", lambda m, s: [{"u": "DEPLOYER"}]),
            (r"^SELECT (\S+?)\((.*)\) AS v$", self._call),
            (r"^DROP (FUNCTION|SERVICE|EXTERNAL ACCESS INTEGRATION|NETWORK RULE|COMPUTE POOL|ROLE|STAGE"
             r"|IMAGE REPOSITORY) IF EXISTS (.+)$", self._drop),
        ]

    def _put(self, kind: str, name: str, row: dict[str, Any]) -> None:
        self.objects[kind].setdefault(name.upper(), {"name": name.split(".")[-1].upper(), **row})

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        if name.upper() not in self.objects[kind]:
            raise FakeSnowflakeError(f"002003 (02000): {kind[:-1]} '{name}' does not exist or not authorized.")
        return self.objects[kind][name.upper()]

    def _show(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        kind, like, scope = m[1], m[2].upper(), (m[3] or "").upper()
        if kind not in self.objects:
            raise AssertionError(f"SHOW {kind}")
        out = []
        for fq, row in self.objects[kind].items():
            parent = fq.rsplit(".", 1)[0] if "." in fq else ""
            if fq.split(".")[-1] == like and (not scope or parent == scope):
                out.append(row)
        return out

    def _create_pool(self, m: re.Match[str], sql: str) -> None:
        self._put("COMPUTE POOLS", m[1], {"state": "IDLE", "min_nodes": int(m[2]), "max_nodes": int(m[3]),
                                          "instance_family": m[4], "auto_resume": m[5].lower(),
                                          "auto_suspend_secs": int(m[6]), "comment": None})

    def _create_eai(self, m: re.Match[str], sql: str) -> None:
        self._get("NETWORK RULES", m[2])
        self._put("EXTERNAL ACCESS INTEGRATIONS", m[1], {"enabled": "true"})

    def _create_repo(self, m: re.Match[str], sql: str) -> None:
        db, sch, name = m[1].lower().split(".")
        self._put("IMAGE REPOSITORIES", m[1], {
            "repository_url": f"myorg-myacct.registry.snowflakecomputing.com/{db}/{sch}/{name}"})

    def _props(self, text: str) -> dict[str, str]:
        return {k.lower(): v for k, v in re.findall(r"([A-Z_]+) = (\([^)]*\)|'[^']*'|\S+)", text)}

    def _create_service(self, m: re.Match[str], sql: str) -> None:
        self._get("COMPUTE POOLS", m[2])
        p = self._props(m[4])
        eais = p.get("external_access_integrations", "()").strip("()")
        for e in filter(None, (x.strip() for x in eais.split(","))):
            self._get("EXTERNAL ACCESS INTEGRATIONS", e)
        self._put("SERVICES", m[1], {
            "status": "RUNNING", "compute_pool": m[2], "spec": m[3], "min_instances": int(p["min_instances"]),
            "max_instances": int(p["max_instances"]), "auto_suspend_secs": int(p["auto_suspend_secs"]),
            "external_access_integrations": f"[{', '.join(repr(e.strip()) for e in eais.split(',') if e.strip())}]"
            if eais else "[]", "comment": p.get("comment", "").strip("'")})

    def _alter_service(self, m: re.Match[str], sql: str) -> None:
        row = self._get("SERVICES", m[1])
        for k, v in self._props(m[2]).items():
            if k == "external_access_integrations":
                row[k] = "[" + ", ".join(f'"{e.strip()}"' for e in v.strip("()").split(",") if e.strip()) + "]"
            else:
                row[k] = v.strip("'") if v.startswith("'") else int(v)

    def _alter_pool(self, m: re.Match[str], sql: str) -> None:
        row = self._get("COMPUTE POOLS", m[1])
        for k, v in self._props(m[2]).items():
            row[k] = v.lower() if k == "auto_resume" else int(v)

    def _create_function(self, m: re.Match[str], sql: str) -> None:
        verb, fq, decl, returns = (m[1] or "").strip(), m[2].upper(), m[3], m[4]
        key = (fq, _types(decl))
        comment = re.search(r"COMMENT = '([^']*)'", sql)
        if key in self.functions:
            if not verb:
                raise FakeSnowflakeError(f"002002 (42710): SQL compilation error: Object '{fq}' already exists.")
            if verb == "OR ALTER" and self.functions[key]["returns"] != returns:
                raise FakeSnowflakeError("CREATE OR ALTER cannot change the return type")
            if verb == "OR REPLACE":  # a replaced function loses its grants
                self.grants = {g for g in self.grants if not g[3].replace('"', "").startswith(fq + "(")}
        name = fq.split(".")[-1]
        self.functions[key] = {
            "name": name, "schema": fq.rsplit(".", 1)[0], "returns": returns,
            "arguments": f"{name}({', '.join(key[1])}) RETURN {returns}",
            "description": comment[1] if comment else "user-defined function", "sql": sql,
        }

    def _show_functions(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        return [r for (fq, _), r in self.functions.items()
                if r["name"] == m[1].upper() and r["schema"] == m[2].upper()]

    def _grant_function(self, m: re.Match[str], sql: str) -> None:
        key = (m[1].upper(), _types("(" + ", ".join(f"a {t}" for t in _types(m[2])) + ")"))
        if key not in self.functions:
            raise FakeSnowflakeError(f"function {m[1]}{m[2]} does not exist")
        db, sch, name = key[0].split(".")
        args = ", ".join(f"ARG{i} {t}" for i, t in enumerate(key[1]))
        self.grants.add((m[3], "USAGE", "FUNCTION", f'{db}.{sch}."{name}({args}):{self.functions[key]["returns"]}"'))

    def _show_grants_to(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        self._get("ROLES", m[1])
        return [{"privilege": p, "granted_on": on, "name": n, "grantee_name": r}
                for r, p, on, n in sorted(self.grants) if r == m[1]]

    def _show_grants_of(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        return [{"role": r, "granted_to": "ROLE", "grantee_name": g} for r, g in sorted(self.role_grants) if r == m[1]]

    def _call(self, m: re.Match[str], sql: str) -> list[dict[str, Any]]:
        name = m[1].upper()
        if not any(fq == name for fq, _ in self.functions):
            raise FakeSnowflakeError(f"Unknown function {name}")
        if name in self.answers and isinstance(self.answers[name], Exception):
            raise self.answers[name]
        return [{"v": self.answers.get(name, "OK")}]

    def _drop(self, m: re.Match[str], sql: str) -> None:
        kind, target = m[1], m[2]
        if kind == "FUNCTION":
            fq, decl = target.split("(", 1)
            self.functions.pop((fq.upper(), _types("(" + ", ".join(f"a {t}" for t in _types("(" + decl))
                                                   + ")")), None)
            return
        plural = {"SERVICE": "SERVICES", "EXTERNAL ACCESS INTEGRATION": "EXTERNAL ACCESS INTEGRATIONS",
                  "NETWORK RULE": "NETWORK RULES", "COMPUTE POOL": "COMPUTE POOLS", "ROLE": "ROLES",
                  "STAGE": "STAGES", "IMAGE REPOSITORY": "IMAGE REPOSITORIES"}[kind]
        self.objects[plural].pop(target.upper(), None)


class FakeCursor:
    def __init__(self, db: FakeSnowflake) -> None:
        self.db = db
        self.description: list[tuple[str, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str) -> FakeCursor:
        cols, self._rows = self.db.run(sql)
        self.description = [(c,) for c in cols]
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def close(self) -> None:
        pass
