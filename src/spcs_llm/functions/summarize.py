"""SUMMARIZE, AI_SUMMARIZE_AGG and AI_AGG (snowflake-contract.md §3.1).

Inputs are never truncated silently. A text longer than one request can hold is cut into pieces that fit, each
piece is answered, and the partial answers are combined the same way until one answer is left (map-reduce).
Cortex's AI_AGG and AI_SUMMARIZE_AGG are aggregates, which a service function cannot be; here they take the
array that ``ARRAY_AGG(col)`` builds, so ``AI_AGG(ARRAY_AGG(review), 'instruction')`` works for any number of
rows: the rows are packed into groups that fit the context, and groups' answers are reduced hierarchically.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import InvalidInput, MaxTokensExceeded
from .registry import Overload, RowJob, Runtime, SqlFunction, json_arg, register
from .tasks import TEMPLATE_TOKENS, budget, fit, gather_all, task_request

SUMMARIZE_INSTRUCTION = (
    "Summarize the text from the user in a few sentences. Keep the key facts, names and numbers. "
    "Answer with the summary only."
)
SUMMARIZE_AGG_INSTRUCTION = "Summarize what these texts say, as one short summary of all of them."
MAP_TEMPLATE = "You are given numbered texts. {instruction} Answer with the result only."
REDUCE_TEMPLATE = (
    "You are given partial results, each computed over a different part of a larger set of texts, for this task: "
    "{instruction} Combine them into one result for the whole set. Answer with the result only."
)
SEPARATOR = "\n\n"


ITEM_TOKENS = 8  # the number and separator around each text in a group


def output_tokens(rt: Runtime) -> int:
    """Tokens for the answer to one text that fits a request: at most a third of the context."""
    return max(16, min(rt.max_output_tokens, rt.context_window // 3))


async def partial_tokens(rt: Runtime, instruction: str) -> int:
    """The longest answer of any map or reduce step: a quarter of what is left of a reduce request after its
    prompt, so that two such answers and the output of the reduce step fit, with a quarter to spare for an
    answer that counts a few more tokens when it is tokenized again."""
    reduce_prompt = REDUCE_TEMPLATE.format(instruction=instruction)
    overhead = TEMPLATE_TOKENS + await rt.scheduler.count_tokens(reduce_prompt) + 2 * ITEM_TOKENS
    tokens = min(rt.max_output_tokens, (rt.context_window - overhead) // 4)
    if tokens < 8:  # not even the instruction leaves room to combine two answers
        raise MaxTokensExceeded(rt.context_window)
    return tokens


async def _answer(rt: Runtime, instruction: str, text: str, out: int) -> str:
    return (await rt.scheduler.chat(task_request(rt, instruction, text, max_tokens=out))).text.strip()


async def aggregate(rt: Runtime, instruction: str, texts: list[str], *, reducing: bool = False) -> str:
    """One answer to ``instruction`` over all ``texts``, however many: pack, answer each group, reduce.

    It always finishes: every answer is at most :func:`partial_tokens` long, so each reduce request holds at least
    two of them and each round at least halves the number of answers."""
    out = await partial_tokens(rt, instruction)
    system = (REDUCE_TEMPLATE if reducing else MAP_TEMPLATE).format(instruction=instruction)
    room = await budget(rt, system, out)
    if reducing:
        share = room // 2 - ITEM_TOKENS  # two answers per request, whatever they are
        pieces = list(await asyncio.gather(*(_clip(rt, t, share) for t in texts)))
    else:
        pieces = [p for t in texts for p in await fit(rt, t, room - ITEM_TOKENS)]
    groups = await _pack(rt, pieces, room)
    if reducing and len(groups) >= len(texts) > 1:  # cannot happen with the bounds above; never loop for ever
        raise MaxTokensExceeded(rt.context_window)
    answers = await gather_all([_reduce_or_keep(rt, system, g, out, reducing) for g in groups])
    if len(answers) == 1:
        return answers[0]
    return await aggregate(rt, instruction, list(answers), reducing=True)


async def _reduce_or_keep(rt: Runtime, system: str, group: list[str], out: int, reducing: bool) -> str:
    """A lone partial answer left over in a reduce round goes on to the next round as it is."""
    if reducing and len(group) == 1:
        return group[0]
    return await _answer(rt, system, _numbered(group), out)


async def _clip(rt: Runtime, text: str, tokens: int) -> str:
    """``text``, or its first part of at most ``tokens`` tokens when tokenizing it again gave more tokens than
    the engine generated (rare: the bound in :func:`partial_tokens` leaves half as much again)."""
    return (await fit(rt, text, tokens))[0] if await rt.scheduler.count_tokens(text) > tokens else text


async def _pack(rt: Runtime, pieces: list[str], room: int) -> list[list[str]]:
    """Consecutive pieces grouped so that each group's numbered text fits in ``room`` tokens."""
    if sum(len(p.encode()) + 8 for p in pieces) <= room:  # all in one group even if every byte were a token
        return [list(pieces)] if pieces else [[""]]  # (as in fit(): a tokenizer makes no more tokens than bytes)
    counts = await gather_all([rt.scheduler.count_tokens(p) for p in pieces])
    groups: list[list[str]] = []
    used = room + 1
    for piece, tokens in zip(pieces, counts, strict=True):
        cost = tokens + ITEM_TOKENS
        if used + cost > room:
            groups.append([])
            used = 0
        groups[-1].append(piece)
        used += cost
    return groups or [[""]]


