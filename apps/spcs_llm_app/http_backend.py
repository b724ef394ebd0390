"""The local backend: HTTP to ``spcs-llm serve``.

Chat streams through the server's OpenAI-compatible ``/v1/chat/completions`` with the official ``openai`` SDK.
Functions go to ``POST /functions/<name>`` in Snowflake's own batch shape, with the headers Snowflake sends, so
the app exercises the same path as a SQL query does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pandas as pd

from spcs_llm.client import PollingTransport

from .backend import Backend, BackendError, FunctionSpec, Message, registry_specs

TIMEOUT_S = 600.0  # a batch of long completions on a CPU can take minutes


class HttpBackend(Backend):
    streams = True
    supports_tables = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.where = self.base_url
        # a batch held longer than the server's async_after_secs is answered 202 and polled, as Snowflake does
        self._http = httpx.Client(base_url=self.base_url, timeout=TIMEOUT_S, transport=PollingTransport())

    def models(self) -> list[str]:
        body = self._get("/v1/models")
        return [m["id"] for m in body.get("data", [])]

    def functions(self) -> list[FunctionSpec]:
        return registry_specs()

    def chat_stream(
        self, model: str, messages: Sequence[Message], *, temperature: float, max_tokens: int
    ) -> Iterator[str]:
        import openai

        client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="not-needed", timeout=TIMEOUT_S)
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=list(messages),
                stream=True,  # type: ignore[arg-type]
                temperature=temperature,
                max_tokens=max_tokens,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except openai.APIError as exc:
            raise BackendError(f"chat failed: {exc.message}") from exc
        finally:
            client.close()

    def run_function(self, fn: FunctionSpec, rows: Sequence[Sequence[Any]]) -> list[Any]:
        query_id = str(uuid.uuid4())
        headers = {
            "sf-external-function-format": "json",
            "sf-external-function-format-version": "1.0",
            "sf-external-function-current-query-id": query_id,
            "sf-external-function-query-batch-id": f"{query_id}:1:1:0:0",
        }
        body = {"data": [[i, *row] for i, row in enumerate(rows)]}
        try:
            response = self._http.post(f"/functions/{fn.name.lower()}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BackendError(f"{fn.name}: cannot reach {self.base_url}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(f"{fn.name} failed ({response.status_code}): {response.text}")
        data = response.json()["data"]
        if [r[0] for r in data] != list(range(len(rows))):
            raise BackendError(f"{fn.name}: the answer's row numbers do not match the rows sent")
        return [r[1] for r in data]

    def usage(self, days: int, split: str | None) -> pd.DataFrame:
        by = "day" + (f",{split}" if split else "")
        rows = self._get("/usage", params={"since": f"{int(days)}d", "by": by})["rows"]
        columns = ["day", *([split] if split else []), "rows", "tokens", "credits"]
        return pd.DataFrame(
            [{**{k: r[k] for k in columns if k in r}, "tokens": r["input_tokens"] + r["output_tokens"]} for r in rows],
            columns=columns,
        )

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = self._http.get(path, params=params)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the spcs-llm server at {self.base_url}: {exc}") from exc
        return response.json()
