"""The project's one exception tree. Every error carries its HTTP status as data.

    SpcsLlmError (500)                       unexpected; Snowflake retries 5xx
      RowError (400)                         about one row's input; TRY_*/AI_* turn it into a NULL row
        UnknownModel                         unknown model "<name>"
        InvalidOptions                       invalid options object
        InvalidPrompt                        invalid prompt object
        MaxTokensExceeded                    max tokens of <n> exceeded
        SchemaValidationFailed               schema validation failed
        InvalidLanguage                      invalid language "<code>"
        InvalidCategories                    invalid number of categories: <n> / invalid category input type
        EmptyClassificationInput             empty classification input
        InvalidInput                         any other bad value in a row (the message names it)
        BudgetExceeded (402)                 budget exceeded (a [[budgets]] entry is spent; OpenAI wire: 429)
      BatchError (400)                       the request as a whole is malformed; never retried
        BadEnvelope                          not JSON, no "data", a row that is not [int, ...], wrong arity
        UnknownFunction                      no such SQL function is registered
        ResponseTooLarge                     the encoded answer is over Snowflake's per-batch limit
        RequestTooLarge (413)                the request body is over server.max_request_mb
      Unauthorized (401)                     no or a wrong API key (server.api_key)
      Overloaded (429)                       too many requests; Snowflake backs off and retries
      EngineError (503)                      transient engine failure; Snowflake retries
        EngineUnavailable                    engine not started, crashed or unreachable
        EngineTimeout                        inference timed out

The Cortex messages are exact (``../shared/docs/snowflake-contract.md`` §3.3). Row errors are the only kind a
TRY_ function may turn into NULL: overload and engine failures fail the batch so that Snowflake retries it
instead of returning NULL for rows that would have succeeded.
"""

from __future__ import annotations


class SpcsLlmError(Exception):
    """Base class. ``status`` is the HTTP status; ``kind`` labels metrics and logs."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RowError(SpcsLlmError):
    """Something about one row's arguments; deterministic, so retrying cannot help."""

    status = 400
    kind = "invalid_request"


class UnknownModel(RowError):
    kind = "unknown_model"

    def __init__(self, name: object) -> None:
        super().__init__(f'unknown model "{name}"', param="model")


class InvalidOptions(RowError):
    kind = "invalid_options"

    def __init__(self, reason: str = "") -> None:
        # The SQL user sees Cortex's exact text; the reason is kept for logs (it names keys, never values).
        super().__init__("invalid options object", param="options")
        self.reason = reason


class InvalidPrompt(RowError):
    kind = "invalid_prompt"

    def __init__(self, reason: str = "") -> None:
        super().__init__("invalid prompt object", param="prompt")
        self.reason = reason


class MaxTokensExceeded(RowError):
    kind = "max_tokens_exceeded"

    def __init__(self, limit: int) -> None:
        super().__init__(f"max tokens of {limit} exceeded", param="prompt")
        self.limit = limit


class SchemaValidationFailed(RowError):
    kind = "schema_validation_failed"

    def __init__(self) -> None:
        super().__init__("schema validation failed", param="response_format")


class InvalidInput(RowError):
    kind = "invalid_input"


class InvalidLanguage(RowError):
    kind = "invalid_language"

    def __init__(self, code: object) -> None:
        super().__init__(f'invalid language "{code}"', param="language")


class InvalidCategories(RowError):
    kind = "invalid_categories"

    @classmethod
    def count(cls, n: int) -> InvalidCategories:
        return cls(f"invalid number of categories: {n}", param="categories")

    @classmethod
    def input_type(cls) -> InvalidCategories:
        return cls("invalid category input type", param="categories")


class EmptyClassificationInput(RowError):
    kind = "empty_classification_input"

    def __init__(self) -> None:
        super().__init__("empty classification input", param="input")


class BudgetExceeded(RowError):
    """A ``[[budgets]]`` entry that covers this call is spent. Cortex's REST API answers 402; the legacy SQL names
    fail the batch with it and TRY_/AI_ give NULL (it is a row error); the OpenAI wire answers 429 with the same
    message (``openai_status``), which OpenAI clients read as a quota error."""

    status = 402
    openai_status = 429
    kind = "budget_exceeded"

    def __init__(self, message: str = "budget exceeded") -> None:
        super().__init__(message)


class BatchError(SpcsLlmError):
    """The request as a whole cannot be processed; 400, so Snowflake fails the query at once."""

    status = 400
    kind = "bad_request"


class BadEnvelope(BatchError):
    kind = "bad_envelope"


class UnknownFunction(BatchError):
    kind = "unknown_function"

    def __init__(self, name: str) -> None:
        super().__init__(f'unknown function "{name}"')


class ResponseTooLarge(BatchError):
    kind = "response_too_large"


class RequestTooLarge(BatchError):
    status = 413
    kind = "request_too_large"


class Unauthorized(SpcsLlmError):
    """A route other than /health was called without the configured API key (or with a wrong one)."""

    status = 401
    kind = "authentication_error"

    def __init__(self, message: str = "missing or invalid API key: send `Authorization: Bearer <key>`") -> None:
        super().__init__(message)


class Overloaded(SpcsLlmError):
    status = 429
    kind = "overloaded"

    def __init__(self, message: str = "too many requests") -> None:
        super().__init__(message)


class EngineError(SpcsLlmError):
    """A transient failure of the inference engine (503: Snowflake retries the batch)."""

    status = 503
    kind = "engine_error"


class EngineUnavailable(EngineError):
    kind = "engine_unavailable"


class EngineTimeout(EngineError):
    kind = "engine_timeout"

    def __init__(self, message: str = "inference timed out") -> None:
        super().__init__(message)
