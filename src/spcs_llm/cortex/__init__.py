"""A drop-in for snowflake-ml-python's ``snowflake.cortex`` on spcs-llm: change one import line.

    from spcs_llm.cortex import complete, summarize, sentiment   # was: from snowflake.cortex import ...

    df.with_column("abstract_summary", summarize(col("abstract_text")))   # Column → SPCS_LLM.LLM.SUMMARIZE(...)
    sentiment("I really enjoyed this restaurant")                        # a value → SQL on the session, or HTTP
    for piece in complete("llama3.1-8b", "Tell me a story", stream=True): ...

See ``_route`` for where each call goes and docs/python-and-rest.md for the compatibility of each function.
"""

from ..client import FunctionError
from ._complete import (
    Complete,
    CompleteOptions,
    ConversationMessage,
    MidStreamException,
    ResponseFormat,
    ResponseParseException,
    complete,
)
from ._functions import (
    ClassifyText,
    EmbedText768,
    EmbedText1024,
    ExtractAnswer,
    Sentiment,
    Summarize,
    Translate,
    classify_text,
    embed_text_768,
    embed_text_1024,
    extract_answer,
    sentiment,
    summarize,
    translate,
)
from ._route import close, configure

__all__ = [
    "ClassifyText",
    "Complete",
    "CompleteOptions",
    "ConversationMessage",
    "EmbedText1024",
    "EmbedText768",
    "ExtractAnswer",
    "FunctionError",
    "MidStreamException",
    "ResponseFormat",
    "ResponseParseException",
    "Sentiment",
    "Summarize",
    "Translate",
    "classify_text",
    "close",
    "complete",
    "configure",
    "embed_text_1024",
    "embed_text_768",
    "extract_answer",
    "sentiment",
    "summarize",
    "translate",
]
