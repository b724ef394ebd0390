"""Fuzzing with a tool nobody here wrote: schemathesis reads the service's own OpenAPI description and runs all its
checks against the app served by uvicorn on loopback (fake engine): no 5xx, every status and content type and
body as described, schema-invalid input refused, schema-valid input accepted.

Positive data on the legacy function routes may also get 400: Cortex refuses some rows for reasons no JSON schema
can carry (a prompt over the model's context, counted in tokens), and so does this service."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.server import create_app

EXAMPLES = 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live_app() -> Iterator[str]:
    settings_ = Settings.load(
        overrides={"engine": {"kind": "fake", "max_output_tokens": 16}, "server": {"max_request_mb": 1}}
    )
    app = create_app(
        settings_,
        engine=FakeEngine("fake-model", context_window=4096, record=False),
        embedders=[
            FakeEmbedder("fake-embed-768", 768, record=False),
            FakeEmbedder("fake-embed-1024", 1024, record=False),
        ],
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.025)
    yield base
    server.should_exit = True
    thread.join(timeout=30)


def load_schema(base: str) -> schemathesis.schemas.BaseSchema:
    config = SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "413"]}}}
    )
    return schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)


def operations(base: str) -> list[APIOperation]:
    return [result.ok() for result in load_schema(base).get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_against_its_description(live_app: str, mode: GenerationMode) -> None:
    ops = operations(live_app)
    assert {op.label for op in ops} >= {"POST /functions/complete", "POST /v1/chat/completions", "GET /health"}
    calls = 0
    for op in ops:
        if mode == GenerationMode.NEGATIVE and not (op.body or op.path_parameters or op.query or op.headers):
            continue  # nothing in the request can be made invalid (GET /health, /metrics, /v1/models)

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=live_app)

        run()
    print(f"\nschemathesis {mode}: {len(ops)} operations, {calls} calls, all checks passed")


def test_the_harness_catches_a_route_that_breaks_its_description() -> None:
    """The same harness on a tiny app whose route answers a status it does not document: the checks fail."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    tiny = FastAPI()

    @tiny.get("/thing", responses={200: {"description": "OK"}}, response_model=None)
    async def thing() -> JSONResponse:
        return JSONResponse({"oops": True}, status_code=500)

    op = next(r.ok() for r in schemathesis.openapi.from_asgi("/openapi.json", tiny).get_all_operations())

    @given(case=op.as_strategy())
    @settings(max_examples=1, deadline=None, database=None)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate()

    with pytest.raises(BaseException) as info:
        run()
    found = {type(e).__name__ for e in getattr(info.value, "exceptions", [info.value])}
    assert {"UndefinedStatusCode", "ServerError"} <= found, found
