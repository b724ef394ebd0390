"""Usage metering end to end in process: attribution from Snowflake's real header names, the history across a
restart, GET /usage, Prometheus, and budgets with Cortex's ``budget exceeded`` on every surface."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEngine
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.errors import BudgetExceeded
from spcs_llm.server import create_app
from spcs_llm.server import openai as openai_wire
from spcs_llm.server import snowflake as snowflake_wire
from spcs_llm.usage.meter import caller_name

from ..conftest import batch, in_process, wait_ready

M = "llama3.1-8b"
QUERY_ID = "01b02bdf-0000-7b58-0003-27d60056b5a6"


def usage_settings(db: Path, budgets: list[dict[str, Any]] | None = None, **usage: Any) -> Settings:
    return Settings.model_validate(
        {
            "engine": {"kind": "fake", "max_output_tokens": 32},
            "embeddings": [],
            "usage": {"db_path": str(db), "flush_seconds": 3600, **usage},
            "budgets": budgets or [],
        }
    )


def sf_batch(
    *rows: list[Any], user: str = "ALICE", role: str = "ANALYST", query_id: str = QUERY_ID, base64_user: bool = False
) -> dict[str, Any]:
    """A Snowflake batch carrying CONTEXT_HEADERS = (CURRENT_USER, CURRENT_ROLE), as the deploy declares them."""
    kwargs = batch(*rows, query_id=query_id)
    kwargs["headers"]["sf-context-current-role"] = role
    if base64_user:  # the plain header has illegal characters blanked; the -base64 one is exact
        kwargs["headers"]["sf-context-current-user"] = user.encode("ascii", "replace").decode()
        kwargs["headers"]["sf-context-current-user-base64"] = base64.b64encode(user.encode()).decode()
    else:
        kwargs["headers"]["sf-context-current-user"] = user
    return kwargs


async def engine_tokens(prompt: str) -> tuple[int, int]:
    """What the fake engine reports for COMPLETE(model, prompt) (one user message, greedy)."""
    result = await FakeEngine().chat(ChatRequest(messages=(Message("user", prompt),), max_tokens=32, temperature=0.0))
    return result.usage.prompt_tokens, result.usage.completion_tokens


async def usage_rows(client: httpx.AsyncClient, by: str, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/usage", params={"by": by, **params})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


async def test_rows_and_tokens_are_counted_against_the_snowflake_context_headers(tmp_path: Path) -> None:
    engine = FakeEngine("fake-model", max_concurrency=4)
    app = create_app(usage_settings(tmp_path / "u.db"), engine=engine, embedders=[])
    prompts = ["alpha beta", "gamma delta epsilon", "secret customer text"]
    async with in_process(app) as c:
        await wait_ready(app)
        r = await c.post("/functions/complete", **sf_batch(*[["llama3.1-8b", p] for p in prompts]))
        assert r.status_code == 200
        r = await c.post(
            "/functions/try_complete",
            **sf_batch(["no-such-model", "x"], ["llama3.1-8b", "one"], user="BOB", role="ADMIN", query_id="q2"),
        )
        assert r.status_code == 200 and r.json()["data"][0] == [0, None]
        rows = await usage_rows(c, "user,role,query_id,function,model")
    expected = [await engine_tokens(p) for p in prompts]
    by_user = {r["user"]: r for r in rows}
    alice = by_user["ALICE"]
    assert (alice["role"], alice["query_id"], alice["function"], alice["model"]) == (
        "ANALYST",
        QUERY_ID,
        "complete",
        "fake-model",
    )
    assert alice["rows"] == 3 and alice["errors"] == 0 and alice["engine_calls"] == 3
    assert alice["input_tokens"] == sum(i for i, _ in expected) > 0
    assert alice["output_tokens"] == sum(o for _, o in expected) > 0
    assert alice["busy_seconds"] > 0
    bob = by_user["BOB"]
    assert (bob["role"], bob["query_id"], bob["function"]) == ("ADMIN", "q2", "try_complete")
    assert bob["rows"] == 2 and bob["errors"] == 1 and bob["engine_calls"] == 1  # the bad row cost no engine call
    history = (
        (tmp_path / "u.db").read_bytes() + (tmp_path / "u.db-wal").read_bytes()
        if (tmp_path / "u.db-wal").exists()
        else (tmp_path / "u.db").read_bytes()
    )
    assert b"secret customer text" not in history and b"echo:" not in history  # counts and names only


async def test_cached_prompt_tokens_and_the_base64_user_header(tmp_path: Path) -> None:
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[])
    user = "JOSÉ.O'BRIEN"
    options = {"max_tokens": 8}
    messages = [{"role": "system", "content": "be brief please"}, {"role": "user", "content": "hi"}]
    async with in_process(app) as c:
        await wait_ready(app)
        for text in ("hi", "there"):  # the second call reuses the system message: the fake reports it cached
            messages[1]["content"] = text
            r = await c.post("/functions/complete", **sf_batch([M, messages, options], user=user, base64_user=True))
            assert r.status_code == 200
        (row,) = await usage_rows(c, "user")
    assert row["user"] == user
    assert row["cached_tokens"] > 0


async def test_openai_callers_are_anonymous_without_a_key_and_named_with_one(tmp_path: Path) -> None:
    class State:
        api_key_name = "team-etl"

    assert caller_name(State()) == "team-etl"
    assert caller_name(object()) == "anonymous"
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=c)
        await client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hello"}])
        stream = await client.chat.completions.create(
            model="fake-model", stream=True, messages=[{"role": "user", "content": "streamed words"}]
        )
        async for _ in stream:
            pass
        rows = await usage_rows(c, "user,function")
    (row,) = rows
    assert (row["user"], row["function"]) == ("anonymous", "chat.completions")
    assert row["rows"] == 2 and row["engine_calls"] == 2 and row["input_tokens"] > 0


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    for run in range(2):
        app = create_app(usage_settings(db), engine=FakeEngine(), embedders=[])
        async with in_process(app) as c:
            await wait_ready(app)
            r = await c.post("/functions/complete", **sf_batch([M, f"run {run}"], [M, "again"]))
            assert r.status_code == 200
        # leaving the lifespan wrote the last interval
    app = create_app(usage_settings(db), engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        (row,) = await usage_rows(c, "user")
    assert row["rows"] == 4 and row["engine_calls"] == 4  # both runs, counted once each


async def test_get_usage_json_csv_windows_and_errors(tmp_path: Path) -> None:
    app = create_app(usage_settings(tmp_path / "u.db", credits_per_node_hour=2.0), engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        await c.post("/functions/complete", **sf_batch([M, "one two"]))
        await c.post("/functions/complete", **sf_batch([M, "three"], user="CAROL", role="OPS"))
        body = (await c.get("/usage", params={"by": "role,day"})).json()
        assert {r["role"] for r in body["rows"]} == {"ANALYST", "OPS"}
        assert body["credits_per_node_hour"] == 2.0
        total = (await c.get("/usage")).json()["rows"]
        assert len(total) == 1 and total[0]["rows"] == 2
        assert total[0]["credits"] == pytest.approx(total[0]["node_seconds"] / 3600 * 2.0, rel=1e-4)
        text = (await c.get("/usage", params={"by": "user", "format": "csv"})).text
        table = list(csv.DictReader(io.StringIO(text)))
        assert {"ALICE", "CAROL"} <= {r["user"] for r in table}
        assert (await c.get("/usage", params={"until": "2000-01-01"})).json()["rows"] == []
        bad = await c.get("/usage", params={"by": "prompt"})
        assert bad.status_code == 400 and "cannot group by prompt" in bad.text
        bad = await c.get("/usage", params={"since": "last tuesday"})
        assert bad.status_code == 400 and "cannot read the time" in bad.text


async def test_prometheus_counts_by_function_and_model_never_by_user(tmp_path: Path) -> None:
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        await c.post("/functions/complete", **sf_batch([M, "count me"]))
        app.state.usage.flush()
        text = (await c.get("/metrics")).text
    assert 'spcs_llm_usage_rows_total{function="complete",model="fake-model"} 1.0' in text
    assert 'spcs_llm_usage_tokens_total{direction="in",function="complete",model="fake-model"}' in text
    assert "ALICE" not in text and "ANALYST" not in text


# -- budgets ---------------------------------------------------------------------------------------------------


async def test_budget_exceeded_on_every_surface(tmp_path: Path) -> None:
    app = create_app(
        usage_settings(tmp_path / "u.db", budgets=[{"role": "analyst", "tokens": 5}]), engine=FakeEngine(), embedders=[]
    )
    async with in_process(app) as c:
        await wait_ready(app)
        first = await c.post("/functions/complete", **sf_batch([M, "spend the whole budget here"]))
        assert first.status_code == 200  # started under budget: it finishes (the overshoot)
        legacy = await c.post("/functions/complete", **sf_batch([M, "more"]))
        assert (legacy.status_code, legacy.text) == (402, "budget exceeded")  # not retried by Snowflake
        tried = await c.post("/functions/try_complete", **sf_batch([M, "more"], [M, "still more"]))
        assert tried.status_code == 200 and tried.json()["data"] == [[0, None], [1, None]]
        ai = await c.post("/functions/ai_complete", **sf_batch([M, "more"]))
        assert ai.json()["data"] == [[0, None]]
        other = await c.post("/functions/complete", **sf_batch([M, "more"], role="OPS"))
        assert other.status_code == 200  # another role's calls are not covered
        body = (await c.get("/usage")).json()
        assert body["budgets"][0]["spent"] > 5
    assert BudgetExceeded().status == 402  # the REST surface (#14) answers with the error's own status
    assert snowflake_wire.error_response(BudgetExceeded()).status_code == 402


async def test_openai_gets_429_with_budget_exceeded(tmp_path: Path) -> None:
    app = create_app(
        usage_settings(tmp_path / "u.db", budgets=[{"user": "anonymous", "tokens": 1}]),
        engine=FakeEngine(),
        embedders=[],
    )
    async with in_process(app) as c:
        await wait_ready(app)
        client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=c, max_retries=0)
        messages = [{"role": "user", "content": "hello there"}]
        await client.chat.completions.create(model="fake-model", messages=messages)
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="fake-model", messages=messages, stream=stream)
            assert caught.value.status_code == 429 and caught.value.body["message"] == "budget exceeded"
    body = openai_wire.error_body(BudgetExceeded())
    assert body["error"]["code"] == 429 and body["error"]["type"] == "budget_exceeded"


async def test_spent_budget_is_remembered_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    settings = usage_settings(db, budgets=[{"function": "COMPLETE", "tokens": 3, "period": "month"}])
    app = create_app(settings, engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        assert (await c.post("/functions/complete", **sf_batch([M, "a b c d"]))).status_code == 200
    app = create_app(settings, engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        r = await c.post("/functions/complete", **sf_batch([M, "new prompt"]))
        assert (r.status_code, r.text) == (402, "budget exceeded")


async def test_overshoot_under_concurrent_batches_stays_within_the_calls_in_flight(tmp_path: Path) -> None:
    """Many batches at once against a service-wide budget: once it is spent no call starts, so the total is at
    most the budget plus what was in flight (max_concurrency calls of at most ``per_call`` tokens each)."""
    concurrency, budget = 4, 60
    engine = FakeEngine(max_concurrency=concurrency, delay=0.01)
    settings = usage_settings(tmp_path / "u.db", budgets=[{"tokens": budget}])
    settings.server.max_concurrency = concurrency
    settings.server.max_queue_seconds = 0  # admit every batch at once: the budget is what stops them
    app = create_app(settings, engine=engine, embedders=[])
    prompts = [[f"row{b}x{i} two three" for i in range(8)] for b in range(12)]  # all different: no sharing
    per_call = sum(await engine_tokens(prompts[0][0]))
    async with in_process(app) as c:
        await wait_ready(app)
        answers = await asyncio.gather(
            *(c.post("/functions/try_complete", **sf_batch(*[[M, p] for p in ps])) for ps in prompts)
        )
        body = (await c.get("/usage")).json()
    values = [v for a in answers for _, v in a.json()["data"]]
    (total,) = body["rows"]
    spent = total["input_tokens"] + total["output_tokens"]
    assert engine.peak_in_flight <= concurrency
    assert {sum(await engine_tokens(p)) for ps in prompts for p in ps} == {per_call}
    assert spent >= budget  # the budget was reached ...
    assert spent <= budget - 1 + concurrency * per_call  # ... and overshot by at most the calls in flight
    assert len(engine.calls) == spent // per_call
    assert values.count(None) == len(values) - len(engine.calls) > 0  # every other row: budget exceeded → NULL


def test_budgets_need_metering_and_export_on_needs_spcs(tmp_path: Path) -> None:
    from spcs_llm.config import ConfigError

    with pytest.raises(ConfigError, match="need usage metering"):
        create_app(usage_settings(tmp_path / "u.db", budgets=[{"tokens": 5}], enabled=False), engine=FakeEngine())
    with pytest.raises(ConfigError, match="needs the SPCS session"):
        create_app(usage_settings(tmp_path / "u.db", export="on"), engine=FakeEngine())
    assert create_app(usage_settings(tmp_path / "u.db", enabled=False), engine=FakeEngine()).state.usage is None


def test_sqlite_file_holds_one_row_per_interval_and_key(tmp_path: Path) -> None:
    """The schema's primary key is what makes a retried interval write idempotent."""
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[])
    service = app.state.usage
    service.meter.rows(
        type("A", (), {"user": "u", "role": "r", "query_id": "q", "function": "f", "model": "m"})(), 3, 0
    )
    service.collect()
    interval = service._unwritten[0]
    service.write_pending()
    service.store.write(interval)  # the same interval again (a retry after an unclear failure)
    rows = sqlite3.connect(tmp_path / "u.db").execute("SELECT flush_id, rows FROM usage WHERE user='u'").fetchall()
    assert rows == [(interval.flush_id, 3)]
    service.store.close()


