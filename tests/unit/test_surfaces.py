"""OpenAI surface, the seed's QWEN_COMPLETE envelope, health, metrics and logs, over the fake engine."""

from __future__ import annotations

import asyncio
import logging

import orjson

from spcs_llm import logs
from spcs_llm.engines import FakeEngine
from spcs_llm.server import create_app

from ..conftest import SF_HEADERS, batch, fake_settings, in_process, wait_ready


async def test_chat_completion_openai_shape(client) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 10},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-model"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "echo:hi there"}, "finish_reason": "stop"}
    ]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


async def test_chat_completion_streams_sse(client) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": "a b"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo:a b"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_openai_errors_use_the_openai_body(client) -> None:
    r = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"content": "x"}]})
    assert r.status_code == 400
    assert r.json() == {
        "error": {"message": 'unknown model "nope"', "type": "unknown_model", "param": "model", "code": 400}
    }
    r = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "messages" in r.json()["error"]["message"]


async def test_models_lists_the_served_model_and_its_aliases(client) -> None:
    ids = {m["id"]: m["root"] for m in (await client.get("/v1/models")).json()["data"]}
    assert ids["fake-model"] == "fake-model" and ids["llama3.1-8b"] == "fake-model"


async def test_seed_envelope_on_the_chat_path(client, fake_engine) -> None:
    request = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "你好"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    r = await client.post("/v1/chat/completions", **batch([orjson.dumps(request).decode()], [request], [None]))
    assert r.status_code == 200
    assert r.json() == {"data": [[0, "echo:你好"], [1, "echo:你好"], [2, None]]}
    assert len(fake_engine.calls) == 1  # two identical greedy rows, one engine call


async def test_seed_envelope_errors_fail_the_batch_in_snowflake_form(client) -> None:
    r = await client.post("/v1/chat/completions", **batch(['{"model": "nope", "messages": [{"content": "x"}]}']))
    assert (r.status_code, r.text) == (400, 'unknown model "nope"')
    r = await client.post("/v1/chat/completions", **batch(["not json"]))
    assert (r.status_code, r.text) == (400, "the chat request is a string that is not valid JSON")


async def test_health_is_503_until_the_engine_is_ready() -> None:
    gate = asyncio.Event()

    class SlowEngine(FakeEngine):
        async def start(self) -> None:
            await gate.wait()
            await super().start()

    app = create_app(fake_settings(), engine=SlowEngine())
    async with in_process(app) as c:
        r = await c.get("/health")
        assert (r.status_code, r.json()["status"]) == (503, "loading")
        r = await c.post("/functions/complete", **batch(["fake-model", "x"]))
        assert (r.status_code, r.text) == (503, "the model is still loading")
        gate.set()
        await wait_ready(app)
        r = await c.get("/health")
        assert (r.status_code, r.json()["status"]) == (200, "ok")


async def test_health_reports_a_failed_start() -> None:
    class BrokenEngine(FakeEngine):
        async def start(self) -> None:
            raise RuntimeError("no GPU here")

    app = create_app(fake_settings(), engine=BrokenEngine())
    async with in_process(app) as c:
        for _ in range(100):
            if app.state.startup_error:
                break
            await asyncio.sleep(0.005)
        r = await c.get("/health")
        error = "cannot start the fake engine with model 'default': no GPU here"  # which model, and why
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": error}


async def test_metrics_count_rows_batches_errors_tokens(client) -> None:
    await client.post("/functions/complete", **batch(["fake-model", "a b"], ["fake-model", "a b"]))
    await client.post("/functions/complete", **batch(["nope", "x"]))
    await client.post("/functions/try_complete", **batch(["nope", "x"]))
    text = (await client.get("/metrics")).text
    for line in [
        'spcs_llm_rows_total{function="complete"} 3.0',
        'spcs_llm_batches_total{function="complete",status="200"} 1.0',
        'spcs_llm_batches_total{function="complete",status="400"} 1.0',
        'spcs_llm_batches_total{function="try_complete",status="200"} 1.0',
        'spcs_llm_errors_total{kind="unknown_model"} 2.0',
        'spcs_llm_tokens_total{direction="out"} 2.0',
        "spcs_llm_engine_requests_total 1.0",  # the two equal rows cost one call: the second was shared or cached
        "spcs_llm_queue_depth 0.0",
    ]:
        assert line in text, line
    shared = [
        line
        for line in text.splitlines()
        if line.startswith(("spcs_llm_dedup_hits_total ", 'spcs_llm_result_cache_hits_total{kind="chat"} '))
    ]
    assert sum(float(line.split()[-1]) for line in shared) == 1
    assert "spcs_llm_engine_latency_seconds_bucket" in text


async def test_logs_carry_snowflake_ids_and_no_text(client, capsys) -> None:
    logs.setup_logging("info")
    secret = "my secret customer text"
    await client.post("/functions/complete", **batch(["fake-model", secret], batch_id="b-1"))
    await client.post("/functions/complete", **batch(["fake-model", [{"content": secret}], {"bad": secret}]))
    err = capsys.readouterr().err
    events = [orjson.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in events if e["event"] == "batch"] == ["batch", "batch"]
    first = events[0]
    assert first["query_id"] == SF_HEADERS["sf-external-function-current-query-id"]
    assert first["batch_id"] == "b-1"
    assert (first["function"], first["rows"], first["status"]) == ("complete", 1, 200)
    assert secret not in err and "echo:" not in err
    logging.getLogger("spcs_llm").handlers.clear()


async def test_content_is_logged_only_when_switched_on(app, client, capsys) -> None:
    logs.setup_logging("info")
    app.state.settings.server.log_content = True
    await client.post("/functions/complete", **batch(["fake-model", "opted in"]))
    app.state.settings.server.log_content = False
    await client.post("/functions/complete", **batch(["fake-model", "not logged"]))
    events = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    batches = [e for e in events if e["event"] == "batch"]
    assert batches[0]["rows_in"] == [[0, "fake-model", "opted in"]] and batches[0]["values_out"] == ["echo:opted in"]
    assert "rows_in" not in batches[1] and "values_out" not in batches[1]
    logging.getLogger("spcs_llm").handlers.clear()
