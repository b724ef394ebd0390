"""The engine hop's transport (engines/wire.py, engines/h1.py) over real sockets: what each failure of a real server
becomes (the httpx exception, then the engine's error), keep-alive connections reused and bounded, a stream dropped
half read, proxies from the environment, the session closed with the engine; and the per-row POST's own HTTP/1.1
(H1Pool): every way an answer may be framed, when a connection may be reused, and what closes one."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.h1 import H1Pool
from spcs_llm.engines.openai_http import OpenAIHttpEngine
from spcs_llm.engines.wire import EngineTransport
from spcs_llm.errors import EngineTimeout, EngineUnavailable

MODELS = {"object": "list", "data": [{"id": "qwen", "object": "model", "owned_by": "vllm", "max_model_len": 4096}]}
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}
Reply = Callable[[str, bytes, asyncio.StreamWriter], Awaitable[None]]


def response(body: Any, status: str = "200 OK", extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


async def answer_models_or(reply: Reply, line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    """/v1/models lists the model, another GET (/version, which the engine asks at start-up) is not found, and a
    POST is the test's."""
    method, path, _ = line.split()
    if path.endswith("/models"):
        writer.write(response(MODELS))
    elif method != "POST":
        writer.write(response({"detail": "Not Found"}, "404 Not Found"))
    else:
        await reply(line, body, writer)


