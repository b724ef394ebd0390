"""The deploy commands: ``deploy``, ``image build|push``, ``status``, ``logs``, ``suspend``, ``resume``, ``teardown``.

``spcs_llm.cli`` adds them with :func:`add_commands` and hands the parsed arguments to :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from ..config import ConfigError
from ..functions.registry import SqlFunction
from . import check, docker, ops, render
from .config import DeployConfig
from .snowflake import Connection, DeployError, Executor, Session, connect

Out = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


COMMANDS = ("deploy", "image", "status", "logs", "suspend", "resume", "teardown")

# Tests replace this with a recording connection.
CONNECT: Callable[[str | None], Connection] = connect


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", type=Path, default=Path("spcs-llm.toml"), help="deploy config (default ./spcs-llm.toml)")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = _with_config(sub.add_parser("deploy", help="create or update everything in Snowflake from the config"))
    d.add_argument("--dry-run", action="store_true", help="print every statement and file; connect to nothing")
    d.add_argument(
        "--sql",
        action="store_true",
        help="with --dry-run: print only the runnable SQL script (e.g. > deploy.sql for SnowSQL)",
    )
    d.add_argument(
        "--admin-sql",
        action="store_true",
        help="print the one-time admin script (roles, pool, integration, grants); connect to nothing",
    )
    d.add_argument(
        "--check",
        action="store_true",
        help="pre-flight: check role, grants, instance family, image, warehouse, event table; create nothing",
    )
    d.add_argument("--admin-role", help="run the admin phase too, as this role (default: [roles] admin)")
    image = sub.add_parser("image", help="build the container image, or push it to the image repository")
    isub = image.add_subparsers(dest="image_command", required=True)
    b = _with_config(isub.add_parser("build", help="render the Dockerfile and run docker build"))
    b.add_argument("--context", default=".", help="build context: the spcs-llm source tree (default .)")
    p = _with_config(isub.add_parser("push", help="docker login with a PAT, tag, push"))
    p.add_argument("--repository-url", help="skip SHOW IMAGE REPOSITORIES and use this URL")
    p.add_argument("--user", help="Snowflake user for docker login (default: CURRENT_USER())")
    for x in (b, p):
        x.add_argument("--dry-run", action="store_true", help="print the docker commands instead of running them")
    st = _with_config(sub.add_parser("status", help="pool, service, containers, endpoints, logs, test calls"))
    st.add_argument("--no-test-calls", action="store_true", help="skip calling each function once")
    st.add_argument("--log-lines", type=int, default=20)
    lg = _with_config(sub.add_parser("logs", help="recent log lines of one service instance"))
    lg.add_argument("--instance", type=int, default=0)
    lg.add_argument("--lines", type=int, default=100)
    su = _with_config(sub.add_parser("suspend", help="suspend the service, then the compute pool"))
    su.add_argument("--service-only", action="store_true", help="leave the compute pool running")
    _with_config(sub.add_parser("resume", help="resume the compute pool, then the service"))
    t = _with_config(sub.add_parser("teardown", help="drop what deploy created (asks first)"))
    t.add_argument("--yes", action="store_true", help="do not ask")
    t.add_argument(
        "--purge", action="store_true", help="also drop the image repository, the model stage and the deploy role"
    )
    t.add_argument("--admin-role", help="drop the account-level objects too, as this role (default: [roles] admin)")
    t.add_argument("--dry-run", action="store_true", help="print the DROP statements only")


def _connect(cfg: DeployConfig) -> Session:
    return Session(CONNECT(cfg.connection))


def _session(cfg: DeployConfig) -> Session:
    """A session acting as the deploy role, which owns the service and the functions."""
    s = _connect(cfg)
    try:
        s.use_role(cfg.deployer)
    except DeployError as exc:
        raise DeployError(
            f"cannot use the deploy role {cfg.deployer}: {exc}. An admin runs "
            f"`spcs-llm deploy --admin-sql` and grants the role to you"
        ) from exc
    if cfg.warehouse:  # status test calls are SELECTs and need one
        s.query(f"USE WAREHOUSE {cfg.warehouse}")
    return s


def _dry_run(cfg: DeployConfig, args: argparse.Namespace) -> int:
    if args.sql:
        print(render.script(cfg), end="")
        return 0
    print(f"# ===== {cfg.service.name}: service config ({render.SERVICE_CONFIG_PATH}) =====")
    print(render.service_toml(cfg))
    print("# ===== service specification =====")
    print(render.spec_yaml(cfg))
    print("# ===== Dockerfile (spcs-llm image build) =====")
    print(docker.dockerfile(cfg))
    print("-- ===== SQL (alone, runnable: spcs-llm deploy --dry-run --sql) =====")
    print(render.script(cfg))
    return 0


def _admin_phase(cfg: DeployConfig, s: Session, role: str, out: Out) -> None:
    """Run the admin phase as ``role``; the connecting user also receives the deploy role."""
    s.use_role(role)
    user = str(s.query("SELECT CURRENT_USER() AS u")[0]["u"]).upper()
    steps = render.admin_steps(cfg)
    if user not in cfg.roles.users:
        steps.insert(2, render.role_grant(cfg.deployer, user, "USER"))
    out(f"admin phase, as {role}:")
    Executor(s, out).apply(steps)


def run_deploy(
    cfg: DeployConfig,
    s: Session,
    functions: Mapping[str, SqlFunction],
    admin: str | None = None,
    out: Out = print,
    err: Out = _stderr,
) -> int:
    """deploy: [the admin phase as ``admin``], the pre-flight as the deploy role, then the deploy phase.
    Nothing is created when the pre-flight finds something blocking. Returns the exit status."""
    for w in cfg.warnings():
        err(f"spcs-llm deploy: note: {w}")
    if admin:
        _admin_phase(cfg, s, admin, out)
    items = check.preflight(cfg, s)
    if any(it.blocks for it in items):
        check.checklist(cfg, items, out)
        err("spcs-llm deploy: stopped before creating anything (see the checklist above)")
        return 1
    out(f"deploy phase, as {cfg.deployer}:")
    ex = Executor(s, out)
    digest = check.image_digest(cfg, s)
    steps = [
        render.with_image_digest(st, digest) if st.kind == "service" else st
        for st in render.deploy_steps(cfg, functions)
    ]
    actions = ex.apply(steps)
    changed = sum(a.verb not in ("unchanged", "skipped", "refused") for a in actions)
    out(f"deploy: {changed} of {len(actions)} objects changed")
    if ex.refused:
        first = next(iter(ex.refused))
        err(
            f"spcs-llm deploy: Snowflake refused the function name(s) {', '.join(ex.refused)} "
            f"({ex.refused[first]}); everything else is deployed. Rename them in spcs-llm.toml, e.g. "
            f'[functions] rename = {{ {first} = "SPCS_{first}" }}, and deploy again'
        )
        return 1
    return 0


def _deploy(cfg: DeployConfig, args: argparse.Namespace) -> int:
    if args.admin_sql:
        print(render.admin_script(cfg), end="")
        return 0
    if args.dry_run:
        return _dry_run(cfg, args)
    s = _connect(cfg)
    admin = args.admin_role or cfg.roles.admin
    if args.check:
        items = check.preflight(cfg, s, admin_pending=bool(admin))
        check.checklist(cfg, items)
        return 1 if any(it.blocks for it in items) else 0
    return run_deploy(cfg, s, render.registry(), admin)


def recommend_connected(info: object, args: argparse.Namespace) -> int:
    """``models recommend NAME --connection``: the fitting families among those the account's region offers."""
    try:
        s = Session(CONNECT(args.connection or None))
        families = check.account_gpu_families(s)
    except Exception as exc:  # the connector raises many types; the message is what the user needs
        print(f"spcs-llm models recommend: {exc}", file=sys.stderr)
        return 2
    ctx = args.context or info.context_window  # type: ignore[attr-defined]
    picks = check.recommend_in_account(info, families, ctx, args.concurrency, args.utilization)
    print(
        f"{info.name}: context {ctx} x {args.concurrency} concurrent sequences "  # type: ignore[attr-defined]
        f"(instance families of this account's region)"
    )
    for r in picks:
        f, e = r.family, r.estimate
        print(f"  {f.name:22} {f.gpus} x {f.gpu} ({f.gib_per_gpu:g} GiB each)")
        print(f"        per GPU: {e.total_gib:.1f} GiB; KV room for {r.max_num_seqs} full-context sequences")
        print(f"        vllm serve {info.hf_repo} " + " ".join(r.vllm_args()))  # type: ignore[attr-defined]
    if not picks:
        names = ", ".join(f.name for f in families) or "none"
        print(f"  no GPU instance family of this account fits (GPU families here: {names})")
        return 1
    return 0


