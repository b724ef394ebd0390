"""The OpenAPI description: a path per SQL function whose rows follow its overloads, the OpenAI bodies, and every
status each route can answer (401 only when a key is set)."""

from __future__ import annotations

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.functions import FUNCTIONS
from spcs_llm.server import create_app

from ..conftest import in_process, wait_ready


async def describe(**server: object) -> dict:
    settings = Settings.load(overrides={"engine": {"kind": "fake"}, "server": server})
    app = create_app(
        settings.model_copy(update={"embeddings": []}),
        engine=FakeEngine("fake-model"),
        embedders=[FakeEmbedder("fake-embed-768", 768)],
    )
    headers = {"authorization": f"Bearer {server['api_key']}"} if "api_key" in server else {}
    async with in_process(app) as client:
        await wait_ready(app)
        return (await client.get("/openapi.json", headers=headers)).json()


async def test_every_function_is_a_path_with_its_overloads_and_statuses() -> None:
    paths = (await describe())["paths"]
    assert "/functions/{name}" not in paths
    for name, fn in FUNCTIONS.items():
        op = paths[f"/functions/{name}"]["post"]
        assert set(op["responses"]) == {"200", "400", "413", "429", "503"}
        row = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]["items"]
        rows = row.get("anyOf", [row])
        assert sorted(r["minItems"] - 1 for r in rows) == fn.arities
    complete = paths["/functions/complete"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    first = complete["properties"]["data"]["items"]["anyOf"][0]["prefixItems"]
    assert first[0] == {"type": "integer"} and "fake-model" in first[1]["enum"] and "llama3.1-8b" in first[1]["enum"]
    try_complete = paths["/functions/try_complete"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert try_complete["properties"]["data"]["items"]["anyOf"][0]["prefixItems"][1] == {}  # any value: NULL row


async def test_openai_bodies_and_the_key() -> None:
    schema = await describe(api_key="k")
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionIn"
    }
    assert "messages" in schema["components"]["schemas"]["ChatCompletionIn"]["properties"]
    assert {"200", "400", "401", "413", "429", "503"} <= set(chat["responses"])
    assert "401" not in schema["paths"]["/health"]["get"]["responses"]
    assert "401" in schema["paths"]["/functions/sentiment"]["post"]["responses"]
    assert "401" not in (await describe())["paths"]["/functions/sentiment"]["post"]["responses"]
