"""A digest of what every function answers on the fake engine, to show that a change to the gateway's speed left
the answers as they were, byte for byte.

For every function of ``bench_gateway.SPECS`` (and a few argument shapes the bench does not send: four aspects,
categories that share tokens, multi-label AI_CLASSIFY), three batches of 500 fixed rows go through
``answer_batch`` and ``encode_rows`` exactly as the server answers them, and the SHA-256 of each response body is
printed, one line per batch. Run it before and after a change and compare:

    python bench/answer_digests.py > before.txt      # on the old code
    python bench/answer_digests.py > after.txt       # on the new code
    diff before.txt after.txt && echo unchanged

The rows are the same on every run (no nonce), so equal lines mean equal bytes. Runs in ~20 s on one core.

``--engine-process`` answers the same rows with the fakes in a process of their own behind the gateway's real
engine hop (``bench/fake_upstream.py``, as ``bench_gateway.py --engine-process``): its lines equal to the
in-process ones show that the hop (``OpenAIHttpEngine``, ``OpenAIEmbedder``, the HTTP between) changes no answer.
The embedding functions' lines may differ: vLLM, and so the stand-in, sends float32 vectors, where the in-process
fake embedder's are float64.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import bench_gateway as bg  # the bench's specs and config, beside this script

EXTRA = [
    bg.Spec("ENTITY_SENTIMENT", lambda t: [t, ["delivery", "support", "food quality", "price"]]),
    bg.Spec("CLASSIFY_TEXT", lambda t: [t, ["food", "food quality", "fast delivery", "slow delivery", "question"]]),
    bg.Spec("AI_CLASSIFY", lambda t: [t, ["food", "food quality", "praise"], {"output_mode": "multi"}]),
]
BATCHES, ROWS = 3, 500


async def main() -> None:
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.server.snowflake import answer_batch, decode_rows, encode_rows

    upstream = bg.start_upstream(1) if "--engine-process" in sys.argv else None
    _, engine, embedders, runtime = await bg.fake_runtime(upstream[1] if upstream else None)
    for spec in [*bg.SPECS, *EXTRA]:
        texts = bg.Texts()
        texts.nonce = "fixed"  # the same rows on every run
        fn, make = FUNCTIONS[spec.label.lower()], bg.batch_maker(spec, texts)
        for b in range(BATCHES):
            rows = decode_rows(orjson.dumps({"data": make(ROWS)}))
            values = await answer_batch(fn, runtime, rows)
            body = encode_rows([r[0] for r in rows], values, 10**9)
            print(f"{spec.label} {b} {hashlib.sha256(body).hexdigest()}")
    if upstream is not None:
        await asyncio.gather(engine.aclose(), *(e.aclose() for e in embedders))
        upstream[0].terminate()


if __name__ == "__main__":
    asyncio.run(main())
