"""Run inside a network namespace that has only loopback (see test_zero_egress.py): start `spcs-llm serve` under
``strace -f`` (every connect/sendto/sendmsg of the server and all its threads and children is written to a log),
send one Snowflake batch to every registered function, write the statuses as JSON, stop the server.

    python egress_driver.py RESULT_JSON STRACE_LOG
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from spcs_llm.functions import FUNCTIONS
from spcs_llm.server.health import wait_healthy

MODEL = "llama3.1-8b"  # a Cortex name, aliased to the packaged model
EMBED = "snowflake-arctic-embed-m-v1.5"
REVIEW = "The battery lasts two days and the screen is bright."

# One batch per function: each row is the arguments after the row number.
ROWS: dict[str, list[list[object]]] = {
    "complete": [[MODEL, "Say hi."]],
    "try_complete": [[MODEL, "Say hi."]],
    "ai_complete": [[MODEL, "Say hi."]],
    "sentiment": [[REVIEW]],
    "ai_sentiment": [[REVIEW]],
    "entity_sentiment": [[REVIEW, ["battery", "screen"]]],
    "summarize": [[REVIEW]],
    "ai_summarize_agg": [[[REVIEW, "Shipping was slow."]]],
    "ai_agg": [[[REVIEW, "Shipping was slow."], "What do customers say?"]],
    "translate": [["Good morning", "en", "de"]],
    "ai_translate": [["Good morning", "en", "de"]],
    "extract_answer": [[REVIEW, "How long does the battery last?"]],
    "classify_text": [[REVIEW, ["electronics", "food"]]],
    "ai_classify": [[REVIEW, ["electronics", "food"]]],
    "ai_filter": [["Is the sky blue?"]],
    "embed_text_768": [[EMBED, REVIEW]],
    "embed_text_1024": [["snowflake-arctic-embed-l-v2.0", REVIEW]],
    "ai_embed": [[EMBED, REVIEW]],
    "ai_similarity": [[REVIEW, "The phone's battery is good."]],
    "count_tokens": [["complete", REVIEW]],
    "ai_count_tokens": [["ai_complete", MODEL, REVIEW]],
    "split_text_recursive_character": [[REVIEW, "none", 20, 5]],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(result_path: str, strace_log: str) -> None:
    port = free_port()
    serve = [
        sys.executable,
        "-m",
        "spcs_llm",
        "serve",
        "--port",
        str(port),
        "--n-parallel",
        "2",
        "--ctx-per-slot",
        "1024",
        "--max-output-tokens",
        "48",
    ]
    trace = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg", "-o", strace_log]
    with open(strace_log + ".server.log", "wb") as log:  # the server's own log, for a failure's explanation
        # its own process group: stopping must reach the server itself, since strace detaches when signalled
        server = subprocess.Popen([*trace, *serve], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    result: dict[str, object] = {"port": port, "missing": sorted(set(FUNCTIONS) - set(ROWS))}
    try:
        if not wait_healthy(base, 600, lambda: server.poll() is None):
            result["error"] = f"server not healthy (exit {server.poll()})"
            return
        statuses = {}
        for name in FUNCTIONS:
            rows = ROWS.get(name)
            if rows is None:
                continue
            r = httpx.post(
                f"{base}/functions/{name}", json={"data": [[i, *a] for i, a in enumerate(rows)]}, timeout=600
            )
            statuses[name] = [r.status_code, r.text[:200] if r.status_code != 200 else len(r.json()["data"])]
        result["statuses"] = statuses
        start = time.monotonic()
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            timeout=600,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        result["openai_chat"] = [chat.status_code, round(time.monotonic() - start, 2)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
