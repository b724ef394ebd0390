"""A stand-in for `vllm serve`: accepts its command line, records it, and serves an OpenAI-compatible API.

    python tests/standin_vllm.py serve MODEL --host H --port P --served-model-name N [--max-model-len L]
                                 [--runner pooling] [any other vllm flag ...]

Each launch appends one JSON line ``{"pid", "argv"}`` to ``$STANDIN_RECORD``. Chat answers ``echo:<last message>``;
a message containing "slow" is answered after 30 s (so a test can crash the process mid-request). With
``STANDIN_FAIL=1`` it prints an error and exits 3 at once, as vLLM does when the model does not fit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import uvicorn
from fastapi import FastAPI, Request


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["serve"])
    p.add_argument("model")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--runner", default="generate")
    return p.parse_known_args(argv)


def build(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    name, window = args.served_model_name, args.max_model_len

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {}

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": name, "object": "model", "max_model_len": window}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, object]:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if "slow" in text:
            await asyncio.sleep(30)
        return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo:{text}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(text.split()) + 1}}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, object]:
        texts = (await request.json())["input"]
        return {"data": [{"index": i, "embedding": [float(len(t)), 1.0, 0.0, 0.0]} for i, t in enumerate(texts)]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, object]:
        body = await request.json()
        return {"count": len(body["prompt"].split()), "max_model_len": window, "tokens": []}

    return app


def main() -> None:
    args, _rest = parse(sys.argv[1:])
    if record := os.environ.get("STANDIN_RECORD"):
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n")
    if os.environ.get("STANDIN_FAIL") == "1":
        print("ValueError: model does not fit in GPU memory", flush=True)
        sys.exit(3)
    print(f"stand-in serving {args.served_model_name} on {args.host}:{args.port}", flush=True)
    uvicorn.run(build(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
