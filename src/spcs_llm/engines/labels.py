"""Label scoring: the distribution over a fixed set of labels, read from the model's next-token probabilities.

A label function (SENTIMENT, AI_FILTER, CLASSIFY_TEXT) does not need the model to write its answer: the fixed
part of the answer (``{"sentiment": "``) goes into the prompt as the start of the assistant's turn, and one
forward step gives the probabilities of the tokens that could begin each label. That is the step where constrained
generation makes its only real choice; the rest of the JSON it would decode is forced.

**The walk.** The labels (JSON-escaped, as they appear inside the answer's string) form a trie over their
canonical tokens, as the engine's tokenizer splits them. Each step asks the engine for the top alternatives of the
next token after ``prefix`` plus the text of the trie node, and gives each alternative's probability to the labels
it can begin (case-insensitive prefix of the label's rest, the rule :func:`spcs_llm.functions.tasks.label_distribution`
applies to generated answers; a token that begins several labels is shared between them equally; a token that opens
the closing quote ends the label of that node). Where labels share a canonical token (``food`` and ``food
quality``), the mass that went to them is split by one more step at that child node, only there. Labels whose
canonical first tokens differ (positive/negative/neutral, TRUE/FALSE) cost exactly one step. Nothing is ever
decoded freely: every step is one forward pass over a prompt that the prefix cache mostly holds already.

**Engines** provide two primitives (:class:`LabelScorer`): the top alternatives of the next token after an
assistant prefix, and the tokens of a text. An engine without the first returns None, and the function falls
back to constrained generation. Without the second, each label is one node (no branching beyond the first step).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .base import Message, TokenLogprob, Usage

TopAlternatives = tuple[tuple[str, float], ...]  # (token text, log-probability), most likely first
NO_USAGE = Usage()


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``labels`` as the continuation of the assistant's answer ``prefix`` to ``messages``.

    Frozen and hashable, so the scheduler computes an identical request once and caches it like a chat answer.
    ``top_logprobs`` is how many alternatives each step reads (vLLM allows 20 unless started with more)."""

    messages: tuple[Message, ...]
    prefix: str
    labels: tuple[str, ...]
    top_logprobs: int = 20


@dataclass(frozen=True)
class LabelScores:
    """P(label) for each label (summing to 1), the engine steps it took and the tokens they used."""

    distribution: dict[str, float]
    steps: int
    usage: Usage = field(default_factory=Usage)

    @property
    def best(self) -> str:
        """The likeliest label; a tie goes to the label given first."""
        return max(self.distribution, key=self.distribution.__getitem__)  # max keeps the first of equals


@dataclass(frozen=True)
class ChoiceRequest:
    """Choose one of ``labels`` in each of several JSON string values of one answer, in turn (ENTITY_SENTIMENT's
    aspects): ``slots[i]`` is the answer's text before the i-th value's label (after the previous label and its
    closing quote), so each choice sees the ones before it. One engine job: the scheduler caches, meters and
    places it once, as it would the constrained generation of the whole object."""

    messages: tuple[Message, ...]
    slots: tuple[str, ...]
    labels: tuple[str, ...]
    top_logprobs: int = 20


@dataclass(frozen=True)
class LabelChoices:
    """The likeliest label of each slot, in order, as far as scoring went: fewer than the slots when a step gave
    no label any mass (the caller then generates the answer instead); the steps taken and their usage."""

    choices: tuple[str, ...]
    steps: int
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class NextToken:
    top: TopAlternatives
    usage: Usage = field(default_factory=Usage)


class LabelScorer(Protocol):
    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None: ...

    async def token_pieces(self, text: str) -> list[str] | None: ...


def prefill_messages(messages: Sequence[Message], prefix: str) -> list[dict[str, Any]]:
    """OpenAI messages ending with the start of the assistant's answer, which the server continues (llama.cpp and
    llama-server by default, vLLM with ``continue_final_message``)."""
    return [*({"role": m.role, "content": m.content} for m in messages), {"role": "assistant", "content": prefix}]


def first_alternatives(tokens: Sequence[TokenLogprob]) -> TopAlternatives:
    """The first generated token's top alternatives (text, log-probability). None at all (an engine that ended
    the answer at once and reported nothing) is an empty tuple: no label gets mass, and the function generates."""
    if not tokens:
        return ()
    return tokens[0].top or ((tokens[0].token, tokens[0].logprob),)


@dataclass
class Node:
    """A trie node: ``text`` is the (escaped) label text spelled so far; ``end`` the label that ends here.

    The walk's per-node facts are kept on the node (``branching``, and a memo of which labels each alternative
    begins), so a trie built once serves every row of a query (:func:`score_labels` with ``plans``); a node is
    not changed after :func:`build_trie` returns."""

    text: str
    labels: list[str] = field(default_factory=list)  # escaped labels in this subtree, in the given order
    children: dict[str, Node] = field(default_factory=dict)
    end: str | None = None
    # the children that hold several labels (the only ones a walk may step into), in the order of ``children``
    branching: list[Node] = field(default_factory=list, repr=False, compare=False)
    # token -> the labels an alternative of that text gives its mass to (see step_mass); bounded
    matches: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)


