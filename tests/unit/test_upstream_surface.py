"""What our own server offers an upstream client (another spcs-llm's OpenAIHttpEngine, or any OpenAI client):
logprobs on chat completions, /v1/embeddings, vLLM's /tokenize and max_model_len on /v1/models."""

from __future__ import annotations

import math

import pytest


async def test_logprobs_and_top_logprobs_in_openai_shape(client, fake_engine) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": "a b"}],
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    assert r.status_code == 200
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["echo:a", "b"]
    assert content[0]["logprob"] == -0.1 and content[0]["bytes"] == list(b"echo:a")
    assert [(a["token"], a["logprob"]) for a in content[0]["top_logprobs"]] == [("echo:a", -0.1), ("alt1", -2.0)]
    assert fake_engine.calls[-1].top_logprobs == 2


async def test_logprobs_without_top_logprobs_gives_no_alternatives(client, fake_engine) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "a"}], "logprobs": True},
    )
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["echo:a"] and content[0]["top_logprobs"] == []
    assert fake_engine.calls[-1].top_logprobs == 1  # the engine is asked for the token's own log-probability


async def test_top_logprobs_out_of_range_is_a_400(client) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": "a"}],
            "logprobs": True,
            "top_logprobs": 21,
        },
    )
    assert r.status_code == 400 and "top_logprobs" in r.json()["error"]["message"]


async def test_embeddings_by_served_and_cortex_name(client) -> None:
    r = await client.post("/v1/embeddings", json={"model": "fake-embed-768", "input": ["hello world", "hello"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "fake-embed-768" and [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 768 for d in body["data"])
    assert math.isclose(sum(x * x for x in body["data"][0]["embedding"]), 1.0)
    assert body["usage"]["prompt_tokens"] == 3
    alias = await client.post("/v1/embeddings", json={"model": "snowflake-arctic-embed-l-v2.0", "input": "hi"})
    assert alias.json()["model"] == "fake-embed-1024" and len(alias.json()["data"][0]["embedding"]) == 1024


async def test_embeddings_unknown_model_and_bad_body(client) -> None:
    r = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"] == 'unknown model "nope"'
    r = await client.post("/v1/embeddings", json={"model": "fake-embed-768"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]


async def test_tokenize_in_vllm_shape(client) -> None:
    r = await client.post("/tokenize", json={"model": "fake-model", "prompt": "one two three"})
    assert r.status_code == 200 and r.json() == {"count": 3, "max_model_len": 64}
    assert (await client.post("/tokenize", json={"content": "a b"})).json()["count"] == 2
    r = await client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"] == 'unknown model "nope"'
    r = await client.post("/tokenize", json={"model": "fake-model"})
    assert r.status_code == 400 and "prompt is required" in r.json()["error"]["message"]


async def test_models_report_max_model_len(client) -> None:
    data = (await client.get("/v1/models")).json()["data"]
    assert {m["max_model_len"] for m in data} == {64}


async def test_embeddings_in_base64_as_the_openai_sdk_asks(client) -> None:
    import base64
    import struct

    plain = (await client.post("/v1/embeddings", json={"model": "fake-embed-768", "input": "a b"})).json()
    b64 = (
        await client.post(
            "/v1/embeddings", json={"model": "fake-embed-768", "input": "a b", "encoding_format": "base64"}
        )
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(plain["data"][0]["embedding"], abs=1e-7)


async def test_tokenize_counts_with_an_embedding_model_when_named(client) -> None:
    r = await client.post("/tokenize", json={"model": "fake-embed-768", "prompt": "a b c d e"})
    assert r.status_code == 200 and r.json() == {"count": 5, "max_model_len": 512}
