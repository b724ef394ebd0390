"""Label scoring (engines/labels.py): the trie walk, the engines' primitives, the fallback, and the fake engine
giving the same scores by both paths."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import astuple

import httpx
import pytest

from spcs_llm.engines.base import ChatRequest, Message, Usage
from spcs_llm.engines.fake import FakeEngine
from spcs_llm.engines.labels import (
    ChoiceRequest,
    LabelChoices,
    LabelScores,
    NextToken,
    ScoreRequest,
    build_trie,
    choose_labels,
    escape,
    first_alternatives,
    score_labels,
)
from spcs_llm.engines.openai_http import OpenAIHttpEngine
from spcs_llm.functions.sentiment import (
    ASPECT_INSTRUCTION,
    ASPECT_LABELS,
    POLARITY,
    SENTIMENT_INSTRUCTION,
    SENTIMENT_PREFIX,
    aspect_slots,
    sentiment_score,
)
from spcs_llm.functions.tasks import label_distribution
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler
from spcs_llm.server import create_app

from ..conftest import batch, fake_settings, in_process, wait_ready

MESSAGES = (Message("system", "Classify."), Message("user", "The soup was cold."))


class Scripted:
    """A scorer whose next-token alternatives are given per assistant prefix; records the prefixes asked."""

    def __init__(self, steps: dict[str, list[tuple[str, float]]], pieces: dict[str, list[str]] | None = None):
        self.steps, self.pieces, self.asked = steps, pieces or {}, []

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        self.asked.append(prefix)
        alternatives = [(t, math.log(p)) for t, p in self.steps[prefix]][:top]
        return NextToken(tuple(alternatives), Usage(10, 1))

    async def token_pieces(self, text: str) -> list[str] | None:
        return self.pieces.get(text)


def test_the_trie_branches_only_where_labels_share_tokens() -> None:
    root = build_trie({"food": ["food"], "food quality": ["food", " quality"], "service": ["serv", "ice"]})
    assert list(root.children) == ["food", "serv"]
    food = root.children["food"]
    assert food.labels == ["food", "food quality"] and food.end == "food"
    assert list(food.children) == [" quality"] and food.children[" quality"].end == "food quality"
    assert root.children["serv"].labels == ["service"]
    # pieces that do not spell the label are not trusted: the label is one piece
    assert list(build_trie({"abc": ["x", "y"]}).children) == ["abc"]


async def test_shared_first_tokens_take_one_more_step_there_only() -> None:
    p = '{"label": "'
    scorer = Scripted(
        {p: [("food", 0.6), ("service", 0.3), ("w", 0.1)], p + "food": [('"', 0.2), (" quality", 0.6), ("\n", 0.2)]},
        {"food": ["food"], "food quality": ["food", " quality"], "service": ["service"]},
    )
    scores = await score_labels(scorer, ScoreRequest(MESSAGES, p, ("food", "food quality", "service")))
    assert scores is not None and scores.steps == 2 and scorer.asked == [p, p + "food"]
    # food's 0.6 is split 1:3 between the closing quote (food) and " quality"; "\n" begins neither
    assert scores.distribution == pytest.approx(
        {"food": 0.6 * 0.25 / 0.9, "food quality": 0.6 * 0.75 / 0.9, "service": 0.3 / 0.9}
    )
    assert scores.best == "food quality" and scores.usage == Usage(20, 2)


async def test_labels_with_distinct_first_tokens_take_one_step_and_match_label_distribution() -> None:
    p = SENTIMENT_PREFIX
    top = [("w", 0.4), ("positive", 0.3), ("N", 0.1), ("pos", 0.1), ("neutral", 0.05), ("The", 0.05)]
    scorer = Scripted({p: top}, {"positive": ["positive"], "negative": ["negative"], "neutral": ["neutral"]})
    scores = await score_labels(scorer, ScoreRequest(MESSAGES, p, tuple(POLARITY), 10))
    assert scores is not None and scores.steps == 1 and scorer.asked == [p]
    # the rule of label_distribution: case-insensitive pieces count ("pos", "N" shared by negative and neutral)
    assert scores.distribution == pytest.approx(
        {"positive": 0.4 / 0.55, "negative": 0.05 / 0.55, "neutral": 0.1 / 0.55}
    )


async def test_no_alternative_beginning_a_label_gives_none() -> None:
    scorer = Scripted({'"': [("w", 0.9), ("The", 0.1)]})
    assert await score_labels(scorer, ScoreRequest(MESSAGES, '"', ("TRUE", "FALSE"))) is None


async def test_labels_are_scored_as_json_spells_them() -> None:
    label = 'say "hi"'
    assert escape(label) == 'say \\"hi\\"'
    scorer = Scripted({'"': [("say", 0.5), ("no", 0.5)]})
    scores = await score_labels(scorer, ScoreRequest(MESSAGES, '"', (label, "no")))
    assert scores is not None and scores.distribution == pytest.approx({label: 0.5, "no": 0.5})


async def test_an_engine_that_cannot_score_returns_none() -> None:
    class Plain(FakeEngine):
        async def next_token(self, messages, prefix, top):  # the Engine default: not supported
            return None

    assert await Plain().score_labels(ScoreRequest(MESSAGES, '"', ("TRUE", "FALSE"))) is None
    engine = FakeEngine()
    engine.label_scoring = False
    assert await engine.score_labels(ScoreRequest(MESSAGES, '"', ("TRUE", "FALSE"))) is None and engine.steps == []


@pytest.mark.parametrize(
    "text",
    [
        "I love it",
        "Terrible service, never again.",
        "It was fine I guess",
        "中文 很好",
        "The food was cold but the staff were lovely",
    ],
)
async def test_the_fake_engine_gives_sentiment_the_same_score_by_both_paths(text: str) -> None:
    engine = FakeEngine()
    messages = (Message("system", SENTIMENT_INSTRUCTION), Message("user", text))
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": list(POLARITY)}},
        "required": ["sentiment"],
    }
    generated = await engine.chat(
        ChatRequest(messages, 16, json_schema=ChatRequest.schema_key(schema), top_logprobs=10)
    )
    assert json.loads(generated.text)["sentiment"] in POLARITY
    scored = await engine.score_labels(ScoreRequest(messages, SENTIMENT_PREFIX, tuple(POLARITY), 10))
    assert scored is not None and scored.steps == 1
    by_generation = label_distribution(generated, list(POLARITY))
    assert scored.distribution == pytest.approx(by_generation, abs=1e-12)
    assert sentiment_score(scored.distribution) == pytest.approx(sentiment_score(by_generation), abs=1e-9)


async def test_the_fake_engine_walks_shared_prefixes() -> None:
    engine = FakeEngine()
    messages = (Message("system", "Categories:\n- food\n- food quality\n- service"), Message("user", "cold soup"))
    scores = await engine.score_labels(ScoreRequest(messages, '{"label": "', ("food", "food quality", "service")))
    assert scores is not None and sum(scores.distribution.values()) == pytest.approx(1)
    assert [prefix for prefix, _ in engine.steps] == ['{"label": "', '{"label": "food']


async def test_the_scheduler_caches_and_shares_scores() -> None:
    engine = FakeEngine(delay=0.01)
    scheduler = Scheduler(engine, Metrics())
    request = ScoreRequest(
        (Message("system", "Answer TRUE or FALSE."), Message("user", "Is it?")), '"', ("TRUE", "FALSE")
    )
    first, second = await asyncio.gather(scheduler.score_labels(request), scheduler.score_labels(request))
    third = await scheduler.score_labels(request)
    assert isinstance(first, LabelScores) and first == second == third
    assert len(engine.steps) == 1  # one walk for three identical requests


async def test_a_function_falls_back_to_generation_when_no_alternative_begins_a_label() -> None:
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.functions.registry import Runtime
    from spcs_llm.models.catalog import ModelResolver

    class Junk(FakeEngine):
        async def next_token(self, messages, prefix, top):
            self.steps.append((prefix, top))
            return NextToken((("w", -0.1), ("The", -2.0)))

    engine = Junk()
    runtime = Runtime(Scheduler(engine, Metrics()), ModelResolver([engine.model_name], {}), 256)
    answer = await FUNCTIONS["ai_filter"].overload(1).prepare(runtime, ["Is water wet?"])()
    assert answer is True  # the fake's constrained answer (the first enum value)
    assert len(engine.steps) == 1 and len(engine.calls) == 1 and engine.calls[0].json_schema is not None


# --- several labels in one answer (ENTITY_SENTIMENT's aspects) ---------------------------------------------------


async def test_choosing_labels_in_turn_walks_each_slot_after_the_choices_before_it() -> None:
    """A row's aspects: each slot is a walk after the answer so far, its chosen label and closing quote included,
    so choose_labels gives what scoring the aspects one by one gives."""
    names = ("overall", "delivery", "food quality")
    slots = aspect_slots(names)
    assert slots == ('{"overall": "', ', "delivery": "', ', "food quality": "')
    for text in ["The lamp came late but works", "Great food, slow delivery", "中文 很好"]:
        messages = (Message("system", ASPECT_INSTRUCTION), Message("user", text))
        engine = FakeEngine()
        chosen = await engine.choose_labels(ChoiceRequest(messages, slots, ASPECT_LABELS))
        one_by_one, prefix, steps = [], "", 0
        reference = FakeEngine()
        for slot in slots:
            prefix += slot
            scores = await reference.score_labels(ScoreRequest(messages, prefix, ASPECT_LABELS))
            if scores is None:
                break
            one_by_one.append(scores.best)
            steps += scores.steps
            prefix += scores.best + '"'
        assert chosen is not None and chosen.choices == tuple(one_by_one) and chosen.steps == steps
        assert engine.steps == reference.steps  # the same prefixes asked, in the same order


async def test_choosing_gives_each_slot_what_scoring_it_alone_gives_with_or_without_shared_tokens() -> None:
    """Labels whose first tokens differ take one step a slot (a path of its own in choose_labels); labels that
    share one (``food``, ``food quality``) take the trie walk. Either way each slot's choice, the steps and the
    usage (summed field by field) are those of score_labels at that slot's prefix."""
    first, second = '{"a": "', ', "b": "'
    flat = {"positive": ["positive"], "negative": ["negative"], "neutral": ["neutral"]}
    shared = {"food": ["food"], "food quality": ["food", " quality"], "service": ["service"]}
    for pieces, steps in [
        (flat, {first: [("neg", 0.5), ("pos", 0.4), ("w", 0.1)], first + 'negative"' + second: [("neu", 0.9)]}),
        (
            shared,
            {
                first: [("food", 0.7), ("service", 0.2)],
                first + "food": [(" quality", 0.6), ('"', 0.4)],
                first + 'food quality"' + second: [("serv", 0.3), ("fo", 0.5)],
                first + 'food quality"' + second + "food": [('"', 0.9), (" quality", 0.1)],
            },
        ),
    ]:
        labels = tuple(pieces)
        chosen = await choose_labels(Scripted(steps, pieces), ChoiceRequest(MESSAGES, (first, second), labels))
        prefix, choices, taken, usage = "", [], 0, Usage()
        for slot in (first, second):
            prefix += slot
            scores = await score_labels(Scripted(steps, pieces), ScoreRequest(MESSAGES, prefix, labels))
            assert scores is not None
            choices.append(scores.best)
            taken += scores.steps
            usage = Usage(*(a + b for a, b in zip(astuple(usage), astuple(scores.usage), strict=True)))
            prefix += scores.best + '"'
        assert chosen == LabelChoices(tuple(choices), taken, usage)
    assert chosen == LabelChoices(("food quality", "food"), 4, Usage(40, 4))  # the shared case took its walks


