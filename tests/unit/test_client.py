"""The client side of Snowflake's asynchronous protocol: a POST answered 202 is polled with GETs (same URL, same
batch id, no body) until it is answered, by every client of /functions that is not Snowflake itself."""

from __future__ import annotations

import httpx

from spcs_llm.client import AsyncPollingTransport, BatchClient, PollingTransport
from spcs_llm.config import Settings
from spcs_llm.engines import FakeEngine
from spcs_llm.server import create_app

BATCH = {"sf-external-function-query-batch-id": "q:1"}


def _pending_twice() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202) if len(seen) < 3 else httpx.Response(200, json={"data": [[0, "done"]]})

    return httpx.MockTransport(handler), seen


def test_a_202_is_polled_with_gets_carrying_the_batch_id_until_answered() -> None:
    mock, seen = _pending_twice()
    with httpx.Client(transport=PollingTransport(mock)) as client:
        r = client.post("http://t/functions/complete", json={"data": [[0, "m", "x"]]}, headers=BATCH)
    assert r.status_code == 200 and r.json() == {"data": [[0, "done"]]}
    assert [q.method for q in seen] == ["POST", "GET", "GET"]
    assert all(q.headers["sf-external-function-query-batch-id"] == "q:1" for q in seen)
    assert seen[1].content == b"" and seen[1].url == seen[0].url


async def test_the_async_transport_polls_the_same_way() -> None:
    mock, seen = _pending_twice()
    async with httpx.AsyncClient(transport=AsyncPollingTransport(mock)) as client:
        r = await client.post("http://t/functions/complete", json={"data": []}, headers=BATCH)
    assert r.status_code == 200 and [q.method for q in seen] == ["POST", "GET", "GET"]


def test_batch_client_answers_through_the_servers_202_protocol() -> None:
    # every batch held longer than 0 s is answered 202: the rows still come back, in order
    settings = Settings.load(overrides={"engine": {"kind": "fake"}, "server": {"async_after_secs": 0}}).model_copy(
        update={"embeddings": []}
    )
    app = create_app(settings, engine=FakeEngine("fake-model", context_window=4096, delay=0.05), embedders=[])
    with BatchClient(app=app, max_batch_rows=4) as client:
        values = client.call("complete", [("llama3.1-8b", f"row {i}") for i in range(10)])
        polls = app.state.metrics.render().decode()
    assert values == [f"echo:row {i}" for i in range(10)]
    ready = next(line for line in polls.splitlines() if line.startswith('spcs_llm_async_polls_total{outcome="ready"}'))
    assert float(ready.split()[-1]) >= 1  # answered through polling GETs, not on the POST
