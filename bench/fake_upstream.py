"""The fake engine and embedders served as vLLM serves a model: in a process of their own, over HTTP.

    python bench/fake_upstream.py PORT [MODULE:FUNCTION]

``bench_gateway.py --engine-process`` points the gateway at this (``engine.kind = "openai"``, and ``openai``
embedders), so the gateway's figures are those of its real engine hop (``OpenAIHttpEngine``, ``OpenAIEmbedder``)
and the fake model's own work is in another process, as vLLM's is. The answers are the in-process fakes' own
(``FakeEngine``, ``FakeEmbedder``): a chat is ``FakeEngine.chat``, a label step (a final assistant message with
``continue_final_message``) is ``FakeEngine.next_token``, embeddings are ``FakeEmbedder`` vectors, written as vLLM
0.11.0 writes them (``logprobs.content`` with ``top_logprobs``, base64 float32 embeddings when asked). ``/tokenize``
counts a text, or gives its pieces when asked ``with_pieces`` (as llama-server does; vLLM gives ids only), so the
label walk plans the same trie as with the fake in process.

With a second argument, ``MODULE:FUNCTION``, the same server answers with that function instead
(``bench_engine_hop.py``'s bodies made up front).
"""

from __future__ import annotations

import base64
import gc
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import uvicorn

from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.fake import FakeEmbedder, FakeEngine
from spcs_llm.errors import SpcsLlmError

ENGINE = FakeEngine(model_name="fake-model", context_window=2048, record=False)  # as engine.kind = "fake" makes it
EMBEDDERS = {d: FakeEmbedder(model_name=f"fake-embed-{d}", dimension=d, record=False) for d in (768, 1024)}
CONTEXT = ENGINE.context_window


def _token(text: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
    }


def _completion(text: str, finish: str, usage: Any, tokens: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": [], "reasoning_content": None},
                "logprobs": {"content": tokens} if tokens is not None else None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        },
    }


async def chat(body: dict[str, Any]) -> dict[str, Any]:
    messages = tuple(Message(m["role"], m["content"]) for m in body["messages"])
    if body.get("continue_final_message") and messages and messages[-1].role == "assistant":
        step = await ENGINE.next_token(messages[:-1], messages[-1].content, int(body.get("top_logprobs") or 1))
        assert step is not None
        (first, logprob), top = step.top[0], list(step.top)
        return _completion(first, "length", step.usage, [_token(first, logprob, top)])
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    result = await ENGINE.chat(
        ChatRequest(
            messages,
            max_tokens=int(body.get("max_tokens") or 256),
            temperature=float(body.get("temperature") or 0.0),
            json_schema=ChatRequest.schema_key(schema) if schema is not None else None,
            top_logprobs=int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0,
        )
    )
    tokens = [_token(t.token, t.logprob, list(t.top)) for t in result.logprobs] if body.get("logprobs") else None
    return _completion(result.text, result.finish_reason, result.usage, tokens)


async def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    embedder = EMBEDDERS[int(str(body["model"]).rsplit("-", 1)[1])]
    texts = body["input"]
    done = await embedder.embed_counted(texts)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "index": i,
            "object": "embedding",
            "embedding": base64.b64encode(np.asarray(v, np.float32).tobytes()).decode()
            if as_base64
            else np.asarray(v, np.float32).tolist(),
        }
        for i, v in enumerate(done.vectors)
    ]
    usage = {"prompt_tokens": sum(done.tokens), "total_tokens": sum(done.tokens)}
    return {"object": "list", "model": body["model"], "data": data, "usage": usage}


async def tokenize(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("prompt") or body.get("content") or ""
    if body.get("with_pieces"):
        pieces = await ENGINE.token_pieces(text) or []
        return {"tokens": [{"id": i, "piece": p} for i, p in enumerate(pieces)]}
    count = await ENGINE.count_tokens(text)
    return {"count": count, "max_model_len": CONTEXT, "tokens": list(range(count))}


MODELS = {
    "object": "list",
    "data": [
        {"id": name, "object": "model", "owned_by": "vllm", "max_model_len": CONTEXT}
        for name in ("fake-model", "fake-embed-768", "fake-embed-1024")
    ],
}
ROUTES = {"/v1/chat/completions": chat, "/v1/embeddings": embeddings, "/tokenize": tokenize}


async def fake_answer(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """The fakes' answer to one request: vLLM's routes, its 404 body for any other."""
    status = 200
    if path == "/v1/models":
        out: Any = MODELS
    elif path == "/version":
        out = {"version": "0.11.0"}
    elif path in ("/health",):
        out = {}
    elif path in ROUTES and method == "POST":
        try:
            out = await ROUTES[path](orjson.loads(body))
        except SpcsLlmError as exc:
            status, out = exc.status, {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}
    else:
        status, out = 404, {"detail": "Not Found"}
    return status, orjson.dumps(out)


Answer = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]


def asgi(answer: Answer) -> Callable[..., Awaitable[None]]:
    """A bare ASGI app: each request's method, path and whole body to ``answer``, its (status, JSON body) back."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                # as vLLM's API server does when it has started (entrypoints/openai/api_server.py: "Mark the
                # startup heap as static so that it's ignored by GC. Reduces pause times of oldest generation
                # collections."): without it, this stand-in's own full collections (29-59 ms each, every
                # ~1.5 s under load) were the gateway's wall-clock tail behind the hop
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, data = await answer(scope["method"], scope["path"], body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


if __name__ == "__main__":
    # PORT [MODULE:FUNCTION]: another answer function than the fakes' (bench_engine_hop.py's canned answers)
    answer: Answer = fake_answer
    if len(sys.argv) > 2:
        module, name = sys.argv[2].split(":")
        answer = getattr(importlib.import_module(module), name)
    uvicorn.run(asgi(answer), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
