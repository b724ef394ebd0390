"""The deploy commands: ``deploy``, ``image build|push``, ``status``, ``logs``, ``suspend``, ``resume``, ``teardown``.

``spcs_llm.cli`` adds them with :func:`add_commands` and hands the parsed arguments to :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from . import docker, ops, render
from .config import DeployConfig
from .snowflake import Connection, DeployError, Executor, Session, connect

COMMANDS = ("deploy", "image", "status", "logs", "suspend", "resume", "teardown")

# Tests replace this with a recording connection.
CONNECT: Callable[[str | None], Connection] = connect


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", type=Path, default=Path("spcs-llm.toml"), help="deploy config (default ./spcs-llm.toml)")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = _with_config(sub.add_parser("deploy", help="create or update everything in Snowflake from the config"))
    d.add_argument("--dry-run", action="store_true", help="print every statement and file; connect to nothing")
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
    t.add_argument("--purge", action="store_true", help="also drop the image repository and the model stage")
    t.add_argument("--dry-run", action="store_true", help="print the DROP statements only")


def _session(cfg: DeployConfig) -> Session:
    return Session(CONNECT(cfg.connection))


def _deploy(cfg: DeployConfig, args: argparse.Namespace) -> int:
    if args.dry_run:
        print(f"-- ===== {cfg.service.name}: service config ({render.SERVICE_CONFIG_PATH}) =====")
        print(render.service_toml(cfg))
        print("-- ===== service specification =====")
        print(render.spec_yaml(cfg))
        print("-- ===== Dockerfile (spcs-llm image build) =====")
        print(docker.dockerfile(cfg))
        print("-- ===== SQL =====")
        print(render.script(cfg))
        return 0
    actions = Executor(_session(cfg), cfg.access.role).apply(render.plan(cfg))
    changed = sum(a.verb != "unchanged" for a in actions)
    print(f"deploy: {changed} of {len(actions)} objects changed")
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
            if not rows:
                raise DeployError(f"image repository {cfg.fq(cfg.image.repository)} does not exist: run deploy first")
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
    stmts = ops.teardown_statements(cfg, render.registry(), purge=args.purge)
    for sql in stmts:
        print(sql + ";")
    if args.dry_run:
        return 0
    if not args.yes:
        answer = input(f"Drop these {len(stmts)} objects? Type 'yes' to go on: ")
        if answer.strip().lower() != "yes":
            print("teardown: nothing dropped")
            return 1
    ops.teardown(_session(cfg), stmts)
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
