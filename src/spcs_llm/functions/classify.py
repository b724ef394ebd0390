"""CLASSIFY_TEXT, AI_CLASSIFY and AI_FILTER (snowflake-contract.md §3.1, §3.3).

Labels are scored, not generated, where the engine can (engines/labels.py): the answer's fixed start goes into
the prompt and the likeliest of exactly the given categories is read from the next-token probabilities; other
engines decode under a schema of exactly those categories. Either way the answer is always one of them.
Categories are strings or ``{"label", "description", "examples"}`` objects; the instruction lists them (with
descriptions and examples) before the row's text, so rows of one query share the prompt prefix.

- ``CLASSIFY_TEXT(input, categories[, options{task_description}])`` → ``{"label": "<category>"}``.
- ``AI_CLASSIFY(input, categories[, config{task_description, output_mode, examples}])`` → ``{"labels": [...]}``;
  ``output_mode: 'multi'`` may give several (or no) labels.
- ``AI_FILTER(input)`` → BOOLEAN: the model's constrained TRUE/FALSE answer to the input read as a question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..engines.base import ChatRequest
from ..errors import EmptyClassificationInput, InvalidCategories, InvalidInput, InvalidOptions
from .registry import Overload, RowJob, Runtime, SqlFunction, json_arg, register
from .tasks import enum_schema, json_answer, label_scores, per_query, task_request

MIN_CATEGORIES, MAX_CATEGORIES = 2, 100
# The answer's start when scored: JSON laid out as this kind of model writes it (``{`` then a newline and two
# spaces). Measured on bench/data with the packaged model, the compact ``{"label": "`` made CLASSIFY_TEXT fall to
# chance (25%), and AI_FILTER's bare ``"`` to 50%; this layout gave 65% for both (docs/label-scoring.md).
LABEL_PREFIX = '{\n  "label": "'  # single-label AI_CLASSIFY asks CLASSIFY_TEXT's question: the same step
FILTER_PREFIX = '{\n  "answer": "'
MAX_EXAMPLES = 20


@dataclass(frozen=True)
class Category:
    label: str
    description: str = ""
    examples: tuple[str, ...] = ()


def parse_categories(raw: Any) -> list[Category]:
    try:
        items = json_arg(raw, list, "categories")
    except InvalidInput as exc:
        raise InvalidCategories.input_type() from exc
    categories: list[Category] = []
    for item in items:
        if isinstance(item, str):
            categories.append(Category(item))
        elif (
            isinstance(item, dict)
            and isinstance(item.get("label"), str)
            and set(item) <= {"label", "description", "examples"}
        ):
            description = item.get("description", "")
            examples = item.get("examples", [])
            if (
                not isinstance(description, str)
                or not isinstance(examples, list)
                or len(examples) > MAX_EXAMPLES
                or not all(isinstance(e, str) for e in examples)
            ):
                raise InvalidCategories.input_type()
            categories.append(Category(item["label"], description, tuple(examples)))
        else:
            raise InvalidCategories.input_type()
    labels = [c.label for c in categories]
    if not MIN_CATEGORIES <= len(set(labels)) == len(labels) <= MAX_CATEGORIES or not all(s.strip() for s in labels):
        raise InvalidCategories.count(len(categories))
    return categories


def _input(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise EmptyClassificationInput()
    if not isinstance(value, str):
        raise InvalidInput("input must be a string")
    return value


def _settings(raw: Any, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    settings = json_arg(raw, dict, "options", InvalidOptions)
    if set(settings) - allowed:
        raise InvalidOptions(f"unknown keys: {sorted(set(settings) - allowed)}")
    if not isinstance(settings.get("task_description", ""), str):
        raise InvalidOptions("task_description must be a string")
    return settings


def instruction(categories: list[Category], settings: dict[str, Any], *, multi: bool) -> str:
    lines = ["You are a text classifier."]
    if settings.get("task_description"):
        lines.append(f"Task: {settings['task_description']}")
    lines.append("Categories:")
    for c in categories:
        line = f"- {c.label}" + (f": {c.description}" if c.description else "")
        if c.examples:
            line += " (examples: " + "; ".join(c.examples) + ")"
        lines.append(line)
    for example in settings.get("examples", []):
        lines.append(f"Example: {example['input']} -> {', '.join(example['labels'])}")
    lines.append(
        "Answer with every category that applies to the text from the user."
        if multi
        else "Answer with the one category that fits the text from the user best."
    )
    return "\n".join(lines)


def _examples(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(
        isinstance(e, dict)
        and isinstance(e.get("input"), str)
        and isinstance(e.get("labels"), list)
        and all(isinstance(x, str) for x in e["labels"])
        for e in raw
    ):
        raise InvalidOptions("examples must be [{input, labels, explanation}]")
    return raw


class _Plan(NamedTuple):
    """What a query's categories and options make, the same for each of its rows (tasks.per_query)."""

    labels: tuple[str, ...]
    instruction: str
    json_schema: str | None
    max_tokens: int
    multi: bool = False


def _classify_text_plan(raw: list[Any]) -> _Plan:
    categories = parse_categories(raw[0])
    settings = _settings(raw[1] if len(raw) > 1 else None, {"task_description"})
    labels = tuple(c.label for c in categories)
    schema = {
        "type": "object",
        "properties": {"label": enum_schema(labels)},
        "required": ["label"],
        "additionalProperties": False,
    }
    return _Plan(
        labels,
        instruction(categories, settings, multi=False),
        ChatRequest.schema_key(schema),
        16 + max(len(label) for label in labels),
    )


