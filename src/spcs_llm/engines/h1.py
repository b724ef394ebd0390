"""The engines' per-row POST over plain HTTP/1.1: a keep-alive connection pool and httptools' parser, nothing else.

Every COMPLETE row and every label step is one POST from the gateway to vLLM on loopback, answered whole. aiohttp's
client (engines/wire.py) spends ~0.12-0.17 ms of the gateway's core on one with 64 in flight, most of it in its
request and response machinery (tracing hooks, cookie and redirect handling, a stream reader per answer) that this
request does not need; a protocol that writes the request's bytes and hands the answer to httptools (uvicorn's C
parser, already a dependency) needs ~0.05-0.07 ms (``bench/bench_engine_hop.py``, docs/bench-gateway.md "The engine
hop"). It serves only that request: a POST whose answer is read whole, to an ``http://`` upstream with no proxy and
no credentials in the URL (:func:`serves`). Everything else (GETs, streams, HTTPS, proxies) stays on aiohttp.

What it does, as HTTP/1.1 (RFC 9112) asks of a client: the answer's length from ``content-length``, chunked
transfer coding, or the connection's end when it has neither; a connection is reused only when the answer leaves it
open (``should_keep_alive``: not ``connection: close``, not HTTP/1.0 without keep-alive) and for at most
:data:`~spcs_llm.engines.wire.KEEPALIVE_S` idle; a connection the server has closed while idle is never reused.
Interim answers (100 Continue, 103 Early Hints) are skipped, a protocol switch (101) refused. The status is the
answer's own: a reused connection closed before its answer is an error, never the last answer's status again.
Failures are httpx's exceptions, as from the other transports: refused or unresolvable ``ConnectError``, no
connection in time ``ConnectTimeout``, no byte within the read timeout ``ReadTimeout``, a closed connection, a cut
answer or bytes that are not HTTP ``RemoteProtocolError``, a reset ``ReadError``. A request that fails, times out
or is cancelled closes its connection (what was left on it is unknown). No request is retried: a POST may have
reached the engine.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Mapping

import httptools
import httpx


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it (one request at a time)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.status = 0  # the answer's, once its headers are complete (the parser's own outlives the answer)
        self.interim = False  # the message being read is a 1xx interim answer, skipped
        self.framed = False  # the answer's length is known (content-length or chunked), not "until closed"
        self.keep_alive = False  # the last answer leaves the connection open
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()  # made by loop.create_connection, in the loop
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout: float | None = None
        self.last_read = 0.0  # the loop's time of the last byte read (or of the request, before any)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(httpx.RemoteProtocolError(f"the upstream's answer is not HTTP/1.1: {exc!r}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.answer is None or self.answer.done():
            return
        if self.status and not self.framed and not exc:
            self.on_message_complete()  # an answer without a length ends where the connection does
        elif exc is not None:
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        else:
            self._fail(httpx.RemoteProtocolError("the upstream closed the connection before the whole answer"))

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self.answer is None:  # a second answer in the same bytes as the first: nobody asked for it
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length":
            self.framed = True
        elif lowered == b"transfer-encoding":  # chunked frames the body only as the last coding (RFC 9112 6.3)
            self.framed = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            self._fail(httpx.RemoteProtocolError("the upstream switched protocols (101) on a POST"))
        elif 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows on the same connection
            self.interim = True
        else:
            self.status = status

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim, self.framed, self.body = False, False, []
            return
        self._disarm()
        self.keep_alive = self.transport is not None and self.parser.should_keep_alive()  # only known here
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_result((self.status, b"".join(self.body)))

    # one request
    @property
    def reusable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def request(self, head: bytes, body: bytes, read_timeout: float | None) -> tuple[int, bytes]:
        """Write the request and wait for its whole answer; the connection is closed unless the answer came whole
        and leaves it open."""
        assert self.transport is not None
        self.answer = self.loop.create_future()
        self.body, self.status, self.interim, self.framed, self.keep_alive = [], 0, False, False, False
        self.read_timeout = read_timeout
        self.transport.write(head + body)
        self._arm()
        try:
            answer = await self.answer
        except BaseException:
            self.close()
            raise
        if not self.keep_alive:
            self.close()
        return answer

    def _arm(self) -> None:
        """Start the read timeout: no byte for that long fails the request. One timer a request: when it fires
        after bytes came, it is set again for the time left since the last one."""
        if self.read_timeout is not None:
            self.last_read = self.loop.time()
            self.timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        assert self.read_timeout is not None
        left = self.last_read + self.read_timeout - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._timed_out)
            return
        self.timer = None
        self._fail(httpx.ReadTimeout(f"no answer from the upstream within {self.read_timeout:g}s"))

    def _fail(self, exc: Exception) -> None:
        self._disarm()
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class H1Pool:
    """Keep-alive connections to one ``http://`` upstream (any number of hosts and paths on it, each its own idle
    list), up to ``max_idle`` idle per host; the engines bound the requests in flight themselves."""

    def __init__(self, max_idle: int, keepalive_s: float) -> None:
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._heads: dict[str, tuple[str, int, bytes]] = {}
        self._header_lines: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._closed = False

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: Mapping[str, float | None]
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``url`` (``http://`` only) and read the whole answer: its status and body."""
        host, port, start = self._start(url)
        head = b"%s%scontent-length: %d\r\n\r\n" % (start, self._lines(headers), len(body))
        connection = self._idle_connection((host, port)) or await self._connect(host, port, timeout.get("connect"))
        answer = await connection.request(head, body, timeout.get("read"))
        if connection.reusable:
            self._give_back((host, port), connection)
        return answer

    def _start(self, url: str) -> tuple[str, int, bytes]:
        """The host, port and first lines (request line, Host) of a request to ``url``, remembered per URL."""
        found = self._heads.get(url)
        if found is None:
            parts = urllib.parse.urlsplit(url)
            try:
                port = 80 if parts.port is None else parts.port
            except ValueError as exc:  # a port that is not a number, or out of range
                raise httpx.UnsupportedProtocol(f"cannot POST to {url!r}: {exc}") from exc
            if not serves(url) or not parts.hostname:
                raise httpx.UnsupportedProtocol(f"H1Pool serves http:// URLs without credentials only, not {url!r}")
            target = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
            target += f"?{urllib.parse.quote(parts.query, safe='/%:@!$&()*+,;=?~')}" if parts.query else ""
            start = f"POST {target} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode()
            if len(self._heads) >= 256:  # an upstream's few paths; bounded all the same
                self._heads.clear()
            found = self._heads[url] = (parts.hostname, port, start)
        return found

    def _lines(self, headers: Mapping[str, str]) -> bytes:
        """The request's own header lines (the engines send the same few on every request), remembered by value.
        A name or value that would not be one header line (a line break or NUL in an API key read from a file,
        a character outside latin-1) is refused, as aiohttp and h11 refuse it, not sent."""
        key = tuple(headers.items())
        found = self._header_lines.get(key)
        if found is None:
            lines = "".join(f"{name}: {value}\r\n" for name, value in key)
            if any(c in f"{name}{value}" for name, value in key for c in "\r\n\0"):
                raise httpx.LocalProtocolError(
                    "a request header holds a line break or NUL (an API key read with its newline?)"
                )
            try:
                found = lines.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise httpx.LocalProtocolError(f"a request header is not latin-1: {exc}") from exc
            if len(self._header_lines) >= 64:
                self._header_lines.clear()
            self._header_lines[key] = found
        return found

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        """The most recently used idle connection that is still open and was idle for less than the keep-alive
        time (older ones are closed: the server may be closing them just now)."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        return None

    def _give_back(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, host: str, port: int, connect_timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(_Connection, host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time: {exc or 'timed out'}") from exc
        except (OSError, UnicodeError) as exc:  # refused, unreachable, a name that does not resolve or encode
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return connection

    def close(self) -> None:
        """Close every idle connection; one in use closes when its request ends."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def serves(url: str) -> bool:
    """Whether :class:`H1Pool` takes requests to ``url``: plain ``http://``, no credentials in it (aiohttp sends
    those as Basic auth)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "http" and "@" not in parts.netloc