async def test_choosing_keeps_the_slots_before_one_the_engine_cannot_score_and_sums_every_usage_field() -> None:
    """An engine that cannot score a later slot (next_token None) ends the choices there, keeping the earlier
    ones; the usage sums each field, the cached tokens too; a slot with one label left costs no step."""

    class Cached(Scripted):
        async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
            if prefix not in self.steps:
                self.asked.append(prefix)
                return None
            found = await super().next_token(messages, prefix, top)
            return None if found is None else NextToken(found.top, Usage(10, 1, 4))

    first, second, third = '{"a": "', ', "b": "', ', "c": "'
    pieces = {"positive": ["positive"], "negative": ["negative"]}
    steps = {first: [("pos", 0.9)], first + 'positive"' + second: [("neg", 0.6), ("w", 0.4)]}
    scorer = Cached(steps, pieces)
    chosen = await choose_labels(scorer, ChoiceRequest(MESSAGES, (first, second, third), tuple(pieces)))
    assert chosen == LabelChoices(("positive", "negative"), 2, Usage(20, 2, 8))
    assert scorer.asked[-1] == first + 'positive"' + second + 'negative"' + third  # asked, and could not score
    lone = Cached({}, {"only": ["only"]})
    assert await choose_labels(lone, ChoiceRequest(MESSAGES, (first, second), ("only",))) == LabelChoices(
        ("only", "only"), 0, Usage()
    )
    assert lone.asked == []  # one label: nothing to ask the engine


