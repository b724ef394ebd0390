"""The task functions of ``snowflake.cortex`` (all but ``complete``), on the deployed spcs-llm functions.

Each has snowflake-ml-python's signature and return types: a Column for Column arguments; for plain values a
``str`` (summarize, translate; extract_answer and classify_text give the JSON text Snowpark gives for a VARIANT or
OBJECT), a ``float`` (sentiment) or a ``list[float]`` (the embeddings).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from . import _route

F = TypeVar("F", bound=Callable[..., Any])


def deprecated_alias(func: F, name: str) -> F:
    """snowflake-ml-python's CamelCase names: the same function, with a DeprecationWarning on each call."""
    message = f"{name}() is deprecated and will be removed in a future release. Use {func.__name__}() instead"

    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = name
    alias.__doc__ = f"Deprecated alias of :func:`{func.__name__}`.\n\n{func.__doc__ or ''}"
    return alias  # type: ignore[return-value]


def _json_text(value: Any) -> Any:
    """A VARIANT/OBJECT value as Snowpark's ``collect()`` gives it: JSON text indented by 2."""
    return value if value is None or isinstance(value, str) else json.dumps(value, indent=2)


def summarize(text: Any, session: Any = None) -> Any:
    """Summarize ``text`` (a string or a Column of strings) with the deployed ``SUMMARIZE``."""
    return _route.call("summarize", session, text)[1]


def sentiment(text: Any, session: Any = None) -> Any:
    """Sentiment of ``text`` from -1 (negative) to 1 (positive): a float, or a Column of floats."""
    is_column, value = _route.call("sentiment", session, text)
    return value if is_column or value is None else float(value)


def translate(text: Any, from_language: Any, to_language: Any, session: Any = None) -> Any:
    """Translate ``text`` from ``from_language`` to ``to_language`` (language codes such as ``"en"``, ``"de"``;
    ``""`` as the source detects it)."""
    return _route.call("translate", session, text, from_language, to_language)[1]


def extract_answer(from_text: Any, question: Any, session: Any = None) -> Any:
    """The answer to ``question`` found in ``from_text``: JSON text ``[{"answer": ..., "score": ...}]``, or a Column."""
    is_column, value = _route.call("extract_answer", session, from_text, question)
    return value if is_column else _json_text(value)


def classify_text(str_input: Any, categories: Any, session: Any = None) -> Any:
    """The category of ``str_input`` among ``categories`` (a list of strings, or a Column of arrays): JSON text
    ``{"label": ...}``, or a Column."""
    if not _route.is_column(categories) and not isinstance(categories, list):
        raise ValueError("categories must be a list of strings or a snowpark.Column")
    is_column, value = _route.call("classify_text", session, str_input, categories)
    return value if is_column else _json_text(value)


def _embedding(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, list) else value


def embed_text_768(model: Any, text: Any, session: Any = None) -> Any:
    """The 768-dimension embedding of ``text`` with ``model`` (e.g. ``"snowflake-arctic-embed-m"``)."""
    is_column, value = _route.call("embed_text_768", session, model, text)
    return value if is_column else _embedding(value)


def embed_text_1024(model: Any, text: Any, session: Any = None) -> Any:
    """The 1024-dimension embedding of ``text`` with ``model`` (e.g. ``"snowflake-arctic-embed-l-v2.0"``)."""
    is_column, value = _route.call("embed_text_1024", session, model, text)
    return value if is_column else _embedding(value)


Summarize = deprecated_alias(summarize, "Summarize")
Sentiment = deprecated_alias(sentiment, "Sentiment")
Translate = deprecated_alias(translate, "Translate")
ExtractAnswer = deprecated_alias(extract_answer, "ExtractAnswer")
ClassifyText = deprecated_alias(classify_text, "ClassifyText")
EmbedText768 = deprecated_alias(embed_text_768, "EmbedText768")
EmbedText1024 = deprecated_alias(embed_text_1024, "EmbedText1024")
