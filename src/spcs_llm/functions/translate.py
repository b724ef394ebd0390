"""TRANSLATE and AI_TRANSLATE (snowflake-contract.md §3.1, §3.5).

``TRANSLATE(text, source, target)``: codes from the 14 legacy languages (AI_TRANSLATE: 23); ``''`` as the source
means detect it. An unsupported code is ``invalid language "<code>"``. A text longer than one request holds is
translated piece by piece (cut at paragraph, line, then word boundaries) and the pieces joined in order.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput, InvalidLanguage
from .registry import Overload, RowJob, Runtime, SqlFunction, register
from .tasks import budget, fit, gather_all, task_request

LEGACY_LANGUAGES = {
    "zh": "Chinese",
    "nl": "Dutch",
    "en": "English",
    "fr": "French",
    "de": "German",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "es": "Spanish",
    "sv": "Swedish",
}
AI_LANGUAGES = {
    **LEGACY_LANGUAGES,
    "ar": "Arabic",
    "hr": "Croatian",
    "cs": "Czech",
    "fi": "Finnish",
    "el": "Greek",
    "he": "Hebrew",
    "no": "Norwegian",
    "ro": "Romanian",
    "tr": "Turkish",
}
INSTRUCTION = "Translate the text from the user {source}into {target}. Answer with the translation only."


def _language(code: Any, languages: dict[str, str], *, source: bool) -> str | None:
    if not isinstance(code, str):
        raise InvalidLanguage(code)
    key = code.strip().lower()
    if source and key == "":
        return None  # detect
    if key not in languages:
        raise InvalidLanguage(code)
    return key


def _prepare(languages: dict[str, str]) -> Any:
    def prepare(rt: Runtime, args: list[Any]) -> RowJob:
        text, source, target = args
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        src = _language(source, languages, source=True)
        dst = _language(target, languages, source=False)
        assert dst is not None
        instruction = INSTRUCTION.format(source=f"from {languages[src]} " if src else "", target=languages[dst])

        async def run() -> str:
            if src == dst or not text.strip():
                return text
            out = max(16, min(rt.max_output_tokens, (rt.context_window - 64) // 2))
            room = min(out, await budget(rt, instruction, out))  # a piece's translation must fit its output
            pieces = await fit(rt, text, room)
            answers = await gather_all(
                [rt.scheduler.chat(task_request(rt, instruction, piece, max_tokens=out)) for piece in pieces]
            )
            return "\n\n".join(a.text.strip() for a in answers)

        return run

    return prepare


_ARGS = (("text", "VARCHAR"), ("source_language", "VARCHAR"), ("target_language", "VARCHAR"))
register(
    SqlFunction(
        "translate",
        (Overload(_ARGS, "VARCHAR", _prepare(LEGACY_LANGUAGES)),),
        doc=(
            "Cortex's 14 language codes; `''` as the source detects it; `invalid language \"<x>\"`. Long input is "
            "translated piece by piece; the same source and target return the text unchanged."
        ),
    )
)
register(
    SqlFunction(
        "ai_translate",
        (Overload(_ARGS, "VARCHAR", _prepare(AI_LANGUAGES)),),
        null_on_error=True,
        doc="`TRANSLATE` with `AI_TRANSLATE`'s 23 language codes.",
    )
)
