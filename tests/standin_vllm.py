"""A stand-in for `vllm serve` that is as strict as vLLM 0.11.0 where spcs-llm meets it.

    python tests/standin_vllm.py serve MODEL_DIR --host H --port P --served-model-name N [any vllm 0.11.0 flag ...]

- **Arguments**: parsed with vLLM 0.11.0's real argument list (``tests/fixtures/vllm_0_11_0_serve_args.json``,
  extracted from the released wheel by ``tests/fixtures/make_vllm_serve_args.py``), underscores read as dashes as
  vLLM's ``FlexibleArgumentParser`` does. An unknown flag, a bad ``--runner`` choice or a missing value is refused
  by argparse exactly as ``vllm`` refuses it: ``vllm: error: unrecognized arguments: ...`` on stderr, exit 2.
- **Start-up checks**: ``num_attention_heads`` from MODEL_DIR/config.json must be divisible by
  ``--tensor-parallel-size`` (``ValueError: Total number of attention heads (H) must be divisible by tensor parallel
  size (T).``, 0.11.0:vllm/config/model.py:1045-1052) and the KV heads must split or replicate evenly
  (``AssertionError: T is not divisible by KV``, model_executor/layers/linear.py:902-907); exit 1.
  ``--max-model-len`` defaults to config.json's ``max_position_embeddings`` (else 4096).
- **Tokens**: one token per whitespace-separated word; a chat prompt adds 4 per message (the chat template's
  role markers), an embedding input adds 2 ([CLS], [SEP]).
- **Chat**: answers ``echo:<last message>``; a message containing "long" makes it generate without end (until
  ``max_tokens``); output cut by ``max_tokens`` ends with ``finish_reason: "length"``. A prompt of
  ``max_model_len`` tokens or more is refused with 400 and vLLM's text; prompt + ``max_tokens`` over
  ``max_model_len`` is refused with 400 (``'max_tokens' or 'max_completion_tokens' is too large: ...``,
  0.11.0:vllm/entrypoints/openai/serving_engine.py:674-688, with the `` None`` that serving_chat.py:261-264 appends)
  up to vLLM 0.31; from 0.32 the output budget is clamped instead (``STANDIN_VLLM_VERSION=0.32.0`` or later).
- **Engine death**: a message containing "die" kills the engine: streamed, two chunks then vLLM 0.11.0's error event
  (``EngineCore encountered an issue...``, ``code: 400``; 0.33.0 sends 500 ``InternalServerError`` ``The server had
  an error while processing your request.``, serve/exception_handling/error_response.py:68-72) and
  ``[DONE]``; not streamed, HTTP 500 with an empty body (0.11.0:vllm/entrypoints/launcher.py:156-166). Then
  ``/health`` answers 503 and the process exits (``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`` is off by default).
- **Embeddings**: a text over ``max_model_len`` tokens is refused with 400 and the whole call fails
  (0.11.0:vllm/entrypoints/renderer.py:376-388) unless the request says ``truncate_prompt_tokens`` (-1: the model's
  length; renderer.py:268-288), which keeps the first tokens. The vector is ``[tokens embedded, 1, 0, ...]``, of
  ``$STANDIN_EMBED_DIM`` floats (default 4).
- ``GET /version`` answers ``{"version": $STANDIN_VLLM_VERSION}`` (default 0.11.0); ``/v1/models`` lists the model
  ``owned_by: "vllm"`` with its ``max_model_len``; ``/tokenize`` counts a ``prompt`` or chat ``messages``.

Each launch appends one JSON line ``{"pid", "argv", "t"}`` to ``$STANDIN_RECORD``. A message containing "slow" is
answered after 30 s (so a test can crash the process mid-request). With ``STANDIN_FAIL=1`` it prints an error and
exits 3 at once, as vLLM does when the model does not fit.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

ARGS_FILE = Path(__file__).resolve().parent / "fixtures" / "vllm_0_11_0_serve_args.json"
SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")  # vllm/entrypoints/cli/main.py
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."  # 0.11.0
ENGINE_DEAD_CLIENT = "The server had an error while processing your request."  # 0.33.0 EngineDeadError.CLIENT_MESSAGE
TYPES: dict[str, Any] = {
    "--port": int,
    "--tensor-parallel-size": int,
    "--max-num-seqs": int,
    "--gpu-memory-utilization": float,
    "--api-server-count": int,
}


def human_int(value: str) -> int:
    """vLLM's ``human_readable_int`` for --max-model-len: 4096, 32k, 1m (decimal) or 32K, 1M (binary)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid human-readable integer: {value!r}")
    number, suffix = float(match[1]), match[2]
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[suffix]
    return int(number * scale)


