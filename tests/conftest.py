from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from spcs_llm.client import PollingTransport
from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.server import create_app

SF_HEADERS = {
    "sf-external-function-format": "json",
    "sf-external-function-format-version": "1.0",
    "sf-external-function-current-query-id": "01b02bdf-0000-7b58-0003-27d60056b5a6",
    "sf-external-function-query-batch-id": "01b02bdf-0001-7b58-0003-27d60056b5a6:1:1:0:0",
    "content-type": "application/json",
}


_batch_numbers = itertools.count()


def post_batch_like_snowflake(url: str, content: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST one batch as Snowflake does, polling with GETs while the service answers 202 (its asynchronous
    protocol, for batches held longer than ``async_after_secs``: on a loaded machine any batch may be)."""
    with httpx.Client(timeout=timeout, transport=PollingTransport()) as client:
        return client.post(url, content=content, headers=headers)


def sf_headers(batch_id: str | None = None, query_id: str | None = None) -> dict[str, str]:
    """Snowflake's headers for one batch. Each call gets its own batch id, as Snowflake gives each batch; pass
    ``batch_id`` to send a retry."""
    headers = dict(SF_HEADERS)
    headers["sf-external-function-query-batch-id"] = batch_id or f"01b02bdf-0001-7b58-{next(_batch_numbers)}:1:1:0:0"
    if query_id is not None:
        headers["sf-external-function-current-query-id"] = query_id
    return headers


def batch(
    *rows: list[Any], gzipped: bool = False, batch_id: str | None = None, query_id: str | None = None
) -> dict[str, Any]:
    """Request kwargs for a Snowflake batch whose rows are numbered 0..n-1 (see :func:`sf_headers`)."""
    body = orjson.dumps({"data": [[i, *r] for i, r in enumerate(rows)]})
    headers = sf_headers(batch_id, query_id)
    if gzipped:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    return {"content": body, "headers": headers}


async def wait_ready(app: Any) -> None:
    for _ in range(200):
        if app.state.runtime is not None:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"engine never became ready: {app.state.startup_error}")


@pytest.fixture(scope="session", autouse=True)
def _usage_db_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers started by tests (in process or as subprocesses) keep their usage history in a temporary file,
    never in the user's ~/.local/state."""
    os.environ["SPCS_LLM_USAGE_DB"] = str(tmp_path_factory.mktemp("usage") / "usage.sqlite3")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine("fake-model", context_window=64, max_concurrency=4)


@pytest.fixture
def fake_embedders() -> list[FakeEmbedder]:
    return [FakeEmbedder("fake-embed-768", 768), FakeEmbedder("fake-embed-1024", 1024)]


@pytest.fixture
def settings() -> Settings:
    return Settings.load(
        overrides={"engine": {"kind": "fake", "max_output_tokens": 32}, "server": {"max_queue_rows": 1000}}
    )


@contextlib.asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and give an HTTP client that talks to it over ASGI."""
    async with LifespanManager(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield c


def fake_settings(**engine: Any) -> Settings:
    return Settings.load(overrides={"engine": {"kind": "fake", **engine}}).model_copy(update={"embeddings": []})


@pytest.fixture
async def app(settings: Settings, fake_engine: FakeEngine, fake_embedders: list[FakeEmbedder]) -> AsyncIterator[Any]:
    application = create_app(settings, engine=fake_engine, embedders=fake_embedders)
    async with LifespanManager(application):
        await wait_ready(application)
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        yield c
