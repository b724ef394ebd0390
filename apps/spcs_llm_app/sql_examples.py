"""The Cortex SQL users already have, with ``SNOWFLAKE.CORTEX`` swapped for their schema.

An example is shown for each function the server registers: a written one for the functions users know from
Cortex, and one built from the signature for any other, so new functions appear without editing this file.
"""

from __future__ import annotations

from collections.abc import Sequence

from .backend import FunctionSpec

# {p} is the schema prefix. Keyed by (name, number of arguments).
WRITTEN: dict[tuple[str, int], tuple[str, str]] = {
    ("COMPLETE", 2): (
        "One completion per row",
        """SELECT review_id,
       {p}.COMPLETE('llama3.1-8b', 'Summarise this review in one sentence: ' || review) AS summary
FROM reviews""",
    ),
    ("COMPLETE", 3): (
        "Messages and options: returns Cortex's JSON",
        """SELECT {p}.COMPLETE(
    'llama3.1-8b',
    [{{'role': 'system', 'content': 'Answer in French.'}}, {{'role': 'user', 'content': question}}],
    {{'temperature': 0.2, 'max_tokens': 256}}
):choices[0]:messages::VARCHAR AS answer
FROM questions""",
    ),
    ("TRY_COMPLETE", 2): (
        "NULL instead of an error for a bad row",
        "SELECT {p}.TRY_COMPLETE(model_name, prompt) AS answer FROM prompts",
    ),
    ("SENTIMENT", 1): ("Sentiment score from -1 to 1", "SELECT review, {p}.SENTIMENT(review) AS score FROM reviews"),
    ("SUMMARIZE", 1): ("Summary", "SELECT {p}.SUMMARIZE(transcript) AS summary FROM calls"),
    ("TRANSLATE", 3): ("Translation", "SELECT {p}.TRANSLATE(review, 'de', 'en') AS review_en FROM reviews"),
    ("EXTRACT_ANSWER", 2): (
        "Extract an answer",
        "SELECT {p}.EXTRACT_ANSWER(ticket, 'Which product is it about?') AS product FROM tickets",
    ),
    ("EMBED_TEXT_768", 2): (
        "Embeddings",
        "SELECT {p}.EMBED_TEXT_768('snowflake-arctic-embed-m', review) AS embedding FROM reviews",
    ),
}


def examples(prefix: str, functions: Sequence[FunctionSpec]) -> list[tuple[str, str]]:
    """(title, SQL) for each registered overload."""
    out = []
    for fn in functions:
        title, template = WRITTEN.get((fn.name, len(fn.args)), (fn.signature, _generic(fn)))
        out.append((f"{fn.name}: {title}" if title != fn.signature else title, template.format(p=prefix)))
    return out


def _generic(fn: FunctionSpec) -> str:
    args = ", ".join(_placeholder(name, sql_type) for name, sql_type in fn.args)
    return f"SELECT {{p}}.{fn.name}({args}) AS result FROM my_table"


def _placeholder(name: str, sql_type: str) -> str:
    if name.lower() == "model":
        return "'llama3.1-8b'"
    base = sql_type.split("(")[0].upper()
    return {"ARRAY": "PARSE_JSON('[]')", "OBJECT": "PARSE_JSON('{{}}')"}.get(base, name.lower())