def _image(cfg: DeployConfig, args: argparse.Namespace) -> int:
    runner = docker.Docker(dry_run=args.dry_run)
    if args.image_command == "build":
        path = Path("build/spcs-llm/Dockerfile")
        if args.dry_run:
            print(docker.dockerfile(cfg))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(docker.dockerfile(cfg), encoding="utf-8")
        runner.run(docker.build_command(cfg, str(path), args.context))
        return 0
    url, user = args.repository_url, args.user
    if not url or not user:
        s = _session(cfg)
        if not url:
            rows = s.show("IMAGE REPOSITORIES", cfg.image.repository, f"SCHEMA {cfg.schema_fq}")
            if not rows:  # the first push comes before the first deploy (the service needs the image)
                repo = next(st for st in render.deploy_steps(cfg, {}) if st.kind == "image_repository")
                if args.dry_run:
                    print(f"$ (SQL) {repo.sql}")
                    rows = [
                        {
                            "repository_url": "ORGNAME-ACCOUNTNAME.registry.snowflakecomputing.com/"
                            + "/".join(cfg.fq(cfg.image.repository).lower().split("."))
                        }
                    ]
                else:
                    s.query(repo.sql)
                    rows = s.show("IMAGE REPOSITORIES", cfg.image.repository, f"SCHEMA {cfg.schema_fq}")
            if not rows:
                raise DeployError(
                    f"image repository {cfg.fq(cfg.image.repository)} does not exist and could not "
                    "be created: run `spcs-llm deploy --check`"
                )
            url = str(rows[0]["repository_url"])
        user = user or str(s.query("SELECT CURRENT_USER() AS u")[0]["u"])
    token = os.environ.get(cfg.image.pat_env)
    if not token and not args.dry_run:
        raise DeployError(f"set {cfg.image.pat_env} to a programmatic access token for docker login")
    runner.run(docker.login_command(url, user), stdin=token or "")
    for argv in docker.push_commands(cfg, url):
        runner.run(argv)
    return 0