def build_trie(pieces: dict[str, list[str]]) -> Node:
    """The trie of ``{escaped label: its canonical token pieces}`` (a label without pieces is one piece)."""
    root = Node("")
    for label, toks in pieces.items():
        node = root
        node.labels.append(label)
        spelled = ""
        for piece in toks if "".join(toks) == label else [label]:  # pieces that do not spell the label: one piece
            spelled += piece
            node = node.children.setdefault(piece, Node(spelled))
            node.labels.append(label)
        node.end = label
    _finish(root)
    return root


def _finish(node: Node) -> None:
    node.branching = [child for child in node.children.values() if len(child.labels) > 1]
    for child in node.children.values():
        _finish(child)


def escape(label: str) -> str:
    """How a label is spelled inside a JSON string (what constrained generation would write)."""
    return json.dumps(label, ensure_ascii=False)[1:-1]


def _key(token: str, at_root: bool) -> str:
    # At the first step the rule of label_distribution: quotes and spaces around the token do not count. Deeper,
    # the token continues a word, so its spaces are part of the label's text.
    return token.strip().strip('"').strip().lower() if at_root else token.lower()


MATCHES_MEMO = 1024  # tokens remembered per node: the instruction's words and the junk recur on every row


def _matches(node: Node, token: str) -> tuple[str, ...]:
    """The labels of ``node``'s subtree that an alternative ``token`` begins: at a node where a label ends, a
    token opening the closing quote ends that label; otherwise the labels whose rest the token's key
    (:func:`_key`) begins."""
    if node.text != "" and node.end is not None and token.startswith('"'):
        return (node.end,)  # the closing quote: the label spelled so far is the answer
    key = _key(token, node.text == "")
    if not key:
        return ()
    depth = len(node.text)
    return tuple(label for label in node.labels if label[depth:].lower().startswith(key))


def begun(node: Node, token: str) -> tuple[str, ...]:
    """:func:`_matches`, remembered on the node (``node.matches``)."""
    matches = node.matches.get(token)
    return _remember(node, token) if matches is None else matches


def _remember(node: Node, token: str) -> tuple[str, ...]:
    memo = node.matches
    if len(memo) >= MATCHES_MEMO:  # bounded: the row's own words are new on every row
        memo.clear()
    matches = memo[token] = _matches(node, token)
    return matches


def step_mass(node: Node, top: TopAlternatives) -> dict[str, float]:
    """The probability each label of ``node``'s subtree gets from one step's alternatives (not normalised): each
    distinct alternative's probability, shared equally between the labels it begins (:func:`_matches`)."""
    mass = dict.fromkeys(node.labels, 0.0)
    memo = node.matches
    seen: list[str] = []  # the tokens that gave mass: most alternatives begin no label, and need no dedup
    for token, logprob in top:
        matches = memo.get(token)  # begun(), without a call for the common hit: this loop is the walk's
        if matches is None:
            matches = _remember(node, token)
        if matches and token not in seen:
            seen.append(token)
            share = math.exp(logprob) / len(matches)
            for label in matches:
                mass[label] += share
    return mass


async def walk(
    scorer: LabelScorer, messages: tuple[Message, ...], prefix: str, top: int, node: Node
) -> tuple[dict[str, float] | None, int, Usage]:
    """The normalised distribution over ``node``'s labels after the answer ``prefix`` (reading ``top``
    alternatives a step), the steps taken and their usage (None: no alternative began any label, or the engine
    cannot score)."""
    if len(node.labels) == 1:
        return {node.labels[0]: 1.0}, 0, NO_USAGE
    answer = await scorer.next_token(messages, prefix + node.text, top)
    if answer is None:
        return None, 1, NO_USAGE
    mass = step_mass(node, answer.top)
    steps, usage = 1, answer.usage
    shared = [child for child in node.branching if sum(mass[label] for label in child.labels) > 0]
    if shared:
        # one child (the common case) is awaited as it is: a gather would make a task of it
        subs = (
            [await walk(scorer, messages, prefix, top, shared[0])]
            if len(shared) == 1
            else await asyncio.gather(*(walk(scorer, messages, prefix, top, c) for c in shared))
        )
        for child, (sub, sub_steps, sub_usage) in zip(shared, subs, strict=True):
            steps += sub_steps
            usage = _add(usage, sub_usage)
            if sub is not None:
                group = sum(mass[label] for label in child.labels)
                for label in child.labels:
                    mass[label] = group * sub[label]
    return normalised(mass), steps, usage