def _numbered(texts: list[str]) -> str:
    return SEPARATOR.join(f"[{i}] {t}" for i, t in enumerate(texts, 1))


async def summarize_text(rt: Runtime, text: str) -> str:
    out = output_tokens(rt)
    pieces = await fit(rt, text, await budget(rt, SUMMARIZE_INSTRUCTION, out))
    if len(pieces) == 1:
        return await _answer(rt, SUMMARIZE_INSTRUCTION, text, out)
    part = await partial_tokens(rt, SUMMARIZE_AGG_INSTRUCTION)
    partials = await gather_all([_answer(rt, SUMMARIZE_INSTRUCTION, p, part) for p in pieces])
    return await aggregate(rt, SUMMARIZE_AGG_INSTRUCTION, list(partials), reducing=True)


def _summarize(rt: Runtime, args: list[Any]) -> RowJob:
    (text,) = args
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")

    async def run() -> str:
        return await summarize_text(rt, text)

    return run


def _texts(raw: Any) -> list[str]:
    items = json_arg(raw, list, "texts")
    return [item if isinstance(item, str) else str(item) for item in items if item is not None]


def _agg(rt: Runtime, args: list[Any]) -> RowJob:
    texts = _texts(args[0])
    instruction = args[1] if len(args) > 1 else SUMMARIZE_AGG_INSTRUCTION
    if not isinstance(instruction, str) or not instruction.strip():
        raise InvalidInput("instruction must be a non-empty string")

    async def run() -> str | None:
        return await aggregate(rt, instruction.strip(), texts) if texts else None

    return run


register(
    SqlFunction(
        "summarize",
        (Overload((("text", "VARCHAR"),), "VARCHAR", _summarize),),
        doc=(
            "A summary. Input longer than the context is split at paragraph, line or word boundaries, each piece "
            "summarised and the summaries combined: never silently truncated."
        ),
    )
)
register(
    SqlFunction(
        "ai_summarize_agg",
        (Overload((("texts", "ARRAY"),), "VARCHAR", _agg),),
        null_on_error=True,
        doc="`AI_AGG` with Cortex's summarising instruction.",
    )
)
register(
    SqlFunction(
        "ai_agg",
        (Overload((("texts", "ARRAY"), ("instruction", "VARCHAR")), "VARCHAR", _agg),),
        null_on_error=True,
        doc=(
            "A service function cannot be an aggregate: call it over "
            "`ARRAY_AGG(col)`. Rows are packed into context-sized "
            "groups and the groups' answers reduced hierarchically, so any number of rows works, within what one ARRAY "
            "value may hold in Snowflake."
        ),
    )
)