def _teardown(cfg: DeployConfig, args: argparse.Namespace) -> int:
    plan = ops.teardown_plan(cfg, render.registry(), purge=args.purge)
    admin = args.admin_role or cfg.roles.admin
    print(plan.script(cfg))
    for w in plan.warnings:
        print(f"-- warning: {w}")
    if args.dry_run:
        return 0
    if not args.yes:
        n = len(plan.deploy) + (len(plan.admin) if admin else 0)
        answer = input(f"Drop these {n} objects? Type 'yes' to go on: ")
        if answer.strip().lower() != "yes":
            print("teardown: nothing dropped")
            return 1
    s = _session(cfg)
    ops.teardown(s, plan.deploy)
    if admin:
        s.use_role(admin)
        ops.teardown(s, plan.admin)
    else:
        print(
            f"teardown: the account-level objects are left to an admin (or pass --admin-role):\n"
            f"USE ROLE {render.admin_role(cfg)};\n" + "\n".join(f"{x};" for x in plan.admin)
        )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        cfg = DeployConfig.load(args.config)
        if args.command == "deploy":
            return _deploy(cfg, args)
        if args.command == "image":
            return _image(cfg, args)
        if args.command == "teardown":
            return _teardown(cfg, args)
        s = _session(cfg)
        if args.command == "status":
            ok = ops.status(cfg, s, render.registry(), log_lines=args.log_lines, test_calls=not args.no_test_calls)
            return 0 if ok else 1
        if args.command == "logs":
            print(ops.logs(cfg, s, args.instance, args.lines))
        elif args.command == "suspend":
            ops.suspend(cfg, s, pool=not args.service_only)
        elif args.command == "resume":
            ops.resume(cfg, s)
        return 0
    except (ConfigError, DeployError, RuntimeError, ValueError) as exc:
        print(f"spcs-llm {args.command}: {exc}", file=sys.stderr)
        return 2
