"""The Snowflake envelope codec: what a batch must look like, and the answer's shape and order."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from spcs_llm.errors import BadEnvelope, ResponseTooLarge
from spcs_llm.server.snowflake import decode_rows, decompress, encode_rows

from ..conftest import SF_HEADERS, batch


def test_decode_returns_rows_unchanged() -> None:
    rows = [[0, "m", "hi"], [1, None, "x"], [2, "m", {"a": [1, 2]}]]
    assert decode_rows(orjson.dumps({"data": rows})) == rows


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", 'JSON object with a "data" array'),
        (b'{"rows": []}', 'JSON object with a "data" array'),
        (b'{"data": {"0": 1}}', '"data" must be an array'),
        (b'{"data": [[0, "a"], "x"]}', "row 1 must be an array"),
        (b'{"data": [[]]}', "row 0 must be an array"),
        (b'{"data": [["0", "a"]]}', "row 0 must be an array starting with its integer row number"),
        (b'{"data": [[true, "a"]]}', "row 0 must be an array starting with its integer row number"),
        (b'{"data": [[1.5, "a"]]}', "row 0 must be an array starting with its integer row number"),
    ],
)
def test_decode_names_what_is_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(BadEnvelope, match=fragment):
        decode_rows(body)


def test_decompress_gzip_and_both_deflate_forms() -> None:
    raw = b'{"data": []}'
    assert decompress(gzip.compress(raw), "gzip") == raw
    assert decompress(zlib.compress(raw), "deflate") == raw
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate") == raw
    assert decompress(raw, None) == raw


def test_decompress_rejects_bad_data_and_unknown_encodings() -> None:
    with pytest.raises(BadEnvelope, match="not valid gzip"):
        decompress(b"plain", "gzip")
    with pytest.raises(BadEnvelope, match="unsupported Content-Encoding 'br'"):
        decompress(b"x", "br")


def test_encode_keeps_numbers_and_order() -> None:
    body = encode_rows([3, 1, 2], ["c", None, {"k": 1}], limit=1 << 20)
    assert orjson.loads(body) == {"data": [[3, "c"], [1, None], [2, {"k": 1}]]}


def test_encode_refuses_an_answer_over_the_limit() -> None:
    with pytest.raises(ResponseTooLarge, match="lower MAX_BATCH_ROWS"):
        encode_rows([0], ["x" * 5000], limit=1024)


async def test_http_errors_are_plain_text_400(client) -> None:
    r = await client.post("/functions/complete", content=b"{oops", headers=SF_HEADERS)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith("request body is not JSON")
    r = await client.post("/functions/complete", **batch(["fake-model"]))
    assert (r.status_code, r.text) == (400, "row 0 has 1 arguments; COMPLETE takes 2 or 3")
    r = await client.post("/functions/no_such_fn", **batch(["fake-model", "x"]))
    assert (r.status_code, r.text) == (400, 'unknown function "no_such_fn"')


async def test_gzip_body_is_accepted(client) -> None:
    r = await client.post("/functions/complete", **batch(["fake-model", "hello there"], gzipped=True))
    assert r.status_code == 200
    assert r.json() == {"data": [[0, "echo:hello there"]]}


async def test_a_null_row_still_has_arguments_of_their_sql_types(client, fake_engine) -> None:
    """Found by schemathesis: a NULL makes the row NULL without a model call, but the row's other arguments must
    still be of their declared types (Snowflake never sends otherwise); TRY_/AI_ names answer such a row NULL."""
    r = await client.post("/functions/translate", **batch([None, False, None]))
    assert r.status_code == 400 and r.text == "source_language must be VARCHAR"
    ok = await client.post("/functions/translate", **batch([None, "en", "de"], ["hola", None, "en"]))
    assert ok.status_code == 200 and ok.json() == {"data": [[0, None], [1, None]]}
    forgiven = await client.post("/functions/ai_translate", **batch([None, False, None]))
    assert forgiven.status_code == 200 and forgiven.json() == {"data": [[0, None]]}
    assert fake_engine.calls == []