def normalised(mass: dict[str, float]) -> dict[str, float] | None:
    """``mass`` divided by its sum; None when no label has any."""
    total = sum(mass.values())
    if total <= 0:
        return None
    return {label: m / total for label, m in mass.items()}


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens, a.cached_tokens + b.cached_tokens
    )


@dataclass(frozen=True)
class Plan:
    """What a label set costs to score, whatever the row: its labels as JSON spells them (escaped -> given) and
    the trie of their token pieces. Made once per label set and engine (:func:`score_labels` with ``plans``)."""

    escaped: dict[str, str]
    root: Node
    plain: bool  # no label changed by escaping: the walk's distribution is already keyed by the given labels


PLANS_MEMO = 64  # label sets remembered per engine: a query has one, a few queries run at once


async def plan_labels(scorer: LabelScorer, labels: tuple[str, ...]) -> Plan:
    """The :class:`Plan` of ``labels`` with ``scorer``'s tokenizer."""
    escaped = {escape(label): label for label in labels}
    found = await asyncio.gather(*(scorer.token_pieces(text) for text in escaped))
    pieces = {text: toks or [text] for text, toks in zip(escaped, found, strict=True)}
    return Plan(escaped, build_trie(pieces), all(e == label for e, label in escaped.items()))


async def score_labels(
    scorer: LabelScorer, request: ScoreRequest, plans: dict[tuple[str, ...], Plan] | None = None
) -> LabelScores | None:
    """Walk the label trie with ``scorer``; None when the engine cannot score or no alternative began a label
    (the caller then generates under constraint instead).

    ``plans`` remembers each label set's :class:`Plan` (the scorer's own memo: its token pieces of a text never
    change): every row of a query asks with the same labels, and would otherwise tokenize them and build their
    trie again."""
    plan = _known_plan(request.labels, plans) or await _made_plan(scorer, request.labels, plans)
    distribution, steps, usage = await walk(scorer, request.messages, request.prefix, request.top_logprobs, plan.root)
    if distribution is None:
        return None
    if not plan.plain:
        escaped = plan.escaped
        distribution = {escaped[e]: p for e, p in distribution.items()}
    return LabelScores(distribution, steps, usage)


def _known_plan(labels: tuple[str, ...], plans: dict[tuple[str, ...], Plan] | None) -> Plan | None:
    """``labels``' plan if ``plans`` holds it: looked up without a coroutine, as every row of a query finds it."""
    return None if plans is None else plans.get(labels)


async def _made_plan(scorer: LabelScorer, labels: tuple[str, ...], plans: dict[tuple[str, ...], Plan] | None) -> Plan:
    """``labels``' plan, made and remembered in ``plans`` (when given)."""
    plan = await plan_labels(scorer, labels)
    if plans is not None:
        if len(plans) >= PLANS_MEMO:
            plans.clear()
        plans[labels] = plan
    return plan


async def choose_labels(
    scorer: LabelScorer, request: ChoiceRequest, plans: dict[tuple[str, ...], Plan] | None = None
) -> LabelChoices | None:
    """Each slot's likeliest label (as :attr:`LabelScores.best` chooses), one walk of the labels' trie per slot
    after the answer so far: the slot's text, then each chosen label as JSON spells it and its closing quote.
    None when the engine cannot score the first slot; scoring stops at a slot whose walk gives no label mass."""
    plan = _known_plan(request.labels, plans) or await _made_plan(scorer, request.labels, plans)
    messages, top, root, escaped = request.messages, request.top_logprobs, plan.root, plan.escaped
    # labels whose first tokens all differ (ENTITY_SENTIMENT's): each walk is one step at the root, taken here
    # as walk() would take it, without a coroutine of its own for each slot
    one_step = not root.branching and len(root.labels) > 1
    prefix, chosen, steps = "", [], 0
    prompt_tokens = completion_tokens = cached_tokens = 0
    for before in request.slots:
        prefix += before
        if one_step:
            answer = await scorer.next_token(messages, prefix, top)
            if answer is None:
                break
            distribution, taken, used = normalised(step_mass(root, answer.top)), 1, answer.usage
        else:
            distribution, taken, used = await walk(scorer, messages, prefix, top, root)
        if distribution is None:
            break
        steps += taken
        prompt_tokens += used.prompt_tokens
        completion_tokens += used.completion_tokens
        cached_tokens += used.cached_tokens
        best = max(distribution, key=distribution.__getitem__)  # as JSON spells it; the first of equals (.best)
        chosen.append(escaped[best])
        prefix += best + '"'
    if not chosen:
        return None
    return LabelChoices(tuple(chosen), steps, Usage(prompt_tokens, completion_tokens, cached_tokens))
