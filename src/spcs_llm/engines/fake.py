"""A deterministic engine for tests of everything above the engine boundary."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import operator
import re
import struct
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np

from ..errors import EngineUnavailable, MaxTokensExceeded
from .base import ChatRequest, ChatResult, Embedded, Embedder, Engine, Message, TokenLogprob, Usage
from .labels import NextToken, TopAlternatives

# The fake tokenizer: a word with the space before it, a run of punctuation, or spaces.
_PIECE = re.compile(r" ?\w+| ?[^\w\s]+|\s+")
_JUNK = ("w", "The", " ")  # tokens no label begins with, so part of every distribution is not a label


def label_prefix(schema: Any) -> tuple[str, list[str]] | None:
    """For a label-shaped schema (a string enum, or an object of one enum property), the JSON text before the
    label and the labels; None for any other schema."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema.get("type") == "string":
        return '"', [str(v) for v in schema["enum"]]
    props = schema.get("properties")
    if schema.get("type") == "object" and isinstance(props, dict) and len(props) == 1:
        ((key, inner),) = props.items()
        if isinstance(inner, dict) and inner.get("type") == "string" and isinstance(inner.get("enum"), list):
            return json.dumps({key: ""}, ensure_ascii=False)[:-2], [str(v) for v in inner["enum"]]
    return None


def fake_alternatives(messages: Sequence[Message], prefix: str, top: int) -> TopAlternatives:
    """The fake model's ``top`` likeliest next tokens after the assistant's ``prefix``.

    Inside a JSON string it proposes what the conversation's text offers: every place where a word begins with
    what the string holds so far gives the piece that follows it there (so labels named in the instruction
    are proposed, and after ``food`` both the closing quote and `` quality``), plus a few tokens no label begins
    with. Each candidate's logit is a hash of the last message, the prefix and the candidate: deterministic, and
    different for different rows.

    The ranking of every candidate is remembered for the last few (messages, prefix): a row that scores a step
    and then generates the same label (SENTIMENT's fallback) asks for the same ranking twice, with another ``top``.
    """
    contents = tuple(m.content for m in messages)
    key = (prefix, *contents)
    found = _RANKINGS.get(key)
    if found is None:
        if len(_RANKINGS) >= 64:  # bounded: it serves the row being answered, not the query
            _RANKINGS.clear()
        found = _RANKINGS[key] = _ranking(contents, prefix)
    ranked, norm = found
    return tuple([(c, _SCALE * -negated - norm) for negated, c in ranked[: max(1, top)]])


# (prefix, *message contents) -> (every candidate as (-hash, text), best first; log of the sum of their exps)
_RANKINGS: dict[tuple[str, ...], tuple[list[tuple[int, str]], float]] = {}
_WORD = re.compile(r"\w+")
_B2B = hashlib.blake2b
_SCALE = 6 / 2**32  # 1.5 * 2**-30: _SCALE * h is exactly 6 * h / 2**32 for every 32-bit h


def _ranking(contents: tuple[str, ...], prefix: str) -> tuple[list[tuple[int, str]], float]:
    """Every candidate of :func:`fake_alternatives` as (minus its hash, text), best first, and the log-normaliser.

    The same doubles as the plain loop it replaced (one ``blake2b(seed + candidate)`` per candidate, logits
    ``6 * h / 2**32``, ranked by ``(-logit, candidate)``), in the same order: the candidates go into one set in
    the same order, so the normaliser sums the same exps in the same order; each hash continues a copy of the
    seed's BLAKE2b state (the hash of a concatenation, computed incrementally); ``_SCALE * h`` is exact, and the
    logit is strictly increasing in the hash, so (-hash, candidate) is the same total order."""
    partial = prefix.rsplit('"', 1)[-1]
    candidates = set(_JUNK) | ({'"'} if partial else set())
    if partial:
        text = "\n".join(contents)
        for match in re.finditer(r"(?<!\w)" + re.escape(partial), text):
            piece = _PIECE.match(text, match.end())
            if piece is not None:
                candidates.add(piece.group())
    elif contents:
        # at the string's start: each word of the text, in order (what _PIECE matches where a word begins; a
        # word never spans the newline that joins the messages); the instructions' words are remembered
        for content in contents[:-1]:
            candidates.update(_words(content))
        candidates.update(_WORD.findall(contents[-1]))
    seed = (f"{contents[-1]}\0{prefix}\0" if contents else f"\0{prefix}\0").encode()
    state = _B2B(seed, digest_size=4)
    names = list(candidates)
    states = list(map(_B2B.copy, repeat(state, len(names))))
    deque(map(_B2B.update, states, map(str.encode, names)), maxlen=0)
    hashes = struct.unpack(f"<{len(names)}I", b"".join(map(_B2B.digest, states)))  # each digest a little-endian int
    norm = math.log(sum(map(math.exp, map(_SCALE.__mul__, hashes))))
    return sorted(zip(map(operator.neg, hashes), names, strict=True)), norm