def _classify_text(rt: Runtime, args: list[Any]) -> RowJob:
    text = _input(args[0])
    plan = per_query("classify_text", args[1:], lambda: _classify_text_plan(args[1:]))
    labels = plan.labels
    request = task_request(rt, plan.instruction, text, json_schema=plan.json_schema, max_tokens=plan.max_tokens)

    async def run() -> dict[str, str]:
        scores = await label_scores(rt, request, LABEL_PREFIX, labels)
        if scores is not None:
            return {"label": scores.best}
        return {"label": json_answer(await rt.scheduler.chat(request))["label"]}

    return run


def _ai_classify_plan(raw: list[Any]) -> _Plan:
    categories = parse_categories(raw[0])
    settings = _settings(raw[1] if len(raw) > 1 else None, {"task_description", "output_mode", "examples"})
    mode = settings.get("output_mode", "single")
    if mode not in ("single", "multi"):
        raise InvalidOptions("output_mode must be 'single' or 'multi'")
    if "examples" in settings:
        settings["examples"] = _examples(settings["examples"])
    labels = tuple(c.label for c in categories)
    multi = mode == "multi"
    schema: dict[str, Any] = enum_schema(labels)
    if multi:
        schema = {"type": "array", "items": schema, "maxItems": len(labels)}
    return _Plan(
        labels,
        instruction(categories, settings, multi=multi),
        ChatRequest.schema_key(
            {
                "type": "object",
                "properties": {"labels": schema},
                "required": ["labels"],
                "additionalProperties": False,
            }
        ),
        16 + sum(len(label) + 4 for label in labels) if multi else 16 + max(len(label) for label in labels),
        multi,
    )


def _ai_classify(rt: Runtime, args: list[Any]) -> RowJob:
    text = _input(args[0])
    plan = per_query("ai_classify", args[1:], lambda: _ai_classify_plan(args[1:]))
    labels, multi = plan.labels, plan.multi
    request = task_request(rt, plan.instruction, text, json_schema=plan.json_schema, max_tokens=plan.max_tokens)

    async def run() -> dict[str, list[str]]:
        # One label: scored like CLASSIFY_TEXT (the same step). Several: generated under the array schema
        # (see docs/label-scoring.md).
        scores = None if multi else await label_scores(rt, request, LABEL_PREFIX, labels)
        if scores is not None:
            return {"labels": [scores.best]}
        answer = json_answer(await rt.scheduler.chat(request))["labels"]
        chosen = answer if isinstance(answer, list) else [answer]
        return {"labels": [label for label in labels if label in chosen]}  # category order, each once

    return run


FILTER_INSTRUCTION = (
    "Read the text from the user as a yes-or-no question or a claim about the data it contains. Answer TRUE "
    "if the answer is yes or the claim holds, FALSE otherwise."
)


_FILTER_SCHEMA = ChatRequest.schema_key(enum_schema(["TRUE", "FALSE"]))


def _ai_filter(rt: Runtime, args: list[Any]) -> RowJob:
    (text,) = args
    if not isinstance(text, str):
        raise InvalidInput("input must be a string")
    request = task_request(rt, FILTER_INSTRUCTION, text, json_schema=_FILTER_SCHEMA, max_tokens=6)

    async def run() -> bool:
        scores = await label_scores(rt, request, FILTER_PREFIX, ["TRUE", "FALSE"])
        if scores is not None:
            return scores.best == "TRUE"
        return json_answer(await rt.scheduler.chat(request)) == "TRUE"

    return run


_NULLABLE = frozenset({"input", "options", "config"})
register(
    SqlFunction(
        "classify_text",
        (
            Overload((("input", "VARCHAR"), ("categories", "ARRAY")), "OBJECT", _classify_text, _NULLABLE),
            Overload(
                (("input", "VARCHAR"), ("categories", "ARRAY"), ("options", "OBJECT")),
                "OBJECT",
                _classify_text,
                _NULLABLE,
            ),
        ),
        doc=(
            '`{"label": …}`, always one of the categories (scored from the token probabilities, see label scoring). '
            "2–100 unique categories, strings or "
            "`{label, description, examples}`; `options.task_description`. "
            "Errors: `invalid number of categories: <n>`, "
            "`invalid category input type`, `empty classification input` (also for a NULL input)."
        ),
    )
)
register(
    SqlFunction(
        "ai_classify",
        (
            Overload((("input", "VARCHAR"), ("categories", "ARRAY")), "OBJECT", _ai_classify, _NULLABLE),
            Overload(
                (("input", "VARCHAR"), ("categories", "ARRAY"), ("config", "OBJECT")), "OBJECT", _ai_classify, _NULLABLE
            ),
        ),
        null_on_error=True,
        doc=(
            '`{"labels": […]}`; config `task_description`, `output_mode: '
            "'single'|'multi'`, `examples`; the same category "
            "limits as `CLASSIFY_TEXT`."
        ),
    )
)
register(
    SqlFunction(
        "ai_filter",
        (Overload((("input", "VARCHAR"),), "BOOLEAN", _ai_filter),),
        null_on_error=True,
        doc="TRUE/FALSE, scored from the token probabilities of the two answers (label scoring). The "
        "`(predicate, file)` and `PROMPT()` forms are not available.",
    )
)
