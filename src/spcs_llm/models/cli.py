"""``spcs-llm models list | info <name> | recommend <name> | pull <name>``.

``add_subcommands`` adds these to the ``models`` sub-parser; ``run`` executes one. ``fetch-default`` (the packaged
CPU model) stays in ``spcs_llm.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, Settings
from ..errors import UnknownModel
from .catalog import CATALOG, CORTEX_MODEL_NAMES, ModelInfo, check_config, find_model
from .download import DownloadError, default_sources, ensure_model
from .sizing import CLOUDS, FAMILIES, DoesNotFit, estimate_memory, recommend

COMMANDS = ("list", "info", "recommend", "pull")


def add_subcommands(msub: argparse._SubParsersAction) -> None:
    msub.add_parser("list", help="catalogue entries and the Cortex names aliased by default")
    info = msub.add_parser("info", help="one catalogue entry: hub ids, architecture, memory estimates")
    info.add_argument("name")
    rec = msub.add_parser("recommend", help="the SPCS GPU instance family and vLLM settings that fit a model")
    rec.add_argument("name")
    rec.add_argument("--context", type=int, help="tokens per sequence, prompt + output (default: the model's)")
    rec.add_argument("--concurrency", type=int, default=8, help="sequences in flight at full context (default 8)")
    rec.add_argument("--cloud", choices=CLOUDS, help="only this cloud's families")
    rec.add_argument("--family", choices=[f.name for f in FAMILIES], help="only this instance family")
    rec.add_argument("--utilization", type=float, default=0.90, help="vLLM --gpu-memory-utilization (0.90)")
    rec.add_argument(
        "--connection",
        nargs="?",
        const="",
        metavar="NAME",
        help="ask the account (SHOW COMPUTE POOL INSTANCE FAMILIES) instead of the built-in table; "
        "NAME from connections.toml (default: its default)",
    )
    pull = msub.add_parser("pull", help="download a model into the cache (HF-Mirror, then ModelScope)")
    pull.add_argument("name", help="catalogue name or org/repo id")
    pull.add_argument("--cache-dir", type=Path, help="default: $SPCS_LLM_CACHE or ~/.cache/spcs-llm")
    pull.add_argument("--offline", action="store_true", help="only check the cache and pre-staged files")
    pull.add_argument("--gguf", action="store_true", help="the catalogue's GGUF file (llama.cpp) instead")
    pull.add_argument("--sources", help='source order, e.g. "modelscope,hf" or "hf=https://mirror"')
    pull.add_argument("--revision", help="branch, tag or commit (default main / master)")
    pull.add_argument(
        "--cache-mode",
        choices=("posix", "stage", "readonly"),
        help="how the cache may be written (default $SPCS_LLM_CACHE_MODE, else posix; stage: an SPCS "
        "stage volume, downloaded on local disk and copied in)",
    )
    pull.add_argument("--config", type=Path, help="TOML config; its [downloads] table applies")


def run(args: argparse.Namespace) -> int:
    try:
        return _HANDLERS[args.models_command](args)
    except (UnknownModel, DoesNotFit, DownloadError, ConfigError, ValueError) as exc:
        message = exc.message if isinstance(exc, UnknownModel) else str(exc)
        print(f"spcs-llm: {message}", file=sys.stderr)
        return 2


def _list(args: argparse.Namespace) -> int:
    print(catalogue_table(markdown=False))
    print("\nCortex names aliased to the served model by default:", ", ".join(CORTEX_MODEL_NAMES))
    return 0


def catalogue_table(*, markdown: bool = True) -> str:
    """The catalogue as a table; the README's "Models" table is this text (a test checks it)."""
    head = ["name", "kind", "params (B)", "context", "dim", "layers/heads/KV/head dim", "Hugging Face", "ModelScope"]
    rows = [
        [
            m.name,
            m.kind,
            f"{m.params_b:g}",
            str(m.context_window),
            str(m.embed_dim or ""),
            f"{m.layers}/{m.heads}/{m.kv_heads}/{m.head_dim}",
            m.hf_repo,
            m.ms_repo + (" †" if "unconfirmed" in m.notes else ""),
        ]
        for m in CATALOG.values()
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows])


