"""One Snowflake batch of every SQL function against a running spcs-llm: the first smoke test on a new engine.

Each function gets one batch of a few rows (made-up test texts, no customer data) as Snowflake sends them, and
the table shows the HTTP status, how many rows came back answered (not NULL) and the time. A failed batch prints
the service's message. The exit status is 1 when any batch failed, so a GPU smoke run can be scripted.

    spcs-llm serve --config vllm.toml --port 8001 &
    python bench/smoke.py --url http://127.0.0.1:8001 [--model qwen2.5-7b-instruct] [--embed NAME]

``--model`` defaults to the first model /v1/models lists; ``--embed`` to snowflake-arctic-embed-m-v1.5 (a 768-d
model must be configured for EMBED_TEXT_768, AI_EMBED and AI_SIMILARITY; EMBED_TEXT_1024 is skipped unless
``--embed-1024 NAME`` is given).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import benchlib
import httpx
import orjson

from spcs_llm.client import PollingTransport

STORY = "The river rose all night and by morning the old bridge was gone."
CATS = ["sports", "cooking", "finance"]


def batches(model: str, embed: str, embed_1024: str | None) -> dict[str, list[list[Any]]]:
    """Rows per function, as Snowflake sends them (without the row number)."""
    messages = [{"role": "user", "content": "Name one colour."}]
    reviews = [f"Review {i}: delivery was fast, packaging was fine." for i in range(8)]
    rows: dict[str, list[list[Any]]] = {
        "complete": [[model, "Say hello in one word."], [model, messages, {"max_tokens": 16}]],
        "try_complete": [[model, "Say hello in one word."]],
        "ai_complete": [[model, "Say hello in one word."]],
        "sentiment": [["I love this phone."], ["This is the worst service ever."]],
        "ai_sentiment": [["The food was great but the service was slow.", ["food", "service"]]],
        "entity_sentiment": [["Great camera, awful battery.", ["camera", "battery"]]],
        "classify_text": [["The striker scored twice in the final.", CATS]],
        "ai_classify": [["Whisk the eggs and fold in the flour.", CATS]],
        "ai_filter": [["Is Paris the capital of France?"]],
        "extract_answer": [["Marie Curie was born in Warsaw in 1867.", "Where was Marie Curie born?"]],
        "summarize": [[STORY * 4]],
        "ai_summarize_agg": [[reviews]],
        "ai_agg": [[reviews, "What do customers say about delivery?"]],
        "translate": [["Good morning, how are you?", "en", "de"]],
        "ai_translate": [["Good morning, how are you?", "en", "fr"]],
        "count_tokens": [[model, STORY]],
        "ai_count_tokens": [["ai_complete", model, STORY]],
        "split_text_recursive_character": [[STORY, "none", 20, 5]],
        "embed_text_768": [[embed, STORY], [embed, "word " * 3000]],
        "ai_embed": [[embed, STORY]],
        "ai_similarity": [["A cat sits on the mat.", "A kitten is on a rug.", {"model": embed}]],
    }
    if embed_1024:
        rows["embed_text_1024"] = [[embed_1024, STORY]]
    return rows


def run(url: str, rows: dict[str, list[list[Any]]]) -> bool:
    ok = True
    print(f"smoke test of {url}; {benchlib.machine()}")
    print(f"{'function':<32}{'HTTP':>5}{'answered':>10}{'seconds':>9}  note")
    with httpx.Client(timeout=600, transport=PollingTransport()) as client:  # a held batch's 202 is polled
        for fn, batch in rows.items():
            body = orjson.dumps({"data": [[i, *r] for i, r in enumerate(batch)]})
            headers = {
                "content-type": "application/json",
                benchlib.QUERY_ID_HEADER: benchlib.new_id(),
                benchlib.BATCH_ID_HEADER: benchlib.new_id(),
            }
            start = time.perf_counter()
            r = client.post(f"{url}/functions/{fn}", content=body, headers=headers)
            seconds = time.perf_counter() - start
            answered, note = 0, ""
            if r.status_code == 200:
                answered = sum(v is not None for _, v in r.json()["data"])
                if answered < len(batch):
                    note = "a row came back NULL"
            else:
                note = r.text[:100]
            ok = ok and r.status_code == 200 and answered == len(batch)
            print(f"{fn:<32}{r.status_code:>5}{f'{answered}/{len(batch)}':>10}{seconds:>9.2f}  {note}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="a running spcs-llm, e.g. http://127.0.0.1:8001")
    ap.add_argument("--model", help="the chat model's name (default: the first /v1/models lists)")
    ap.add_argument("--embed", default="snowflake-arctic-embed-m-v1.5", help="a 768-d embedding model name")
    ap.add_argument("--embed-1024", help="a 1024-d embedding model name, if one is configured")
    args = ap.parse_args()
    model = args.model or httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]["id"]
    sys.exit(0 if run(args.url.rstrip("/"), batches(model, args.embed, args.embed_1024)) else 1)


if __name__ == "__main__":
    main()