async def test_choosing_stops_at_the_slot_that_no_alternative_begins() -> None:
    first, second = '{"a": "', ', "b": "'
    scorer = Scripted(
        {first: [("neg", 0.7), ("pos", 0.3)], first + 'negative"' + second: [("w", 0.9), ("The", 0.1)]},
        {"positive": ["positive"], "negative": ["negative"]},
    )
    request = ChoiceRequest(MESSAGES, (first, second), ("positive", "negative"))
    assert await choose_labels(scorer, request) == LabelChoices(("negative",), 1, Usage(10, 1))
    assert scorer.asked == [first, first + 'negative"' + second]
    assert await choose_labels(Scripted({first: [("w", 1.0)]}), request) is None  # nothing scored: None


async def test_a_rows_aspects_are_one_engine_job_cached_as_one_answer() -> None:
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.functions.registry import Runtime
    from spcs_llm.models.catalog import ModelResolver

    class Meter:
        def __init__(self) -> None:
            self.calls: list[Usage | None] = []

        def check(self, model: str) -> None: ...

        def seen_model(self, model: str) -> None: ...

        def engine_call(self, model: str, usage: Usage | None, busy: float) -> None:
            self.calls.append(usage)

    engine, meter = FakeEngine(), Meter()
    scheduler = Scheduler(engine, Metrics())
    scheduler.meter = meter  # type: ignore[assignment]
    runtime = Runtime(scheduler, ModelResolver([engine.model_name], {}), 256)
    overload = FUNCTIONS["entity_sentiment"].overload(2)
    text = "The lamp came late but support was kind"
    answer = await overload.prepare(runtime, [text, ["delivery", "support"]])()
    assert [c["name"] for c in answer["categories"]] == ["overall", "delivery", "support"]
    assert [prefix for prefix, _ in engine.steps][:1] == ['{"overall": "']
    assert len(engine.steps) == 3 and engine.calls == []  # every aspect scored: nothing generated
    (usage,) = meter.calls  # three steps, one engine call, their usage summed
    assert usage is not None and usage.completion_tokens == 3
    again = await overload.prepare(runtime, [text, ["delivery", "support"]])()
    assert again == answer and len(engine.steps) == 3 and len(meter.calls) == 1  # the cached choices