def parser() -> argparse.ArgumentParser:
    """``vllm`` with the ``serve`` subcommand's 0.11.0 argument list; other subcommands exist only by name."""
    spec = json.loads(ARGS_FILE.read_text())
    main = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    main.add_argument("-v", "--version", action="version", version=spec["vllm"])
    subparsers = main.add_subparsers(required=False, dest="subparser")
    for name in SUBCOMMANDS:
        sub = subparsers.add_parser(name, usage=f"vllm {name} [model_tag] [options]" if name == "serve" else None)
        if name == "serve":
            sub.add_argument("model_tag", type=str, nargs="?")
            for arg in spec["args"]:
                _add(sub, arg)
    return main


def _add(p: argparse.ArgumentParser, arg: dict[str, Any]) -> None:
    flags = arg["flags"]
    dest = flags[0].lstrip("-").replace("-", "_")
    if arg["kind"] == "store_true":
        p.add_argument(*flags, dest=dest, action="store_true")
    elif arg["kind"] == "bool":
        p.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction)
    else:
        kind = human_int if flags[0] == "--max-model-len" else TYPES.get(flags[0], str)
        p.add_argument(*flags, dest=dest, type=kind, nargs=arg.get("nargs"), choices=arg.get("choices"))


def dashes(argv: list[str]) -> list[str]:
    """Underscores in flag names read as dashes (FlexibleArgumentParser.parse_args, vllm/utils/__init__.py)."""
    out = []
    for a in argv:
        if a.startswith("--"):
            key, eq, value = a.partition("=")
            a = key.replace("_", "-") + eq + value
        out.append(a)
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] == "serve" and "--model" in argv:  # vllm/utils/__init__.py FlexibleArgumentParser
        raise ValueError(
            "With `vllm serve`, you should provide the model as a positional argument or in a config "
            "file instead of via the `--model` option."
        )
    args = parser().parse_args(dashes(argv))
    if args.subparser != "serve":
        print(f"stand-in: only `vllm serve` is played, not `vllm {args.subparser}`", file=sys.stderr)
        sys.exit(2)
    return args


def version() -> str:
    return os.environ.get("STANDIN_VLLM_VERSION", "0.11.0")


def clamps() -> bool:
    """vLLM 0.32.0 and later clamp the output budget instead of refusing (0.32.0:vllm/renderers/params.py)."""
    major, minor = (int(x) for x in re.findall(r"\d+", version())[:2])
    return (major, minor) >= (0, 32)


