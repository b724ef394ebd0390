"""Text utilities that need no generation: SPLIT_TEXT_RECURSIVE_CHARACTER and COUNT_TOKENS / AI_COUNT_TOKENS.

The splitter follows the recursive character algorithm that Cortex documents (and that LangChain's
RecursiveCharacterTextSplitter implements): split on the first separator present in the text, keep each
separator at the start of the piece that follows it, merge pieces up to ``chunk_size`` characters with
``overlap`` characters carried into the next chunk, and split pieces still too long with the next separator.
The documented example ``('hello world are you here', 'none', 15, 10)`` gives
``['hello world are', 'world are you', 'are you here']``. The same function cuts long inputs for SUMMARIZE,
TRANSLATE and the aggregates.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import InvalidInput
from .registry import FUNCTIONS, Overload, RowJob, Runtime, SqlFunction, json_arg, register

DEFAULT_SEPARATORS: tuple[str, ...] = ("\n\n", "\n", " ", "")
# Markdown structure first (headings, code fences, rules), then paragraphs, lines, words, characters.
MARKDOWN_SEPARATORS: tuple[str, ...] = (
    r"\n#{1,6} ",
    r"```\n",
    r"\n\*\*\*+\n",
    r"\n---+\n",
    r"\n___+\n",
    r"\n\n",
    r"\n",
    " ",
    "",
)


def recursive_split(
    text: str,
    chunk_size: int,
    overlap: int = 0,
    separators: tuple[str, ...] = DEFAULT_SEPARATORS,
    *,
    regex: bool = False,
) -> list[str]:
    """Chunks of at most ``chunk_size`` characters (a piece with no separator left may be longer)."""
    if chunk_size < 1 or overlap < 0 or overlap >= chunk_size:
        raise InvalidInput("chunk_size must be positive and overlap must be at least 0 and less than chunk_size")
    patterns = [s if regex else re.escape(s) for s in separators]
    return _split(text, patterns, chunk_size, overlap)


def _split(text: str, patterns: list[str], size: int, overlap: int) -> list[str]:
    pattern, rest = patterns[-1], []
    for i, p in enumerate(patterns):
        if p == "":
            pattern = p
            break
        if re.search(p, text):
            pattern, rest = p, patterns[i + 1 :]
            break
    pieces = _split_keeping_separator(text, pattern)
    chunks: list[str] = []
    small: list[str] = []
    for piece in pieces:
        if len(piece) < size:
            small.append(piece)
            continue
        if small:
            chunks.extend(_merge(small, size, overlap))
            small = []
        chunks.extend(_split(piece, rest, size, overlap) if rest else [piece])
    if small:
        chunks.extend(_merge(small, size, overlap))
    return chunks


def _split_keeping_separator(text: str, pattern: str) -> list[str]:
    if not pattern:
        return list(text)
    parts = re.split(f"({pattern})", text)
    pieces = [parts[0]] + [parts[i] + parts[i + 1] for i in range(1, len(parts) - 1, 2)]
    return [p for p in pieces if p]


def _merge(pieces: list[str], size: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    total = 0
    for piece in pieces:
        if total + len(piece) > size and current:
            chunks.append("".join(current).strip())
            while total > overlap or (total + len(piece) > size and total > 0):
                total -= len(current.pop(0))
        current.append(piece)
        total += len(piece)
    chunks.append("".join(current).strip())
    return [c for c in chunks if c]


def _split_text(rt: Runtime, args: list[Any]) -> RowJob:
    padded: list[Any] = [*args, *[None] * (5 - len(args))]
    text, fmt, chunk_size, overlap, separators = padded
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    if not isinstance(fmt, str) or fmt.lower() not in ("none", "markdown"):
        raise InvalidInput("format must be 'none' or 'markdown'")
    for name, value in (("chunk_size", chunk_size), ("overlap", overlap)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value != int(value)):
            raise InvalidInput(f"{name} must be an integer")
    if separators is not None:
        separators = json_arg(separators, list, "separators")
        if not separators or not all(isinstance(s, str) for s in separators):
            raise InvalidInput("separators must be a non-empty ARRAY of strings")
    markdown = fmt.lower() == "markdown" and separators is None
    chosen = tuple(separators) if separators is not None else MARKDOWN_SEPARATORS if markdown else DEFAULT_SEPARATORS
    chunks = recursive_split(text, int(chunk_size), int(overlap or 0), chosen, regex=markdown)

    async def run() -> list[str]:
        return chunks

    return run


_SPLIT_ARGS = (("text", "VARCHAR"), ("format", "VARCHAR"), ("chunk_size", "NUMBER"))
register(
    SqlFunction(
        "split_text_recursive_character",
        (
            Overload(_SPLIT_ARGS, "ARRAY", _split_text),
            Overload((*_SPLIT_ARGS, ("overlap", "NUMBER")), "ARRAY", _split_text),
            Overload((*_SPLIT_ARGS, ("overlap", "NUMBER"), ("separators", "ARRAY")), "ARRAY", _split_text),
        ),
        doc=(
            "The recursive character algorithm, checked against "
            "`langchain-text-splitters` on random text; the documented "
            "example gives the documented output. No model call."
        ),
    )
)


def token_counter(rt: Runtime, model_or_function: object) -> Callable[[str], Awaitable[int]]:
    """How to count tokens for a model name or a function name, with that model's own tokenizer. A function name
    (``sentiment``, ``ai_classify``) counts with the chat model that runs it here; an embedding model name with
    the embedder's tokenizer. Resolved now, so an unknown name fails before any work."""
    if isinstance(model_or_function, str) and model_or_function.strip().lower() in FUNCTIONS:
        return rt.scheduler.count_tokens
    return rt.token_counter(model_or_function).count_tokens


def _count_tokens(rt: Runtime, args: list[Any]) -> RowJob:
    """COUNT_TOKENS(model_or_function, text); AI_COUNT_TOKENS(function, text) or (function, model, text)."""
    *names, text = args
    if len(names) == 2 and not (isinstance(names[0], str) and names[0].strip().lower() in FUNCTIONS):
        raise InvalidInput(f"unknown function name {names[0]!r}")
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    count = token_counter(rt, names[-1])

    async def run() -> int:
        return int(await count(text))

    return run


register(
    SqlFunction(
        "count_tokens",
        (Overload((("model_or_function", "VARCHAR"), ("text", "VARCHAR")), "NUMBER", _count_tokens),),
        doc="Tokens of `text` counted with the served model's own tokenizer (or the embedder's).",
    )
)
register(
    SqlFunction(
        "ai_count_tokens",
        (
            Overload((("function_name", "VARCHAR"), ("text", "VARCHAR")), "NUMBER", _count_tokens),
            Overload(
                (("function_name", "VARCHAR"), ("model", "VARCHAR"), ("text", "VARCHAR")), "NUMBER", _count_tokens
            ),
        ),
        null_on_error=True,
        doc="`COUNT_TOKENS` by function name; the category/options argument forms are not available.",
    )
)