async def test_entity_sentiment_generates_when_an_aspect_cannot_be_scored() -> None:
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.functions.registry import Runtime
    from spcs_llm.models.catalog import ModelResolver

    class JunkAfterOverall(FakeEngine):
        async def next_token(self, messages, prefix, top):
            self.steps.append((prefix, top))
            if prefix == '{"overall": "':
                return NextToken((("positive", -0.1),))
            return NextToken((("w", -0.1), ("The", -2.0)))

    engine = JunkAfterOverall()
    runtime = Runtime(Scheduler(engine, Metrics()), ModelResolver([engine.model_name], {}), 256)
    answer = await FUNCTIONS["entity_sentiment"].overload(2).prepare(runtime, ["late", ["delivery"]])()
    assert [prefix for prefix, _ in engine.steps] == ['{"overall": "', '{"overall": "positive", "delivery": "']
    assert len(engine.calls) == 1 and engine.calls[0].json_schema is not None  # the whole object, generated
    assert answer == {
        "categories": [{"name": "overall", "sentiment": "positive"}, {"name": "delivery", "sentiment": "positive"}]
    }  # the fake's constrained answer (each enum's first value)


# --- OpenAI-compatible upstreams (vLLM, llama-server, spcs-llm) ---------------------------------------------------


def _vllm_like(seen: list[dict]) -> httpx.MockTransport:
    """As strict as vLLM about the fields scoring relies on: continuing the final message needs
    add_generation_prompt false, and it refuses more top_logprobs than its --max-logprobs (20)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tokenize"):
            return httpx.Response(200, json={"count": 1, "max_model_len": 4096, "tokens": [1]})
        body = json.loads(request.content)
        seen.append(body)
        if body.get("continue_final_message") and body.get("add_generation_prompt", True):
            return httpx.Response(
                400,
                json={
                    "object": "error",
                    "type": "BadRequestError",
                    "code": 400,
                    "message": "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                },
            )
        if body.get("top_logprobs", 0) > 20:
            return httpx.Response(
                400,
                json={
                    "object": "error",
                    "type": "BadRequestError",
                    "code": 400,
                    "message": "Requested sample logprobs of 21, which is greater than max allowed: 20",
                },
            )
        top = [{"token": "positive", "logprob": math.log(0.7)}, {"token": "negative", "logprob": math.log(0.2)}]
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "positive"},
                        "logprobs": {"content": [{**top[0], "top_logprobs": top}]},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 30, "completion_tokens": 1},
            },
        )

    return httpx.MockTransport(handle)


async def test_openai_http_scores_by_continuing_the_final_assistant_message() -> None:
    seen: list[dict] = []
    engine = OpenAIHttpEngine("http://upstream/v1", "m", context_window=4096, transport=_vllm_like(seen))
    scores = await engine.score_labels(ScoreRequest(MESSAGES, SENTIMENT_PREFIX, tuple(POLARITY), 10))
    assert scores is not None and scores.distribution == pytest.approx(
        {"positive": 0.7 / 0.9, "negative": 0.2 / 0.9, "neutral": 0}
    )
    (body,) = seen
    assert body["messages"][-1] == {"role": "assistant", "content": SENTIMENT_PREFIX}
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 10
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert await engine.token_pieces("positive") is None  # vLLM's /tokenize gives ids, not pieces
    await engine.aclose()


async def test_openai_http_turns_scoring_off_when_the_upstream_refuses() -> None:
    engine = OpenAIHttpEngine("http://upstream/v1", "m", context_window=4096, transport=_vllm_like([]))
    request = ScoreRequest(MESSAGES, '"', ("TRUE", "FALSE"), top_logprobs=50)  # more than the upstream allows
    assert await engine.score_labels(request) is None and engine.label_scoring is False
    await engine.aclose()


async def test_an_answer_without_alternatives_falls_back_instead_of_failing() -> None:
    """llama.cpp reports no token when the end of the turn is sampled; scoring asks it to ignore that token, and
    an answer without alternatives anyway is no mass for any label (the function then generates), not an error."""
    assert first_alternatives(()) == ()
    scorer = Scripted({'"': []})
    assert await score_labels(scorer, ScoreRequest(MESSAGES, '"', ("TRUE", "FALSE"))) is None
    seen: list[dict] = []
    engine = OpenAIHttpEngine("http://upstream/v1", "m", context_window=4096, transport=_vllm_like(seen))
    await engine.next_token(MESSAGES, '"', 5)
    assert seen[0]["ignore_eos"] is True
    await engine.aclose()


# --- what every row of a query shares is made once ------------------------------------------------------------


async def test_an_engine_plans_a_label_set_once_and_scores_as_a_fresh_walk_would() -> None:
    class Counting(FakeEngine):
        def __init__(self) -> None:
            super().__init__()
            self.tokenized: list[str] = []

        async def token_pieces(self, text: str) -> list[str] | None:
            self.tokenized.append(text)
            return await super().token_pieces(text)

    engine = Counting()
    labels = ("food", "food quality", 'say "hi"', "service")
    system = Message("system", 'Categories:\n- food\n- food quality\n- say "hi"\n- service')
    for text in ["cold soup", "the food quality was poor", "say hi to the service", "cold soup"]:
        request = ScoreRequest((system, Message("user", text)), '{"label": "', labels)
        assert await engine.score_labels(request) == await score_labels(FakeEngine(), request)  # no memo there
    assert sorted(engine.tokenized) == sorted(escape(label) for label in labels)  # once for four rows


def _old_fake_alternatives(messages: Sequence[Message], prefix: str, top: int) -> tuple[tuple[str, float], ...]:
    """fake_alternatives as first written (one hash object per candidate, a sort by a Python key): the reference
    for the remembered, incremental one, which must give the same doubles."""
    import hashlib
    import re

    from spcs_llm.engines.fake import _JUNK, _PIECE

    partial = prefix.rsplit('"', 1)[-1]
    text = "\n".join(m.content for m in messages)
    candidates = set(_JUNK) | ({'"'} if partial else set())
    for match in re.finditer(r"(?<!\w)" + re.escape(partial), text) if partial else re.finditer(r"\b\w", text):
        piece = _PIECE.match(text, match.end() if partial else match.start())
        if piece is not None:
            candidates.add(piece.group())
    seed = f"{messages[-1].content}\0{prefix}\0" if messages else f"\0{prefix}\0"
    logits = {
        c: 6 * int.from_bytes(hashlib.blake2b((seed + c).encode(), digest_size=4).digest(), "little") / 2**32
        for c in candidates
    }
    norm = math.log(sum(math.exp(v) for v in logits.values()))
    ranked = sorted(logits.items(), key=lambda kv: (-kv[1], kv[0]))[: max(1, top)]
    return tuple((c, v - norm) for c, v in ranked)


def test_the_fake_models_alternatives_are_the_same_doubles_as_first_written() -> None:
    from spcs_llm.engines.fake import fake_alternatives

    systems = [SENTIMENT_INSTRUCTION, "Categories:\n- food\n- food quality\n- service", "", "a\nb c\n\n  d_e 中文"]
    users = ["I love it", "Terrible service, never again.", "中文 很好", "food\n\nquality", " food  quality ", ""]
    prefixes = ['"', SENTIMENT_PREFIX, '{"label": "food', '{"label": "food ', '{"x": "say \\"', "", '"\n  ']
    for system in systems:
        for user in users:
            for messages in ((Message("system", system), Message("user", user)), (Message("user", user),), ()):
                for prefix in prefixes:
                    for top in (10, 1, 20, 0):  # asked again with another top: from the remembered ranking
                        got = fake_alternatives(messages, prefix, top)
                        want = _old_fake_alternatives(messages, prefix, top)
                        assert repr(got) == repr(want)  # repr gives a double's every bit back


def test_per_query_makes_a_querys_plan_once_and_never_remembers_a_refusal() -> None:
    from spcs_llm.functions import tasks

    made: list[object] = []

    def make(raw: object) -> tuple[object, ...]:
        if raw == "bad":
            raise ValueError("refused")
        made.append(raw)
        return (raw,)

    for _ in range(3):
        assert tasks.per_query("t", [["a", "b"], None], lambda: make(["a", "b"])) == (["a", "b"],)
    assert made == [["a", "b"]]  # once for the three rows
    for _ in range(2):
        with pytest.raises(ValueError):
            tasks.per_query("t", ["bad"], lambda: make("bad"))  # refused on every row, not remembered
    tasks.per_query("t", [None], lambda: make(None))
    tasks.per_query("t", [float("nan")], lambda: make("nan"))  # a NaN is not a null (JSON would write both null)
    tasks.per_query("u", [None], lambda: make("other kind"))
    assert made == [["a", "b"], None, "nan", "other kind"]


async def test_rows_with_other_categories_in_one_batch_each_get_their_own() -> None:
    app = create_app(fake_settings(), engine=FakeEngine(), embedders=[])
    rows = [["I will travel", ["travel", "cooking"]], ["I will cook", ["baking", "cooking"]], ["x", ["a"]]]
    async with in_process(app) as c:
        await wait_ready(app)
        r = await c.post("/functions/ai_classify", **batch(*rows, ["I will travel", ["travel", "cooking"]]))
    values = [v for _, v in r.json()["data"]]
    assert values[0]["labels"][0] in ("travel", "cooking") and values[1]["labels"][0] in ("baking", "cooking")
    assert values[2] is None and values[3] == values[0]  # one category: refused (NULL); a repeat: the same plan