def model_config(model: str) -> dict[str, Any]:
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def startup_checks(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """vLLM's refusals before it serves: tensor-parallel size against the attention and KV heads."""
    tp = args.tensor_parallel_size or 1
    heads = int(config.get("num_attention_heads") or 0)
    if heads % tp != 0:
        raise ValueError(f"Total number of attention heads ({heads}) must be divisible by tensor parallel size ({tp}).")
    kv = int(config.get("num_key_value_heads") or heads)
    if kv and (tp % kv if tp >= kv else kv % tp):
        raise AssertionError(f"{tp if tp >= kv else kv} is not divisible by {kv if tp >= kv else tp}")


def error(message: str, status: int = 400, kind: str = "BadRequestError") -> JSONResponse:
    """vLLM's ErrorResponse (0.11.0:vllm/entrypoints/openai/protocol.py:101-109)."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status
    )


class Engine:
    """The model's behaviour: token counts, generation, and its death."""

    def __init__(self, args: argparse.Namespace, config: dict[str, Any]) -> None:
        self.name = (args.served_model_name or [args.model_tag])[0]
        self.window = args.max_model_len or int(config.get("max_position_embeddings") or 4096)
        self.pooling = args.runner == "pooling"
        self.dead = False

    @staticmethod
    def chat_tokens(messages: list[dict[str, Any]]) -> int:
        return sum(len(str(m.get("content") or "").split()) + 4 for m in messages)

    def too_long(self, prompt: int) -> str | None:
        """vLLM's refusal of a prompt that alone fills the context (0.11.0 serving_engine.py:674-678: prompt >=
        max_model_len; 0.33.0 vllm/renderers/params.py:535-551: prompt > max_model_len)."""
        if prompt < self.window or (clamps() and prompt == self.window):
            return None
        if clamps():
            return (
                f"This model's maximum context length is {self.window} tokens. However, your prompt contains "
                f"{prompt} input tokens, which exceeds this limit even without any output tokens. Please reduce "
                f"the length of the input prompt. (parameter=input_tokens, value={prompt})"
            )
        return (
            f"This model's maximum context length is {self.window} tokens. However, your request has {prompt} "
            "input tokens. Please reduce the length of the input messages. None"
        )

    def budget(self, prompt: int, asked: int | None) -> tuple[int | None, str | None]:
        """(output tokens allowed, or the 400 text of 0.11.0 when prompt + max_tokens does not fit)."""
        room = self.window - prompt
        if asked is None or asked <= room:
            return (asked if asked is not None else room), None
        if clamps():
            return room, None
        return None, (
            f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum "
            f"context length is {self.window} tokens and your request has {prompt} input tokens "
            f"({asked} > {self.window} - {prompt}). None"
        )

    @staticmethod
    def generate(text: str, limit: int) -> tuple[list[str], str]:
        """(output words, finish reason) for the last message, cut at ``limit`` tokens."""
        if "long" in text:
            return [f"w{i}" for i in range(limit)], "length"
        words = f"echo:{text}".split()
        return (words[:limit], "length") if len(words) > limit else (words, "stop")

    def die(self) -> None:
        """The engine core is gone: /health says 503 and the server exits shortly (vllm/entrypoints/launcher.py)."""
        self.dead = True
        asyncio.get_running_loop().call_later(0.3, os._exit, 1)


def _encoded(values: list[float], encoding: str) -> Any:
    """0.11.0 serving_embedding.py ``_get_embedding``: the float32 tensor's ``tolist()``, or its bytes (native
    order) in base64."""
    if encoding == "float":
        return [float(v) for v in array.array("f", values)]
    return base64.b64encode(array.array("f", values).tobytes()).decode()


def build(args: argparse.Namespace, config: dict[str, Any] | None = None) -> FastAPI:
    app = FastAPI()
    engine = Engine(args, config or {})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if engine.dead else 200)

    @app.get("/version")
    async def show_version() -> dict[str, str]:
        return {"version": version()}

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.name,
                    "object": "model",
                    "owned_by": "vllm",
                    "root": args.model_tag,
                    "max_model_len": engine.window,
                }
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        body = await request.json()
        text = str(body["messages"][-1].get("content") or "")
        prompt = engine.chat_tokens(body["messages"])
        if refusal := engine.too_long(prompt):
            return error(refusal)
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        limit, refusal = engine.budget(prompt, asked)
        if refusal:
            return error(refusal)
        assert limit is not None
        if "slow" in text:
            await asyncio.sleep(30)
        if body.get("stream"):
            return StreamingResponse(stream(text, prompt, limit), media_type="text/event-stream")
        if "die" in text:
            engine.die()
            return Response(status_code=500)
        words, finish = engine.generate(text, limit)
        return JSONResponse(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": engine.name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": finish}
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(words),
                    "total_tokens": prompt + len(words),
                },
            }
        )

    async def stream(text: str, prompt: int, limit: int) -> AsyncIterator[str]:
        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        def delta(content: str | None = None, finish: str | None = None) -> str:
            return event(
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion.chunk",
                    "model": engine.name,
                    "choices": [
                        {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
                    ],
                }
            )

        words, finish = engine.generate(text, limit)
        for i, word in enumerate(words):
            if "die" in text and i == min(2, len(words) - 1):  # 0.11.0 serving_chat.py:1143-1149; 0.32+ classifies
                engine.die()
                code, kind, said = (
                    (500, "InternalServerError", ENGINE_DEAD_CLIENT)
                    if clamps()
                    else (400, "BadRequestError", ENGINE_DEAD)
                )
                yield event({"error": {"message": said, "type": kind, "param": None, "code": code}})
                yield "data: [DONE]\n\n"
                return
            yield delta(word if i == 0 else f" {word}")
        yield delta(finish=finish)
        yield event(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "model": engine.name,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(words),
                    "total_tokens": prompt + len(words),
                },
            }
        )
        yield "data: [DONE]\n\n"

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(request: Request) -> Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        truncate = body.get("truncate_prompt_tokens")
        if truncate is not None and truncate < 0:
            truncate = engine.window
        if truncate is not None and truncate > engine.window:
            return error(
                f"truncate_prompt_tokens ({truncate}) cannot be greater than max_length "
                f"({engine.window}). Please select a smaller truncation size."
            )
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):  # 0.11.0 protocol.py: encoding_format: Literal["float", "base64"]
            return error(f"encoding_format: Input should be 'float' or 'base64' (got {encoding!r})")
        dim = int(os.environ.get("STANDIN_EMBED_DIM", "4"))
        counts = []
        for t in texts:
            n = len(str(t).split()) + 2
            n = min(n, truncate) if truncate is not None else n
            if n > engine.window:  # 0.11.0:vllm/entrypoints/renderer.py:376-388: the whole call fails
                return error(
                    f"This model's maximum context length is {engine.window} tokens. However, your "
                    f"request has {n} input tokens. Please reduce the length of the input messages."
                )
            counts.append(n)
        return JSONResponse(
            {
                "id": "embd-standin",
                "object": "list",
                "created": int(time.time()),
                "model": engine.name,
                "data": [
                    {
                        "index": i,
                        "object": "embedding",
                        "embedding": _encoded([float(n), 1.0] + [0.0] * (dim - 2), encoding),
                    }
                    for i, n in enumerate(counts)
                ],
                "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)},
            }
        )

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, object]:
        body = await request.json()
        count = (
            engine.chat_tokens(body["messages"]) if "messages" in body else len(str(body.get("prompt") or "").split())
        )
        return {"count": count, "max_model_len": engine.window, "tokens": list(range(count))}

    return app


def main() -> None:
    args = parse(sys.argv[1:])
    if record := os.environ.get("STANDIN_RECORD"):
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "t": time.time()}) + "\n")
    if os.environ.get("STANDIN_FAIL") == "1":
        print("ValueError: model does not fit in GPU memory", flush=True)
        sys.exit(3)
    config = model_config(args.model_tag or "")
    startup_checks(args, config)  # raises, as vLLM does: a traceback and exit 1
    print(f"stand-in vLLM {version()} serving {args.served_model_name} on {args.host}:{args.port}", flush=True)
    uvicorn.run(build(args, config), host=args.host or "0.0.0.0", port=args.port or 8000, log_level="warning")


if __name__ == "__main__":
    main()
