"""A model hub on loopback: real HTTP, in both the Hugging Face and the ModelScope layout, with fault injection.

It serves files the test made. It records every request (path, Range header), so a test can count them, and it
can fail on purpose: every request with one status, one file cut off mid-body once, or one file served corrupt
while the listing keeps the true hash.

Like huggingface.co (and HF-Mirror, which proxies it), a Hugging Face ``resolve`` URL of an LFS file (weights,
GGUF) answers ``302`` to a CDN URL (here ``/cdn-lfs/repos/...`` on the same server; on the real hub another host,
see docs/models.md) with ``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size``; small files are served
directly with their git blob ``ETag``. ``HEAD`` answers the same headers without a body. A redirect and a
``HEAD`` are recorded with `` (302)`` / `` (HEAD)`` after the path, so ``ranges_for`` sees only the requests that
carried bytes.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # X-Repo-Commit of every repository


@dataclass
class Hub:
    repos: dict[str, dict[str, bytes]]
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path?query, Range header)
    auth: list[str | None] = field(default_factory=list)  # Authorization header of each request
    fail_status: int | None = None
    cut_once: dict[str, int] = field(default_factory=dict)  # file path -> bytes sent before the connection drops
    corrupt: set[str] = field(default_factory=set)
    rate_limit_once: dict[str, int] = field(default_factory=dict)  # file path -> Retry-After seconds of one 429
    page_size: int = 1000  # HF tree listing page size; smaller exercises the Link: rel="next" pagination
    url: str = ""

    def count(self, needle: str = "") -> int:
        return sum(needle in p for p, _ in self.requests)

    def ranges_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p.endswith(path) or f"FilePath={path}" in unquote(p)]


def hf_entry(path: str, data: bytes) -> dict:
    if path.endswith(LFS_SUFFIXES):
        return {
            "type": "file",
            "path": path,
            "size": len(data),
            "oid": hashlib.sha1(data).hexdigest(),
            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
        }
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return {"type": "file", "path": path, "size": len(data), "oid": blob}


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            hub.requests.append((self.path + " (HEAD)", self.headers.get("Range")))
            hub.auth.append(self.headers.get("Authorization"))
            if hub.fail_status:
                return self._send(hub.fail_status, b"", "text/plain", head=True)
            parts = unquote(urlsplit(self.path).path).strip("/").split("/")
            if "resolve" not in parts:
                return self._send(404, b"", "text/plain", head=True)
            i = parts.index("resolve")
            return self._resolve("/".join(parts[:i]), "/".join(parts[i + 2 :]), head=True)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            parts = unquote(url.path).strip("/").split("/")
            lfs_resolve = "resolve" in parts and parts[-1].endswith(LFS_SUFFIXES)
            hub.requests.append((self.path + (" (302)" if lfs_resolve else ""), self.headers.get("Range")))
            hub.auth.append(self.headers.get("Authorization"))
            if hub.fail_status:
                return self._send(hub.fail_status, b"mirror is down", "text/plain")
            if parts[:2] == ["api", "models"] and "tree" in parts:
                i = parts.index("tree")
                return self._hf_tree("/".join(parts[2:i]), int(query.get("cursor", 0)))
            if parts[:2] == ["cdn-lfs", "repos"]:  # /cdn-lfs/repos/{org}/{repo}/{sha256}/{path}
                return self._file("/".join(parts[2:4]), "/".join(parts[5:]))
            if "resolve" in parts:
                i = parts.index("resolve")
                return self._resolve("/".join(parts[:i]), "/".join(parts[i + 2 :]), head=False)
            if parts[:3] == ["api", "v1", "models"] and parts[-2:] == ["repo", "files"]:
                return self._ms_files("/".join(parts[3:-2]))
            if parts[:3] == ["api", "v1", "models"] and parts[-1] == "repo":
                return self._file("/".join(parts[3:-1]), query.get("FilePath", ""))
            return self._send(404, b"no such route", "text/plain")

        def _resolve(self, repo: str, path: str, *, head: bool) -> None:
            """The Hub's resolve endpoint: LFS files redirect to the CDN, small files are served here."""
            if repo not in hub.repos:
                return self._send(
                    404, b"Repository not found", "text/plain", {"X-Error-Code": "RepoNotFound"}, head=head
                )
            data = hub.repos[repo].get(path)
            if data is None:
                return self._send(404, b"Entry not found", "text/plain", {"X-Error-Code": "EntryNotFound"}, head=head)
            entry = hf_entry(path, data)
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{entry["oid"]}"'}
            if "lfs" in entry:
                sha = entry["lfs"]["oid"]
                headers |= {
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                    "Location": f"{hub.url}/cdn-lfs/repos/{repo}/{sha}/{path}",
                }
                return self._send(302, b"", "text/plain", headers, head=head)
            if head:
                return self._send(
                    200,
                    b"",
                    "application/octet-stream",
                    headers | {"X-Size": str(len(data))},
                    head=True,
                    length=len(data),
                )
            return self._file(repo, path, headers)

        def _hf_tree(self, repo: str, cursor: int) -> None:
            if repo not in hub.repos:
                return self._send(404, b'{"error":"Repository not found"}', "application/json")
            entries = [hf_entry(p, d) for p, d in sorted(hub.repos[repo].items())]
            page = entries[cursor : cursor + hub.page_size]
            headers = {}
            if cursor + hub.page_size < len(entries):
                nxt = f"{hub.url}/api/models/{repo}/tree/main?recursive=true&cursor={cursor + hub.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(200, json.dumps(page).encode(), "application/json", headers)

        def _ms_files(self, repo: str) -> None:
            if repo not in hub.repos:
                body = {"Code": 10010205001, "Message": "model not found", "Success": False}
                return self._send(404, json.dumps(body).encode(), "application/json")
            files = [
                {
                    "Name": p.rsplit("/", 1)[-1],
                    "Path": p,
                    "Type": "blob",
                    "Size": len(d),
                    "Sha256": hashlib.sha256(d).hexdigest(),
                    "Revision": "abc",
                }
                for p, d in sorted(hub.repos[repo].items())
            ]
            body = {"Code": 200, "Data": {"Files": files}, "Success": True}
            self._send(200, json.dumps(body).encode(), "application/json")

        def _file(self, repo: str, path: str, headers: dict[str, str] | None = None) -> None:
            data = hub.repos.get(repo, {}).get(path)
            if data is None:
                return self._send(404, b"not found", "text/plain")
            if path in hub.rate_limit_once:  # as the Hub answers over its quota: 429 with both headers
                wait = hub.rate_limit_once.pop(path)
                return self._send(
                    429,
                    b"Too Many Requests",
                    "text/plain",
                    {
                        "Retry-After": str(wait),
                        "RateLimit": f'"resolvers";r=0;t={wait}',
                        "RateLimit-Policy": '"fixed window";"resolvers";q=3000;w=300',
                    },
                )
            if path in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            status = 206 if start else 200
            extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
            extra |= headers or {}
            if path in hub.cut_once:
                cut = hub.cut_once.pop(path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            self._send(status, body, "application/octet-stream", extra)

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str,
            headers: dict[str, str] | None = None,
            *,
            head: bool = False,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


class HubServer:
    """``with HubServer(hub) as url:`` serves ``hub`` on 127.0.0.1 until the block ends."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True
        hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.hub.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
