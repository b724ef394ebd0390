"""The API key (every route but /health; Bearer and Snowflake Token forms; OpenAI-shaped 401 on OpenAI routes) and
bounded input (413 on a body over the limit, declared or streamed or inflated; rows per batch; text per value)."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI

from spcs_llm.config import ConfigError, Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.server import create_app
from spcs_llm.server.auth import check_exposure, key_matches, presented_key, require_api_key
from spcs_llm.server.health import wait_healthy

from ..conftest import batch, in_process, wait_ready

KEY = "s3cret-key"
ROOT = Path(__file__).resolve().parents[2]


def make_app(**server: Any) -> FastAPI:
    settings = Settings.load(overrides={"engine": {"kind": "fake"}, "server": server})
    return create_app(
        settings.model_copy(update={"embeddings": []}),
        engine=FakeEngine(context_window=4096),
        embedders=[FakeEmbedder("fake-embed-768", 768)],
    )


@pytest.fixture
async def keyed() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = make_app(api_key=KEY)
    async with in_process(app) as client:
        await wait_ready(app)
        yield app, client


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- the API key -------------------------------------------------------------------------------------------------


async def test_health_is_open_everything_else_needs_the_key(keyed) -> None:
    _, client = keyed
    assert (await client.get("/health")).status_code == 200
    r = await client.post("/functions/sentiment", **batch(["good"]))
    assert r.status_code == 401 and "API key" in r.text and r.headers["www-authenticate"] == "Bearer"
    error = assert_openai_error(await client.get("/v1/models"), 401)
    assert error["type"] == "authentication_error" and error["code"] == 401
    assert_openai_error(await client.post("/v1/chat/completions", json={"messages": [{"content": "x"}]}), 401)
    assert_openai_error(await client.post("/tokenize", json={"prompt": "x"}), 401)
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/openapi.json")).status_code == 401
    assert (await client.post("/no/such/route")).status_code == 401  # nothing about the app leaks without a key


@pytest.mark.parametrize(
    "header", [f"Bearer {KEY}", f"bearer  {KEY} ", f'Snowflake Token="{KEY}"', f"Snowflake Token={KEY}"]
)
async def test_the_accepted_header_forms(keyed, header: str) -> None:
    _, client = keyed
    r = await client.post("/functions/sentiment", **_with(batch(["good"]), authorization=header))
    assert r.status_code == 200 and orjson.loads(r.content)["data"][0][0] == 0
    assert (await client.get("/v1/models", headers={"authorization": header})).status_code == 200


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer wrong", f"Bearer {KEY}x", f"Basic {KEY}", KEY, f'Snowflake Token="{KEY[:-1]}"']
)
async def test_a_wrong_or_missing_key_is_401(keyed, header: str) -> None:
    _, client = keyed
    r = await client.post("/functions/sentiment", **_with(batch(["good"]), authorization=header))
    assert r.status_code == 401


def _with(kwargs: dict[str, Any], **headers: str) -> dict[str, Any]:
    return {**kwargs, "headers": {**kwargs["headers"], **headers}}


async def test_the_official_openai_client_sees_401_then_works(keyed) -> None:
    app, _ = keyed
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t/v1") as http:
        wrong = openai.AsyncOpenAI(api_key="nope", base_url="http://t/v1", http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await wrong.models.list()
        assert "API key" in str(info.value)
        right = openai.AsyncOpenAI(api_key=KEY, base_url="http://t/v1", http_client=http, max_retries=0)
        answer = await right.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "echo:hi"


async def test_require_api_key_is_a_reusable_dependency() -> None:
    """The dependency form, for a router mounted elsewhere (e.g. Cortex REST routes)."""
    router = APIRouter(dependencies=[Depends(require_api_key)])

    @router.get("/api/v2/cortex/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    app = make_app(api_key=KEY)
    app.include_router(router)
    app.user_middleware.clear()  # only the dependency guards it now
    app.middleware_stack = app.build_middleware_stack()
    async with in_process(app) as client:
        assert (await client.get("/api/v2/cortex/ping")).status_code == 401
        r = await client.get("/api/v2/cortex/ping", headers={"authorization": f'Snowflake Token="{KEY}"'})
        assert r.status_code == 200


def test_key_parsing_and_comparison() -> None:
    assert presented_key(f"Bearer {KEY}") == KEY and presented_key(f'Snowflake Token="{KEY}"') == KEY
    assert presented_key(None) is None and presented_key("Bearer ") is None and presented_key("Token x") is None
    assert key_matches(KEY, f"Bearer {KEY}") and not key_matches(KEY, "Bearer s3cret-ke")


def test_no_key_means_no_check() -> None:
    app = make_app()
    assert not any("ApiKey" in str(m.cls) for m in app.user_middleware)


@pytest.mark.parametrize(
    ("host", "extra", "refused"),
    [
        ("0.0.0.0", {}, True),
        ("::", {}, True),
        ("10.1.2.3", {}, True),
        ("myhost.example", {}, True),
        ("0.0.0.0", {"api_key": KEY}, False),
        ("0.0.0.0", {"allow_unauthenticated": True}, False),
        ("127.0.0.1", {}, False),
        ("127.0.0.2", {}, False),
        ("::1", {}, False),
        ("localhost", {}, False),
    ],
)
def test_a_non_loopback_host_needs_a_key_or_an_explicit_opt_out(
    host: str, extra: dict[str, Any], refused: bool
) -> None:
    server = Settings.load(overrides={"server": {"host": host, **extra}}).server
    if refused:
        with pytest.raises(ConfigError, match="--allow-unauthenticated"):
            check_exposure(server)
    else:
        check_exposure(server)


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPCS_LLM_API_KEY", KEY)
    settings = Settings.load()
    assert settings.server.api_key == KEY and KEY not in repr(settings)  # never printed with the settings


# --- bounded input -----------------------------------------------------------------------------------------------


@pytest.fixture
async def small() -> AsyncIterator[httpx.AsyncClient]:
    """Limits small enough to cross cheaply: 64 KiB per body, 50 rows per batch, 1000 characters per text."""
    app = make_app(max_request_mb=1 / 16, max_batch_rows=50, max_text_chars=1000)
    async with in_process(app) as client:
        await wait_ready(app)
        yield client


async def test_a_declared_body_over_the_limit_is_413(small) -> None:
    rows = [["x" * 500] for _ in range(200)]
    r = await small.post("/functions/sentiment", **batch(*rows))
    assert r.status_code == 413 and "server.max_request_mb" in r.text and "0.0625 MB" in r.text
    big_chat = {"messages": [{"role": "user", "content": "x" * 100_000}]}
    assert_openai_error(await small.post("/v1/chat/completions", json=big_chat), 413)


async def test_a_streamed_body_over_the_limit_is_413(small) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        nonlocal sent
        yield b'{"data": ['
        for i in range(10_000):
            sent += 1
            yield orjson.dumps([i, "y" * 100]) + b","
        yield b'[10000, "z"]]}'

    r = await small.post("/functions/sentiment", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "server.max_request_mb" in r.text
    assert sent < 10_000  # refused as soon as the limit was passed, not after reading it all


async def test_a_small_gzip_body_that_inflates_over_the_limit_is_413(small) -> None:
    body = gzip.compress(orjson.dumps({"data": [[0, "a" * 10_000_000]]}))
    assert len(body) < 64 * 1024
    r = await small.post("/functions/sentiment", content=body, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "server.max_request_mb" in r.text


async def test_too_many_rows_is_400_naming_the_setting(small) -> None:
    r = await small.post("/functions/sentiment", **batch(*[["ok"]] * 51))
    assert r.status_code == 400 and "51 rows" in r.text and "server.max_batch_rows" in r.text
    assert "MAX_BATCH_ROWS" in r.text
    assert (await small.post("/functions/sentiment", **batch(*[["ok"]] * 50))).status_code == 200


async def test_a_text_over_the_limit_is_that_rows_error(small) -> None:
    r = await small.post("/functions/complete", **batch(["fake-model", "y" * 1001]))
    assert r.status_code == 400 and "1001 characters" in r.text and "server.max_text_chars" in r.text
    r = await small.post("/functions/ai_complete", **batch(["fake-model", "y" * 1001], ["fake-model", "ok"]))
    assert r.status_code == 200 and [v for _, v in orjson.loads(r.content)["data"]] == [None, "echo:ok"]
    r = await small.post("/functions/ai_agg", **batch([["short", "z" * 1001], "sum up"]))  # an ARRAY's elements too
    assert r.status_code == 200 and orjson.loads(r.content)["data"] == [[0, None]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_1_gb_upload_to_the_real_server_is_refused_at_once(tmp_path: Path) -> None:
    """Over a real socket to `spcs-llm serve`: a declared 1 GB body is answered 413 after a few MB were sent, and
    the server keeps serving. (Its memory during such uploads is measured by bench/bench_limits.py.)"""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SPCS_LLM_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "spcs_llm", "serve", "--engine", "fake", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(base, 60, lambda: server.poll() is None)
        status, sent = upload("127.0.0.1", port, 2**30)
        assert status == 413 and sent < 2**30
        r = httpx.post(f"{base}/functions/sentiment", json={"data": [[0, "fine"]]}, timeout=30)
        assert r.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def upload(host: str, port: int, size: int, chunked: bool = False) -> tuple[int, int]:
    """POST ``size`` bytes to /functions/sentiment, reading the answer while sending; stop sending once it
    arrives. Returns (status, bytes sent)."""
    head = (
        f"POST /functions/sentiment HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        + ("transfer-encoding: chunked\r\n" if chunked else f"content-length: {size}\r\n")
        + "\r\n"
    )
    block = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection((host, port)) as s:
        s.sendall(head.encode())
        s.settimeout(0.0)
        reply = b""
        deadline = time.monotonic() + 600
        while b"\r\n" not in reply and time.monotonic() < deadline:
            try:
                reply += s.recv(65536)
                continue
            except BlockingIOError:
                pass
            if sent < size:
                data = (b"%x\r\n" % len(block) + block + b"\r\n") if chunked else block
                try:
                    s.settimeout(5)
                    s.sendall(data)
                    s.settimeout(0.0)
                except OSError:  # the server closed the connection after answering
                    s.settimeout(5)
                    reply += s.recv(65536)
                    break
                sent += len(block)
            else:
                time.sleep(0.01)
    return int(reply.split(b" ", 2)[1]), sent
