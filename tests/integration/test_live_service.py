"""The real service, the real SmolLM2 model, real Snowflake-shaped batches and the official openai SDK."""

from __future__ import annotations

import gzip
import json

import httpx
import openai
import orjson
import pytest

from ..conftest import SF_HEADERS, sf_headers
from .conftest import CTX_PER_SLOT, MAX_OUTPUT_TOKENS, LiveServer

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"


def post_batch(
    http: httpx.Client, fn: str, rows: list[list], *, gzipped: bool = False, batch_id: str | None = None
) -> httpx.Response:
    body = orjson.dumps({"data": [[i, *r] for i, r in enumerate(rows)]})
    headers = sf_headers(batch_id)
    if gzipped:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    return http.post(f"/functions/{fn}", content=body, headers=headers)


def test_health_and_models(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok", "model": MODEL, "engine": "llamacpp"}
    ids = {m["id"]: m["root"] for m in http.get("/v1/models").json()["data"]}
    assert ids[MODEL] == MODEL and ids["llama3.1-8b"] == MODEL


def test_complete_answers_every_row_in_order_with_nulls_and_unicode(http: httpx.Client) -> None:
    rows = [
        ["llama3.1-8b", "What is the capital of France?"],
        [MODEL, None],
        ["mistral-7b", "用中文说你好 🙂"],
        [None, "x"],
        [MODEL, "Name a colour. 🎨"],
    ]
    r = post_batch(http, "complete", rows)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    data = r.json()["data"]
    assert [n for n, _ in data] == [0, 1, 2, 3, 4]
    assert data[1][1] is None and data[3][1] is None
    for i in (0, 2, 4):
        assert isinstance(data[i][1], str) and data[i][1].strip(), data[i]


def test_greedy_answers_are_reproducible_across_batches(http: httpx.Client) -> None:
    rows = [[MODEL, "Say one word."]]
    assert post_batch(http, "complete", rows).json() == post_batch(http, "complete", rows).json()


def test_200_row_batch_with_duplicates_is_answered_in_order(http: httpx.Client) -> None:
    prompts = [f"Count to {i % 20}." for i in range(200)]
    rows = [[MODEL, [{"role": "user", "content": p}], {"max_tokens": 6}] for p in prompts]
    before = _metric(http, "spcs_llm_engine_requests_total")
    r = post_batch(http, "complete", rows)
    assert r.status_code == 200
    data = r.json()["data"]
    assert [n for n, _ in data] == list(range(200))
    texts = [json.loads(v)["choices"][0]["messages"] for _, v in data]
    for i in range(200):
        assert texts[i] == texts[i % 20]  # identical greedy rows have identical answers
    assert _metric(http, "spcs_llm_engine_requests_total") - before == 20  # computed once each


def test_options_form_returns_cortex_json(http: httpx.Client) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    r = post_batch(http, "complete", [["llama3.1-8b", messages, {"temperature": 0, "max_tokens": 5}]])
    out = json.loads(r.json()["data"][0][1])
    assert list(out) == ["choices", "created", "model", "usage"]
    assert isinstance(out["choices"][0]["messages"], str) and out["model"] == MODEL
    u = out["usage"]
    assert 1 <= u["completion_tokens"] <= 5 and u["prompt_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_sampling_options_are_honoured(http: httpx.Client) -> None:
    row = [MODEL, [{"role": "user", "content": "Write a short poem about rain."}], {"temperature": 1, "top_p": 1}]
    outs = {json.loads(v)["choices"][0]["messages"] for _, v in post_batch(http, "complete", [row] * 4).json()["data"]}
    assert len(outs) > 1  # sampled rows are computed separately and differ


def test_output_is_capped(http: httpx.Client) -> None:
    row = [MODEL, [{"role": "user", "content": "Tell a very long story."}], {"max_tokens": 100000}]
    out = json.loads(post_batch(http, "complete", [row]).json()["data"][0][1])
    assert out["usage"]["completion_tokens"] <= MAX_OUTPUT_TOKENS


def test_try_complete_nulls_failed_rows(http: httpx.Client) -> None:
    rows = [
        [MODEL, "Hi"],
        ["gpt-9", "Hi"],
        [MODEL, [{"content": "Hi"}], {"nope": 1}],
        [MODEL, "word " * (CTX_PER_SLOT + 10)],
        [MODEL, "Bye"],
    ]
    data = post_batch(http, "try_complete", rows).json()["data"]
    assert [v is None for _, v in data] == [False, True, True, True, False]


@pytest.mark.parametrize(
    ("row", "status", "message"),
    [
        (["gpt-9", "Hi"], 400, 'unknown model "gpt-9"'),
        ([MODEL, [{"content": "Hi"}], {"temperature": 3}], 400, "invalid options object"),
        ([MODEL, [{"role": "wizard", "content": "Hi"}], {}], 400, "invalid prompt object"),
        ([MODEL, "word " * (CTX_PER_SLOT + 10)], 400, f"max tokens of {CTX_PER_SLOT} exceeded"),
    ],
)
def test_cortex_errors(http: httpx.Client, row, status, message) -> None:
    r = post_batch(http, "complete", [[MODEL, "Hi"], row])
    assert (r.status_code, r.text) == (status, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body is not JSON"),
        (b'{"rows": []}', 'request body must be a JSON object with a "data" array'),
        (b'{"data": [["a", "m", "p"]]}', "row 0 must be an array starting with its integer row number"),
        (b'{"data": [[0, "m"]]}', "row 0 has 1 arguments; COMPLETE takes 2 or 3"),
    ],
)
def test_bad_envelopes(http: httpx.Client, body: bytes, message: str) -> None:
    r = http.post("/functions/complete", content=body, headers=SF_HEADERS)
    assert r.status_code == 400 and r.text.startswith(message)


def test_gzip_body(http: httpx.Client) -> None:
    r = post_batch(http, "complete", [[MODEL, "Hello"]], gzipped=True)
    assert r.status_code == 200 and isinstance(r.json()["data"][0][1], str)


def test_seed_qwen_complete_payload(http: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "What is 1+1?"}], "max_tokens": 8}
    r = http.post("/v1/chat/completions", json={"data": [[0, json.dumps(chat)]]}, headers=SF_HEADERS)
    assert r.status_code == 200
    [[row, text]] = r.json()["data"]
    assert row == 0 and isinstance(text, str) and text