def test_budget_error_message_matches_cortex() -> None:
    assert orjson.loads(openai_wire.error_response(BudgetExceeded()).body)["error"]["message"] == "budget exceeded"


async def test_embedding_rows_count_against_the_embedding_model(tmp_path: Path) -> None:
    from spcs_llm.engines import FakeEmbedder

    app = create_app(
        usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[FakeEmbedder("fake-embed-768", 768)]
    )
    async with in_process(app) as c:
        await wait_ready(app)
        r = await c.post(
            "/functions/embed_text_768", **sf_batch(["e5-base-v2", "one"], ["e5-base-v2", "two"], ["e5-base-v2", "one"])
        )
        assert r.status_code == 200
        rows = await usage_rows(c, "function,model")
    (row,) = rows
    assert (row["function"], row["model"], row["rows"]) == ("embed_text_768", "fake-embed-768", 3)
    assert row["engine_calls"] == 2  # the repeated text joined the first one's embedding
    assert row["input_tokens"] == 2  # one token (the fake's words) for each text embedded: "one" once, "two"
    assert row["output_tokens"] == 0 and row["busy_seconds"] > 0


async def test_embedding_input_tokens_are_what_the_model_read_and_cached_texts_cost_nothing(tmp_path: Path) -> None:
    """Input tokens are the embedder's own count of what it read: truncated texts count ``max_input_tokens``.
    A text answered from the cache makes no engine work and counts no tokens, as a cached chat answer."""
    from spcs_llm.engines import FakeEmbedder

    embedder = FakeEmbedder("fake-embed-768", 768, max_input_tokens=4)
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[embedder])
    long = "w " * 10  # 10 words, read as 4
    async with in_process(app) as c:
        await wait_ready(app)
        rows = (["e5-base-v2", "a b c"], ["e5-base-v2", long], ["e5-base-v2", "x"])
        assert (await c.post("/functions/embed_text_768", **sf_batch(*rows))).status_code == 200
        first = await usage_rows(c, "function")
        again = await c.post("/functions/embed_text_768", **sf_batch(*rows, query_id="q2"))
        assert again.status_code == 200
        both = await usage_rows(c, "query_id")
    assert first[0]["input_tokens"] == 3 + 4 + 1 and first[0]["engine_calls"] == 3
    (cached,) = [r for r in both if r["query_id"] == "q2"]
    assert (cached["rows"], cached["input_tokens"], cached["engine_calls"]) == (3, 0, 0)
    assert embedder.calls == [["a b c", long, "x"]]  # the second query was answered from the cache