class Server:
    """An HTTP/1.1 server on loopback that reads each request (its line, headers and body) and lets ``reply``
    write whatever bytes the test wants, so a connection can be closed, stalled or cut anywhere."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.hung_up = 0  # connections the client closed
        self.writers: list[asyncio.StreamWriter] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()  # no new connection is accepted, and the open ones are closed
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.05)  # the client sees them closed

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                line = (await reader.readline()).decode()
                if not line:
                    self.hung_up += 1
                    return
                headers = {}
                while (header := (await reader.readline()).decode().strip()) != "":
                    name, value = header.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append((line.strip(), headers, body))
                await answer_models_or(self.reply, line, body, writer)
                await writer.drain()
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def ok(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(response(ANSWER))


async def engine_for(url: str, **kw: Any) -> OpenAIHttpEngine:
    engine = OpenAIHttpEngine(url, "qwen", startup_timeout_s=2, **kw)
    await engine.start()
    return engine


def chat() -> ChatRequest:
    return ChatRequest(messages=(Message("user", "hi"),), max_tokens=8)


async def test_a_request_is_sent_as_the_client_would_and_its_answer_read() -> None:
    async with Server(ok) as server:
        engine = await engine_for(server.url, api_key="sk-test")
        result = await engine.chat(chat())
        await engine.aclose()
    assert result.text == "hello" and result.usage.prompt_tokens == 3
    line, headers, body = server.requests[-1]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer sk-test" and headers["content-type"] == "application/json"
    assert headers["accept-encoding"] == "identity" and headers["user-agent"].startswith("spcs-llm/")
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]


async def test_connections_are_kept_alive_and_bounded_by_the_engines_concurrency() -> None:
    async with Server(ok) as server:
        engine = await engine_for(server.url, max_concurrency=8)
        at_start, opened = len(server.requests), server.connections  # /v1/models, /version: aiohttp's pool
        for _ in range(20):
            await engine.chat(chat())
        assert server.connections == opened + 1  # the rows' requests: one connection, reused
        await asyncio.gather(*(engine.chat(chat()) for _ in range(100)))
        await engine.aclose()
    assert 1 < server.connections - opened <= 8
    assert len(server.requests) == at_start + 120


async def test_a_refused_connection_is_unreachable() -> None:
    async with Server(ok) as server:
        engine = await engine_for(server.url)
    # the server is gone: its port refuses
    with pytest.raises(EngineUnavailable, match="unreachable: ConnectError"):
        await engine.chat(chat())
    await engine.aclose()


async def closes(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def cuts_the_body(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    whole = response(ANSWER)
    writer.write(whole[: len(whole) - 10])
    await writer.drain()
    writer.close()


async def breaks_the_protocol(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"this is not HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("reply", [closes, cuts_the_body, breaks_the_protocol], ids=lambda f: f.__name__)
async def test_a_server_that_drops_or_breaks_the_answer_is_unreachable(reply: Reply) -> None:
    async with Server(reply) as server:
        engine = await engine_for(server.url)
        with pytest.raises(EngineUnavailable, match="unreachable: RemoteProtocolError"):
            await engine.chat(chat())
        await engine.aclose()


async def test_no_answer_within_the_read_timeout_is_a_timeout_and_the_next_request_is_answered() -> None:
    stall = asyncio.Event()

    async def stalls_once(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if not stall.is_set():
            stall.set()
            await asyncio.sleep(2)
        writer.write(response(ANSWER))

    async with Server(stalls_once) as server:
        engine = await engine_for(server.url, request_timeout_s=0.3)
        with pytest.raises(EngineTimeout, match="in time"):
            await engine.chat(chat())
        assert (await engine.chat(chat())).text == "hello"  # on another connection
        await engine.aclose()


async def test_a_stream_closed_half_read_drops_its_connection_and_the_next_request_is_answered() -> None:
    async def streams(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if not json.loads(body).get("stream"):
            writer.write(response(ANSWER))
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}\n\n'
        for _ in range(3):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        await asyncio.sleep(5)  # the rest never comes

    async with Server(streams) as server:
        engine = await engine_for(server.url)
        at_start = server.connections
        stream = engine.chat_stream(chat())
        first = await anext(stream)
        await stream.aclose()  # the caller stops reading: its connection is closed, not given back
        assert first.text == "a"
        assert (await engine.chat(chat())).text == "hello"
        await engine.aclose()
    assert server.connections == at_start + 1  # the stream's connection was dropped: one more was opened


async def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Server(ok) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        engine = await engine_for("http://upstream.invalid:8000/v1")
        assert (await engine.chat(chat())).text == "hello"
        await engine.aclose()
    assert proxy.requests[-1][0] == "POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1"


async def test_no_proxy_exempts_the_upstream_and_netrc_is_not_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """NO_PROXY alone (set in many containers) must not turn on aiohttp's own reading of the environment: that
    reads ~/.netrc too, and a matching entry would add Basic credentials or refuse beside our bearer token."""
    (tmp_path / ".netrc").write_text("default login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    async with Server(ok) as proxy, Server(ok) as server:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.delenv("no_proxy", raising=False)
        engine = await engine_for(server.url, api_key="sk-test")
        assert (await engine.chat(chat())).text == "hello"
        assert (await engine._up.client.get("models")).status_code == 200  # the client's path too
        await engine.aclose()
    assert proxy.requests == []  # exempt: straight to the upstream
    assert {headers["authorization"] for _, headers, _ in server.requests} == {"Bearer sk-test"}


async def test_a_pool_timeout_bounds_the_wait_for_a_busy_pool() -> None:
    """httpx's pool timeout (what a health check's timeout=5.0 sets) is aiohttp's connect timeout: with every
    connection busy, the wait ends in time instead of lasting until one is free."""

    async def slow(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.5)
        writer.write(response(ANSWER))

    async with Server(slow) as server:
        engine = await engine_for(server.url, max_concurrency=1)
        # a request through the client (aiohttp's pool, as streams and health checks go) holds its one connection
        busy = asyncio.ensure_future(engine._up.client.post("chat/completions", json={"model": "qwen"}))
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.TimeoutException):  # without the bound: answered once the busy one is done
            await engine._up.client.get("models", timeout=0.3)
        assert (await busy).json() == ANSWER
        await engine.aclose()


async def test_the_session_is_made_in_the_loop_on_first_use_and_closed_with_the_engine() -> None:
    transport = EngineTransport(4)
    assert transport._session is None  # made in no loop: an engine may be built before the server's loop runs
    async with Server(ok) as server:
        engine = OpenAIHttpEngine(server.url, "qwen", transport=transport, startup_timeout_s=2)
        await engine.start()
        session = transport._session
        assert session is not None and not session.closed
        await engine.aclose()
    assert session.closed and transport._session is None


def test_the_transport_raises_httpxs_exceptions() -> None:
    """What the code above the transport catches: every aiohttp failure leaves as an httpx.TransportError."""
    import aiohttp

    from spcs_llm.engines.wire import httpx_errors

    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    cases = [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ClientConnectorError(key, OSError(111, "refused")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
        (TimeoutError(), httpx.ReadTimeout),
    ]
    for raised, expected in cases:
        with pytest.raises(expected) as caught:
            with httpx_errors():
                raise raised
        assert isinstance(caught.value, httpx.TransportError) and caught.value.__cause__ is raised


# H1Pool, the per-row POST's HTTP/1.1 (engines/h1.py)
TIMEOUTS = {"connect": 2.0, "read": 2.0}


async def post(pool: H1Pool, server: Server, timeouts: dict[str, float] = TIMEOUTS) -> tuple[int, bytes]:
    status, body = await pool.post(server.url + "/chat/completions", {"x-test": "1"}, b'{"a": 1}', timeouts)
    return status, body


def replies(*answers: bytes, then_close: bool = False) -> Reply:
    """Writes each answer in turn (one per request, in pieces that arrive apart), closing after it if asked."""
    queue = list(answers)

    async def reply(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        for i in range(0, len(answer), 7):
            writer.write(answer[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        if then_close:
            writer.close()

    return reply


async def test_h1_sends_the_request_line_host_headers_and_body() -> None:
    async with Server(ok) as server:
        pool = H1Pool(4, 4.0)
        status, body = await post(pool, server)
        pool.close()
    assert status == 200 and json.loads(body) == ANSWER
    line, headers, sent = server.requests[-1]
    port = server.url.split(":")[2].split("/")[0]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers == {"host": f"127.0.0.1:{port}", "x-test": "1", "content-length": "8"} and sent == b'{"a": 1}'


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
UNTIL_CLOSED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello world"
CLOSING = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 11\r\n\r\nhello world"
HTTP10 = b"HTTP/1.0 200 OK\r\ncontent-length: 11\r\n\r\nhello world"
KEPT = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"
GZIP_CHUNKED = CHUNKED.replace(b"encoding: chunked", b"encoding: gzip, chunked")  # chunked last: framed


@pytest.mark.parametrize(
    ("answer", "then_close", "reused"),
    [
        (KEPT, False, True),
        (CHUNKED, False, True),
        (UNTIL_CLOSED, True, False),
        (CLOSING, True, False),
        (HTTP10, True, False),
        (GZIP_CHUNKED, False, True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + KEPT, False, True),
    ],
    ids=["content-length", "chunked", "until-closed", "connection-close", "http-1.0", "gzip-chunked", "interim"],
)
async def test_h1_reads_every_framing_whole_and_reuses_only_a_connection_left_open(
    answer: bytes, then_close: bool, reused: bool
) -> None:
    async with Server(replies(answer, then_close=then_close)) as server:
        pool = H1Pool(4, 4.0)
        for _ in range(3):
            assert await post(pool, server) == (200, b"hello world")
        pool.close()
    assert server.connections == (1 if reused else 3)


async def test_h1_never_reuses_a_connection_the_server_closed_or_one_idle_too_long() -> None:
    async def closes_after_answering(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(KEPT)  # says nothing of closing, then closes (a server's idle timeout)
        await writer.drain()
        writer.close()

    async with Server(closes_after_answering) as server:
        pool = H1Pool(4, 4.0)
        for _ in range(3):
            assert await post(pool, server) == (200, b"hello world")
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle
        pool.close()
    assert server.connections == 3
    async with Server(ok) as server:
        pool = H1Pool(4, 0.1)
        await post(pool, server)
        await post(pool, server)
        await asyncio.sleep(0.2)  # longer than the keep-alive
        await post(pool, server)
        pool.close()
    assert server.connections == 2 and server.hung_up >= 1  # the old one was closed by us


async def test_h1_a_read_timeout_is_no_byte_for_that_long_not_the_whole_answer() -> None:
    async def trickles(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(KEPT), 10):  # ~0.45 s in all, a piece every 0.08 s
            writer.write(KEPT[i : i + 10])
            await writer.drain()
            await asyncio.sleep(0.08)

    async def stalls(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(KEPT[:20])
        await writer.drain()
        await asyncio.sleep(0.4)

    async with Server(trickles) as server:
        pool = H1Pool(4, 4.0)
        assert await post(pool, server, {"connect": 2.0, "read": 0.25}) == (200, b"hello world")
        pool.close()
    async with Server(stalls) as server:
        pool = H1Pool(4, 4.0)
        with pytest.raises(httpx.ReadTimeout, match="within 0.25s"):
            await post(pool, server, {"connect": 2.0, "read": 0.25})
        await asyncio.sleep(0.3)  # the server's stall ends; it reads on, and finds the connection closed
        assert server.hung_up == 1  # the timed-out connection was closed, not kept
        pool.close()


async def test_h1_a_cancelled_request_closes_its_connection() -> None:
    async def slow(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(response(ANSWER))

    async with Server(slow) as server:
        pool = H1Pool(4, 4.0)
        waiting = asyncio.ensure_future(post(pool, server))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.3)  # the server answers, reads on, and finds the connection closed
        assert server.hung_up == 1
        assert (await post(pool, server))[0] == 200  # on a new connection
        pool.close()
    assert server.connections == 2


async def test_h1_bytes_after_the_answer_make_the_connection_unusable() -> None:
    async with Server(replies(KEPT + b"HTTP/1.1 200 OK\r\n")) as server:
        pool = H1Pool(4, 4.0)
        assert await post(pool, server) == (200, b"hello world")
        assert await post(pool, server) == (200, b"hello world")
        pool.close()
    assert server.connections == 2


async def test_h1_a_reset_connection_is_a_read_error() -> None:
    import socket
    import struct

    async def resets(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        writer.write(KEPT[:20])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with Server(resets) as server:
        pool = H1Pool(4, 4.0)
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await post(pool, server)
        pool.close()


async def test_h1_keeps_at_most_max_idle_connections_and_closes_them_with_the_pool() -> None:
    async def slow(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)
        writer.write(KEPT)

    async with Server(slow) as server:
        pool = H1Pool(3, 4.0)
        await asyncio.gather(*(post(pool, server) for _ in range(8)))
        await asyncio.sleep(0.05)
        assert server.connections == 8 and server.hung_up == 5  # 3 kept idle
        pool.close()
        await asyncio.sleep(0.05)
        assert server.hung_up == 8


async def test_h1_refused_and_unresolvable_are_connect_errors() -> None:
    async with Server(ok) as server:
        url = server.url
    pool = H1Pool(4, 4.0)
    with pytest.raises(httpx.ConnectError, match="cannot connect to 127.0.0.1"):
        await pool.post(url + "/x", {}, b"", TIMEOUTS)
    with pytest.raises(httpx.ConnectError, match="cannot connect to upstream.invalid"):
        await pool.post("http://upstream.invalid:8000/v1/x", {}, b"", TIMEOUTS)
    pool.close()


async def test_h1_a_connection_closed_before_the_answer_is_an_error_not_the_last_answers_status() -> None:
    """The parser's status outlives its answer: a reused connection that the server closes without a byte (an idle
    timeout, a restarted engine) must not give the previous answer's status (a 429 would read as overloaded, a 400
    as the row's fault). Nor is an answer cut inside its status line or headers an answer."""
    sent = []

    async def answers_429_then_closes(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        sent.append(line)
        if len(sent) == 1:
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}")
        else:
            writer.close()

    async with Server(answers_429_then_closes) as server:
        pool = H1Pool(4, 4.0)
        assert await post(pool, server) == (429, b"{}")
        with pytest.raises(httpx.RemoteProtocolError, match="before the whole answer"):
            await post(pool, server)
        pool.close()
    for cut in (b"HTTP/1.1 50", b"HTTP/1.1 200 OK\r\ncontent-ty", b"HTTP/1.1 200 OK\r\n"):
        async with Server(replies(cut, then_close=True)) as server:
            pool = H1Pool(4, 4.0)
            with pytest.raises(httpx.RemoteProtocolError):
                await post(pool, server)
            pool.close()


