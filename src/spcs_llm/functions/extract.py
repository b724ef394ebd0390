"""EXTRACT_ANSWER(source_document, question) → ``[{"answer": "...", "score": 0..1}]`` (snowflake-contract.md §3.1).

The score is the model's own confidence in the answer it generated: the geometric mean of the probabilities of
its tokens under greedy decoding. An answer the model is sure of, token by token, scores near 1.
"""

from __future__ import annotations

import math
from typing import Any

from ..engines.base import ChatResult
from ..errors import InvalidInput
from .registry import Overload, RowJob, Runtime, SqlFunction, register
from .tasks import task_request

INSTRUCTION = (
    "Answer the question using only the document. Answer with the shortest exact words from the document that "
    "answer it, nothing else. If the document does not contain the answer, answer with nothing."
)
MAX_ANSWER_TOKENS = 64


def confidence(result: ChatResult) -> float | None:
    """exp(mean log-probability of the answer's tokens). None when the engine reports no log-probabilities:
    a made-up score would be worse than none."""
    # a token that is not all whitespace (isspace() is strip()'s own test, without making a string)
    logprobs = [t.logprob for t in result.logprobs if t.token and not t.token.isspace()] or [
        t.logprob for t in result.logprobs
    ]
    if not logprobs:
        return None
    return round(math.exp(sum(logprobs) / len(logprobs)), 6)


def _extract(rt: Runtime, args: list[Any]) -> RowJob:
    document, question = args
    if not isinstance(document, str) or not isinstance(question, str):
        raise InvalidInput("source_document and question must be strings")
    # The question comes before the document text: it is short, and the document is the row's long part.
    request = task_request(
        rt, INSTRUCTION, f"Question: {question}\n\nDocument:\n{document}", max_tokens=MAX_ANSWER_TOKENS, top_logprobs=1
    )

    async def run() -> list[dict[str, Any]]:
        result = await rt.scheduler.chat(request)
        answer = result.text.strip().strip('"').strip()
        return [{"answer": answer, "score": confidence(result) if answer else 0.0}]

    return run


register(
    SqlFunction(
        "extract_answer",
        (Overload((("source_document", "VARCHAR"), ("question", "VARCHAR")), "VARIANT", _extract),),
        doc=(
            '`[{"answer": "…", "score": 0..1}]`; the score is the geometric mean of the answer tokens\' '
            "probabilities, `null` when the engine gives no logprobs."
        ),
    )
)