def test_openai_sdk(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key="unused", max_retries=0)
    assert MODEL in {m.id for m in client.models.list()}
    out = client.chat.completions.create(
        model="llama3.1-8b", max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Say hi"}]
    )
    assert out.model == MODEL and out.choices[0].message.content
    assert out.usage is not None and 1 <= out.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model=MODEL,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hi"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content  # same greedy answer, streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])


def test_metrics_and_logs(http: httpx.Client, live_server: LiveServer) -> None:
    secret = "the secret launch code is 7431"
    post_batch(http, "complete", [[MODEL, secret]], batch_id="metrics-and-logs-batch")
    # two rows of one function, one after the other: the second reuses the instruction from llama.cpp's cache
    for text in ("The delivery was late and the box was crushed.", "Lovely staff, spotless room, great view."):
        assert post_batch(http, "sentiment", [[text]]).status_code == 200
    text = http.get("/metrics").text
    for name in (
        "spcs_llm_rows_total",
        "spcs_llm_batches_total",
        "spcs_llm_tokens_total",
        "spcs_llm_engine_latency_seconds_bucket",
        "spcs_llm_queue_depth",
        "llamacpp:prompt_tokens_total",
    ):
        assert name in text, name
    cached = next(line for line in text.splitlines() if line.startswith("spcs_llm_prompt_tokens_cached_total "))
    assert float(cached.split()[1]) > 0
    log = live_server.log()
    assert '"event":"batch"' in log and "metrics-and-logs-batch" in log
    assert secret not in log and "7431" not in log


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