def _info(args: argparse.Namespace) -> int:
    m = find_model(args.name)
    print(describe(m))
    return 0


def describe(m: ModelInfo) -> str:
    lines = [
        f"{m.name} ({m.kind}, {m.family or 'n/a'})",
        f"  Hugging Face : {m.hf_repo}",
        f"  ModelScope   : {m.ms_repo}",
        f"  parameters   : {m.params_b:g} B, weights {m.dtype}",
        f"  context      : {m.context_window} tokens"
        + (f", max output {m.max_output_tokens}" if m.kind == "chat" else f", dimension {m.embed_dim}"),
        f"  architecture : {m.layers} layers, {m.heads} attention heads, {m.kv_heads} KV heads, head dim {m.head_dim}",
    ]
    if m.gguf_file:
        lines.append(f"  GGUF         : {m.gguf_repo or '(packaged)'} / {m.gguf_file}")
    if m.notes:
        lines.append(f"  notes        : {m.notes}")
    lines.append("  GPU memory (1 GPU, GiB: weights + KV cache + overhead):")
    for ctx, conc in ((min(4096, m.context_window), 1), (min(8192, m.context_window), 8), (m.context_window, 8)):
        e = estimate_memory(m, ctx, conc)
        lines.append(
            f"    context {ctx:>6} x {conc} seqs: {e.total_gib:6.1f} = {e.weights_gib:.1f} + "
            f"{e.kv_cache_gib:.1f} + {e.overhead_gib:.1f}"
        )
    return "\n".join(lines)


def _recommend(args: argparse.Namespace) -> int:
    m = find_model(args.name)
    if args.connection is not None:
        from ..deploy.cli import recommend_connected

        return recommend_connected(m, args)
    picks = recommend(
        m,
        context=args.context,
        concurrency=args.concurrency,
        cloud=args.cloud,
        family=args.family,
        utilization=args.utilization,
    )
    ctx = args.context or m.context_window
    print(f"{m.name}: context {ctx} x {args.concurrency} concurrent sequences")
    for r in picks:
        f, e = r.family, r.estimate
        avail = "on request" if f.on_request else "generally available"
        print(f"  {f.cloud:5} {f.name:22} {f.gpus} x {f.gpu} ({f.gib_per_gpu:g} GiB each, {avail})")
        print(
            f"        per GPU: {e.total_gib:.1f} GiB = {e.weights_gib:.1f} weights + {e.kv_cache_gib:.1f} KV + "
            f"{e.overhead_gib:.1f} overhead; KV room for {r.max_num_seqs} full-context sequences"
        )
        print(f"        vllm serve {m.hf_repo} " + " ".join(r.vllm_args()))
    for cloud in sorted(
        set(f.cloud for f in FAMILIES if args.cloud in (None, f.cloud)) - {r.family.cloud for r in picks}
    ):
        print(f"  {cloud:5} no instance family fits")
    return 0


def _pull(args: argparse.Namespace) -> int:
    settings = Settings.load(args.config) if args.config else None
    dl = settings.downloads if settings else None
    cache_dir = args.cache_dir or (settings.engine.cache_dir if settings else None)  # where serve will look
    sources = default_sources(
        args.sources if args.sources is not None else (dl.sources if dl else None),
        hf_endpoint=dl.hf_endpoint if dl else None,
        modelscope_endpoint=dl.modelscope_endpoint if dl else None,
    )
    offline = args.offline or bool(dl and dl.offline)
    path = ensure_model(
        args.name,
        cache_dir=cache_dir,
        offline=offline,
        sources=sources,
        fmt="gguf" if args.gguf else "safetensors",
        revision=args.revision,
        cache_mode=args.cache_mode or (dl.cache_mode if dl else None),
    )
    config = path / "config.json"
    if config.is_file():
        try:
            info = find_model(args.name)
        except UnknownModel:
            info = None
        for problem in check_config(info, json.loads(config.read_text(encoding="utf-8"))) if info else []:
            print(f"spcs-llm: warning: {args.name}: catalogue and config.json differ: {problem}", file=sys.stderr)
    print(path)
    return 0


_HANDLERS = {"list": _list, "info": _info, "recommend": _recommend, "pull": _pull}