def _words(text: str) -> list[str]:
    """The words of an instruction (a message before the last: every row of a query sends the same), in order."""
    words = _WORDS.get(text)
    if words is None:
        words = _WORD.findall(text)
        if len(_WORDS) >= 256:  # bounded: instructions are per query
            _WORDS.clear()
        _WORDS[text] = words
    return words


_WORDS: dict[str, list[str]] = {}


def schema_example(schema: Any) -> Any:
    """The simplest value that matches a JSON schema (first enum value, required keys, minItems items)."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: schema_example(props.get(k, {})) for k in schema.get("required", list(props))}
    if kind == "array":
        return [schema_example(schema.get("items", {})) for _ in range(max(1, schema.get("minItems", 1)))]
    return {"string": "echo", "number": 0.5, "integer": 1, "boolean": True}.get(str(kind))


class FakeEngine(Engine):
    """Answers ``echo:<last user message>``; one token per whitespace-separated word. With a JSON schema it
    answers the schema's simplest instance (:func:`schema_example`); asked for logprobs, it gives every token
    log-probability -0.1, with made-up alternatives below it. A label-shaped schema (a string enum, or an object of
    one enum property) asked with logprobs (SENTIMENT's) is answered by a tiny deterministic "model"
    (:func:`fake_alternatives`) that also serves label scoring (:meth:`next_token`), so both paths read the same
    probabilities.

    Like a prefix cache, it reports the tokens of the messages before the last as cached (``cached_tokens``)
    when it has seen those messages before.

    It records every request in ``calls`` (unless ``record=False``: a served fake engine, whose calls nobody
    can read, must not grow its heap with every row, which also makes each full garbage collection slower) and
    the highest number of requests in flight at once in ``peak_in_flight``. ``delay`` makes each call take that
    long (to observe concurrency); a prompt containing ``fail_marker`` raises EngineUnavailable (to observe the
    error policy).
    """

    kind = "fake"

    def __init__(
        self,
        model_name: str = "fake-model",
        *,
        context_window: int = 4096,
        max_concurrency: int = 8,
        delay: float = 0.0,
        fail_marker: str = "<<engine-down>>",
        record: bool = True,
    ) -> None:
        self.model_name = model_name
        self.context_window = context_window
        self.max_concurrency = max_concurrency
        self.delay = delay
        self.fail_marker = fail_marker
        self.record = record
        self.calls: list[ChatRequest] = []
        self.steps: list[tuple[str, int]] = []  # label-scoring steps: (assistant prefix, top alternatives)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started = False
        self._prefixes: dict[tuple[Message, ...], int] = {}  # a prefix seen -> its tokens
        self._answers: dict[str, str] = {}
        self._tokens: dict[int, dict[str, TokenLogprob]] = {}  # top -> word -> token
        self._counts: dict[str, int] = {}  # text -> its words (the fake's tokens)
        # schema -> label_prefix of it, and every non-empty beginning of a label
        self._labelled: dict[str, tuple[str, list[str], frozenset[str]] | None] = {}

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.started = False

    async def health(self) -> bool:
        return self.started

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self.record:
            self.calls.append(request)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: ChatRequest) -> ChatResult:
        prompt_tokens = self._prompt_tokens(request.messages)
        if prompt_tokens > self.context_window:
            raise MaxTokensExceeded(self.context_window)
        last = request.messages[-1].content
        if self.fail_marker in last:
            raise EngineUnavailable("fake engine: injected failure")
        labelled = (
            self._label_schema(request.json_schema)
            if request.json_schema is not None and request.top_logprobs > 0
            else None
        )
        if labelled is not None:
            return self._label_answer(request, *labelled, prompt_tokens)
        if request.json_schema is not None:
            words = [self._schema_answer(request.json_schema)]
        else:
            words = f"echo:{last}".split(" ")
        room = min(request.max_tokens, self.context_window - prompt_tokens)
        text, finish = (" ".join(words[:room]), "length") if len(words) > room else (" ".join(words), "stop")
        usage = Usage(prompt_tokens, min(len(words), room), self._cached_prefix(request.messages))
        return ChatResult(text, finish, usage, self._logprobs(words[:room], request.top_logprobs))

    def _label_answer(
        self, request: ChatRequest, prefix: str, labels: list[str], starts: frozenset[str], prompt_tokens: int
    ) -> ChatResult:
        """Constrained greedy decoding of a label: the likeliest alternative after ``prefix`` that begins a label
        (case-sensitive, as a grammar allows: one of ``starts``) chooses the first label it begins; the label
        token carries the same alternatives that :meth:`next_token` gives for that prefix."""
        top = fake_alternatives(request.messages, prefix, max(request.top_logprobs, 20))
        token, logprob = next(((t, lp) for t, lp in top if t in starts), (labels[0], top[-1][1]))
        label = next(x for x in labels if x.startswith(token))
        body = json.dumps(label, ensure_ascii=False)
        text = prefix + body[1:] + ("}" if prefix != '"' else "")
        tokens = (
            TokenLogprob(prefix, 0.0),
            TokenLogprob(token, logprob, top[: request.top_logprobs]),
            TokenLogprob(text[len(prefix) + len(token) :], 0.0),
        )
        usage = Usage(prompt_tokens, len(tokens), self._cached_prefix(request.messages))
        return ChatResult(text, "stop", usage, tokens if request.top_logprobs > 0 else ())

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        """One step of the fake model (:func:`fake_alternatives`); recorded in ``steps`` as (prefix, top)."""
        if self.record:
            self.steps.append((prefix, top))
        if messages and self.fail_marker in messages[-1].content:
            raise EngineUnavailable("fake engine: injected failure")
        prompt_tokens = self._prompt_tokens(messages) + len(prefix.split())
        if prompt_tokens > self.context_window:
            raise MaxTokensExceeded(self.context_window)
        if self.delay:
            await asyncio.sleep(self.delay)
        return NextToken(fake_alternatives(messages, prefix, top), Usage(prompt_tokens, 1))

    async def token_pieces(self, text: str) -> list[str] | None:
        return _PIECE.findall(text)

    def _prompt_tokens(self, messages: Sequence[Message]) -> int:
        """The fake's prompt tokens: each message's words plus one; a text's count is remembered (a query's
        instruction is in every row, and a row may take several steps)."""
        counts, total = self._counts, 0
        for m in messages:
            count = counts.get(m.content)
            if count is None:
                if len(counts) >= 4096:  # bounded: every row brings a text
                    counts.clear()
                count = counts[m.content] = len(m.content.split())
            total += count + 1
        return total

    def _label_schema(self, schema: str) -> tuple[str, list[str], frozenset[str]] | None:
        """:func:`label_prefix` of a schema (its canonical JSON) and every non-empty beginning of its labels (the
        tokens that begin one), remembered per schema."""
        if schema in self._labelled:
            return self._labelled[schema]
        if len(self._labelled) >= 1024:
            self._labelled.clear()
        found = label_prefix(json.loads(schema))
        self._labelled[schema] = labelled = (
            None if found is None else (*found, frozenset(x[:i] for x in found[1] for i in range(1, len(x) + 1)))
        )
        return labelled

    def _cached_prefix(self, messages: tuple[Message, ...]) -> int:
        """Like a prefix cache: the tokens of every message before the last count as cached once seen."""
        prefix = messages[:-1]
        if not prefix:
            return 0
        seen = self._prefixes.get(prefix)
        if seen is not None:
            return seen
        if len(self._prefixes) >= 10_000:  # bounded, like a real prefix cache
            self._prefixes.clear()
        self._prefixes[prefix] = sum(len(m.content.split()) + 1 for m in prefix)
        return 0

    def _schema_answer(self, schema: str) -> str:
        """The schema's simplest instance as JSON, remembered per schema (rows of a query share one)."""
        answer = self._answers.get(schema)
        if answer is None:
            if len(self._answers) >= 1024:
                self._answers.clear()
            answer = self._answers[schema] = json.dumps(schema_example(json.loads(schema)), ensure_ascii=False)
        return answer

    def _logprobs(self, words: list[str], top: int) -> tuple[TokenLogprob, ...]:
        """Each word is a token with log-probability -0.1; its alternatives are ``alt1``, ``alt2`` ... below it.
        The tokens are immutable, so one object per (word, top) is made and handed out again."""
        if top <= 0:
            return ()
        made = self._tokens.get(top)
        if made is None or len(made) >= 4096:  # bounded: a served fake sees endless distinct words (a few a row)
            made = self._tokens[top] = {}
        out = []
        for w in words:
            token = made.get(w)
            if token is None:
                alternatives = tuple((f"alt{k}", -1.0 - k) for k in range(1, top))
                token = made[w] = TokenLogprob(w, -0.1, ((w, -0.1), *alternatives))
            out.append(token)
        return tuple(out)

    async def count_tokens(self, text: str) -> int:
        return len(text.split())