async def test_h1_a_protocol_switch_is_refused() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    async with Server(replies(switch)) as server:
        pool = H1Pool(4, 4.0)
        with pytest.raises(httpx.RemoteProtocolError, match="101"):
            await post(pool, server)
        pool.close()


async def test_h1_refuses_a_header_that_is_not_one_line_and_quotes_the_path() -> None:
    async with Server(ok) as server:
        pool = H1Pool(4, 4.0)
        for bad in ({"authorization": "Bearer sk\n"}, {"authorization": "Bearer sk\r\nx-evil: 1"}, {"x": "é€"}):
            with pytest.raises(httpx.LocalProtocolError):
                await pool.post(server.url + "/x", bad, b"", TIMEOUTS)
        await pool.post(server.url + "/a b?q=1 2", {}, b"", TIMEOUTS)
        pool.close()
    assert server.requests[-1][0] == "POST /v1/a%20b?q=1%202 HTTP/1.1"
    with pytest.raises(EngineUnavailable, match="API key holds a line break"):
        OpenAIHttpEngine("http://127.0.0.1:1/v1", "qwen", api_key="sk-test\n")


async def test_posts_take_the_h1_pool_only_for_plain_http_without_proxy_or_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    transport = EngineTransport(4)
    assert transport._route("http://127.0.0.1:8000/v1/chat/completions") == (None, True)
    assert transport._route("https://api.example.com/v1/chat/completions") == (None, False)
    assert transport._route("http://user:pw@127.0.0.1:8000/v1/chat/completions") == (None, False)
    monkeypatch.setenv("HTTP_PROXY", "proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert EngineTransport(4)._route("http://vllm:8000/v1/x") == ("http://proxy.internal:3128", False)


async def test_the_transport_after_close_keeps_no_connection_and_bad_urls_are_transport_errors() -> None:
    async with Server(ok) as server:
        transport = EngineTransport(4)
        url = server.url + "/chat/completions"
        assert (await transport.post(url, {}, b"{}", TIMEOUTS)).status_code == 200
        await transport.aclose()
        assert (await transport.post(url, {}, b"{}", TIMEOUTS)).status_code == 200  # a row still running
        await asyncio.sleep(0.05)
        assert server.connections == 2 and server.hung_up == 2  # both closed: nothing kept after close
    port = server.url.split(":")[2].split("/")[0]
    transport = EngineTransport(4)
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.post("http://[::1/v1/x", {}, b"", TIMEOUTS)
    with pytest.raises(httpx.ConnectError, match="127.0.0.1:0"):  # port 0 is port 0, not the default
        await transport.post(url.replace(f":{port}/", ":0/"), {}, b"", TIMEOUTS)
    with pytest.raises(httpx.ConnectError):  # a host name label over 63 characters cannot be encoded
        await transport.post(f"http://{'a' * 64}.invalid/v1/x", {}, b"", TIMEOUTS)
    await transport.aclose()


async def test_the_transport_after_close_answers_late_requests_on_aiohttp_and_keeps_nothing() -> None:
    """A request sent through the transport after the engine closed it (a row's POST that cannot take the lean
    pool, here a URL with credentials; a GET through the transport itself) is answered over a session of its own
    that is closed with it: no connection is kept, the pool's session is not opened again (it would never be
    closed), and aiohttp reports no session left unclosed."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
    try:
        async with Server(ok) as server:
            transport = EngineTransport(4)
            client = httpx.AsyncClient(transport=transport)
            assert (await client.get(server.url + "/models")).status_code == 200  # the pool's session, kept alive
            await transport.aclose()
            assert transport._session is None
            late = httpx.AsyncClient(transport=transport)  # the engines' own client refuses after close
            assert (await late.get(server.url + "/models")).json() == MODELS
            with_credentials = server.url.replace("http://", "http://user:secret@") + "/chat/completions"
            assert (await transport.post(with_credentials, {}, b"{}", TIMEOUTS)).status_code == 200
            assert (await transport.post(server.url + "/chat/completions", {}, b"{}", TIMEOUTS)).status_code == 200
            await asyncio.sleep(0.05)
            assert transport._session is None  # not opened again
            assert server.connections == 4 and server.hung_up == 4  # every connection closed by the client
            assert server.requests[2][1]["authorization"].startswith("Basic ")  # that one went over aiohttp
            await client.aclose()
        gc.collect()  # an unclosed aiohttp session reports itself when it is collected
        await asyncio.sleep(0)
        assert not [m for m in reported if "Unclosed" in m], reported
    finally:
        loop.set_exception_handler(previous)


# llama.cpp's /tokenize over the per-row path (engines/llamacpp.py): bounded, and its errors translated


def tokenizing_engine(url: str, n_parallel: int) -> Any:
    """A LlamaCppEngine whose llama-server is the test's server (the model is never loaded)."""
    from types import SimpleNamespace

    from spcs_llm.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("unused.gguf", "test", n_parallel=n_parallel, ctx_per_slot=512, threads=1)
    engine._server = SimpleNamespace(listening_address=url.removesuffix("/v1"))
    engine._transport = EngineTransport(engine.n_parallel)
    return engine


async def test_llamacpp_tokenize_keeps_n_parallel_requests_in_flight() -> None:
    in_flight, most = 0, 0

    async def tokenizes(line: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        writer.write(response({"tokens": [1, 2, 3]}))

    async with Server(tokenizes) as server:
        engine = tokenizing_engine(server.url, n_parallel=3)
        counts = await asyncio.gather(*(engine.count_tokens(f"text {i}") for i in range(40)))
        await engine._transport.aclose()
    assert counts == [3] * 40
    assert most == 3 and server.connections == 3  # a batch's rows wait their turn: 3 connections, not 40


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (response({"error": {"message": "loading model"}}, "503 Service Unavailable"), EngineUnavailable),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n<html/>\r\n", EngineUnavailable),
        (response({"count": 3}), EngineUnavailable),
    ],
    ids=["503", "not-json", "no-tokens"],
)
async def test_llamacpp_tokenize_errors_are_the_engines_not_a_crash(answer: bytes, error: type) -> None:
    async with Server(replies(answer)) as server:
        engine = tokenizing_engine(server.url, n_parallel=2)
        with pytest.raises(error):
            await engine.count_tokens("text")
        await engine._transport.aclose()
