"""What the bench scripts share: an in-process server on a free port, a Snowflake-like batch client, metrics.

Scripts import this as ``benchlib`` (``python bench/<script>.py`` puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from spcs_llm.config import Settings
from spcs_llm.server import create_app
from spcs_llm.server.health import wait_healthy

QUERY_ID_HEADER = "sf-external-function-current-query-id"
BATCH_ID_HEADER = "sf-external-function-query-batch-id"

TOPICS = [
    "rivers",
    "bread",
    "chess",
    "volcanoes",
    "jazz",
    "bees",
    "glass",
    "trains",
    "tea",
    "clouds",
    "maps",
    "salt",
    "owls",
    "bridges",
    "paper",
    "tides",
]


def tagged_prompts(tag: str, n: int) -> list[str]:
    """``n`` distinct prompts of one path, all the same length as every other path's.

    The tag (e.g. ``"p03"``) makes each path's prompts its own, so no path is answered from a cache (llama.cpp's
    per-slot prompt cache, spcs-llm's result cache) filled by an earlier one.
    """
    return [f"[{tag}-{i:04d}] Write one sentence about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def machine() -> str:
    """The machine in words, with its load average: on a shared 2-core box other work skews every number."""
    load = ", load average {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", Python {sys.version.split()[0]}{load}"
    )


@dataclass
class LocalServer:
    """spcs-llm served by uvicorn on a thread of this process (a real HTTP server on loopback)."""

    base: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def engine_url(self) -> str:
        """The engine's own loopback HTTP address (llama.cpp's OpenAI endpoints live under it)."""
        return str(self.app.state.engine.http_url)

    @property
    def gateway_concurrency(self) -> int:
        """Engine requests the scheduler keeps in flight at once."""
        scheduler = self.app.state.require_runtime().scheduler
        return int(getattr(scheduler, "max_concurrency", None) or self.app.state.engine.max_concurrency)

    def stop(self) -> None:
        """Shut the server down (its engine with it) so the script can exit even after a failed run."""
        self.server.should_exit = True
        self.thread.join(timeout=120)


def start_server(overrides: dict[str, dict[str, Any]], timeout_s: float = 300) -> LocalServer:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(
        overrides={**overrides, "server": {**overrides.get("server", {}), "port": port, "log_level": "warning"}}
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=timeout_s):
        raise SystemExit("server did not become healthy")
    return LocalServer(base, app, server, thread)


def new_id() -> str:
    return uuid.uuid4().hex


def complete_rows(model: str, texts: list[str], max_tokens: int, temperature: float = 0.0) -> list[list[Any]]:
    """Rows of ``COMPLETE(model, [messages], {options})``, numbered from 0, as Snowflake sends them."""
    opts = {"max_tokens": max_tokens, "temperature": temperature}
    return [[i, model, [{"role": "user", "content": t}], opts] for i, t in enumerate(texts)]


def metric(text: str, name: str) -> float | None:
    """The sum of all samples of counter/gauge ``name`` in a Prometheus exposition, or None if it is absent."""
    total, seen = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
                seen = True
    return total if seen else None


def scrape(client: httpx.Client, base: str, names: list[str]) -> dict[str, float | None]:
    text = client.get(f"{base}/metrics").text
    return {n: metric(text, n) for n in names}


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot written to {path}")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