async def test_a_token_budget_refuses_embeddings_on_every_surface(tmp_path: Path) -> None:
    """Embedding tokens spend token budgets like chat tokens: once the role's budget is spent, the legacy function
    fails its batch with Cortex's ``budget exceeded`` (402), AI_EMBED answers NULL, /v1/embeddings 429 and the
    Cortex REST embed 402, all before any text is embedded."""
    from spcs_llm.engines import FakeEmbedder

    embedder = FakeEmbedder("fake-embed-768", 768)
    settings = usage_settings(
        tmp_path / "u.db", budgets=[{"role": "ANALYST", "tokens": 5}, {"user": "anonymous", "tokens": 3}]
    )
    app = create_app(settings, engine=FakeEngine(), embedders=[embedder])
    async with in_process(app) as c:
        await wait_ready(app)
        first = await c.post("/functions/embed_text_768", **sf_batch(["e5-base-v2", "one two three four five six"]))
        assert first.status_code == 200  # started under budget: it finishes (6 tokens: the overshoot)
        legacy = await c.post("/functions/embed_text_768", **sf_batch(["e5-base-v2", "more"]))
        assert (legacy.status_code, legacy.text) == (402, "budget exceeded")
        ai = await c.post("/functions/ai_embed", **sf_batch(["e5-base-v2", "more"]))
        assert ai.status_code == 200 and ai.json()["data"] == [[0, None]]
        other = await c.post("/functions/embed_text_768", **sf_batch(["e5-base-v2", "more"], role="OPS"))
        assert other.status_code == 200  # another role is not covered

        client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=c, max_retries=0)
        spent = await client.embeddings.create(model="fake-embed-768", input=["a b c", "d"])
        assert spent.usage.prompt_tokens == 4  # over the anonymous budget of 3 now
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model="fake-embed-768", input="e")
        assert caught.value.body["message"] == "budget exceeded"
        rest = await c.post("/api/v2/cortex/inference:embed", json={"model": "fake-embed-768", "text": ["e"]})
        assert rest.status_code == 402 and b"budget exceeded" in rest.content
        budgets = [b["spent"] for b in (await c.get("/usage")).json()["budgets"]]
    assert budgets == [6, 4]  # in config order: the role's, the anonymous user's
    embedded = [t for call in embedder.calls for t in call]  # refused calls embedded nothing
    assert "e" not in embedded and embedded.count("more") == 1  # the OPS batch only