class FakeEmbedder(Embedder):
    """Deterministic unit vectors from a hash of each word: equal texts give equal vectors, texts sharing words
    give a positive cosine. For tests of the layers above the embedder; ``record=False`` keeps no ``calls``."""

    kind = "fake"

    def __init__(
        self, model_name: str = "fake-embed", dimension: int = 768, max_input_tokens: int = 512, record: bool = True
    ) -> None:
        self.model_name, self.dimension, self.max_input_tokens = model_name, dimension, max_input_tokens
        self.record = record
        self.calls: list[list[str]] = []
        self._codes: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    async def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return (await self.embed_array(texts)).tolist()

    async def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts)[0]

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        """The vectors, and per text the words it read (the fake's tokens, at most ``max_input_tokens``)."""
        return Embedded(*self._embed(texts))

    def _embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Each word adds +-1 at a slot chosen by its hash; rows are divided by their norm. The sums are of small
        integers (exact in any order) and sqrt and division are correctly rounded, so these are the same doubles
        the per-float loop this replaced gave."""
        if self.record:
            self.calls.append(list(texts))
        codes: list[int] = []  # per word: +-(slot + 1), the sign being the word's
        counts: list[int] = []
        known = self._codes.get
        for text in texts:
            seen = list(map(known, text.lower().split()[: self.max_input_tokens]))
            # words not seen before get their code now
            row = (
                [c or self._code(w) for c, w in zip(seen, text.lower().split(), strict=False)] if None in seen else seen
            )
            codes.extend(row)  # type: ignore[arg-type]
            counts.append(len(row))
        code = np.array(codes, dtype=np.intp)
        flat = np.repeat(np.arange(len(texts)) * self.dimension, counts) + np.abs(code) - 1
        out = np.bincount(flat, np.sign(code).astype(np.float64), len(texts) * self.dimension)
        out = out.reshape(len(texts), self.dimension)
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        norms[norms == 0] = 1.0
        return out / norms[:, None], counts

    def _code(self, word: str) -> int:
        """Where a word lands in a fake vector, and with which sign (a hash, so the same word always lands alike)."""
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        code = (int.from_bytes(digest[:4], "little") % self.dimension + 1) * (1 if digest[4] & 1 else -1)
        if len(self._codes) >= 1 << 16:  # bounded: a served fake sees endless distinct words
            self._codes.clear()
        self._codes[word] = code
        return code
