"""COMPLETE / TRY_COMPLETE over the fake engine: forms, defaults, options, the error policy."""

from __future__ import annotations

import orjson
import pytest

from spcs_llm.errors import InvalidOptions, InvalidPrompt
from spcs_llm.functions.complete import parse_messages, parse_options

from ..conftest import batch


async def test_string_form_answers_every_row_in_order_with_nulls(client, fake_engine) -> None:
    r = await client.post(
        "/functions/complete",
        **batch(["fake-model", "one"], ["fake-model", None], [None, "three"], ["FAKE-MODEL", "四 🚀"]),
    )
    assert r.status_code == 200
    assert r.json() == {"data": [[0, "echo:one"], [1, None], [2, None], [3, "echo:四 🚀"]]}
    assert len(fake_engine.calls) == 2  # NULL rows never reach the engine


async def test_row_numbers_are_echoed_not_renumbered(client) -> None:
    body = orjson.dumps({"data": [[7, "fake-model", "a"], [3, "fake-model", "b"]]})
    r = await client.post("/functions/complete", content=body)
    assert r.json() == {"data": [[7, "echo:a"], [3, "echo:b"]]}


async def test_string_form_uses_cortex_defaults(client, fake_engine) -> None:
    await client.post("/functions/complete", **batch(["llama3.1-8b", "hi"]))
    (req,) = fake_engine.calls
    assert (req.temperature, req.top_p, req.json_schema) == (0.0, 1.0, None)
    assert req.max_tokens == 32  # Cortex's 4096, capped by the configured max_output_tokens


async def test_options_form_returns_the_cortex_json_string(client, fake_engine) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]
    r = await client.post(
        "/functions/complete", **batch(["mistral-7b", messages, {"temperature": 0.5, "top_p": 0.9, "max_tokens": 2}])
    )
    assert r.status_code == 200
    value = r.json()["data"][0][1]
    assert isinstance(value, str)
    out = orjson.loads(value)
    assert list(out) == ["choices", "created", "model", "usage"]
    assert out["choices"] == [{"messages": "echo:a b"}]
    assert out["model"] == "fake-model"  # the real model, not the alias asked for
    assert out["usage"] == {"completion_tokens": 2, "prompt_tokens": 7, "total_tokens": 9}
    req = fake_engine.calls[0]
    assert (req.temperature, req.top_p, req.max_tokens) == (0.5, 0.9, 2)
    assert [m.role for m in req.messages] == ["system", "user"]


async def test_array_and_object_arguments_may_arrive_as_json_strings(client) -> None:
    messages = orjson.dumps([{"role": "user", "content": "x"}]).decode()
    r = await client.post("/functions/complete", **batch(["fake-model", messages, '{"max_tokens": 5}']))
    assert orjson.loads(r.json()["data"][0][1])["choices"] == [{"messages": "echo:x"}]


async def test_empty_options_still_switch_to_the_json_output(client) -> None:
    r = await client.post("/functions/complete", **batch(["fake-model", [{"role": "user", "content": "x"}], {}]))
    assert "choices" in orjson.loads(r.json()["data"][0][1])


async def test_max_tokens_is_capped_by_the_model(client, fake_engine) -> None:
    await client.post("/functions/complete", **batch(["fake-model", [{"content": "x"}], {"max_tokens": 100000}]))
    assert fake_engine.calls[0].max_tokens == 32


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 2},
        {"temperature": -0.1},
        {"temperature": "hot"},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"max_tokens": 2.5},
        {"max_tokens": True},
        {"guardrails": True},
        {"unknown": 1},
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json", "schema": "x"}},
        [1],
        "{bad",
    ],
)
def test_bad_options_are_the_cortex_error(options) -> None:
    with pytest.raises(InvalidOptions, match="^invalid options object$"):
        parse_options(options)


def test_good_options() -> None:
    o = parse_options(
        {
            "temperature": 1,
            "top_p": 0,
            "max_tokens": 10.0,
            "guardrails": False,
            "response_format": {"type": "json", "schema": {"type": "object"}},
        }
    )
    assert (o.temperature, o.top_p, o.max_tokens, o.json_schema) == (1.0, 0.0, 10, '{"type": "object"}')


@pytest.mark.parametrize(
    "prompt",
    [
        [],
        [{"role": "robot", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}],
        ["x"],
        {"role": "user"},
    ],
)
def test_bad_prompt_arrays(prompt) -> None:
    with pytest.raises(InvalidPrompt, match="^invalid prompt object$"):
        parse_messages(prompt)


async def test_each_cortex_error_fails_the_legacy_batch_with_400(client, fake_engine) -> None:
    cases = [
        (["gpt-nope", "x"], 'unknown model "gpt-nope"'),
        (["fake-model", [{"content": "x"}], {"bogus": 1}], "invalid options object"),
        (["fake-model", [{"role": "x", "content": "x"}], {}], "invalid prompt object"),
        (["fake-model", "word " * 100], "max tokens of 64 exceeded"),
    ]
    for row, message in cases:
        r = await client.post("/functions/complete", **batch(["fake-model", "fine"], row))
        assert (r.status_code, r.text) == (400, message)


async def test_a_bad_row_fails_the_batch_before_the_engine_is_called(client, fake_engine) -> None:
    r = await client.post("/functions/complete", **batch(*[["fake-model", f"r{i}"] for i in range(5)], ["bad", "x"]))
    assert r.status_code == 400
    assert fake_engine.calls == []


async def test_try_complete_nulls_only_the_failed_rows(client) -> None:
    r = await client.post(
        "/functions/try_complete",
        **batch(
            ["fake-model", "ok"],
            ["gpt-nope", "x"],
            ["fake-model", [{"content": "y"}], {"bogus": 1}],
            ["fake-model", "word " * 100],
            ["fake-model", "fine"],
        ),
    )
    assert r.status_code == 200
    assert r.json() == {"data": [[0, "echo:ok"], [1, None], [2, None], [3, None], [4, "echo:fine"]]}


async def test_engine_failure_is_503_even_for_try_complete(client) -> None:
    # A transient failure is retried by Snowflake; turning it into NULL would lose rows that can succeed.
    for fn in ("complete", "try_complete"):
        r = await client.post(f"/functions/{fn}", **batch(["fake-model", "ok"], ["fake-model", "<<engine-down>>"]))
        assert r.status_code == 503, fn


async def test_unknown_model_is_never_404(client) -> None:
    r = await client.post("/functions/complete", **batch(["no-such-model", "x"]))
    assert r.status_code == 400