async def test_a_retried_batch_answered_from_memory_is_not_counted_again(tmp_path: Path) -> None:
    app = create_app(usage_settings(tmp_path / "u.db"), engine=FakeEngine(), embedders=[])
    async with in_process(app) as c:
        await wait_ready(app)
        kwargs = sf_batch([M, "once"], [M, "twice"])
        for _ in range(3):  # Snowflake resends the same batch id when an answer is lost on the way
            assert (await c.post("/functions/complete", **kwargs)).status_code == 200
        unknown = await c.post("/functions/complete", **sf_batch(["no-such-model", "x"], [M, "y"]))
        assert unknown.status_code == 400
        (row,) = await usage_rows(c, "user")
    assert (row["rows"], row["engine_calls"]) == (2, 2)  # a legacy batch with a bad row fails before any work
    assert row["errors"] == 2


async def test_cortex_rest_calls_are_attributed_and_refused_with_402_once_over_budget(tmp_path: Path) -> None:
    app = create_app(
        usage_settings(tmp_path / "u.db", budgets=[{"user": "anonymous", "tokens": 6}]),
        engine=FakeEngine(),
        embedders=[],
    )
    body = {"model": "fake-model", "messages": [{"content": "one two three"}], "stream": False}
    async with in_process(app) as c:
        await wait_ready(app)
        first = await c.post("/api/v2/cortex/inference:complete", json=body)
        assert first.status_code == 200
        refused = [
            await c.post("/api/v2/cortex/inference:complete", json={**body, "stream": stream})
            for stream in (False, True)
        ]
        rows = await usage_rows(c, "user,function")
    assert [r.status_code for r in refused] == [402, 402]
    assert all(b"budget exceeded" in r.content for r in refused)
    (row,) = rows
    assert (row["user"], row["function"]) == ("anonymous", "inference:complete")
    assert row["rows"] == 1 and row["errors"] == 2 and row["engine_calls"] == 1


async def test_scored_label_rows_are_metered_and_refused_once_over_budget(tmp_path: Path) -> None:
    """SENTIMENT reads its label in one scored step (label scoring): that engine call is counted like any other,
    and a spent budget refuses it before it starts, as it does a generated answer."""
    app = create_app(
        usage_settings(tmp_path / "u.db", budgets=[{"role": "ANALYST", "tokens": 1}]), engine=FakeEngine(), embedders=[]
    )
    headers = {"sf-context-current-user": "ALICE", "sf-context-current-role": "ANALYST"}
    async with in_process(app) as c:
        await wait_ready(app)
        first = batch(["the food was great"])
        first_ok = await c.post(
            "/functions/sentiment", content=first["content"], headers={**first["headers"], **headers}
        )
        again = batch(["the soup was cold"])
        refused = await c.post(
            "/functions/sentiment", content=again["content"], headers={**again["headers"], **headers}
        )
        rows = await usage_rows(c, "role,function")
    assert first_ok.status_code == 200
    assert refused.status_code == 402 and refused.text == "budget exceeded"
    (row,) = [r for r in rows if r["function"] == "sentiment"]
    assert row["role"] == "ANALYST" and row["engine_calls"] >= 1 and row["input_tokens"] > 0
